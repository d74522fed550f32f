"""Detectors through the Analyzer on hand-built traces: what a finding is named after."""

from __future__ import annotations

from otel_apm.analyze import Analyzer
from otel_apm.config import APMConfig
from otel_apm.model import DB, HTTP_CLIENT, HTTP_SERVER, KIND_CLIENT, KIND_SERVER, SpanView, Trace

BOOKS = "SELECT * FROM books WHERE author_id = $1"


def span(
    sid: int, parent: int, service: str, category: str, kind: int, start: int, **fields: object
) -> SpanView:
    view = SpanView(
        7, sid, parent, fields.pop("name", "span"), kind, start, start + 1_000_000, False, service, category
    )
    for key, value in fields.items():
        setattr(view, key, value)
    return view


def shop_request(first_id: int, parent: int) -> list[SpanView]:
    """shop's GET /authors server span and its N+1 of 6 book queries."""
    server = span(
        first_id, parent, "shop", HTTP_SERVER, KIND_SERVER, 0, http_method="GET", http_route="/authors"
    )
    queries = [
        span(
            first_id + 1 + i,
            first_id,
            "shop",
            DB,
            KIND_CLIENT,
            10 + i,
            db_system="postgresql",
            statement=BOOKS,
        )
        for i in range(6)
    ]
    return [server, *queries]


def test_a_finding_is_named_after_the_service_and_endpoint_where_it_happens() -> None:
    """storefront calls shop: the N+1 is shop's GET /authors, as shop's own processor says."""
    front = span(1, 0, "storefront", HTTP_SERVER, KIND_SERVER, 0, http_method="GET", http_route="/visit")
    call = span(2, 1, "storefront", HTTP_CLIENT, KIND_CLIENT, 1, http_method="GET")
    cross = Trace(7, [front, call, *shop_request(10, 2)], front)
    alone_spans = shop_request(10, 0)
    alone = Trace(7, alone_spans, alone_spans[0])

    analyzer = Analyzer(APMConfig())
    (in_collector,) = analyzer.analyze(cross)
    (in_process,) = analyzer.analyze(alone)
    assert (in_collector.service, in_collector.endpoint) == ("shop", "GET /authors")
    assert in_collector.fingerprint == in_process.fingerprint
    assert in_collector.services == ("shop", "storefront")
    assert in_process.services == ("shop",)


def test_without_the_entry_span_the_endpoint_is_unknown() -> None:
    spans = shop_request(10, 0)[1:]  # the server span never arrived
    (finding,) = Analyzer(APMConfig()).analyze(Trace(7, spans, None, complete=False))
    assert (finding.service, finding.endpoint) == ("shop", "unknown")


def test_slow_query_fingerprint_is_the_statement_wherever_it_runs() -> None:
    def slow(route: str) -> str:
        server = span(1, 0, "shop", HTTP_SERVER, KIND_SERVER, 0, http_method="GET", http_route=route)
        query = span(2, 1, "shop", DB, KIND_CLIENT, 5, db_system="postgresql", statement=BOOKS)
        query.end_ns = query.start_ns + 150_000_000
        (finding,) = [
            f
            for f in Analyzer(APMConfig()).analyze(Trace(7, [server, query], server))
            if f.type == "slow_query"
        ]
        return finding.fingerprint

    assert slow("/a") == slow("/b")
