"""The Finding every detector reports, and the Detector interface they share.

Detectors follow Sentry's performance detectors: one class per problem, fed one span at a time
in a single pass over the trace (``visit_span``), answering at the end (``on_complete``).  State
lives in the detector instance, which lives for one trace; thresholds come from the config.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from operator import attrgetter
from typing import ClassVar, Literal

from otel_apm.config import APMConfig
from otel_apm.detectors.history import History
from otel_apm.detectors.summary import TraceSummary
from otel_apm.model import SpanView, Trace, endpoint_of

Severity = Literal["warning", "critical"]
EvidenceValue = str | int | float | bool | tuple[str, ...]
# Where a Finding keeps its OTel attributes once built (otel_apm.emit.attributes).
DERIVED_ATTRIBUTES = "_otel_apm_attributes"


@dataclass(frozen=True)
class Finding:
    """One performance problem in one trace, with what proves it and what to do about it.

    ``fingerprint`` names the problem, not the occurrence: the same N+1 in another request, or
    in another process, hashes the same, so stores and reporters can group and deduplicate.
    ``statement`` is always the normalized shape: literal values never leave the analyzer.
    A finding about the process rather than one trace (memory growth, a CPU hot spot) has
    ``trace_id`` 0 and names spans only when it has some.

    Besides its fields, an instance may cache what is derived from them (its OTel attributes,
    built once for the log record and the span event alike) in its ``__dict__`` under
    ``DERIVED_ATTRIBUTES``, as ``functools.cached_property`` would: ``==``, ``replace`` and
    ``asdict`` see only the fields, and :meth:`rated` drops the cache with the old rate.
    """

    type: str
    title: str
    severity: Severity
    fingerprint: str
    service: str
    endpoint: str
    trace_id: int
    span_ids: tuple[int, ...]
    count: int
    total_duration_ms: float
    max_duration_ms: float
    recommendation: str
    services: tuple[str, ...] = ()
    statement: str | None = None
    evidence: dict[str, EvidenceValue] = field(default_factory=dict)
    impact_ms: float = 0.0
    rate_per_min: float = 0.0
    code_location: str | None = None

    def rated(self, rate_per_min: float) -> Finding:
        """A copy with ``rate_per_min`` set, for a finding that others may hold already (the
        analyzer's ranking rates the fresh findings of its own trace in place instead).
        Copying the instance dict costs a tenth of ``dataclasses.replace``, which walks the
        fields and calls ``__init__`` again (measured: about 1 µs against 10)."""
        copy = object.__new__(type(self))
        state = copy.__dict__
        state.update(self.__dict__)
        state.pop(DERIVED_ATTRIBUTES, None)
        state["rate_per_min"] = rate_per_min
        return copy

    @property
    def severity_rank(self) -> int:
        return 2 if self.severity == "critical" else 1

    @property
    def impact_score(self) -> float:
        """Milliseconds lost per minute: the time a request loses to it, times how often it
        happens here.  What every report ranks by, so the costliest problem comes first."""
        return self.impact_ms * self.rate_per_min


_set_field = object.__setattr__  # what a frozen dataclass's own __init__ sets its fields with


@lru_cache(maxsize=4096)
def make_fingerprint(*parts: str) -> str:
    """A hash that is the same in every process (unlike ``hash()``, which is salted per run).
    Cached: a problem that recurs hashes the same parts in every trace it is found in."""
    return hashlib.blake2b("\x1f".join(parts).encode("utf-8", "replace"), digest_size=8).hexdigest()


def ms_rounded(ns: int) -> float:
    """``round(ns / 1e6, 3)``, the milliseconds of a duration as a finding gives them, by integer
    arithmetic where that is exact: round() of a float formats and parses it (dtoa), some 2,400
    instructions.  Below 10**12 ns the float ns / 1e6 is within 1.2e-10 of the exact quotient,
    and unless ns ends in 500 that quotient is at least 1e-6 from a tie between two thousandths,
    so both round to the same thousandth, and ``k / 1000`` is the float nearest it, as round()
    returns; the ties and the rest go to round() itself."""
    if 0 <= ns < 1_000_000_000_000:
        micros, rest = divmod(ns, 1000)
        if rest != 500:
            return (micros + (rest > 500)) / 1000
    return round(ns / 1e6, 3)


def severity_for(measure: float, threshold: float, critical_factor: float) -> Severity:
    return "critical" if measure >= threshold * critical_factor else "warning"


by_start = attrgetter("start_ns")


def union_ms(spans: Iterable[SpanView]) -> float:
    """Wall time covered by the spans: overlapping work counts once, as a user waits for it once."""
    return covered_ms([(s.start_ns, s.end_ns) for s in spans])


# What Detector.finding reads of its spans: the first one's entry span, the trace's services,
# the spans' ids, their longest duration in ns, the first code location set.
FindingSpans = tuple[SpanView | None, tuple[str, ...], tuple[int, ...], int, str | None]


def finding_spans(trace: Trace, spans: list[SpanView]) -> FindingSpans:
    """What :meth:`Detector.finding` reads of the offending spans and their trace.

    The reference of the compiled ``finding_spans`` (csrc/traceindex.c), and the fallback for
    spans it declines: filing the trace's spans by id for the entry's walk of a step or two, and
    the set of their services, are most of what making a finding costs in Python (some 40,000
    instructions of an N+1 in a trace of 23 spans; compiled, under 3,000)."""
    code_location = None
    for s in spans:  # a loop, not next() over a generator: a generator costs 1,000 instructions
        if s.code:
            code_location = s.code
            break
    return (
        trace.entry_of(spans[0]),
        tuple(trace.services),
        tuple([s.span_id for s in spans]),
        max([s.end_ns - s.start_ns for s in spans]),
        code_location,
    )


def covered_ms(intervals: list[tuple[int, int]]) -> float:
    """Milliseconds covered by (start_ns, end_ns) intervals, each instant once."""
    total = 0
    cur_start = cur_end = -1
    for start, end in sorted(intervals):
        if start > cur_end:
            total += cur_end - cur_start
            cur_start, cur_end = start, end
        elif end > cur_end:
            cur_end = end
    total += cur_end - cur_start
    return total / 1e6


class Detector(ABC):
    """One kind of problem.  A fresh instance sees one trace.

    ``categories`` lists the span categories ``visit_span`` wants; the analyzer dispatches only
    those, so a detector that needs no spans (it reads the root) costs nothing per span.
    """

    type: ClassVar[str]
    categories: ClassVar[frozenset[str]] = frozenset()
    # A summary detector (bottleneck) whose finding adds nothing when another finding of the
    # trace already names the same spans: the analyzer drops it then.
    defers_to_others: ClassVar[bool] = False

    def __init__(self, config: APMConfig, trace: Trace, history: History) -> None:
        self.config = config
        self.trace = trace
        self.history = history

    @classmethod
    def enabled(cls, config: APMConfig) -> bool:
        return True

    @classmethod
    def can_fire(cls, config: APMConfig, summary: TraceSummary) -> bool:
        """False when the trace's totals already rule out any finding of this detector: it is
        then not built and sees no span, which is what makes a trace with no problem cheap.
        Must never be False for a trace the detector would report on; a detector without such
        a bound (the default) always runs."""
        return True

    @classmethod  # noqa: B027 - optional hook
    def on_skip(cls, config: APMConfig, summary: TraceSummary, history: History) -> None:
        """Called instead of running the detector when ``can_fire`` said no: for what it must
        remember of every trace even so (the query history)."""

    def visit_span(self, span: SpanView) -> None:  # noqa: B027 - optional hook
        """Called for each span whose category is in ``categories``, in arrival order."""

    @abstractmethod
    def on_complete(self) -> list[Finding]:
        """The findings for this trace, once every span was visited."""

    def finding(
        self,
        *,
        title: str,
        severity: Severity,
        identity: tuple[str, ...],
        per_endpoint: bool,
        spans: list[SpanView],
        total_duration_ms: float,
        impact_ms: float,
        recommendation: str,
        statement: str | None = None,
        evidence: dict[str, EvidenceValue] | None = None,
    ) -> Finding:
        """A Finding with the fields every detector fills the same way.

        ``impact_ms`` is the time per request that fixing the problem would give back; at
        APM_CRITICAL_IMPACT_MS it makes the finding critical whatever the detector's own measure.
        The code location is the first offending span's that has one.

        Service and endpoint are those of the offending spans: where the code to change runs,
        whichever service's request the trace began with, so the in-process processor and the
        collector name the same problem alike.  The fingerprint hashes the type, that service,
        the endpoint when ``per_endpoint`` (an N+1 lives in one endpoint's code; a slow
        statement is one problem wherever it runs) and the detector's ``identity``.
        """
        trace = self.trace
        config = self.config
        first = spans[0]
        compiled = TraceSummary.of(trace).compiled
        made: FindingSpans | None = None if compiled is None else compiled.finding_spans(trace.spans, spans)
        entry, services, span_ids, longest_ns, code_location = made or finding_spans(trace, spans)
        service = config.service_name or first.service or "unknown_service"
        endpoint = "unknown" if entry is None else endpoint_of(entry)
        if impact_ms >= config.critical_impact_ms:
            severity = "critical"
        fingerprint = make_fingerprint(self.type, service, endpoint if per_endpoint else "", *identity)
        # Made as the dataclass would, without its __init__, which sets each of the 18 fields
        # through object.__setattr__ (frozen): the instance dict is given whole, in field order,
        # every field in it (tests/test_detectors.py checks one against __init__).
        finding = object.__new__(Finding)
        _set_field(
            finding,
            "__dict__",
            {
                "type": self.type,
                "title": title,
                "severity": severity,
                "fingerprint": fingerprint,
                "service": service,
                "endpoint": endpoint,
                "trace_id": trace.trace_id,
                "span_ids": span_ids,
                "count": len(spans),
                "total_duration_ms": round(total_duration_ms, 3),
                "max_duration_ms": ms_rounded(longest_ns),
                "recommendation": recommendation,
                "services": services,
                "statement": statement,
                "evidence": evidence or {},
                "impact_ms": round(max(impact_ms, 0.0), 3),
                "rate_per_min": 0.0,
                "code_location": code_location,
            },
        )
        return finding


class SiblingsDetector(Detector):
    """A detector of repeated work under one parent, reading the spans of ``sibling_category``
    filed by parent span id.

    Five detectors need that filing; :meth:`Trace.siblings` makes it once per trace for all of
    them, so these detectors take no ``visit_span`` calls at all.
    """

    sibling_category: ClassVar[str]

    @property
    def by_parent(self) -> dict[int, list[SpanView]]:
        """Filed by the compiled twin when the trace's summary was made with it."""
        trace = self.trace
        return trace.siblings(self.sibling_category, TraceSummary.of(trace).compiled)

    def sibling_groups(self, threshold: int) -> Iterator[list[SpanView]]:
        """The spans of each parent that has at least ``threshold`` of them."""
        for siblings in self.by_parent.values():
            if len(siblings) >= threshold:
                yield siblings
