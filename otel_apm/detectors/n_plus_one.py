"""N+1 queries: the same statement shape run again and again, back to back, under one parent span.

The ORM shape of it: one query loads N rows (the "1", the source), then touching a lazy
relationship on each row runs one more query per row.  All of them are children of the same
request or function span, one after the other, so runs of one shape among a parent's DB children
find the loop without any knowledge of the ORM.

Two other detectors claim some of these runs, and the better advice wins: a run inside a repeated
sequence of statements is part of an MN+1, and a run of the very same values is a repeated
identical query (cache it or hoist it out of the loop; eager loading does not apply).
"""

from __future__ import annotations

from itertools import chain

from otel_apm.config import APMConfig
from otel_apm.detectors.advice import eager_loading, guess_relation, stack_of
from otel_apm.detectors.base import EvidenceValue, Finding, SiblingsDetector, severity_for, union_ms
from otel_apm.detectors.loops import db_sequence, is_intentional, source_index
from otel_apm.detectors.mn_plus_one import MNPlusOneQueryDetector, repetitions
from otel_apm.detectors.repeated_query import RepeatedIdenticalQueryDetector, identical_key
from otel_apm.detectors.summary import TraceSummary
from otel_apm.model import DB, SpanView
from otel_apm.sql import SqlShape

Run = tuple[int, int]  # [start, end) indexes into the parent's DB sequence


class NPlusOneQueryDetector(SiblingsDetector):
    """A run of APM_N_PLUS_ONE_THRESHOLD or more consecutive DB siblings with one fingerprint."""

    type = "n_plus_one_query"
    sibling_category = DB

    @classmethod
    def can_fire(cls, config: APMConfig, summary: TraceSummary) -> bool:
        return summary.most_repeated() >= config.n_plus_one_threshold

    def on_complete(self) -> list[Finding]:
        threshold = self.config.n_plus_one_threshold
        min_ms = self.config.n_plus_one_min_duration_ms
        findings = []
        for siblings in self.sibling_groups(threshold):
            spans, shapes = db_sequence(self.trace, siblings)
            # Runs of one parent with one fingerprint are one finding: one loop, one line to fix.
            # fingerprint -> its runs, each with the wall time it covers (measured once, used thrice)
            runs: dict[str, list[tuple[Run, float]]] = {}
            start = 0
            n = len(shapes)
            for i in range(1, n + 1):
                if i == n or shapes[i].fingerprint != shapes[start].fingerprint:
                    if i - start >= threshold and not is_intentional(shapes[start]):
                        covered = union_ms(spans[start:i])
                        if covered >= min_ms:
                            runs.setdefault(shapes[start].fingerprint, []).append(((start, i), covered))
                    start = i
            if not runs:
                continue
            loops = self._mn_plus_one_loops(shapes)
            for found in runs.values():
                kept = [r for r in found if not self._claimed_elsewhere(spans, shapes, r[0], loops)]
                if kept:
                    findings.append(self._finding(spans, shapes, kept))
        return findings

    def _mn_plus_one_loops(self, shapes: list[SqlShape]) -> list[Run]:
        """Where the MN+1 detector, when on, reports a repeated sequence in this parent."""
        if MNPlusOneQueryDetector.type in self.config.disabled_detectors:
            return []
        fingerprints = [shape.fingerprint for shape in shapes]
        threshold = self.config.mn_plus_one_threshold
        compiled = TraceSummary.of(self.trace).compiled
        return [
            (first, first + period * reps)
            for first, period, reps in repetitions(fingerprints, threshold, compiled)
        ]

    def _claimed_elsewhere(
        self, spans: list[SpanView], shapes: list[SqlShape], run: Run, loops: list[Run]
    ) -> bool:
        """The run is reported by the MN+1 or the repeated-query detector, when they are on."""
        start, end = run
        if any(first <= start and end <= last for first, last in loops):
            return True
        if RepeatedIdenticalQueryDetector.type not in self.config.disabled_detectors:
            key = identical_key(spans[start], shapes[start])
            if key is not None and all(
                identical_key(spans[i], shapes[i]) == key for i in range(start + 1, end)
            ):
                same = sum(
                    1
                    for s in chain.from_iterable(self.by_parent.values())
                    if not s.cached and (s.statement, s.db_params) == key
                )
                return same >= self.config.repeated_query_threshold
        return False

    def _finding(
        self, spans: list[SpanView], shapes: list[SqlShape], runs: list[tuple[Run, float]]
    ) -> Finding:
        repeated = [spans[i] for (start, end), _ in runs for i in range(start, end)]
        first = runs[0][0][0]
        shape = shapes[first]
        source_at = source_index(spans, shapes, first, (shape.fingerprint,))
        source = None if source_at is None else shapes[source_at]
        count = len(repeated)
        total = union_ms(repeated) if len(runs) > 1 else runs[0][1]  # one run: already measured
        # Eager loading leaves one query per loop: the union of each run less its average query.
        impact = 0.0
        for (start, end), covered in runs:  # each span's duration_ms, without its property call
            impact += covered - sum([(s.end_ns - s.start_ns) / 1e6 for s in spans[start:end]]) / (end - start)
        threshold = self.config.n_plus_one_threshold
        evidence: dict[str, EvidenceValue] = {
            "threshold": threshold,
            "db.system": repeated[0].db_system or "",
            "db.tables": shape.tables,
            "statement.fingerprint": shape.fingerprint,
        }
        if len(runs) > 1:
            evidence["runs"] = len(runs)
        if source is not None and source_at is not None:
            evidence["source.statement"] = source.normalized
            evidence["source.span_id"] = format(spans[source_at].span_id, "016x")
        table = ", ".join(shape.tables) or "the table"
        after = f", one per row of `{source.normalized[:120]}`," if source is not None else ""
        relation = guess_relation(source, shape)
        fix = eager_loading(
            stack_of(self.trace, repeated),
            () if relation is None else (relation,),
            ", ".join(source.tables) if source is not None and source.tables else "the rows",
        )
        took = f"{total:.1f}"  # formatted once for the title and the recommendation (dtoa)
        return self.finding(
            title=f"N+1 queries: {count} x {shape.operation or 'query'} on {table} ({took} ms)",
            severity=severity_for(count, threshold, self.config.critical_factor),
            identity=(shape.fingerprint,),
            per_endpoint=True,
            spans=repeated,
            total_duration_ms=total,
            impact_ms=impact,
            recommendation=(
                f"{count} queries on {table}{after} took {took} ms; loading them in one query "
                f"would save about {impact:.1f} ms per request. {fix}"
            ),
            statement=shape.normalized,
            evidence=evidence,
        )
