"""Request-level detectors (chatty transaction, bottleneck, error) through the real SDK pipeline and
APMSpanProcessor, with span times set explicitly; and the collector's view of a two-service trace
through OTLP protobuf and the Analyzer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conftest import OTel
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import NonRecordingSpan, Span, SpanKind, Status, StatusCode
from test_otlp_ingest import record_spans

from otel_apm.analyze import Analyzer
from otel_apm.config import APMConfig
from otel_apm.detectors import Finding
from otel_apm.ingest.otlp import views_from_request
from otel_apm.model import SpanView, Trace

T0 = 1_700_000_000_000_000_000  # ns; every span time below is T0 + milliseconds
PREFIX = "otel_apm.finding."


def at(ms: float) -> int:
    return T0 + int(ms * 1_000_000)


def begin(
    tracer: trace.Tracer,
    name: str,
    start_ms: float,
    parent: Span | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    **attrs: Any,
) -> Span:
    ctx = trace.set_span_in_context(parent) if parent is not None else None
    return tracer.start_span(name, ctx, kind=kind, attributes=attrs, start_time=at(start_ms))


def leaf(
    tracer: trace.Tracer,
    parent: Span,
    name: str,
    start_ms: float,
    end_ms: float,
    kind: SpanKind = SpanKind.CLIENT,
    **attrs: Any,
) -> Span:
    span = begin(tracer, name, start_ms, parent, kind, **attrs)
    span.end(end_time=at(end_ms))
    return span


def query(tracer: trace.Tracer, parent: Span, statement: str, start_ms: float, end_ms: float) -> Span:
    attrs: dict[str, Any] = {"db.system": "postgresql", "db.statement": statement}
    return leaf(tracer, parent, statement.split()[0], start_ms, end_ms, **attrs)


def call(
    tracer: trace.Tracer, parent: Span, url: str, start_ms: float, end_ms: float, status: int = 200
) -> Span:
    attrs = {"http.request.method": "GET", "url.full": url, "http.response.status_code": status}
    span = begin(tracer, "GET", start_ms, parent, SpanKind.CLIENT, **attrs)
    if status >= 400:
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))
    span.end(end_time=at(end_ms))
    return span


def server(
    tracer: trace.Tracer, route: str, parent: Span | None = None, method: str = "GET", start_ms: float = 0
) -> Span:
    attrs = {"http.request.method": method, "http.route": route}
    return begin(tracer, f"{method} {route}", start_ms, parent, SpanKind.SERVER, **attrs)


def findings(otel: OTel, kind: str) -> list[dict[str, Any]]:
    """The attributes of every exported finding event of one type, without the prefix."""
    out = []
    for record in otel.events(kind):
        attrs = dict(record.log_record.attributes or {})
        out.append({k.removeprefix(PREFIX): list(v) if isinstance(v, tuple) else v for k, v in attrs.items()})
    return out


def sid(span: Span) -> str:
    return format(span.get_span_context().span_id, "016x")


STATEMENTS = [f"SELECT t{i}.id, t{i}.name FROM t{i} WHERE t{i}.id = %(id)s" for i in range(10)]


# -- chatty_transaction -----------------------------------------------------------------------------


def chatty_request(otel: OTel, queries: int, *, per_query_ms: float = 0.5, root_ms: float = 50.0) -> None:
    """GET /dashboard running ``queries`` short sequential queries, cycling through 10 statements."""
    root = server(otel.tracer, "/dashboard")
    for i in range(queries):
        start = 1 + i * per_query_ms
        query(otel.tracer, root, STATEMENTS[i % 10], start, start + per_query_ms * 0.8)
    root.end(end_time=at(root_ms))


def test_thirty_queries_in_one_request_are_chatty(otel: OTel) -> None:
    chatty_request(otel, 30)
    (f,) = findings(otel, "chatty_transaction")
    assert f["endpoint"] == "GET /dashboard"
    assert f["count"] == 30 and len(f["span_ids"]) == 30
    assert f["evidence.query_count"] == 30
    assert f["evidence.distinct_statements"] == 10
    assert f["evidence.triggered_by"] == "count"
    assert f["evidence.top.count"] == 3
    assert f["evidence.top.statement"].startswith("select t0.id")
    assert f["evidence.db.duration_ms"] == 12.0  # 30 disjoint queries of 0.4 ms
    assert f["evidence.db.share"] == 0.24  # of the 50 ms request
    assert f["impact_ms"] == 8.0  # 20 of the 30 round trips at 0.4 ms: one per distinct statement stays
    assert f["severity"] == "warning"
    assert "30 queries (10 distinct statements) took 12.0 ms" in f["recommendation"]
    assert "save about 8.0 ms" in f["recommendation"]


def test_fewer_queries_than_the_threshold_are_not_chatty_and_the_threshold_is_a_setting(
    make_otel: Callable[..., OTel],
) -> None:
    otel = make_otel()
    chatty_request(otel, 29)
    assert findings(otel, "chatty_transaction") == []
    lower = make_otel(chatty_query_threshold=12)
    chatty_request(lower, 12)
    (f,) = findings(lower, "chatty_transaction")
    assert f["evidence.query_threshold"] == 12


def test_a_request_mostly_waiting_on_the_database_is_chatty_by_share(otel: OTel) -> None:
    """200 ms request, 4 statements in 170 ms of DB wall time (two of them concurrent, counted once)."""
    root = server(otel.tracer, "/report")
    query(otel.tracer, root, STATEMENTS[0], 10, 60)
    query(otel.tracer, root, STATEMENTS[1], 60, 110)
    query(otel.tracer, root, STATEMENTS[2], 110, 180)
    query(otel.tracer, root, STATEMENTS[3], 120, 170)  # inside the previous one
    root.end(end_time=at(200))
    (f,) = findings(otel, "chatty_transaction")
    assert f["evidence.triggered_by"] == "share"
    assert f["evidence.db.duration_ms"] == 170.0
    assert f["evidence.db.share"] == 0.85
    assert f["impact_ms"] == 10.0  # 170 ms less the 80 % of 200 ms the share allows; nothing to batch
    assert "at least 10.0 ms must go" in f["recommendation"]


def test_share_below_the_setting_or_request_under_the_minimum_is_not_chatty(
    make_otel: Callable[..., OTel],
) -> None:
    otel = make_otel()
    root = server(otel.tracer, "/report")
    query(otel.tracer, root, STATEMENTS[0], 10, 160)  # 75 % of 200 ms
    root.end(end_time=at(200))
    short = server(otel.tracer, "/quick")
    query(otel.tracer, short, STATEMENTS[0], 1, 86)  # 95 % of a 90 ms request
    query(otel.tracer, short, STATEMENTS[1], 86, 87)
    short.end(end_time=at(90))
    assert findings(otel, "chatty_transaction") == []
    lenient = make_otel(chatty_db_share=0.7)
    root = server(lenient.tracer, "/report")
    query(lenient.tracer, root, STATEMENTS[0], 10, 160)
    query(lenient.tracer, root, STATEMENTS[1], 160, 161)
    root.end(end_time=at(200))
    assert [f["evidence.triggered_by"] for f in findings(lenient, "chatty_transaction")] == ["share"]


def test_queries_all_named_by_an_n_plus_one_leave_no_chatty_finding(otel: OTel) -> None:
    root = server(otel.tracer, "/authors")
    for i in range(30):
        query(otel.tracer, root, STATEMENTS[0], 1 + i, 1.5 + i)
    root.end(end_time=at(40))
    assert len(findings(otel, "n_plus_one_query")) == 1
    assert findings(otel, "chatty_transaction") == []


def test_cached_results_are_no_queries(otel: OTel) -> None:
    root = server(otel.tracer, "/dashboard")
    for i in range(30):
        span = begin(otel.tracer, "SELECT", 1 + i, root, SpanKind.CLIENT, **{"db.system": "postgresql"})
        span.set_attribute("db.statement", STATEMENTS[i % 10])
        span.set_attribute("cache.hit", i == 0)  # one of the 30 came from a cache
        span.end(end_time=at(1.5 + i))
    root.end(end_time=at(40))
    assert findings(otel, "chatty_transaction") == []


# -- bottleneck -------------------------------------------------------------------------------------


def test_one_slow_dependency_call_is_the_bottleneck_with_the_breakdown(otel: OTel) -> None:
    """300 ms request: 180 ms in one HTTP call, 40 ms in queries, the rest in the app's own code."""
    root = server(otel.tracer, "/checkout", method="POST")
    work = begin(otel.tracer, "checkout.process", 10, root)
    query(otel.tracer, work, STATEMENTS[0], 20, 40)
    query(otel.tracer, work, STATEMENTS[1], 40, 60)
    payment = call(otel.tracer, work, "http://payments.internal/charges/12345?card=4111", 60, 240)
    work.end(end_time=at(280))
    root.end(end_time=at(300))
    (f,) = findings(otel, "bottleneck")
    assert f["span_ids"] == [sid(payment)]
    assert f["endpoint"] == "POST /checkout"
    assert f["evidence.bottleneck.type"] == "http"
    assert f["evidence.bottleneck.impact"] == 0.6
    assert f["evidence.group"] == "GET http://payments.internal/charges/{id}?card=?"
    assert f["evidence.dominant_kind"] == "http"
    assert f["evidence.breakdown.http.ms"] == 180.0
    assert f["evidence.breakdown.db.ms"] == 40.0
    # the root's own 20 ms and checkout.process's own 60 ms (its 270 ms less its children's 210 ms)
    assert f["evidence.breakdown.internal.ms"] == 80.0
    assert f["evidence.breakdown.internal.share"] == 0.267
    assert f["impact_ms"] == 180.0
    assert "4111" not in repr(f) and "12345" not in repr(f)
    assert "180.0 ms, 60% of this 300.0 ms request" in f["recommendation"]
    assert "Cache the response" in f["recommendation"]


def test_a_wrapper_span_is_measured_by_its_own_time(otel: OTel) -> None:
    """render spends 150 of its 160 ms in its own code: the bottleneck is internal, not its query."""
    root = server(otel.tracer, "/page")
    render = begin(otel.tracer, "render", 10, root)
    query(otel.tracer, render, STATEMENTS[0], 10, 20)
    render.end(end_time=at(170))
    root.end(end_time=at(200))
    (f,) = findings(otel, "bottleneck")
    assert f["span_ids"] == [sid(render)]
    assert (f["evidence.bottleneck.type"], f["evidence.group"]) == ("internal", "render")
    assert f["total_duration_ms"] == 150.0
    assert "profile it" in f["recommendation"]


def test_like_spans_make_one_group(otel: OTel) -> None:
    """Four 30 ms runs of one statement (no N+1: under the threshold) are 120 ms of a 200 ms request."""
    root = server(otel.tracer, "/search")
    for i in range(4):
        query(otel.tracer, root, STATEMENTS[0], 10 + 40 * i, 40 + 40 * i)
    root.end(end_time=at(200))
    (f,) = findings(otel, "bottleneck")
    assert f["count"] == 4
    assert f["evidence.bottleneck.type"] == "db"
    assert f["db.query.text"] == f["evidence.group"] == "select t0.id, t0.name from t0 where t0.id = ?"
    assert f["evidence.bottleneck.impact"] == 0.6


def test_no_bottleneck_under_the_minimum_duration_or_the_share(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel()
    fast = server(otel.tracer, "/fast")
    query(otel.tracer, fast, STATEMENTS[0], 1, 89)  # 98 % of a 90 ms request
    fast.end(end_time=at(90))
    spread = server(otel.tracer, "/spread")
    for i in range(4):  # four different statements of 50 ms, each 25 % of 200 ms
        query(otel.tracer, spread, STATEMENTS[i], 50 * i, 50 * i + 50)
    spread.end(end_time=at(200))
    assert findings(otel, "bottleneck") == []
    # Four sequential independent queries are also a consecutive_db_queries finding naming the
    # same spans, which would subsume the bottleneck: that detector is off here.
    strict = make_otel(bottleneck_share=0.25, disabled_detectors=("consecutive_db_queries",))
    spread = server(strict.tracer, "/spread")
    for i in range(4):
        query(strict.tracer, spread, STATEMENTS[i], 50 * i, 50 * i + 50)
    spread.end(end_time=at(200))
    (f,) = findings(strict, "bottleneck")
    assert f["evidence.bottleneck.impact"] == 0.25


def test_a_bottleneck_another_finding_names_is_not_reported(otel: OTel) -> None:
    root = server(otel.tracer, "/report")
    query(otel.tracer, root, STATEMENTS[0], 10, 160)  # a slow query, and 75 % of the request
    root.end(end_time=at(200))
    assert len(findings(otel, "slow_query")) == 1
    assert findings(otel, "bottleneck") == []


# -- error ------------------------------------------------------------------------------------------


def raise_in(span: Span, exc: BaseException, *, fail: bool = True) -> None:
    span.record_exception(exc)
    if fail:
        span.set_status(Status(StatusCode.ERROR, str(exc)))


def test_a_propagated_exception_counts_once_at_its_origin(otel: OTel) -> None:
    root = server(otel.tracer, "/orders", method="POST")
    work = begin(otel.tracer, "orders.create", 5, root)
    insert = begin(
        otel.tracer,
        "INSERT",
        10,
        work,
        SpanKind.CLIENT,
        **{"db.system": "postgresql", "db.statement": "INSERT INTO orders (id) VALUES (424242)"},
    )
    error = ValueError("duplicate key value violates unique constraint")
    for span, end_ms in ((insert, 30), (work, 35)):
        raise_in(span, error)
        span.end(end_time=at(end_ms))
    root.set_attribute("http.response.status_code", 500)
    raise_in(root, error)
    root.end(end_time=at(40))
    (f,) = findings(otel, "error")
    assert f["span_ids"] == [sid(insert)]
    assert f["count"] == 1
    assert f["endpoint"] == "POST /orders"
    assert f["title"] == "Error ValueError in POST /orders (1x)"
    assert f["evidence.exception.type"] == "ValueError"
    assert f["evidence.handled"] is False
    assert f["evidence.request.failed"] is True
    assert f["evidence.propagated.count"] == 2
    assert sorted(f["evidence.propagated.span_ids"]) == sorted([sid(work), sid(root)])
    assert f["evidence.http.status_code"] == 500
    assert f["severity"] == "critical"  # the request failed
    assert f["impact_ms"] == 40.0  # the whole request, as it failed
    assert f["db.query.text"] == "insert into orders (id) values (?)"
    assert "424242" not in repr(f)  # the literal never leaves (ids and hashes may hold "42")
    assert "failed the request after 40.0 ms" in f["recommendation"]


def test_errors_group_by_type_and_a_contained_one_is_a_warning(otel: OTel) -> None:
    root = server(otel.tracer, "/feed")
    for i in range(3):
        span = begin(otel.tracer, "fetch", 10 * i, root)
        raise_in(span, TimeoutError("slow"))
        span.end(end_time=at(10 * i + 5))
    other = begin(otel.tracer, "parse", 40, root)
    raise_in(other, KeyError("x"))
    other.end(end_time=at(41))
    root.end(end_time=at(50))
    by_type = {f["evidence.exception.type"]: f for f in findings(otel, "error")}
    assert set(by_type) == {"TimeoutError", "KeyError"}
    timeout = by_type["TimeoutError"]
    assert (timeout["count"], timeout["impact_ms"], timeout["severity"]) == (3, 15.0, "warning")
    assert timeout["evidence.request.failed"] is False
    assert "the request went on without it" in timeout["recommendation"]
    assert by_type["TimeoutError"]["fingerprint"] != by_type["KeyError"]["fingerprint"]


def test_a_handled_exception_is_reported_as_a_handled_warning(otel: OTel) -> None:
    root = server(otel.tracer, "/profile")
    lookup = begin(otel.tracer, "lookup", 1, root)
    raise_in(lookup, LookupError("no avatar"), fail=False)
    lookup.end(end_time=at(3))
    root.end(end_time=at(10))
    (f,) = findings(otel, "error")
    assert f["title"] == "Handled exception LookupError in GET /profile (1x)"
    assert (f["severity"], f["evidence.handled"]) == ("warning", True)
    assert "raised and caught 1 time(s)" in f["recommendation"]


def test_handled_and_unhandled_of_one_type_are_two_problems(otel: OTel) -> None:
    def run(fail: bool) -> str:
        root = server(otel.tracer, "/x")
        span = begin(otel.tracer, "step", 1, root)
        raise_in(span, LookupError("x"), fail=fail)
        span.end(end_time=at(2))
        root.end(end_time=at(3))
        return str(findings(otel, "error")[-1]["fingerprint"])

    assert run(fail=True) != run(fail=False)


def test_error_type_and_http_status_label_an_error_without_exception(otel: OTel) -> None:
    root = server(otel.tracer, "/stock")
    upstream = call(otel.tracer, root, "http://inventory.internal/items/9", 1, 4, status=503)
    error_type: dict[str, Any] = {"error.type": "BrokerUnavailable"}
    typed = begin(otel.tracer, "publish", 5, root, **error_type)
    typed.set_status(Status(StatusCode.ERROR))
    typed.end(end_time=at(6))
    root.end(end_time=at(10))
    by_type = {f["evidence.exception.type"]: f for f in findings(otel, "error")}
    assert set(by_type) == {"HTTP 503", "BrokerUnavailable"}
    assert by_type["HTTP 503"]["span_ids"] == [sid(upstream)]
    assert by_type["HTTP 503"]["evidence.http.status_code"] == 503
    assert "answered 503" in by_type["HTTP 503"]["recommendation"]


def test_no_error_where_nothing_failed_and_4xx_answers_are_not_errors(otel: OTel) -> None:
    ok = server(otel.tracer, "/fine")
    query(otel.tracer, ok, STATEMENTS[0], 1, 2)
    ok.set_attribute("http.response.status_code", 200)
    ok.end(end_time=at(3))
    missing = server(otel.tracer, "/items/{id}")
    missing.set_attribute("http.response.status_code", 404)
    missing.set_status(Status(StatusCode.ERROR))  # an instrumentation that gets the convention wrong
    missing.end(end_time=at(3))
    assert otel.events("error") == []
    assert len(otel.events()) == 0


# -- the collector: one trace, two services, through OTLP ---------------------------------------


def views_of(*batches: tuple[ReadableSpan, ...]) -> list[SpanView]:
    """The views the collector makes of these spans, sent as OTLP protobuf."""
    req = ExportTraceServiceRequest()
    req.ParseFromString(encode_spans([s for batch in batches for s in batch]).SerializeToString())
    return views_from_request(req)


def collector_findings(*batches: tuple[ReadableSpan, ...]) -> list[Finding]:
    views = views_of(*batches)
    (root,) = [v for v in views if not v.parent_id]
    return Analyzer(APMConfig()).analyze(Trace(root.trace_id, views, root))


def test_in_the_collector_each_service_entry_is_judged_alone() -> None:
    """storefront (600 ms, 1 call) calls shop (500 ms, 30 queries): only shop is chatty."""
    calls: list[Span] = []

    def storefront(tracer: trace.Tracer) -> None:
        root = server(tracer, "/visit")
        calls.append(call(tracer, root, "http://shop.internal/authors", 50, 560))
        root.end(end_time=at(600))

    def shop(tracer: trace.Tracer) -> None:
        remote = NonRecordingSpan(calls[0].get_span_context())
        root = server(tracer, "/authors", parent=remote, start_ms=60)
        for i in range(30):
            query(tracer, root, STATEMENTS[i % 10], 60 + i, 60.5 + i)
        root.end(end_time=at(550))

    front = record_spans("storefront", storefront)
    back = record_spans("shop", shop)
    (f,) = [f for f in collector_findings(front, back) if f.type == "chatty_transaction"]
    assert (f.service, f.endpoint, f.count) == ("shop", "GET /authors", 30)
    assert f.evidence["request.duration_ms"] == 490.0  # shop's server span, not storefront's root
    # the same problem as shop's own processor names it, where the remote parent reads as none
    views = views_of(back)
    shop_root = next(v for v in views if v.name == "GET /authors")
    shop_root.parent_id = 0
    (g,) = [g for g in Analyzer(APMConfig()).analyze(Trace(f.trace_id, views, shop_root)) if g.type == f.type]
    assert g.fingerprint == f.fingerprint


def test_in_the_collector_the_bottleneck_is_where_the_time_is_spent() -> None:
    """storefront's call to shop wraps shop's slow work: the call's own time is small."""
    calls: list[Span] = []

    def storefront(tracer: trace.Tracer) -> None:
        root = server(tracer, "/visit")
        calls.append(call(tracer, root, "http://shop.internal/report", 10, 300))
        root.end(end_time=at(310))

    def shop(tracer: trace.Tracer) -> None:
        remote = NonRecordingSpan(calls[0].get_span_context())
        root = server(tracer, "/report", parent=remote, start_ms=20)
        crunch = begin(tracer, "crunch", 20, root)
        crunch.end(end_time=at(280))
        root.end(end_time=at(290))

    found = collector_findings(record_spans("storefront", storefront), record_spans("shop", shop))
    (f,) = [f for f in found if f.type == "bottleneck"]
    assert (f.service, f.endpoint, f.evidence["group"]) == ("shop", "GET /report", "crunch")
    assert f.evidence["breakdown.http.ms"] == 20.0  # the call's 290 ms less shop's 280 ms
