"""Detectors through the Analyzer on hand-built traces: what a finding is named after."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from otel_apm.analyze import Analyzer
from otel_apm.config import APMConfig, ConfigError
from otel_apm.detectors import Finding
from otel_apm.detectors.base import ms_rounded
from otel_apm.detectors.n_plus_one_api import url_template
from otel_apm.model import DB, HTTP_CLIENT, HTTP_SERVER, KIND_CLIENT, KIND_SERVER, SpanView, Trace

BOOKS = "SELECT * FROM books WHERE author_id = $1"


def span(
    sid: int,
    parent: int,
    service: str,
    category: str,
    kind: int,
    start: int,
    *,
    name: str = "span",
    **fields: object,
) -> SpanView:
    view = SpanView(7, sid, parent, name, kind, start, start + 1_000_000, False, service, category)
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


def test_a_detectors_finding_is_the_finding_the_dataclass_makes_of_its_fields() -> None:
    """Detector.finding() fills the instance without calling __init__: every field is there, with
    the value __init__ would store, so equality, replace() and asdict() behave alike."""
    spans = shop_request(10, 0)
    (finding,) = Analyzer(APMConfig()).analyze(Trace(7, spans, spans[0]))
    assert set(vars(finding)) == {f.name for f in dataclasses.fields(Finding)}
    made = Finding(**{f.name: getattr(finding, f.name) for f in dataclasses.fields(Finding)})
    assert made == finding
    assert dataclasses.asdict(made) == dataclasses.asdict(finding)
    assert finding.span_ids == tuple(s.span_id for s in spans[1:])
    assert finding.rate_per_min > 0  # ranked: _rank() gave it its recurrence rate


def test_a_duration_in_milliseconds_is_rounded_as_round_does() -> None:
    """ms_rounded(ns) is round(ns / 1e6, 3), ties (ns ending in 500) and huge or negative
    durations included: every digit count, each with its neighbours of the half."""
    rng = random.Random(3)
    cases = [0, 1, 499, 500, 501, 1500, 2500, 10**12 - 500, 10**12, 10**12 + 500, 2**53 + 1, -1, -500, -1500]
    for digits in range(1, 13):
        for _ in range(2000):
            base = rng.randrange(10**digits) // 1000 * 1000
            cases += [base + rng.randrange(1000), base + 499, base + 500, base + 501]
    for ns in cases:
        assert repr(ms_rounded(ns)) == repr(round(ns / 1e6, 3)), ns


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


# -- N+1 API calls -----------------------------------------------------------------------------------

SHOP = "http://shop.internal:8080"


def storefront_request(urls: list[str], *, parents: list[int] | None = None, method: str = "GET") -> Trace:
    """storefront's GET /catalog server span (id 1) and one sequential 1 ms client call per url."""
    server = span(1, 0, "storefront", HTTP_SERVER, KIND_SERVER, 0, http_method="GET", http_route="/catalog")
    calls = [
        span(
            10 + i,
            parents[i] if parents else 1,
            "storefront",
            HTTP_CLIENT,
            KIND_CLIENT,
            (i + 1) * 2_000_000,  # one after the other, 1 ms each, 1 ms apart
            name=method,
            http_method=method,
            url=url,
            server_address=url.partition("://")[2].partition(":")[0].partition("/")[0] or None,
        )
        for i, url in enumerate(urls)
    ]
    return Trace(7, [server, *calls], server)


def api_findings(trace: Trace, **settings: Any) -> list[Finding]:
    return [f for f in Analyzer(APMConfig(**settings)).analyze(trace) if f.type == "n_plus_one_api_call"]


def test_an_n_plus_one_of_api_calls_is_one_finding_named_after_its_url_template() -> None:
    trace = storefront_request([f"{SHOP}/authors/{1000 + i}?token=s3cr3t{i}&lang=en" for i in range(6)])
    (finding,) = api_findings(trace)
    template = f"{SHOP}/authors/{{id}}?lang=?&token=?"
    assert (finding.service, finding.endpoint) == ("storefront", "GET /catalog")
    assert finding.count == 6
    assert finding.span_ids == tuple(range(10, 16))
    assert finding.total_duration_ms == 6.0  # six disjoint 1 ms calls
    assert finding.max_duration_ms == 1.0
    assert finding.severity == "warning"
    assert finding.statement is None
    assert finding.evidence == {
        "threshold": 5,
        "http.method": "GET",
        "url.template": template,
        "server.address": "shop.internal",
        "concurrent_saving_ms": 5.0,  # 6 ms of calls minus the longest, 1 ms
    }
    assert template in finding.title
    assert "batch endpoint" in finding.recommendation
    assert "save about 5.0 ms" in finding.recommendation


def test_no_literal_id_or_query_value_reaches_the_finding() -> None:
    secrets = [f"{SHOP}/authors/{7_654_321 + i}?token=hunter2x{i}" for i in range(6)]
    (finding,) = api_findings(storefront_request(secrets))
    reported = repr(finding)
    assert "{id}" in reported and "token=?" in reported  # the template is reported...
    for needle in ("7654321", "7654326", "hunter2"):  # ...and nothing it replaced
        assert needle not in reported, needle


def test_fewer_calls_than_the_threshold_are_no_finding_and_the_threshold_is_configurable() -> None:
    four = storefront_request([f"{SHOP}/authors/{i}" for i in range(4)])
    assert api_findings(four) == []
    (finding,) = api_findings(four, n_plus_one_api_threshold=4)
    assert finding.evidence["threshold"] == 4
    assert APMConfig.from_env({"APM_N_PLUS_ONE_API_THRESHOLD": "3"}).n_plus_one_api_threshold == 3
    with pytest.raises(ConfigError, match="APM_N_PLUS_ONE_API_THRESHOLD"):
        APMConfig(n_plus_one_api_threshold=1)


def test_different_urls_with_one_template_are_merged() -> None:
    urls = [
        f"{SHOP}/authors/42/books?page=1&sort=asc",
        f"{SHOP}/authors/550e8400-e29b-41d4-a716-446655440000/books?sort=desc&page=2#top",
        f"{SHOP.upper().replace('HTTP', 'http')}/authors/0123456789abcdef0123/books?page=3&sort=asc",
        f"{SHOP}/authors/aZ3kf9_LmQ2pX7vR-w/books?sort=asc&page=4",
        f"{SHOP}/authors/7/books?page=5&sort=asc&page=6",
    ]
    (finding,) = api_findings(storefront_request(urls))
    assert finding.count == 5
    assert finding.evidence["url.template"] == f"{SHOP}/authors/{{id}}/books?page=?&sort=?"


def test_calls_to_other_hosts_methods_or_paths_are_not_merged() -> None:
    hosts = [f"http://{host}:8080/authors/{i}" for i, host in enumerate(["a.internal", "b.internal"] * 3)]
    assert api_findings(storefront_request(hosts)) == []
    ports = [f"http://shop:{8080 + i % 2}/authors/{i}" for i in range(6)]
    assert api_findings(storefront_request(ports)) == []
    words = [f"{SHOP}/{name}" for name in ("authors", "books", "shelves", "prices", "stock", "reviews")]
    assert api_findings(storefront_request(words)) == []
    (get,) = api_findings(storefront_request([f"{SHOP}/authors/{i}" for i in range(6)]))
    (post,) = api_findings(storefront_request([f"{SHOP}/authors/{i}" for i in range(6)], method="POST"))
    assert get.fingerprint != post.fingerprint
    assert (get.evidence["http.method"], post.evidence["http.method"]) == ("GET", "POST")


def test_calls_under_different_parents_are_not_merged() -> None:
    urls = [f"{SHOP}/authors/{i}" for i in range(6)]
    trace = storefront_request(urls, parents=[1, 1, 1, 1, 99, 99])
    assert api_findings(trace) == []
    (finding,) = api_findings(trace, n_plus_one_api_threshold=4)
    assert finding.span_ids == (10, 11, 12, 13)


def test_the_fingerprint_is_the_template_not_the_ids() -> None:
    first = api_findings(storefront_request([f"{SHOP}/authors/{i}" for i in range(6)]))
    other = api_findings(storefront_request([f"{SHOP}/authors/{100 + i}" for i in range(8)]))
    assert [f.fingerprint for f in first] == [f.fingerprint for f in other]


def test_concurrent_calls_are_told_to_batch_not_to_go_concurrent() -> None:
    trace = storefront_request([f"{SHOP}/authors/{i}" for i in range(6)])
    for call in trace.spans[1:]:
        call.start_ns, call.end_ns = 2_000_000, 3_000_000  # all at once
    (finding,) = api_findings(trace)
    assert finding.total_duration_ms == 1.0
    assert finding.evidence["concurrent_saving_ms"] == 0.0
    assert "already overlap" in finding.recommendation


def test_without_a_url_the_template_is_the_server_and_the_route_or_name() -> None:
    trace = storefront_request([f"{SHOP}/authors/{i}" for i in range(6)])
    for i, call in enumerate(trace.spans[1:]):
        call.url = None
        call.name = f"GET /authors/{i}"
    (finding,) = api_findings(trace)
    assert finding.evidence["url.template"] == "shop.internal GET /authors/{id}"
    for call in trace.spans[1:]:
        call.server_address, call.name = None, "GET"
    (finding,) = api_findings(trace)
    assert finding.evidence["url.template"] == "GET"


@pytest.mark.parametrize(
    ("raw", "template"),
    [
        (
            "http://Shop:80/authors/42/books?page=2&sort=asc#top",
            "http://shop/authors/{id}/books?page=?&sort=?",
        ),
        ("https://api.example.com:443/v1/users/-/items", "https://api.example.com/v1/users/-/items"),
        ("https://u:pw@api.example.com:8443/v1/x", "https://api.example.com:8443/v1/x"),
        ("http://h/u/550E8400-E29B-41D4-A716-446655440000", "http://h/u/{id}"),
        ("http://h/blob/deadbeefcafebabe", "http://h/blob/{id}"),
        ("http://h/blob/deadbeefcafebab", "http://h/blob/deadbeefcafebab"),  # 15 hex: a word
        ("http://h/t/aZ3kf9_LmQ2pX7vR-w", "http://h/t/{id}"),  # long, letters and digits
        ("http://h/t/aZ3kf9_LmQ2pX7v", "http://h/t/aZ3kf9_LmQ2pX7v"),  # 15 chars: kept
        ("http://h/authentication-callbacks/v2", "http://h/authentication-callbacks/v2"),  # no digit
        ("http://h/v2/items/12a", "http://h/v2/items/12a"),  # short mixed: kept
        ("http://h", "http://h/"),
        ("http://[::1]:8080/a/1", "http://[::1]:8080/a/{id}"),
        ("http://h/?12345", "http://h/?{id}=?"),
        ("http://h/a?b=1&&a=2&b=3", "http://h/a?a=?&b=?"),
        ("http://h/a?#frag", "http://h/a"),
        ("/users/123?x=1", "/users/{id}?x=?"),
    ],
)
def test_url_template_rule(raw: str, template: str) -> None:
    assert url_template(raw) == template


def test_without_a_server_address_attribute_the_host_comes_from_the_url() -> None:
    trace = storefront_request([f"{SHOP}/authors/{i}" for i in range(6)])
    for call in trace.spans[1:]:
        call.server_address = None
    (finding,) = api_findings(trace)
    assert finding.evidence["server.address"] == "shop.internal"  # the host, without the port
