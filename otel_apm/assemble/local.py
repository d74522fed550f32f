"""In-process assembly: spans grouped under their local root, as the SDK ends them.

A local root is a span with no parent or a remote one: the server span of a request, a job's
top span.  Only local roots are registered, when they start; every other span is filed by its
trace id when it ends, and only appended: the slim views analysis reads are built in batches,
when the root ends or every ``COMPACT_EVERY`` spans (sooner when many traces are open), which
costs half of building them one span at a time in Python (measured) and bounds what open traces
hold.  The compiled intake (csrc/intake.c) reads a span into ``views`` as it ends instead, when
nothing of its trace is unread: in C the batch saves nothing, and the SDK span is let go at once.

Should several local roots of one trace be open in this process at once (a service calling
itself), the ending root takes the spans whose parent chain leads to it and leaves the others.
A span that ends when no local root of its trace is open ended after its root (or started
before this processor was installed): it is late.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

from otel_apm.model import SpanView

S = TypeVar("S")  # the SDK's ended span

Outcome = Literal["added", "held", "truncated", "late"]

# Spans filed before they are turned into views: small enough that a long trace holds little
# more than its views, large enough that a typical request is read in one batch at its end.
COMPACT_EVERY = 64
# Unread SDK spans (about 2.8 kB each, against 300 B a view) across all open traces: with many
# traces open, each reads sooner, so the total stays near this many.
UNREAD_BUDGET = 8192


class LocalTrace(Generic[S]):
    """One trace's spans so far: ``spans`` not yet read (and, in tail mode, every held span;
    ``read`` of them are already in ``views``)."""

    __slots__ = ("check_at", "closed", "read", "roots", "spans", "trace_id", "truncated", "views")

    def __init__(self, trace_id: int, check_at: int = COMPACT_EVERY) -> None:
        self.trace_id = trace_id
        self.roots: set[int] = set()
        self.spans: list[S] = []
        self.read = 0
        self.views: list[SpanView] = []
        self.truncated = 0
        self.closed = False
        # Spans filed (read or not) at which filing takes the slow path: counted with the views,
        # so the compiled intake may read a span into ``views`` as it ends (csrc/intake.c).
        self.check_at = check_at


class LocalAssembler(Generic[S]):
    """Bounded: at most ``max_traces`` traces with open local roots, ``max_spans`` spans each.

    ``read_spans`` turns ended spans into views; ``hold`` keeps the spans themselves until the
    root ends (tail mode), where otherwise they are exported as they end.
    """

    def __init__(
        self, max_traces: int, max_spans: int, hold: bool, read_spans: Callable[[list[S]], list[SpanView]]
    ) -> None:
        self.max_traces = max_traces
        self.max_spans = max_spans
        self.hold = hold
        self._read_spans = read_spans
        self._open: dict[int, LocalTrace[S]] = {}
        # Unread spans each open trace may keep now, from the budget and how many are open;
        # a trace's own check_at was set when it opened, perhaps when far fewer were.
        self._share = COMPACT_EVERY
        self._lock = threading.Lock()

    def open_root(self, trace_id: int, span_id: int) -> LocalTrace[S] | None:
        """Register a starting local root.  Returns a trace evicted to stay within bounds: the
        caller analyzes it as it is (``finish``), and its roots, when they end, are late."""
        with self._lock:
            lt = self._open.get(trace_id)
            if lt is None:
                lt = self._open[trace_id] = LocalTrace(trace_id, self._room(0))
                lt.roots.add(span_id)
                evicted = None
                if len(self._open) > self.max_traces:
                    evicted = self._open.pop(next(iter(self._open)))
                    evicted.closed = True
                self._share = self._budget_share()
                return evicted
            lt.roots.add(span_id)
        return None

    @property
    def open_traces(self) -> dict[int, LocalTrace[S]]:
        """The open traces by id, for the compiled intake (csrc/intake.c), which files the common
        case as ``add`` does in pass-through: without the lock, reading ``_share`` as it is."""
        return self._open

    def add(self, trace_id: int, span: S) -> Outcome:
        """File an ended span that is not a local root.

        Pass-through takes no lock: the append is atomic, and a span racing its root's end on
        another thread is at worst exported unanalyzed.  Tail mode holds the span, so it locks:
        a held span must never land in a trace already finished.  Either way the bounds are
        looked at only when ``check_at`` is reached, every few dozen spans, or sooner when the
        trace's unread spans pass its share of the budget as it is now: a trace opened while
        few were open would otherwise keep its first, larger share (measured: 2000 open traces
        held 19,000 unread SDK spans against a budget of 8192).
        """
        if self.hold:
            with self._lock:
                outcome = self._file(trace_id, span, locked=True)
            return "held" if outcome == "added" else outcome
        return self._file(trace_id, span, locked=False)

    def _file(self, trace_id: int, span: S, locked: bool) -> Outcome:
        lt = self._open.get(trace_id)
        if lt is None or lt.closed:
            return "late"
        spans = lt.spans
        spans.append(span)
        unread = len(spans) - lt.read
        if unread + len(lt.views) < lt.check_at and unread < self._share:
            return "added"
        if locked:
            return self._checkpoint(lt, span)
        with self._lock:
            return self._checkpoint(lt, span)

    def _checkpoint(self, lt: LocalTrace[S], span: S) -> Outcome:
        """Past the span bound, take the span back (it is exported, not held: a huge trace must
        not hold memory, and the caller then keeps the whole trace rather than orphan it);
        else read the unread spans into views when due.  Caller holds the lock."""
        spans = lt.spans
        outcome: Outcome = "added"
        if len(spans) - lt.read + len(lt.views) > self.max_spans:
            for i in range(len(spans) - 1, lt.read - 1, -1):
                if spans[i] is span:
                    del spans[i]
                    break
            lt.truncated += 1
            outcome = "truncated"
        else:
            self._compact(lt)
        lt.check_at = len(lt.views) + self._room(len(lt.views))
        return outcome

    # These two run at every local root's start and end: comparisons, not min() and max(), whose
    # argument parsing cost 8,000 instructions a trace (callgrind).

    def _room(self, views: int) -> int:
        """Spans a trace may file before the next checkpoint: up to its share of the unread
        budget (smaller when many traces are open), and at most to one past the span bound."""
        share, left = self._budget_share(), self.max_spans - views + 1
        room = share if share < left else left
        return room if room > 1 else 1

    def _budget_share(self) -> int:
        share = UNREAD_BUDGET // len(self._open) if self._open else UNREAD_BUDGET
        return COMPACT_EVERY if share > COMPACT_EVERY else share if share > 1 else 1

    def close_root(self, trace_id: int, root_id: int) -> LocalTrace[S] | None:
        """The local trace of an ending root, its views read (the root's own not included), or
        None when the root is not open: evicted earlier, or started before we were installed."""
        with self._lock:
            lt = self._open.get(trace_id)
            if lt is None or root_id not in lt.roots:
                return None
            lt.roots.discard(root_id)
            self._compact(lt)
            if not lt.roots:
                del self._open[trace_id]
                self._share = self._budget_share()
                lt.closed = True
                return lt
            return _split(lt, root_id)

    def finish(self, lt: LocalTrace[S]) -> LocalTrace[S]:
        """Read what is left of an evicted or drained trace."""
        with self._lock:
            self._compact(lt)
        return lt

    def drain(self) -> list[LocalTrace[S]]:
        """Every open trace, closed and read, at shutdown."""
        with self._lock:
            traces = list(self._open.values())
            self._open.clear()
            for lt in traces:
                lt.closed = True
                self._compact(lt)
            return traces

    def __len__(self) -> int:
        return len(self._open)

    def _compact(self, lt: LocalTrace[S]) -> None:
        """Read the unread spans into views; drop them unless held.  Caller holds the lock."""
        unread = lt.spans[lt.read :]
        if not unread:
            return
        lt.views.extend(self._read_spans(unread))
        if self.hold:
            lt.read += len(unread)
        else:
            del lt.spans[: len(unread)]


def _split(lt: LocalTrace[S], root_id: int) -> LocalTrace[S]:
    """Move the spans below ``root_id`` out of ``lt`` (which other open roots keep).  Called
    with ``lt`` compacted, so in tail mode ``spans`` and ``views`` run parallel."""
    parent_of = {v.span_id: v.parent_id for v in lt.views}
    mine: LocalTrace[S] = LocalTrace(lt.trace_id)
    mine.closed = True
    keep = LocalTrace[S](lt.trace_id)
    for i, view in enumerate(lt.views):
        p, steps = view.parent_id, len(parent_of)  # steps: a malformed cycle cannot hang us
        while p and p != root_id and steps:
            p, steps = parent_of.get(p, 0), steps - 1
        into = mine if p == root_id else keep
        into.views.append(view)
        if lt.spans:
            into.spans.append(lt.spans[i])
    lt.views, lt.spans = keep.views, keep.spans
    lt.read = len(lt.spans)
    mine.read = len(mine.spans)
    return mine
