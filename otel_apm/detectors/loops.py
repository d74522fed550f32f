"""The per-parent sequence of DB statements that the N+1 and MN+1 detectors both walk.

A loop over rows shows up as the same statements again and again among one parent's DB children,
in start order.  What is in that sequence, and what counts as intentional repetition, must be the
same for both detectors, or one would report what the other deliberately leaves alone.
"""

from __future__ import annotations

import re
from collections.abc import Container
from types import ModuleType

from otel_apm.detectors.base import by_start
from otel_apm.detectors.dbshape import db_shapes
from otel_apm.detectors.summary import TraceSummary
from otel_apm.model import SpanView, Trace
from otel_apm.sql import SqlShape

# A range predicate before ORDER BY ... LIMIT: keyset pagination ("id > ? order by id limit ?").
# `<>` is inequality, not a range.
_RANGE_RE = re.compile(r"(?:<(?!>)|(?<!<)>)=? ?\?|\? ?(?:<(?!>)|(?<!<)>)|\bbetween\b")


def db_sequence(trace: Trace, siblings: list[SpanView]) -> tuple[list[SpanView], list[SqlShape]]:
    """The round trips among one parent's DB children in start order, with their shapes, made
    once per trace and parent for both detectors.

    Cached spans paid no round trip, and a truncated statement may hide what differs: they are
    left out, so they neither count nor break a run.  Each distinct text is parsed once, since an
    ORM's placeholders make the repeats identical.

    Made by the compiled twin of :func:`_sequence` (csrc/traceindex.c) when the trace's summary
    was made with it: a tenth of the instructions on a loop of 20 queries.
    """
    compiled = TraceSummary.of(trace).compiled
    return trace.derived(("db_sequence", siblings[0].parent_id), lambda: _sequence(siblings, compiled))


def _sequence(siblings: list[SpanView], compiled: ModuleType | None) -> tuple[list[SpanView], list[SqlShape]]:
    """The reference of the compiled ``db_sequence``, and the fallback for siblings it declines."""
    made: tuple[list[SpanView], list[SqlShape]] | None = (
        None if compiled is None else compiled.db_sequence(siblings)
    )
    if made is not None:
        return made
    siblings.sort(key=by_start)
    paid = [s for s in siblings if not s.cached]
    spans: list[SpanView] = []
    shapes: list[SqlShape] = []
    for s, shape in zip(paid, db_shapes(paid), strict=True):
        if not shape.truncated:
            spans.append(s)
            shapes.append(shape)
    return spans, shapes


def is_intentional(shape: SqlShape) -> bool:
    """Pagination (OFFSET, MySQL's LIMIT ?, ?, or ORDER BY ... LIMIT after a range predicate) and
    IN-list batches repeat by design: each run fetches a different slice, not one row's children."""
    text = shape.normalized
    if " in (?)" in text or " offset " in text or " limit ?, ?" in text:
        return True
    order = text.find(" order by ")
    return order > 0 and " limit " in text[order:] and _RANGE_RE.search(text, 0, order) is not None


def source_index(
    spans: list[SpanView], shapes: list[SqlShape], first: int, loop: Container[str]
) -> int | None:
    """The "1": the last statement not of the loop (fingerprints ``loop``) that ended before the
    loop's first query (index ``first``) began, i.e. the query whose rows the loop walks."""
    loop_start = spans[first].start_ns
    for i in range(first - 1, -1, -1):
        if shapes[i].fingerprint not in loop and spans[i].end_ns <= loop_start:
            return i
    return None
