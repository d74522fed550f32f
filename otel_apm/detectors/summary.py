"""What a trace holds, gathered once before any detector is built.

Most traces have no problem, and most detectors can tell from a few totals that they cannot fire:
no DB span over the slow-query threshold, no statement shape repeated enough for an N+1, no body
over the payload limit.  Each detector's :meth:`~otel_apm.detectors.base.Detector.can_fire` asks
this summary, and a detector that cannot fire is neither instantiated nor fed any span (Sentry's
performance detectors exit early on the same kind of bounds).  Every figure here is an upper bound
of what a detector measures, never an estimate, so the findings are the same as without it.
"""

from __future__ import annotations

import weakref
from types import ModuleType

from otel_apm.detectors.dbshape import StatementGroups, TextGroups, by_fingerprint, db_texts, statements_of
from otel_apm.model import DB, SpanView, Trace

# What the summary reads of the spans: by category, DB spans by (service, statement text), any
# span failed, summed and longest nanoseconds per category, any DB span a cache hit.
TraceIndex = tuple[dict[str, list[SpanView]], TextGroups, bool, dict[str, int], dict[str, int], bool]


def index_trace(trace: Trace) -> TraceIndex:
    """What :class:`TraceSummary` reads of the spans, with the trace's own filings (by category,
    the breakdown, the DB spans by text) made on the way, as the statistics and the metrics ask
    for them next anyway.

    The reference of the compiled ``index_trace`` (csrc/traceindex.c), which makes all of it in
    one pass over the spans, and the fallback for a trace it declines (returns None for).
    """
    by_category = trace.by_category()
    trace.breakdown()
    texts = db_texts(trace)
    total_ns: dict[str, int] = {}
    longest_ns: dict[str, int] = {}
    for category, group in by_category.items():
        durations = [s.end_ns - s.start_ns for s in group]
        total_ns[category] = sum(durations)
        longest_ns[category] = max(durations)
    error = any([s.error or s.exception_type is not None for s in trace.spans])
    has_cached = any(s.cached for s in by_category.get(DB, ()))
    return by_category, texts, error, total_ns, longest_ns, has_cached


def count_by_fingerprint(groups: StatementGroups) -> dict[str, int]:
    """Round trips per statement fingerprint, whatever the service: the reference of the compiled
    ``fingerprint_counts`` (csrc/traceindex.c), and the fallback for groups it declines."""
    counts: dict[str, int] = {}
    for (_, fingerprint), (_, spans) in groups.items():
        counts[fingerprint] = counts.get(fingerprint, 0) + len(spans)
    return counts


class TraceSummary:
    """Spans by category with their count, summed and longest duration, whether any span failed,
    and the trace's DB round trips (not cached) by service and statement text.

    ``compiled`` is otel_apm._native or None (otel_apm.native): whether the spans are indexed
    and their statements regrouped by the compiled twins or by Python; the detectors' own
    compiled steps (the per-parent statement sequence) follow it."""

    __slots__ = (
        "_fingerprints",
        "_has_cached",
        "_round_trips",
        "_trace",
        "by_category",
        "compiled",
        "error",
        "longest_ns",
        "root_ms",
        "statements",
        "total_ns",
    )

    def __init__(self, trace: Trace, compiled: ModuleType | None = None) -> None:
        index: TraceIndex | None = None if compiled is None else compiled.index_trace(trace)
        (self.by_category, texts, self.error, self.total_ns, self.longest_ns, self._has_cached) = (
            index or index_trace(trace)
        )
        self.root_ms = None if trace.root is None else trace.root.duration_ms
        # A cache hit is served without a round trip: not an execution of the statement.  Most
        # traces have none, and then the trace's one grouping serves as it is.
        self.statements = texts
        if self._has_cached:
            self.statements = {}
            for key, spans in texts.items():
                trips = [s for s in spans if not s.cached]
                if trips:
                    self.statements[key] = trips
        # Weakly: the trace holds its summary (Trace.derived), and a strong reference back would
        # make every analyzed trace, with all its views, garbage that only the cycle collector
        # frees: some 66 objects a trace, which cost the collector's passes and leave the memory
        # cold where freeing by reference count hands it straight to the next trace.
        self._trace = weakref.ref(trace)
        self.compiled = compiled
        self._fingerprints: dict[str, int] | None = None
        self._round_trips: StatementGroups | None = None

    root_ms: float | None  # the root's duration, None when the trace has no root

    @classmethod
    def of(cls, trace: Trace, compiled: ModuleType | None = None) -> TraceSummary:
        """The trace's summary, made once however many callers ask (the first one's
        ``compiled`` decides how)."""
        return trace.derived("summary", lambda: cls(trace, compiled))

    def count(self, category: str) -> int:
        return len(self.by_category.get(category, ()))

    def fingerprint_counts(self) -> dict[str, int]:
        """DB round trips per statement fingerprint over the whole trace: no parent holds more
        of one shape than this.  Counted from :meth:`round_trips`, which the outlier detector,
        the statistics and the metrics read too."""
        if self._fingerprints is None:
            groups = self.round_trips()
            counted = None if self.compiled is None else self.compiled.fingerprint_counts(groups)
            self._fingerprints = count_by_fingerprint(groups) if counted is None else counted
        return self._fingerprints

    def round_trips(self) -> StatementGroups:
        """The DB round trips (not cached) by (service, statement fingerprint), made once: the
        trace's :func:`statements_of` itself when no span was a cache hit."""
        if self._round_trips is None:
            regroup = by_fingerprint if self.compiled is None else self.compiled.by_fingerprint
            self._round_trips = (
                regroup(self.statements) if self._has_cached else statements_of(self._live_trace(), regroup)
            )
        return self._round_trips

    def _live_trace(self) -> Trace:
        trace = self._trace()
        if trace is None:  # the summary was kept past its trace: a caller's mistake, said plainly
            raise ReferenceError("TraceSummary.round_trips() called after its trace was freed")
        return trace

    def texts(self) -> dict[str, list[SpanView]]:
        """DB round trips by statement text, whatever their service.  Read only: a text that
        one service sent is filed with the summary's own list of its spans, not a copy."""
        out: dict[str, list[SpanView]] = {}
        for (_, text), spans in self.statements.items():
            if text:
                group = out.get(text)
                out[text] = spans if group is None else group + spans
        return out

    def most_repeated(self) -> int:
        """The most round trips of one statement shape."""
        return max(self.fingerprint_counts().values(), default=0)

    def shapes_repeated(self, times: int) -> int:
        """How many statement shapes ran at least ``times`` times."""
        return len([n for n in self.fingerprint_counts().values() if n >= times])

    def largest_body(self, categories: tuple[str, ...]) -> int:
        """The largest HTTP request or response body recorded on spans of ``categories``."""
        largest = 0
        for category in categories:
            for s in self.by_category.get(category, ()):
                for size in (s.request_size, s.response_size):
                    if size is not None and size > largest:
                        largest = size
        return largest

    def saving_bound_ns(self, category: str) -> int:
        """What running a category's spans concurrently could give back at most: their summed
        time less the longest.  Siblings of any one parent can give back no more."""
        return self.total_ns.get(category, 0) - self.longest_ns.get(category, 0)
