"""Slow request: a local root (the transaction) at or over APM_SLOW_REQUEST_THRESHOLD_MS."""

from __future__ import annotations

from otel_apm.config import APMConfig
from otel_apm.detectors.base import Detector, EvidenceValue, Finding, severity_for
from otel_apm.detectors.summary import TraceSummary


class SlowRequestDetector(Detector):
    """Reads only the root and, when it is slow, the trace's time breakdown: no per-span cost."""

    type = "slow_request"

    @classmethod
    def can_fire(cls, config: APMConfig, summary: TraceSummary) -> bool:
        return summary.root_ms is not None and summary.root_ms >= config.slow_request_threshold_ms

    def on_complete(self) -> list[Finding]:
        trace = self.trace
        root = trace.root
        threshold = self.config.slow_request_threshold_ms
        if root is None or root.duration_ms < threshold:
            return []
        ms = root.duration_ms
        breakdown = trace.breakdown()
        evidence: dict[str, EvidenceValue] = {"threshold_ms": threshold}
        for category, (count, spent) in sorted(breakdown.items()):
            evidence[f"{category}.count"] = count
            evidence[f"{category}.duration_ms"] = round(spent, 3)
        return [
            self.finding(
                title=f"Slow request {trace.endpoint}: {ms:.0f} ms (threshold {threshold:g} ms)",
                severity=severity_for(ms, threshold, self.config.critical_factor),
                identity=(),
                per_endpoint=True,
                spans=[root],
                total_duration_ms=ms,
                impact_ms=ms - threshold,
                recommendation=_recommend(ms, breakdown),
                evidence=evidence,
            )
        ]


def _recommend(total_ms: float, breakdown: dict[str, tuple[int, float]]) -> str:
    """Point at where the time went: the seed's dbQueries/dbTime/externalCalls, as advice."""
    db_count, db_ms = breakdown.get("db", (0, 0.0))
    http_count, http_ms = breakdown.get("http.client", (0, 0.0))
    if db_ms >= total_ms / 2:
        return (
            f"{db_ms:.0f} of {total_ms:.0f} ms went to {db_count} database queries: fix the slow "
            "and repeated queries reported for this trace, batch them, or cache their results."
        )
    if http_ms >= total_ms / 2:
        return (
            f"{http_ms:.0f} of {total_ms:.0f} ms went to {http_count} outgoing HTTP calls: run "
            "independent calls concurrently, batch them, cache them, or set tighter timeouts."
        )
    return (
        f"Database ({db_ms:.0f} ms) and HTTP calls ({http_ms:.0f} ms) explain little of "
        f"{total_ms:.0f} ms: the time is in application code; profile this endpoint."
    )
