"""Consecutive independent work: queries or HTTP calls that wait for each other for no reason.

A handler that reads the user, then the cart, then the recommendations, one round trip after
the other, is as slow as their sum although none of them needs another's result: run
concurrently they would cost about as much as the longest.  Like Sentry's consecutive DB and
HTTP detectors, this looks at siblings (one parent: one piece of code) that run strictly one
after another, keeps only work that is safe to reorder (plain reads, safe HTTP methods), and
reports what concurrency would give back.

Loops over one statement or one URL template are N+1s, the N+1 detectors' findings; their
spans end a run here, so the two never report the same spans.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

from otel_apm.config import APMConfig
from otel_apm.detectors.base import EvidenceValue, Finding, SiblingsDetector, by_start, severity_for
from otel_apm.detectors.dbshape import db_shapes
from otel_apm.detectors.n_plus_one_api import call_template
from otel_apm.detectors.summary import TraceSummary
from otel_apm.model import DB, HTTP_CLIENT, SpanView
from otel_apm.sql import SqlShape

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Reads that are not plain: they lock rows or store the result, so they belong to a transaction
# (or a session) and cannot move to another connection.  Matched on the normalized text.
# A SELECT that calls set_config() (PostgreSQL's function form of SET, which Django runs on every
# new connection) changes the session, like SET, so it is not a read either.
_NOT_PLAIN_READ = re.compile(
    r"\bfor (?:no key )?update\b|\bfor (?:key )?share\b|\bin share mode\b|\binto\b|\bset_config\s*\("
)


def could_save(siblings: list[SpanView], min_saved_ms: float) -> bool:
    """Whether some run of these siblings might save ``min_saved_ms``.

    No run saves more than the siblings' summed time less the longest one, so a parent whose
    few fast queries cannot add up is dismissed before any statement is looked at: the common
    case, kept to one loop over durations.
    """
    total = longest = 0
    for s in siblings:
        d = s.end_ns - s.start_ns
        total += d
        if d > longest:
            longest = d
    return total - longest >= min_saved_ms * 1e6


def sequential_runs(
    spans: list[SpanView], keys: list[str | None], *, distinct: bool, repeat_threshold: int
) -> Iterator[list[int]]:
    """Each maximal run, as indexes into ``spans`` (sorted by start), of >= 2 spans that each
    start once the previous one ended.

    A span whose key is None (not safe to reorder) ends the run; so does a key that occurs
    ``repeat_threshold`` times among the spans, an N+1 left to its own detector.  A span that
    overlaps its predecessor, or (when ``distinct``) repeats a key already in the run, ends the
    run and starts the next one.
    """
    counts = Counter(k for k in keys if k is not None)
    looped = {k for k, n in counts.items() if n >= repeat_threshold}
    run: list[int] = []
    seen: set[str] = set()
    for i, key in enumerate(keys):
        if key is None or key in looped:
            if len(run) >= 2:
                yield run
            run, seen = [], set()
            continue
        if run and (spans[i].start_ns < spans[run[-1]].end_ns or (distinct and key in seen)):
            if len(run) >= 2:
                yield run
            run, seen = [], set()
        run.append(i)
        seen.add(key)
    if len(run) >= 2:
        yield run


def _timing(spans: list[SpanView]) -> tuple[float, float, float, tuple[str, ...]]:
    """Sum, longest, the saving (sum less longest) and each duration as evidence, in ms."""
    durations = [s.duration_ms for s in spans]
    total = sum(durations)
    longest = max(durations)
    return total, longest, total - longest, tuple(f"{d:.3f}" for d in durations)


def _is_plain_read(shape: SqlShape) -> bool:
    return (
        shape.operation == "SELECT"
        and ";" not in shape.normalized
        and _NOT_PLAIN_READ.search(shape.normalized) is None
    )


class ConsecutiveDbQueriesDetector(SiblingsDetector):
    """Sequential plain SELECTs of distinct shapes under one parent that could run concurrently.

    Cached spans (no round trip) neither count nor end a run; writes, transaction control,
    locking reads and other statements end it.
    """

    type = "consecutive_db_queries"
    sibling_category = DB

    @classmethod
    def can_fire(cls, config: APMConfig, summary: TraceSummary) -> bool:
        return (
            summary.count(DB) >= 2 and summary.saving_bound_ns(DB) >= config.consecutive_db_min_saved_ms * 1e6
        )

    def on_complete(self) -> list[Finding]:
        min_saved = self.config.consecutive_db_min_saved_ms
        findings = []
        for siblings in self.sibling_groups(2):
            if not could_save(siblings, min_saved):
                continue
            queries = sorted((s for s in siblings if not s.cached), key=by_start)
            shapes = db_shapes(queries)
            keys = [shape.fingerprint if _is_plain_read(shape) else None for shape in shapes]
            for run in sequential_runs(
                queries, keys, distinct=True, repeat_threshold=self.config.n_plus_one_threshold
            ):
                spans = [queries[i] for i in run]
                timing = _timing(spans)
                if timing[2] >= min_saved:
                    findings.append(self._finding(spans, [shapes[i] for i in run], timing))
        return findings

    def _finding(
        self,
        spans: list[SpanView],
        shapes: list[SqlShape],
        timing: tuple[float, float, float, tuple[str, ...]],
    ) -> Finding:
        total, longest, saving, durations = timing
        min_saved = self.config.consecutive_db_min_saved_ms
        count = len(spans)
        tables = list(dict.fromkeys(t for shape in shapes for t in shape.tables))
        evidence: dict[str, EvidenceValue] = {
            "min_saved_ms": min_saved,
            "db.system": spans[0].db_system or "",
            "db.statements": tuple(shape.normalized for shape in shapes),
            "durations_ms": durations,
            "sequential_ms": round(total, 3),
            "longest_ms": round(longest, 3),
            "concurrent_saving_ms": round(saving, 3),
        }
        on = f" on {', '.join(tables)}" if tables else ""
        return self.finding(
            title=(
                f"Consecutive queries: {count} sequential SELECTs{on} "
                f"({total:.1f} ms, {saving:.1f} ms to save)"
            ),
            severity=severity_for(saving, min_saved, self.config.critical_factor),
            identity=tuple(sorted(shape.fingerprint for shape in shapes)),
            per_endpoint=True,
            spans=spans,
            total_duration_ms=total,
            impact_ms=saving,
            recommendation=(
                f"{count} independent SELECTs{on} ran one after another: {total:.1f} ms in sequence, "
                f"the longest {longest:.1f} ms, so running them concurrently would save about "
                f"{saving:.1f} ms. One connection runs one query at a time, so each query needs its "
                f"own connection: asyncio.gather() over an async driver (asyncpg, psycopg 3's "
                f"AsyncConnection, or one SQLAlchemy AsyncSession per task), or a "
                f"ThreadPoolExecutor whose tasks each take their own connection or Session from the "
                f"pool (never share one across threads). Keep them in sequence if they must read "
                f"one transaction's snapshot."
            ),
            statement="; ".join(shape.normalized for shape in shapes),
            evidence=evidence,
        )


class ConsecutiveHttpCallsDetector(SiblingsDetector):
    """Sequential safe-method (GET/HEAD/OPTIONS) HTTP client calls under one parent.

    Other methods change state on the server, so their order may matter: they end a run.
    """

    type = "consecutive_http_calls"
    sibling_category = HTTP_CLIENT

    @classmethod
    def can_fire(cls, config: APMConfig, summary: TraceSummary) -> bool:
        return (
            summary.count(HTTP_CLIENT) >= 2
            and summary.saving_bound_ns(HTTP_CLIENT) >= config.consecutive_http_min_saved_ms * 1e6
        )

    def on_complete(self) -> list[Finding]:
        min_saved = self.config.consecutive_http_min_saved_ms
        findings = []
        for siblings in self.sibling_groups(2):
            if not could_save(siblings, min_saved):
                continue
            calls = sorted(siblings, key=by_start)
            keys: list[str | None] = []
            for s in calls:
                method = (s.http_method or "").upper()
                keys.append(f"{method} {call_template(s)}" if method in SAFE_METHODS else None)
            for run in sequential_runs(
                calls, keys, distinct=False, repeat_threshold=self.config.n_plus_one_api_threshold
            ):
                spans = [calls[i] for i in run]
                timing = _timing(spans)
                if timing[2] >= min_saved:
                    findings.append(self._finding(spans, [str(keys[i]) for i in run], timing))
        return findings

    def _finding(
        self, spans: list[SpanView], targets: list[str], timing: tuple[float, float, float, tuple[str, ...]]
    ) -> Finding:
        total, longest, saving, durations = timing
        min_saved = self.config.consecutive_http_min_saved_ms
        count = len(spans)
        evidence: dict[str, EvidenceValue] = {
            "min_saved_ms": min_saved,
            "http.calls": tuple(targets),
            "durations_ms": durations,
            "sequential_ms": round(total, 3),
            "longest_ms": round(longest, 3),
            "concurrent_saving_ms": round(saving, 3),
        }
        return self.finding(
            title=(
                f"Consecutive HTTP calls: {count} sequential calls ({total:.1f} ms, {saving:.1f} ms to save)"
            ),
            severity=severity_for(saving, min_saved, self.config.critical_factor),
            identity=tuple(sorted(set(targets))),
            per_endpoint=True,
            spans=spans,
            total_duration_ms=total,
            impact_ms=saving,
            recommendation=(
                f"{count} HTTP calls ({', '.join(dict.fromkeys(targets))}) ran one after another: "
                f"{total:.1f} ms in sequence, the longest {longest:.1f} ms, so sending them "
                f"concurrently would save about {saving:.1f} ms. With httpx: asyncio.gather() over "
                f"one shared httpx.AsyncClient; with requests: a ThreadPoolExecutor mapping the "
                f"calls, one requests.Session per thread."
            ),
            evidence=evidence,
        )
