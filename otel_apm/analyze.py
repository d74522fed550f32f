"""Run the enabled detectors over a Trace in one pass, contain their failures, rank findings."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from otel_apm.config import APMConfig
from otel_apm.contain import FailureLog
from otel_apm.detectors import DEFAULT_DETECTORS, Detector, Finding
from otel_apm.model import SpanView, Trace

_log = logging.getLogger(__name__)


class Analyzer:
    """Shared by the in-process processor and the collector; holds no per-trace state."""

    def __init__(self, config: APMConfig, detectors: Sequence[type[Detector]] = DEFAULT_DETECTORS) -> None:
        self.config = config
        self.detectors = tuple(d for d in detectors if d.enabled(config))
        self.failures = FailureLog(_log)

    def analyze(self, trace: Trace) -> list[Finding]:
        """Findings worst first.  A failing detector is skipped for this trace; others still run.

        Spans are sorted by category once; each detector then visits the spans it asked for in
        a tight loop, in arrival order, which costs a third of dispatching span by span.
        """
        by_category: dict[str, list[SpanView]] = {}
        for span in trace.spans:
            group = by_category.get(span.category)
            if group is None:
                by_category[span.category] = [span]
            else:
                group.append(span)
        findings: list[Finding] = []
        for cls in self.detectors:
            detector = cls(self.config, trace)
            try:
                for category in cls.categories:
                    visit = detector.visit_span
                    for span in by_category.get(category, ()):
                        visit(span)
                findings.extend(detector.on_complete())
            except Exception as exc:
                self.failures.record(f"detector {cls.type}", exc)
        if len(findings) > 1:
            findings.sort(key=lambda f: (f.severity_rank, f.total_duration_ms), reverse=True)
        return findings
