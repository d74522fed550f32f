"""Slow query: a DB span at or over APM_SLOW_QUERY_THRESHOLD_MS."""

from __future__ import annotations

import re

from otel_apm.config import APMConfig
from otel_apm.detectors.base import Detector, EvidenceValue, Finding, severity_for
from otel_apm.detectors.dbshape import db_shape
from otel_apm.detectors.history import History
from otel_apm.detectors.summary import TraceSummary
from otel_apm.model import DB, SpanView, Trace
from otel_apm.sql import SqlShape

# Read from the raw text only to choose advice; the raw text itself is never reported.
_LEADING_WILDCARD = re.compile(r"\blike\s+(?:n|e)?'%", re.IGNORECASE)


class SlowQueryDetector(Detector):
    """One finding per statement shape that ran slow in the trace, with every slow execution."""

    type = "slow_query"
    categories = frozenset({DB})

    @classmethod
    def can_fire(cls, config: APMConfig, summary: TraceSummary) -> bool:
        return summary.longest_ns.get(DB, 0) >= config.slow_query_threshold_ms * 1e6

    def __init__(self, config: APMConfig, trace: Trace, history: History) -> None:
        super().__init__(config, trace, history)
        self._threshold_ns = self.config.slow_query_threshold_ms * 1e6
        self._slow: list[SpanView] = []

    def visit_span(self, span: SpanView) -> None:
        if span.end_ns - span.start_ns >= self._threshold_ns:
            self._slow.append(span)

    def on_complete(self) -> list[Finding]:
        groups: dict[str, tuple[SqlShape, list[SpanView]]] = {}
        for span in self._slow:
            shape = db_shape(span)
            groups.setdefault(shape.fingerprint, (shape, []))[1].append(span)
        threshold = self.config.slow_query_threshold_ms
        min_samples = self.config.slow_query_outlier_min_samples
        findings = []
        for shape, spans in groups.values():
            worst = max(spans, key=lambda s: s.end_ns - s.start_ns)
            what = (
                f"{shape.operation or 'query'} on {', '.join(shape.tables)}"
                if shape.tables
                else (shape.operation or "query")
            )
            evidence: dict[str, EvidenceValue] = {
                "threshold_ms": threshold,
                "db.system": worst.db_system or "",
                "db.operation": shape.operation,
                "db.tables": shape.tables,
                "statement.fingerprint": shape.fingerprint,
            }
            # slow_query_outlier records durations and comes after this detector in
            # DEFAULT_DETECTORS: the p95 is of earlier executions, without this trace's.
            p95 = self.history.queries.p95((worst.service, shape.fingerprint), min_samples)
            if p95 is not None:
                evidence["recent_p95_ms"] = round(p95, 3)
            findings.append(
                self.finding(
                    title=f"Slow {what}: {worst.duration_ms:.0f} ms (threshold {threshold:g} ms)",
                    severity=severity_for(worst.duration_ms, threshold, self.config.critical_factor),
                    identity=(shape.fingerprint,),
                    per_endpoint=False,
                    spans=spans,
                    total_duration_ms=sum(s.duration_ms for s in spans),
                    impact_ms=sum(s.duration_ms for s in spans),
                    recommendation=recommend(shape, worst),
                    statement=shape.normalized,
                    evidence=evidence,
                )
            )
        return findings


def recommend(shape: SqlShape, worst: SpanView) -> str:
    """The seed's advice, read from the statement's shape, most specific first."""
    norm = shape.normalized
    tables = ", ".join(shape.tables) or "the table"
    ms = worst.duration_ms
    if worst.statement and _LEADING_WILDCARD.search(worst.statement):
        return (
            "A LIKE pattern with a leading % cannot use a B-tree index: use a trigram or "
            f"full-text index on {tables}, or anchor the pattern at the start."
        )
    if (
        shape.operation in {"SELECT", "UPDATE", "DELETE"}
        and " where " not in f" {norm} "
        and (" limit " not in f" {norm} ")
    ):
        return (
            f"The {shape.operation} has no WHERE and no LIMIT, so it reads all of {tables}: "
            "filter it, page it with LIMIT, or aggregate in the database."
        )
    if norm.startswith("select *") or " select * " in f" {norm} ":
        return f"Name only the columns needed instead of SELECT * on {tables}; wide rows cost I/O."
    if " order by " in f" {norm} ":
        return (
            f"Took {ms:.0f} ms with ORDER BY: an index on {tables} matching the WHERE and "
            "ORDER BY columns lets the database skip the sort (check with EXPLAIN ANALYZE)."
        )
    if " join " in f" {norm} ":
        return (
            f"Took {ms:.0f} ms across a JOIN: index the join columns of {tables} and check the "
            "plan with EXPLAIN ANALYZE for sequential scans."
        )
    return (
        f"Took {ms:.0f} ms: run EXPLAIN ANALYZE on it and add an index on {tables} matching "
        "its WHERE columns, or cache the result if it rarely changes."
    )
