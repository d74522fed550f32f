"""Bottleneck: one span, or one group of like spans, that takes a large share of a request.

The seed's Bottleneck(type, impact, recommendation): where a slow request's time went, by kind
of work, and the one piece of work to look at first.  Every span is measured by its own time
(its duration less the union of its children), so a function span that merely wraps the queries
it runs, or a client call whose server side the collector also sees, is not counted twice: the
time lands on the span that spent it.
"""

from __future__ import annotations

from otel_apm.config import APMConfig
from otel_apm.detectors.base import Detector, EvidenceValue, Finding, by_start, covered_ms, severity_for
from otel_apm.detectors.dbshape import db_shape
from otel_apm.detectors.n_plus_one_api import call_template
from otel_apm.detectors.summary import TraceSummary
from otel_apm.model import CACHE, DB, DB_CONNECTION, HTTP_CLIENT, MESSAGING, RPC, SpanView

# Kinds of work in the breakdown; every other category (internal spans, the server spans of the
# root and of other services' entries) is the application's own code: "internal".
KIND_OF = {
    DB: "db",
    DB_CONNECTION: "db",
    HTTP_CLIENT: "http",
    CACHE: "cache",
    MESSAGING: "messaging",
    RPC: "rpc",
}
INTERNAL = "internal"

Interval = tuple[int, int]


class BottleneckDetector(Detector):
    """For a root of at least APM_BOTTLENECK_MIN_DURATION_MS, the group of like spans (one statement
    fingerprint, one method and URL template, else one kind and span name) with the most own time,
    when that is at least APM_BOTTLENECK_SHARE of the root.  Reads the trace only then: requests
    faster than the minimum cost nothing per span.
    """

    type = "bottleneck"
    defers_to_others = True

    @classmethod
    def can_fire(cls, config: APMConfig, summary: TraceSummary) -> bool:
        return summary.root_ms is not None and summary.root_ms >= config.bottleneck_min_duration_ms

    def on_complete(self) -> list[Finding]:
        trace = self.trace
        root = trace.root
        config = self.config
        if root is None or root.duration_ms < config.bottleneck_min_duration_ms:
            return []
        children: dict[int, list[Interval]] = {}
        for s in trace.spans:
            if s.parent_id:
                children.setdefault(s.parent_id, []).append((s.start_ns, s.end_ns))
        by_kind: dict[str, list[Interval]] = {}
        groups: dict[tuple[str, str], tuple[list[SpanView], list[Interval]]] = {}
        for s in trace.spans:
            own = _own_time(s, children.get(s.span_id))
            kind = KIND_OF.get(s.category, INTERNAL)
            by_kind.setdefault(kind, []).extend(own)
            if s is not root and own:
                group = groups.setdefault((kind, _label(s, kind)), ([], []))
                group[0].append(s)
                group[1].extend(own)
        if not groups:
            return []
        root_ms = root.duration_ms
        spent, (kind, label) = max((covered_ms(own), key) for key, (_, own) in groups.items())
        spans = groups[kind, label][0]
        share = spent / root_ms
        if share < config.bottleneck_share:
            return []
        breakdown = {k: covered_ms(v) for k, v in by_kind.items()}
        dominant = max(breakdown, key=lambda k: breakdown[k])
        evidence: dict[str, EvidenceValue] = {
            "bottleneck.type": kind,
            "bottleneck.impact": round(share, 3),
            "group": label,
            "group.count": len(spans),
            "request.duration_ms": round(root_ms, 3),
            "share_threshold": config.bottleneck_share,
            "dominant_kind": dominant,
        }
        for k, ms in sorted(breakdown.items()):
            evidence[f"breakdown.{k}.ms"] = round(ms, 3)
            evidence[f"breakdown.{k}.share"] = round(ms / root_ms, 3)
        spans.sort(key=by_start)
        return [
            self.finding(
                title=(
                    f"Bottleneck: {kind} `{label[:80]}` took {spent:.0f} ms, {share:.0%} of "
                    f"{trace.endpoint} ({root_ms:.0f} ms)"
                ),
                severity=severity_for(share, config.bottleneck_share, config.critical_factor),
                identity=(kind, label),
                per_endpoint=True,
                spans=spans,
                total_duration_ms=spent,
                # The most the request gets back were this work gone: an upper bound, as the fix
                # (an index, a cache, concurrency) rarely removes all of it.
                impact_ms=spent,
                recommendation=_recommend(kind, label, len(spans), spent, share, root_ms),
                statement=label if kind == "db" else None,
                evidence=evidence,
            )
        ]


def _own_time(span: SpanView, kids: list[Interval] | None) -> list[Interval]:
    """The parts of the span's interval that none of its children covers."""
    start, end = span.start_ns, span.end_ns
    if not kids:
        return [(start, end)] if end > start else []
    out = []
    cursor = start
    for kid_start, kid_end in sorted(kids):
        if kid_start >= end:
            break
        if kid_start > cursor:
            out.append((cursor, kid_start))
        if kid_end > cursor:
            cursor = kid_end
    if cursor < end:
        out.append((cursor, end))
    return out


def _label(span: SpanView, kind: str) -> str:
    """What makes spans "alike": the normalized statement, the method and URL template, the name."""
    if kind == "db":
        return db_shape(span).normalized
    if kind == "http":
        return f"{(span.http_method or 'HTTP').upper()} {call_template(span)}"
    return span.name


def _recommend(kind: str, label: str, count: int, spent: float, share: float, root_ms: float) -> str:
    runs = f"{count} run{'s' if count != 1 else ''}"
    said = f"`{label[:120]}` ({runs}) took {spent:.1f} ms, {share:.0%} of this {root_ms:.1f} ms request."
    if kind == "db":
        return said + (
            " Check its plan with EXPLAIN ANALYZE and index the WHERE, JOIN and ORDER BY columns, "
            "read fewer rows and columns, or cache the result if it rarely changes."
        )
    if kind in ("http", "rpc"):
        return said + (
            " Cache the response, run the call concurrently with the request's other work, set a "
            "tight timeout, or move it off the request path (a background job); if the remote side "
            "is slow, its own trace shows where."
        )
    if kind == "cache":
        return said + (
            " Fetch keys together (MGET, pipelining), keep values small, and check the cache "
            "server's latency."
        )
    if kind == "messaging":
        return said + (
            " Publish asynchronously or in batches, and check the broker's latency; the consumer's "
            "work belongs off the request path."
        )
    return said + (
        " That is the application's own code, not queries or calls: profile it (py-spy, cProfile), "
        "cache what it computes, or move the heavy part to a background job."
    )
