"""MN+1 queries: a loop whose body runs several statements, repeated back to back under one parent.

For each author, load the books, then the reviews: ``A B A B A B ...``.  No shape runs twice in
a row, so the N+1 detector sees only runs of one; the loop is the period ``(A, B)`` repeating.
Over the same per-parent sequence the N+1 detector walks, the shortest period of 2..8 statements
(at least two distinct shapes) that repeats APM_MN_PLUS_ONE_THRESHOLD times or more is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

from otel_apm.config import APMConfig
from otel_apm.detectors.advice import Relation, eager_loading, guess_relation, stack_of
from otel_apm.detectors.base import EvidenceValue, Finding, SiblingsDetector, severity_for, union_ms
from otel_apm.detectors.loops import db_sequence, source_index
from otel_apm.detectors.summary import TraceSummary
from otel_apm.model import DB, SpanView
from otel_apm.sql import SqlShape

# The definition's bounds, not a tunable: a period of one is an N+1; past eight statements a
# "loop body" is more likely a request's ordinary sequence than a loop.
MIN_PERIOD = 2
MAX_PERIOD = 8


def repetitions(
    fingerprints: Sequence[str], threshold: int, compiled: ModuleType | None = None
) -> list[tuple[int, int, int]]:
    """``(start, period, repetitions)`` of every stretch where a period of 2..8 fingerprints with
    at least two distinct ones repeats ``threshold`` times or more back to back; left to right,
    not overlapping, the shortest period at each start.  Linear in practice: each start tries at
    most seven periods, and a period is extended only while it keeps matching.

    ``compiled`` (the trace summary's) has a twin of it (csrc/traceindex.c) that numbers the
    fingerprints once and compares numbers; this stays the reference and the fallback.
    """
    made: list[tuple[int, int, int]] | None = (
        None if compiled is None else compiled.repetitions(fingerprints, threshold)
    )
    if made is not None:
        return made
    n = len(fingerprints)
    # Every fingerprint of a period occurs at least ``threshold`` times: most sequences have
    # fewer than two such, and those that do are scanned only from where one stands.
    counts: dict[str, int] = {}
    for f in fingerprints:
        counts[f] = counts.get(f, 0) + 1
    frequent = {f for f, count in counts.items() if count >= threshold}
    if len(frequent) < 2:
        return []
    # other[i]: the first index after i with another fingerprint (n when none), so a period
    # starting at i has two distinct fingerprints iff other[i] < i + period.
    other = [n] * n
    for i in range(n - 2, -1, -1):
        other[i] = i + 1 if fingerprints[i + 1] != fingerprints[i] else other[i + 1]
    found = []
    i = 0
    while i + MIN_PERIOD * threshold <= n:
        hit = _repeat_at(fingerprints, other, i, threshold) if fingerprints[i] in frequent else None
        if hit is None:
            i += 1
        else:
            found.append(hit)
            i += hit[1] * hit[2]
    return found


def _repeat_at(
    fingerprints: Sequence[str], other: list[int], i: int, threshold: int
) -> tuple[int, int, int] | None:
    n = len(fingerprints)
    for period in range(max(MIN_PERIOD, other[i] - i + 1), MAX_PERIOD + 1):
        if i + period * threshold > n:
            return None
        end = i + period
        while end < n and fingerprints[end] == fingerprints[end - period]:
            end += 1
        reps = (end - i) // period
        if reps >= threshold:
            return i, period, reps
    return None


class MNPlusOneQueryDetector(SiblingsDetector):
    """A sequence of 2..8 DB statements repeated APM_MN_PLUS_ONE_THRESHOLD times under one parent."""

    type = "mn_plus_one_query"
    sibling_category = DB

    @classmethod
    def can_fire(cls, config: APMConfig, summary: TraceSummary) -> bool:
        """A loop body has at least two shapes, each run once per repetition."""
        return summary.shapes_repeated(config.mn_plus_one_threshold) >= MIN_PERIOD

    def on_complete(self) -> list[Finding]:
        threshold = self.config.mn_plus_one_threshold
        findings = []
        summary = TraceSummary.of(self.trace)
        for siblings in self.sibling_groups(MIN_PERIOD * threshold):
            spans, shapes = db_sequence(self.trace, siblings)
            fingerprints = [shape.fingerprint for shape in shapes]
            for start, period, reps in repetitions(fingerprints, threshold, summary.compiled):
                findings.append(self._finding(spans, shapes, start, period, reps))
        return findings

    def _finding(
        self, spans: list[SpanView], shapes: list[SqlShape], start: int, period: int, reps: int
    ) -> Finding:
        body = shapes[start : start + period]
        loop = spans[start : start + period * reps]
        fingerprints = tuple(shape.fingerprint for shape in body)
        source_at = source_index(spans, shapes, start, fingerprints)
        source = None if source_at is None else shapes[source_at]
        tables = tuple(dict.fromkeys(t for shape in body for t in shape.tables))
        count = len(loop)
        total = union_ms(loop)
        impact = total - total / reps  # the loop's union less one period
        threshold = self.config.mn_plus_one_threshold
        evidence: dict[str, EvidenceValue] = {
            "threshold": threshold,
            "repetitions": reps,
            "period": period,
            "period.statements": tuple(shape.normalized for shape in body),
            "statement.fingerprints": fingerprints,
            "db.system": loop[0].db_system or "",
            "db.tables": tables,
        }
        if source is not None and source_at is not None:
            evidence["source.statement"] = source.normalized
            evidence["source.span_id"] = format(spans[source_at].span_id, "016x")
        relations: list[Relation] = []
        for shape in body:
            relation = guess_relation(source, shape)
            if relation is not None and relation not in relations:
                relations.append(relation)
        fix = eager_loading(
            stack_of(self.trace, loop),
            tuple(relations),
            ", ".join(source.tables) if source is not None and source.tables else "the rows",
        )
        on = ", ".join(tables) or "the same tables"
        after = f", once per row of `{source.normalized[:120]}`," if source is not None else ""
        return self.finding(
            title=f"MN+1 queries: {period} statements x {reps} on {on} ({total:.1f} ms)",
            severity=severity_for(reps, threshold, self.config.critical_factor),
            # Where the loop is entered must not change the name: the smallest rotation of the body.
            identity=min(fingerprints[k:] + fingerprints[:k] for k in range(period)),
            per_endpoint=True,
            spans=loop,
            total_duration_ms=total,
            impact_ms=impact,
            recommendation=(
                f"The same {period} queries on {on} ran {reps} times in a row{after} {count} queries "
                f"in {total:.1f} ms; loading them up front would save about {impact:.1f} ms per "
                f"request. {fix}"
            ),
            statement="; ".join(shape.normalized for shape in body),
            evidence=evidence,
        )
