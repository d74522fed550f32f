"""slow_query_outlier (with slow_query's recent p95) and large_payload: through the real SDK
pipeline, and through OTLP protobuf into an Analyzer as the collector runs it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from conftest import OTel
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Tracer

from otel_apm.analyze import Analyzer
from otel_apm.config import APMConfig
from otel_apm.detectors import Finding
from otel_apm.ingest.otlp import views_from_request
from otel_apm.model import DB, HTTP_SERVER, KIND_CLIENT, KIND_SERVER, SpanView, Trace

T0 = 1_700_000_000_000_000_000
MS = 1_000_000

ORDER = "SELECT orders.id, orders.total FROM orders WHERE orders.id = {id}"
NORMALIZED_ORDER = "select orders.id, orders.total from orders where orders.id = ?"


def request(
    tracer: Tracer,
    children: Sequence[tuple[Mapping[str, Any], float]],
    *,
    root_attrs: Mapping[str, Any] | None = None,
    root_ms: float = 1000,
) -> None:
    """One GET /orders request of ``root_ms``; each child (attributes, duration ms) starts when
    the previous one ended."""
    attrs = {"http.request.method": "GET", "http.route": "/orders", **(root_attrs or {})}
    root = tracer.start_span("GET /orders", kind=SpanKind.SERVER, attributes=attrs, start_time=T0)
    start = T0
    for child_attrs, ms in children:
        name = str(child_attrs.get("http.request.method") or "SELECT")
        span = tracer.start_span(
            name,
            trace.set_span_in_context(root),
            kind=SpanKind.CLIENT,
            attributes=child_attrs,
            start_time=start,
        )
        start += int(ms * MS)
        span.end(end_time=start)
    root.end(end_time=T0 + int(root_ms * MS))


def order(ms: float, order_id: int = 1, **extra: Any) -> tuple[dict[str, Any], float]:
    return {"db.system": "postgresql", "db.statement": ORDER.format(id=order_id), **extra}, ms


def warm(otel: OTel, times: int, ms: float = 5.0) -> None:
    """``times`` earlier requests, each running the order query once in ``ms``."""
    for i in range(times):
        request(otel.tracer, [order(ms, order_id=i)])


def attrs_of(record: ReadableLogRecord) -> Mapping[str, Any]:
    return record.log_record.attributes or {}


def evidence(record: ReadableLogRecord, key: str) -> Any:
    return attrs_of(record)[f"otel_apm.finding.evidence.{key}"]


# -- slow_query_outlier ------------------------------------------------------------------------------


def test_a_query_far_over_its_recent_p95_is_an_outlier(otel: OTel) -> None:
    warm(otel, 20)
    request(otel.tracer, [order(40, order_id=999)])
    (finding,) = otel.events("slow_query_outlier")
    a = attrs_of(finding)
    assert a["db.query.text"] == NORMALIZED_ORDER
    assert evidence(finding, "recent_p95_ms") == 5.0
    assert a["otel_apm.finding.impact_ms"] == 35.0  # 40 less its usual 5
    assert a["otel_apm.finding.count"] == 1
    assert "8.0x" in a["otel_apm.finding.title"]
    recommendation = a["otel_apm.finding.recommendation"]
    assert "5.0 ms" in recommendation and "40.0 ms" in recommendation and "35.0 ms" in recommendation
    assert "lock" in recommendation
    assert otel.events("slow_query") == []


def test_at_most_factor_times_the_p95_is_not_an_outlier(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel(slow_query_outlier_min_ms=1.0)
    warm(otel, 20)
    request(otel.tracer, [order(14.9)])
    assert otel.events("slow_query_outlier") == []
    request(otel.tracer, [order(15.0)])  # exactly 3 x 5 ms
    assert len(otel.events("slow_query_outlier")) == 1


def test_fewer_earlier_executions_than_min_samples_judge_nothing(otel: OTel) -> None:
    warm(otel, 19)
    request(otel.tracer, [order(40)])
    assert otel.events("slow_query_outlier") == []
    request(otel.tracer, [order(40)])  # now 20 earlier executions (the last one among them)
    assert len(otel.events("slow_query_outlier")) == 1


def test_an_outlier_faster_than_min_ms_is_noise(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel()
    warm(otel, 20, ms=2.0)
    request(otel.tracer, [order(9.0)])  # 4.5 x p95 but under 10 ms
    assert otel.events("slow_query_outlier") == []
    otel = make_otel(slow_query_outlier_min_ms=5.0)
    warm(otel, 20, ms=2.0)
    request(otel.tracer, [order(9.0)])
    assert len(otel.events("slow_query_outlier")) == 1


def test_a_trace_is_not_compared_with_itself(otel: OTel) -> None:
    request(otel.tracer, [*[order(5, order_id=i) for i in range(20)], order(40)])
    assert otel.events("slow_query_outlier") == []
    request(otel.tracer, [order(40)])  # the 21 executions above are now the history
    (finding,) = otel.events("slow_query_outlier")
    assert evidence(finding, "recent_p95_ms") == 5.0


def test_cached_executions_are_not_history(otel: OTel) -> None:
    for _ in range(20):
        request(otel.tracer, [order(5, **{"cache.hit": True})])
    request(otel.tracer, [order(40)])
    assert otel.events("slow_query_outlier") == []


def test_over_the_absolute_threshold_it_is_a_slow_query_naming_the_recent_p95(otel: OTel) -> None:
    request(otel.tracer, [order(150)])
    (first,) = otel.events("slow_query")
    assert "otel_apm.finding.evidence.recent_p95_ms" not in attrs_of(first)  # no history yet
    warm(otel, 20)
    request(otel.tracer, [order(150)])
    assert otel.events("slow_query_outlier") == []
    second = otel.events("slow_query")[-1]
    # 21 earlier executions: the first slow one and 20 of 5 ms; the p95 is 5 ms.
    assert evidence(second, "recent_p95_ms") == 5.0


def test_slow_query_reads_the_history_before_this_trace_is_recorded(otel: OTel) -> None:
    """With slow_query reading after the recording, the 20 fast spans below would be history."""
    request(otel.tracer, [*[order(5, order_id=i) for i in range(20)], order(150)])
    (finding,) = otel.events("slow_query")
    assert "otel_apm.finding.evidence.recent_p95_ms" not in attrs_of(finding)


def db_view(sid: int, service: str, ms: float) -> SpanView:
    view = SpanView(7, sid, 1, "SELECT", KIND_CLIENT, 0, int(ms * MS), False, service, DB)
    view.db_system = "postgresql"
    view.statement = ORDER.format(id=sid)
    return view


def outliers(analyzer: Analyzer, service: str, ms: float) -> list[Finding]:
    root = SpanView(7, 1, 0, "job", KIND_SERVER, 0, 1000 * MS, False, service, HTTP_SERVER)
    trace_ = Trace(7, [root, db_view(2, service, ms)], root)
    return [f for f in analyzer.analyze(trace_) if f.type == "slow_query_outlier"]


def test_the_history_is_per_service() -> None:
    analyzer = Analyzer(APMConfig())
    for _ in range(20):
        assert outliers(analyzer, "shop", 5) == []
    assert outliers(analyzer, "billing", 40) == []  # billing's query has no history
    (finding,) = outliers(analyzer, "shop", 40)
    assert finding.service == "shop"


# -- large_payload -----------------------------------------------------------------------------------

EXPORT = "http://files.internal/exports/8d3c0a6f-4b8e-4a51-9c1e-2f6a7b9d0e11?format=csv"


def get(url: str, **sizes: int) -> dict[str, Any]:
    return {"http.request.method": "GET", "url.full": url, "server.address": "files.internal", **sizes}


@pytest.mark.parametrize(("size", "fires"), [(999_999, False), (1_000_000, True), (4_000_000, True)])
def test_a_response_body_at_or_over_the_size_is_a_large_payload(otel: OTel, size: int, fires: bool) -> None:
    request(otel.tracer, [(get(EXPORT, **{"http.response.body.size": size}), 400)])
    assert len(otel.events("large_payload")) == (1 if fires else 0)


def test_a_large_response_finding_names_the_call_sizes_and_the_time_to_save(otel: OTel) -> None:
    request(otel.tracer, [(get(EXPORT, **{"http.response.body.size": 4_000_000}), 400)])
    (finding,) = otel.events("large_payload")
    a = attrs_of(finding)
    assert evidence(finding, "direction") == "response"
    assert evidence(finding, "span.kind") == "client"
    assert evidence(finding, "size_bytes") == 4_000_000
    assert evidence(finding, "http.target") == "GET http://files.internal/exports/{id}?format=?"
    assert a["otel_apm.finding.impact_ms"] == 300.0  # 400 ms x 3 of the 4 MB over the limit
    assert a["otel_apm.finding.title"] == (
        "Large HTTP response: GET http://files.internal/exports/{id}?format=? received 4.0 MB (limit 1.0 MB)"
    )
    recommendation = a["otel_apm.finding.recommendation"]
    assert "4.0 MB" in recommendation and "300.0 ms" in recommendation
    for advice in ("page", "fields", "gzip", "stream"):
        assert advice in recommendation


def test_a_large_request_body_is_reported_as_sent(otel: OTel) -> None:
    post = {**get(EXPORT), "http.request.method": "POST", "http.request.body.size": 2_000_000}
    request(otel.tracer, [(post, 100)])
    (finding,) = otel.events("large_payload")
    assert evidence(finding, "direction") == "request"
    assert " sent 2.0 MB" in attrs_of(finding)["otel_apm.finding.title"]
    assert "gzip" in attrs_of(finding)["otel_apm.finding.recommendation"]


def test_a_server_response_counts_the_handler_s_own_time(otel: OTel) -> None:
    """1000 ms request, 400 ms of it in a query: 600 ms of its own, half of the 2 MB over."""
    request(
        otel.tracer,
        [order(400)],
        root_attrs={"http.response_content_length": 2_000_000},  # the older attribute
        root_ms=1000,
    )
    (finding,) = otel.events("large_payload")
    a = attrs_of(finding)
    assert evidence(finding, "span.kind") == "server"
    assert evidence(finding, "http.target") == "GET /orders"
    assert a["otel_apm.finding.impact_ms"] == 300.0
    assert "Paginate" in a["otel_apm.finding.recommendation"]


def test_small_bodies_and_unknown_sizes_are_not_reported(otel: OTel) -> None:
    request(
        otel.tracer,
        [
            (get(EXPORT, **{"http.response.body.size": 1200, "http.request.body.size": 10}), 400),
            (get(EXPORT), 400),
        ],
    )
    assert otel.events("large_payload") == []


def test_the_size_is_a_setting(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel(large_payload_bytes=1000)
    request(otel.tracer, [(get(EXPORT, **{"http.response.body.size": 1200}), 400)])
    (finding,) = otel.events("large_payload")
    assert "1.2 kB (limit 1.0 kB)" in attrs_of(finding)["otel_apm.finding.title"]


def test_large_payload_from_otlp_in_the_collector_analyzer() -> None:
    """A client span with the older content-length attribute, on the wire, into the collector's engine."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "reports"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    old = {
        "http.method": "GET",
        "http.url": EXPORT,
        "net.peer.name": "files.internal",
        "http.response_content_length": 3_000_000,
    }
    request(provider.get_tracer("tests"), [(old, 300)])
    provider.shutdown()
    wire = ExportTraceServiceRequest()
    wire.ParseFromString(encode_spans(exporter.get_finished_spans()).SerializeToString())
    views = views_from_request(wire)
    root = next(v for v in views if not v.parent_id)
    (finding,) = [
        f
        for f in Analyzer(APMConfig()).analyze(Trace(root.trace_id, views, root))
        if f.type == "large_payload"
    ]
    assert (finding.service, finding.endpoint) == ("reports", "GET /orders")
    assert finding.evidence["size_bytes"] == 3_000_000
    assert finding.impact_ms == 200.0  # 300 ms x 2 of the 3 MB over


def test_a_sub_millisecond_p95_is_shown_with_its_digits(otel: OTel) -> None:
    warm(otel, 20, ms=0.05)
    request(otel.tracer, [order(12)])
    (finding,) = otel.events("slow_query_outlier")
    assert "its recent p95 of 0.05 ms" in attrs_of(finding)["otel_apm.finding.title"]
