"""Run the enabled detectors over a Trace in one pass, contain their failures, rank findings."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from otel_apm.config import APMConfig
from otel_apm.detectors import DEFAULT_DETECTORS, Detector, Finding
from otel_apm.model import Trace

_log = logging.getLogger(__name__)


class Analyzer:
    """Shared by the in-process processor and the collector; holds no per-trace state."""

    def __init__(self, config: APMConfig, detectors: Sequence[type[Detector]] = DEFAULT_DETECTORS) -> None:
        self.config = config
        self.detectors = tuple(d for d in detectors if d.enabled(config))
        # category -> indexes of the detectors that visit it, so each span costs one dict lookup
        # plus the calls that matter.
        dispatch: dict[str, list[int]] = {}
        for i, d in enumerate(self.detectors):
            for category in d.categories:
                dispatch.setdefault(category, []).append(i)
        self._dispatch = {k: tuple(v) for k, v in dispatch.items()}
        self.errors = 0
        self._logged: set[tuple[str, str]] = set()

    def analyze(self, trace: Trace) -> list[Finding]:
        """Findings worst first.  A failing detector is skipped for this trace; others still run."""
        instances: list[Detector | None] = [d(self.config, trace) for d in self.detectors]
        dispatch = self._dispatch
        for span in trace.spans:
            for i in dispatch.get(span.category, ()):
                detector = instances[i]
                if detector is not None:
                    try:
                        detector.visit_span(span)
                    except Exception as exc:
                        instances[i] = None
                        self._failed(detector, exc)
        findings: list[Finding] = []
        for detector in instances:
            if detector is not None:
                try:
                    findings.extend(detector.on_complete())
                except Exception as exc:
                    self._failed(detector, exc)
        findings.sort(key=lambda f: (f.severity_rank, f.total_duration_ms), reverse=True)
        return findings

    def _failed(self, detector: Detector, exc: Exception) -> None:
        """Count every failure, log each kind once: a bug must not flood the app's logs."""
        self.errors += 1
        kind = (detector.type, type(exc).__name__)
        if kind not in self._logged:
            self._logged.add(kind)
            _log.warning(
                "otel-apm: detector %s failed (%s); further failures of this kind are counted silently",
                detector.type,
                exc,
                exc_info=exc,
            )
