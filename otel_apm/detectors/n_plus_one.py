"""N+1 queries: the same statement shape run again and again under one parent span.

The ORM shape of it: one query loads N rows (the "1", the source), then touching a lazy
relationship on each row runs one more query per row.  All of them are children of the same
request or function span, so grouping DB children by parent and shape finds the loop without
any knowledge of the ORM.
"""

from __future__ import annotations

from otel_apm.detectors.base import (
    EvidenceValue,
    Finding,
    SiblingsDetector,
    by_start,
    severity_for,
    union_ms,
)
from otel_apm.detectors.dbshape import db_shape
from otel_apm.model import DB, SpanView
from otel_apm.sql import SqlShape


class NPlusOneQueryDetector(SiblingsDetector):
    """APM_N_PLUS_ONE_THRESHOLD or more DB spans with one fingerprint under one parent."""

    type = "n_plus_one_query"
    categories = frozenset({DB})

    def on_complete(self) -> list[Finding]:
        threshold = self.config.n_plus_one_threshold
        findings = []
        for siblings in self.sibling_groups(threshold):
            siblings.sort(key=by_start)
            # Parse each distinct text once: an ORM's placeholders make the repeats identical.
            by_text: dict[str | None, SqlShape] = {}
            shapes = []
            for s in siblings:
                shape = by_text.get(s.statement)
                if shape is None or s.statement is None:
                    shape = by_text[s.statement] = db_shape(s)
                shapes.append(shape)
            groups: dict[str, list[int]] = {}
            for i, shape in enumerate(shapes):
                groups.setdefault(shape.fingerprint, []).append(i)
            for indexes in groups.values():
                if len(indexes) >= threshold:
                    findings.append(self._finding(siblings, shapes, indexes))
        return findings

    def _finding(self, siblings: list[SpanView], shapes: list[SqlShape], indexes: list[int]) -> Finding:
        repeated = [siblings[i] for i in indexes]
        shape = shapes[indexes[0]]
        source_index = _source(siblings, shapes, indexes[0])
        source = shapes[source_index] if source_index is not None else None
        count = len(repeated)
        total = union_ms(repeated)
        table = ", ".join(shape.tables) or "the table"
        evidence: dict[str, EvidenceValue] = {
            "threshold": self.config.n_plus_one_threshold,
            "db.system": repeated[0].db_system or "",
            "db.tables": shape.tables,
            "statement.fingerprint": shape.fingerprint,
        }
        if source is not None and source_index is not None:
            evidence["source.statement"] = source.normalized
            evidence["source.span_id"] = format(siblings[source_index].span_id, "016x")
        return self.finding(
            title=f"N+1 queries: {count} x {shape.operation or 'query'} on {table} ({total:.1f} ms)",
            severity=severity_for(count, self.config.n_plus_one_threshold, self.config.critical_factor),
            identity=(shape.fingerprint,),
            per_endpoint=True,
            spans=repeated,
            total_duration_ms=total,
            impact_ms=total - total / count,
            recommendation=_recommend(shape, source, count, total),
            statement=shape.normalized,
            evidence=evidence,
        )


def _source(siblings: list[SpanView], shapes: list[SqlShape], first: int) -> int | None:
    """The "1": the last sibling query of another shape that ran before the loop began."""
    loop_start = siblings[first].start_ns
    fingerprint = shapes[first].fingerprint
    for i in range(first - 1, -1, -1):
        if shapes[i].fingerprint != fingerprint and siblings[i].end_ns <= loop_start:
            return i
    return None


def _recommend(shape: SqlShape, source: SqlShape | None, count: int, total_ms: float) -> str:
    table = ", ".join(shape.tables) or "the related table"
    after = f" after `{source.normalized[:120]}`" if source is not None else ""
    return (
        f"{count} queries on {table}, one per row{after}, cost {total_ms:.1f} ms in round trips. "
        f"Load them in one query: eager-load the relationship (SQLAlchemy selectinload()/"
        f"joinedload(), Django prefetch_related()/select_related()), or fetch all rows at once "
        f"with WHERE ... IN (...) and group them in code."
    )
