"""Run the enabled detectors over a Trace in one pass, contain their failures, rank findings."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from inspect import getattr_static

from otel_apm.config import APMConfig, ConfigError
from otel_apm.contain import FailureLog
from otel_apm.detectors import DEFAULT_DETECTORS, Detector, Finding
from otel_apm.detectors.history import History
from otel_apm.detectors.summary import TraceSummary
from otel_apm.model import Trace
from otel_apm.native import native

_log = logging.getLogger(__name__)
_NO_SKIP = getattr_static(Detector, "on_skip")


def check_detector_names(config: APMConfig, detectors: Sequence[type[Detector]] = DEFAULT_DETECTORS) -> None:
    """A misspelt name in APM_DISABLED_DETECTORS would leave the detector on, unnoticed."""
    known = {d.type for d in detectors}
    unknown = sorted(set(config.disabled_detectors) - known)
    if unknown:
        raise ConfigError(
            f"APM_DISABLED_DETECTORS: unknown detector(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )


class Analyzer:
    """Shared by the in-process processor and the collector.

    Per-trace state lives in the detector instances; what outlives a trace (recent query
    durations, how often each finding recurs) lives in ``history``, bounded.
    """

    def __init__(self, config: APMConfig, detectors: Sequence[type[Detector]] = DEFAULT_DETECTORS) -> None:
        check_detector_names(config, detectors)
        self.config = config
        self.detectors = tuple(
            d for d in detectors if d.type not in config.disabled_detectors and d.enabled(config)
        )
        self._native = native(config.native_enabled)
        self.history = History(self._native)
        self.failures = FailureLog(_log)
        self.suppressed = 0
        self._lock = threading.Lock()
        # What analyze() asks of each detector class, looked up once rather than per trace: its
        # can_fire, its on_skip (None when it keeps the base class's, which does nothing), the
        # categories it visits.  Most traces end at the can_fire calls, so they are the loop.
        self._plan = tuple(
            (
                cls,
                cls.can_fire,
                None if getattr_static(cls, "on_skip") is _NO_SKIP else cls.on_skip,
                tuple(cls.categories),
            )
            for cls in self.detectors
        )

    def analyze(self, trace: Trace) -> list[Finding]:
        """Findings, costliest first.  A failing detector is skipped for this trace; others run.

        The trace is summarized once (spans by category, totals); a detector whose
        ``can_fire`` rules the trace out is not built at all.  Each other detector then visits
        the spans it asked for in a tight loop, in arrival order, which costs a third of
        dispatching span by span.
        """
        summary = TraceSummary.of(trace, self._native)
        by_category = summary.by_category
        findings: list[Finding] = []
        deferred: list[Finding] = []
        config, history = self.config, self.history
        for cls, can_fire, on_skip, categories in self._plan:
            try:
                if not can_fire(config, summary):
                    if on_skip is not None:
                        on_skip(config, summary, history)
                    continue
                detector = cls(config, trace, history)
                for category in categories:
                    visit = detector.visit_span
                    for span in by_category.get(category, ()):
                        visit(span)
                (deferred if cls.defers_to_others else findings).extend(detector.on_complete())
            except Exception as exc:
                self.failures.record(f"detector {cls.type}", exc)
        if deferred:
            named = {span_id for f in findings for span_id in f.span_ids}
            findings.extend(f for f in deferred if not named.issuperset(f.span_ids))
        if not findings:
            return findings
        return self._rank(self.unsuppressed(findings))

    def unsuppressed(self, findings: list[Finding]) -> list[Finding]:
        """The findings no suppression rule matches, counting the others; public because the
        processor filters findings about the process (memory, CPU) with the same rules."""
        rules = self.config.suppressions
        if not rules:
            return findings
        kept = [
            f
            for f in findings
            if not any(r.matches(f.type, f.endpoint, f.statement, f.code_location) for r in rules)
        ]
        if len(kept) < len(findings):
            with self._lock:
                self.suppressed += len(findings) - len(kept)
        return kept

    def _rank(self, findings: list[Finding]) -> list[Finding]:
        """Each finding with its recurrence rate, sorted by time lost per minute, then severity.

        The rate is written into the findings themselves rather than into copies
        (:meth:`Finding.rated`, some 9,000 instructions a finding): they are the ones the
        detectors made for this call (:meth:`Detector.finding`), which nothing else holds yet
        and which no attributes were derived from."""
        observe = self.history.findings.observe
        for f in findings:
            vars(f)["rate_per_min"] = round(observe(f.fingerprint), 4)
        if len(findings) > 1:
            findings.sort(key=_rank_key, reverse=True)
        return findings


def _rank_key(f: Finding) -> tuple[float, int, float]:
    return (f.impact_score, f.severity_rank, f.total_duration_ms)
