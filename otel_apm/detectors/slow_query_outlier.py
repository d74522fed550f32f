"""Slow query outlier: a statement far slower than it usually is, though under the absolute threshold.

A 60 ms query is not slow by APM_SLOW_QUERY_THRESHOLD_MS, but it is when the same statement
usually answers in 5 ms: what changed is not the statement but its circumstances (a lock wait,
a plan flip for skewed parameter values, a cold cache, a saturated pool).  Only the past can
tell, so this detector judges each DB span against the recent p95 of its (service, statement
fingerprint) in ``history.queries``.

It is also the one writer of that history: after judging the trace (so a trace is never
compared with itself) it records every DB span's duration, one batch per fingerprint.  The
slow_query detector only reads it; with this detector disabled nothing is recorded, and slow
queries lose their ``recent_p95_ms`` evidence.
"""

from __future__ import annotations

from otel_apm.config import APMConfig
from otel_apm.detectors.base import Detector, Finding, severity_for
from otel_apm.detectors.history import History
from otel_apm.detectors.summary import TraceSummary
from otel_apm.model import DB, SpanView
from otel_apm.sql import SqlShape


class SlowQueryOutlierDetector(Detector):
    """DB spans >= FACTOR x their statement's recent p95 and >= MIN_MS, below the slow_query threshold."""

    type = "slow_query_outlier"
    # No categories: the trace summary already files the DB round trips by statement text.

    @classmethod
    def can_fire(cls, config: APMConfig, summary: TraceSummary) -> bool:
        """Only a span of at least MIN_MS can be an outlier: most traces have none."""
        return summary.longest_ns.get(DB, 0) / 1e6 >= config.slow_query_outlier_min_ms

    @classmethod
    def on_skip(cls, config: APMConfig, summary: TraceSummary, history: History) -> None:
        """No outlier here, but every duration still goes into the history, as later traces
        are judged against it."""
        history.queries.add_trips(summary.round_trips())

    def on_complete(self) -> list[Finding]:
        by_key = TraceSummary.of(self.trace).round_trips()
        config = self.config
        queries = self.history.queries
        min_ms = config.slow_query_outlier_min_ms
        findings = []
        for key, (shape, spans) in by_key.items():
            durations = [(s.end_ns - s.start_ns) / 1e6 for s in spans]
            # Only a span of at least MIN_MS can be an outlier: most traces have none, and then
            # the p95 (a sort, now and then) is never asked for.
            if max(durations) >= min_ms:
                p95 = queries.p95(key, config.slow_query_outlier_min_samples)
                if p95 is not None:
                    floor = max(config.slow_query_outlier_factor * p95, min_ms)
                    slow = config.slow_query_threshold_ms
                    outliers = [s for s, d in zip(spans, durations, strict=True) if floor <= d < slow]
                    if outliers:
                        findings.append(self._finding(shape, outliers, p95))
        queries.add_trips(by_key)  # after every p95 read: a trace is never compared with itself
        return findings

    def _finding(self, shape: SqlShape, outliers: list[SpanView], p95: float) -> Finding:
        config = self.config
        worst = max(outliers, key=lambda s: s.end_ns - s.start_ns)
        ms = worst.duration_ms
        ratio = ms / p95 if p95 > 0 else float("inf")
        shown_ratio = f"{ratio:.1f}x" if p95 > 0 else "far over"
        lost = sum(s.duration_ms - p95 for s in outliers)
        total = sum(s.duration_ms for s in outliers)
        what = f"{shape.operation or 'query'} on {', '.join(shape.tables)}" if shape.tables else "query"
        count = len(outliers)
        runs = f"{count} executions" if count > 1 else "it"
        return self.finding(
            title=f"Slow for itself: {what} took {ms:.1f} ms, {shown_ratio} its recent p95 of {_ms(p95)} ms",
            severity=severity_for(ms, config.slow_query_outlier_factor * p95, config.critical_factor),
            identity=(shape.fingerprint,),
            per_endpoint=False,
            spans=outliers,
            total_duration_ms=total,
            impact_ms=lost,
            recommendation=(
                f"This statement usually takes at most {_ms(p95)} ms (p95 of its recent executions) "
                f"but took {ms:.1f} ms here ({shown_ratio}); {runs} lost {lost:.1f} ms over its usual "
                f"time. The statement is not the problem, its circumstances were: look for lock "
                f"waits (PostgreSQL pg_locks / pg_stat_activity.wait_event, MySQL SHOW ENGINE "
                f"INNODB STATUS), a plan that changes with these parameter values (EXPLAIN ANALYZE "
                f"with them), a cold cache after a deploy or bulk load, or waits for a pooled "
                f"connection."
            ),
            statement=shape.normalized,
            evidence={
                "recent_p95_ms": round(p95, 3),
                "factor": config.slow_query_outlier_factor,
                "min_ms": config.slow_query_outlier_min_ms,
                "db.system": worst.db_system or "",
                "db.operation": shape.operation,
                "db.tables": shape.tables,
                "statement.fingerprint": shape.fingerprint,
            },
        )


def _ms(value: float) -> str:
    """Sub-millisecond p95s (a point lookup in a warm cache) keep two significant decimals."""
    return f"{value:.1f}" if value >= 1 else f"{value:.2g}"
