"""LocalAssembler's memory bound in pass-through: unread SDK spans stay within the budget shared
by the open traces, however many were open when each trace began."""

from __future__ import annotations

from otel_apm.assemble.local import COMPACT_EVERY, UNREAD_BUDGET, LocalAssembler
from otel_apm.model import SpanView


def test_traces_opened_early_read_sooner_once_many_are_open() -> None:
    """Roots opened while few traces were open kept COMPACT_EVERY unread spans each, so a burst
    of open requests held SDK spans far past the budget where views would do."""
    read: list[int] = []

    def read_spans(span_ids: list[int]) -> list[SpanView]:
        read.extend(span_ids)
        return [SpanView(1, sid, 1, "SELECT", 0, 0, 1_000, False, "svc") for sid in span_ids]

    traces = 2 * UNREAD_BUDGET // COMPACT_EVERY  # the share falls to half of COMPACT_EVERY
    children = COMPACT_EVERY - 2  # fewer than a trace opened alone would keep unread
    asm = LocalAssembler[int](max_traces=traces, max_spans=1000, hold=False, read_spans=read_spans)
    for trace_id in range(1, traces + 1):
        assert asm.open_root(trace_id, span_id=trace_id) is None
    for trace_id in range(1, traces + 1):
        for child in range(children):
            assert asm.add(trace_id, trace_id * 1000 + child) == "added"
    assert traces * children - len(read) <= UNREAD_BUDGET
    closed = [asm.close_root(t, t) for t in range(1, traces + 1)]
    assert [len(lt.views) if lt else None for lt in closed] == [children] * traces
    assert sorted(read) == sorted(t * 1000 + c for t in range(1, traces + 1) for c in range(children))
