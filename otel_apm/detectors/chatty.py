"""Chatty transaction: a request that talks to its database too often, or waits on it most of its time.

An N+1 is one loop; a chatty request is many small habits at once (a query per helper, per
permission check, per template fragment) that no repeat detector sees, since no single statement
repeats enough.  Counted per entry span: in-process that is the local root; in the collector each
service's server span gets its own count, so a chatty backend is named, not the frontend above it.
"""

from __future__ import annotations

from collections import Counter

from otel_apm.config import APMConfig
from otel_apm.detectors.base import Detector, EvidenceValue, Finding, severity_for, union_ms
from otel_apm.detectors.dbshape import db_shapes
from otel_apm.detectors.summary import TraceSummary
from otel_apm.model import DB, DB_CONNECTION, SpanView, endpoint_of
from otel_apm.sql import SqlShape

_DB_TIME = frozenset({DB, DB_CONNECTION})  # connection checkouts are DB time, not queries


class ChattyTransactionDetector(Detector):
    """APM_CHATTY_QUERY_THRESHOLD queries under one entry span, or a DB time share of at least
    APM_CHATTY_DB_SHARE of an entry span of at least APM_CHATTY_MIN_DURATION_MS.

    Connection checkouts are DB time but not queries; cached results (``cache.hit``) paid no
    round trip and are not counted.  DB time is the union of the spans (wall time waited), so
    concurrent queries count once and the share cannot pass 100 %.
    """

    type = "chatty_transaction"
    # Queries every one of which another finding already names (one slow query filling the
    # request, an N+1 that is all of its queries) are that finding's problem, not chattiness.
    defers_to_others = True

    @classmethod
    def can_fire(cls, config: APMConfig, summary: TraceSummary) -> bool:
        """Exact bounds over the whole trace: no entry can have more queries than the trace has
        DB spans, nor more DB time than their summed durations."""
        count = summary.count(DB) + summary.count(DB_CONNECTION)
        spent = summary.total_ns.get(DB, 0) + summary.total_ns.get(DB_CONNECTION, 0)
        return not (
            count < config.chatty_query_threshold
            and spent < 1e6 * config.chatty_db_share * config.chatty_min_duration_ms
        )

    def on_complete(self) -> list[Finding]:
        # One comprehension over the trace costs less than a dispatched visit_span per DB span.
        db = [s for s in self.trace.spans if s.category in _DB_TIME]
        findings = []
        for entry, spans in self._by_entry(db).items():
            finding = self._judge(entry, spans)
            if finding is not None:
                findings.append(finding)
        return findings

    def _by_entry(self, db: list[SpanView]) -> dict[SpanView, list[SpanView]]:
        """DB spans per entry span; siblings share their entry, so it is looked up once per parent."""
        entry_of = self.trace.entry_of
        entries: dict[tuple[int, str], SpanView | None] = {}
        out: dict[SpanView, list[SpanView]] = {}
        for s in db:
            key = (s.parent_id, s.service)
            if key in entries:
                entry = entries[key]
            else:
                entry = entries[key] = entry_of(s)
            # No entry (an ancestor is missing) or a DB span as its own entry (a bare query with
            # no request around it): there is no request to be chatty.
            if entry is not None and entry is not s:
                out.setdefault(entry, []).append(s)
        return out

    def _judge(self, entry: SpanView, spans: list[SpanView]) -> Finding | None:
        config = self.config
        queries = [s for s in spans if s.category == DB and not s.cached]
        count = len(queries)
        duration = entry.duration_ms
        by_count = count >= config.chatty_query_threshold
        if not by_count and duration < config.chatty_min_duration_ms:
            return None
        db_ms = union_ms(spans)
        share = min(db_ms / duration, 1.0) if duration > 0 else 0.0
        by_share = duration >= config.chatty_min_duration_ms and share >= config.chatty_db_share
        if not (by_count or by_share):
            return None
        shapes = db_shapes(queries)
        top, top_count = (
            Counter(shape.fingerprint for shape in shapes).most_common(1)[0] if shapes else ("", 0)
        )
        top_shape = next((shape for shape in shapes if shape.fingerprint == top), None)
        distinct = len({shape.fingerprint for shape in shapes})
        # Batching down to one query per distinct statement saves the other round trips at the
        # mean query's cost; a share over the limit must lose at least its excess.
        saved_by_batching = db_ms * (count - distinct) / count if count else 0.0
        excess = db_ms - config.chatty_db_share * duration if by_share else 0.0
        impact = max(saved_by_batching, excess)
        endpoint = endpoint_of(entry)
        evidence: dict[str, EvidenceValue] = {
            "query_count": count,
            "query_threshold": config.chatty_query_threshold,
            "db.duration_ms": round(db_ms, 3),
            "db.share": round(share, 3),
            "db.share_threshold": config.chatty_db_share,
            "request.duration_ms": round(duration, 3),
            "distinct_statements": distinct,
            "triggered_by": ",".join(t for t, on in (("count", by_count), ("share", by_share)) if on),
        }
        if top_shape is not None:
            evidence["top.statement"] = top_shape.normalized
            evidence["top.count"] = top_count
        return self.finding(
            title=(
                f"Chatty transaction {endpoint}: {count} queries, {db_ms:.0f} ms in the database "
                f"({share:.0%} of {duration:.0f} ms)"
            ),
            severity=severity_for(count, config.chatty_query_threshold, config.critical_factor),
            identity=(),
            per_endpoint=True,
            spans=queries or spans,
            total_duration_ms=db_ms,
            impact_ms=impact,
            recommendation=_recommend(
                count, distinct, db_ms, share, duration, top_shape, top_count, saved_by_batching, excess
            ),
            evidence=evidence,
        )


def _recommend(
    count: int,
    distinct: int,
    db_ms: float,
    share: float,
    duration: float,
    top: SqlShape | None,
    top_count: int,
    saved_by_batching: float,
    excess: float,
) -> str:
    said = (
        f"{count} queries ({distinct} distinct statements) took {db_ms:.1f} ms, {share:.0%} of this "
        f"{duration:.1f} ms request."
    )
    if top is not None and top_count > 1:
        said += f" The most frequent, `{top.normalized[:120]}`, ran {top_count} times."
    if count > distinct:
        return said + (
            " Cut the round trips: eager-load relationships (SQLAlchemy selectinload()/joinedload(), "
            "Django select_related()/prefetch_related()), fetch related rows with one WHERE ... IN "
            "(...) query, and cache what rarely changes; one query per distinct statement would "
            f"save about {saved_by_batching:.1f} ms."
        )
    return said + (
        " The statements are all different, so the time is the database's own work: fix the slow "
        "queries reported for this endpoint (EXPLAIN ANALYZE, indexes), combine related reads into "
        f"one query, or move work off the request path; at least {excess:.1f} ms must go to bring "
        "the database's share under the limit."
    )
