"""The collector end to end, over real sockets: real OTLP exporters in, the OTLPSink downstream.

Every collector here runs in-process through ``CollectorService`` on ephemeral ports (one test
runs the ``otel-apm collector`` command as a subprocess and stops it with SIGTERM).  What the
tests check is what arrives downstream: spans by span id, log records and metrics byte for byte,
finding events and metrics, and the collector's own /metrics.

Helpers here (``collector``, ``n_plus_one_trace``, ``raw_grpc``, ...) are imported by the other
``test_collector_*.py`` files.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
import requests
from conftest import clean_environ
from google.protobuf.message import Message  # type: ignore[import-untyped, unused-ignore]
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from otlp_sink import OTLPSink, attributes, span_ids

from otel_apm.collector.config import CollectorConfig, load_config
from otel_apm.collector.service import CollectorService
from otel_apm.collector.telemetry import parse_prometheus

OTEL_APM = Path(sys.executable).parent / "otel-apm"
TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOGS = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
METRICS = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"

# -- harness -----------------------------------------------------------------------------------------


def collector_config(downstream: str | None = None, **overrides: Any) -> CollectorConfig:
    """Ephemeral ports on 127.0.0.1, quick assembly and retries, console off; ``overrides`` by
    dotted key path with ``__`` for the dots (``downstream__queue_size=1``)."""
    settings: dict[str, Any] = {
        "receivers.grpc.endpoint": "127.0.0.1:0",
        "receivers.http.endpoint": "127.0.0.1:0",
        "telemetry.endpoint": "127.0.0.1:0",
        "downstream.endpoint": downstream,
        "downstream.retry.initial_interval_s": 0.05,
        "downstream.retry.max_interval_s": 0.2,
        "downstream.retry.max_elapsed_s": 30,
        "assembly.idle_timeout_s": 0.2,
        "analysis.console_enabled": False,
        "shutdown.timeout_s": 10,
    }
    settings.update({key.replace("__", "."): value for key, value in overrides.items()})
    return load_config(overrides=settings, environ={})


class Collector:
    """A started CollectorService and the addresses to reach it."""

    def __init__(self, service: CollectorService) -> None:
        self.service = service

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.service.grpc_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.service.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.service.http_port}"

    def telemetry(self) -> dict[str, float]:
        """The collector's /metrics, scraped over HTTP and parsed."""
        url = f"http://127.0.0.1:{self.service.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return parse_prometheus(response.read().decode())

    def value(self, series: str) -> float:
        """One series of /metrics (of the registry behind it once the collector has stopped)."""
        if not self.service.running:
            return self.service.telemetry.snapshot().get(series, 0.0)
        return self.telemetry().get("otel_apm_collector_" + series, 0.0)

    def shutdown(self) -> bool:
        return self.service.shutdown()


@pytest.fixture
def start_collector() -> Iterator[Callable[..., Collector]]:
    """``start_collector(sink.endpoint, downstream__queue_size=1)``; every collector is stopped after."""
    started: list[CollectorService] = []

    def start(downstream: str | None = None, **overrides: Any) -> Collector:
        service = CollectorService(collector_config(downstream, **overrides)).start()
        started.append(service)
        return Collector(service)

    yield start
    for service in started:
        service.shutdown(5)


@pytest.fixture
def sink() -> Iterator[OTLPSink]:
    with OTLPSink() as s:
        yield s


def tracer_provider(
    exporter: SpanExporter, service: str = "shop"
) -> tuple[TracerProvider, InMemorySpanExporter]:
    """A real SDK pipeline exporting to ``exporter`` (synchronously) and to memory, to compare."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, memory


def n_plus_one_trace(provider: TracerProvider, queries: int = 6, route: str = "/authors") -> None:
    """One request with an N+1: a server span and ``queries`` sibling SELECTs of one shape."""
    tracer = provider.get_tracer("tests")
    with tracer.start_as_current_span(
        f"GET {route}",
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "GET", "http.route": route, "http.response.status_code": 200},
    ):
        with tracer.start_as_current_span(
            "SELECT authors", kind=SpanKind.CLIENT, attributes={"db.system": "postgresql"}
        ) as span:
            span.set_attribute("db.statement", "SELECT id, name FROM authors")
        for i in range(queries):
            with tracer.start_as_current_span(
                "SELECT books",
                kind=SpanKind.CLIENT,
                attributes={
                    "db.system": "postgresql",
                    "db.statement": f"SELECT id, title FROM books WHERE author_id = {i + 1}",
                },
            ):
                pass


def finding_events(sink: OTLPSink, finding_type: str | None = None) -> list[dict[str, Any]]:
    """Attributes of the finding events the sink received (with the resource's service name)."""
    out = []
    for resource, record in sink.log_records():
        if record.event_name != "otel_apm.finding":
            continue
        attrs = attributes(record.attributes)
        if finding_type is None or attrs.get("otel_apm.finding.type") == finding_type:
            out.append(
                {
                    **attrs,
                    "_resource_service": resource.get("service.name"),
                    "_trace_id": record.trace_id.hex(),
                }
            )
    return out


def raw_grpc(address: str, method: str, body: bytes, **kwargs: Any) -> tuple[grpc.StatusCode, Any, bytes]:
    """One unary call with raw bytes: (status code, the error or None, response bytes)."""
    options = kwargs.pop("options", None)
    credentials = kwargs.pop("credentials", None)
    channel = (
        grpc.secure_channel(address, credentials, options=options)
        if credentials is not None
        else grpc.insecure_channel(address, options=options)
    )
    try:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            return grpc.StatusCode.OK, None, call(body, timeout=10, **kwargs)
        except grpc.RpcError as error:
            return error.code(), error, b""
    finally:
        channel.close()


def spans_request(*specs: tuple[bytes, bytes, bytes], service: str = "raw") -> ExportTraceServiceRequest:
    """An ExportTraceServiceRequest of spans given as (trace_id, span_id, parent_span_id)."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", service
    ss = rs.scope_spans.add()
    for trace_id, span_id, parent in specs:
        span = ss.spans.add()
        span.trace_id, span.span_id, span.parent_span_id = trace_id, span_id, parent
        span.name = f"span-{span_id.hex()}"
        span.start_time_unix_nano = 1_700_000_000_000_000_000
        span.end_time_unix_nano = 1_700_000_000_001_000_000
    return request


def with_unknown_field(message: Message) -> bytes:
    """The message's bytes plus a field no OTLP version defines (number 1000, varint 7): a
    forwarder that re-encodes through the schema it knows would lose it, one that forwards the
    bytes keeps it."""
    return bytes(message.SerializeToString()) + b"\xc0\x3e\x07"


# -- forwarding --------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_every_span_is_forwarded_and_the_n_plus_one_is_reported(
    transport: str, sink: OTLPSink, start_collector: Callable[..., Collector]
) -> None:
    col = start_collector(sink.endpoint)
    exporter: SpanExporter = (
        OTLPSpanExporter(endpoint=col.grpc_endpoint, insecure=True)
        if transport == "grpc"
        else HttpSpanExporter(endpoint=f"{col.http_url}/v1/traces", compression=HttpCompression.Gzip)
    )
    provider, memory = tracer_provider(exporter)
    for _ in range(3):
        n_plus_one_trace(provider)
    sent = {format(s.context.span_id, "016x") for s in memory.get_finished_spans()}
    assert len(sent) == 3 * 8
    sink.wait_for(lambda: span_ids(sink.spans()) >= sent, message="every span forwarded")
    sink.wait_for(lambda: len(finding_events(sink, "n_plus_one_query")) >= 3, message="3 N+1 events")
    provider.shutdown()

    assert span_ids(sink.spans()) == sent  # nothing lost, nothing invented
    events = finding_events(sink, "n_plus_one_query")
    trace_ids = {format(s.context.trace_id, "032x") for s in memory.get_finished_spans()}
    assert {e["_trace_id"] for e in events} == trace_ids  # each event is linked to its trace
    event = events[0]
    assert event["_resource_service"] == "otel-apm-collector"
    assert event["otel_apm.finding.service"] == "shop"
    assert event["otel_apm.finding.endpoint"] == "GET /authors"
    assert event["otel_apm.finding.count"] == 6
    assert event["db.query.text"].lower() == "select id, title from books where author_id = ?"
    assert col.value('findings_total{type="n_plus_one_query"}') == 3
    assert col.value("spans_received_total") == 24
    sink.wait_for(lambda: col.value('requests_forwarded_total{signal="traces"}') == 24)  # a request a span

    assert col.shutdown()
    # the findings' metrics are flushed at shutdown, under the collector's own resource
    counts = sink.data_points("otel_apm.findings")  # cumulative: the last export has the total
    assert counts[-1].as_int == 3
    assert attributes(counts[0].attributes)["otel_apm.finding.type"] == "n_plus_one_query"
    assert {r.get("service.name") for r, m in sink.metrics()} == {"otel-apm-collector"}
    durations = sink.data_points("otel_apm.transaction.duration")
    assert durations[-1].count == 3


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_logs_and_metrics_from_real_exporters_are_forwarded(
    transport: str, sink: OTLPSink, start_collector: Callable[..., Collector]
) -> None:
    col = start_collector(sink.endpoint)
    resource = Resource.create({"service.name": "billing"})
    if transport == "grpc":
        log_exporter: Any = OTLPLogExporter(endpoint=col.grpc_endpoint, insecure=True)
        metric_exporter: Any = OTLPMetricExporter(endpoint=col.grpc_endpoint, insecure=True)
    else:
        log_exporter = HttpLogExporter(endpoint=f"{col.http_url}/v1/logs")
        metric_exporter = HttpMetricExporter(endpoint=f"{col.http_url}/v1/metrics")
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
    reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=3_600_000)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    logger = logger_provider.get_logger("tests")
    for i in range(5):
        logger.emit(body=f"invoice {i} paid", severity_number=SeverityNumber.INFO, attributes={"invoice": i})
    meter_provider.get_meter("tests").create_counter("invoices").add(5, {"currency": "EUR"})
    logger_provider.shutdown()
    meter_provider.shutdown()

    records = sink.wait_for(lambda: len(sink.log_records()) >= 5 and sink.log_records())
    assert records is not False  # wait_for returns only what is truthy
    assert sorted(str(r.body.string_value) for _, r in records) == [f"invoice {i} paid" for i in range(5)]
    assert {res["service.name"] for res, _ in records} == {"billing"}
    sink.wait_for(lambda: "invoices" in sink.metric_names())
    points = sink.data_points("invoices")
    assert [p.as_int for p in points] == [5]
    assert attributes(points[0].attributes) == {"currency": "EUR"}
    assert col.value("log_records_received_total") == 5
    assert col.value("data_points_received_total") == 1


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_requests_are_forwarded_byte_for_byte(
    transport: str, sink: OTLPSink, start_collector: Callable[..., Collector]
) -> None:
    """Unknown fields survive: the payload is forwarded as received, not re-encoded."""
    col = start_collector(sink.endpoint)
    logs = ExportLogsServiceRequest()
    record = logs.resource_logs.add().scope_logs.add().log_records.add()
    record.body.string_value = "hello"
    metrics = ExportMetricsServiceRequest()
    metric = metrics.resource_metrics.add().scope_metrics.add().metrics.add()
    metric.name = "queue.depth"
    metric.gauge.data_points.add().as_int = 7
    traces = spans_request((b"\x01" * 16, b"\x02" * 8, b""))
    payloads = {
        "logs": with_unknown_field(logs),
        "metrics": with_unknown_field(metrics),
        "traces": with_unknown_field(traces),
    }
    for signal_name, payload in payloads.items():
        if transport == "grpc":
            method = {"logs": LOGS, "metrics": METRICS, "traces": TRACES}[signal_name]
            code, error, _ = raw_grpc(col.grpc_address, method, payload)
            assert code == grpc.StatusCode.OK, error
        else:
            r = requests.post(
                f"{col.http_url}/v1/{signal_name}",
                data=payload,
                headers={"Content-Type": "application/x-protobuf"},
                timeout=10,
            )
            assert r.status_code == 200, r.text
            assert r.headers["Content-Type"] == "application/x-protobuf"
    sink.wait_for(lambda: sink.log_requests and sink.metric_requests and sink.trace_requests)
    assert sink.log_requests[0].SerializeToString() == payloads["logs"]
    assert sink.metric_requests[0].SerializeToString() == payloads["metrics"]
    assert sink.trace_requests[0].SerializeToString() == payloads["traces"]


def test_otlp_json_is_forwarded_as_protobuf_and_answered_in_json(
    sink: OTLPSink, start_collector: Callable[..., Collector]
) -> None:
    col = start_collector(sink.endpoint)
    trace_id, root_id, child_id = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", "eee19b7ec3c1b173"
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-svc"}}]},
                "scopeSpans": [
                    {
                        "scope": {"name": "manual"},
                        "spans": [
                            {
                                "traceId": trace_id,
                                "spanId": root_id,
                                "name": "GET /json",
                                "kind": 2,
                                "startTimeUnixNano": "1700000000000000000",
                                "endTimeUnixNano": "1700000000500000000",
                                "attributes": [
                                    {"key": "http.request.method", "value": {"stringValue": "GET"}}
                                ],
                            },
                            {
                                "traceId": trace_id,
                                "spanId": child_id,
                                "parentSpanId": root_id,
                                "name": "child",
                                "startTimeUnixNano": 1700000000100000000,
                                "endTimeUnixNano": 1700000000200000000,
                                "unknownFieldFromTheFuture": {"x": 1},
                            },
                        ],
                    }
                ],
            }
        ]
    }
    r = requests.post(f"{col.http_url}/v1/traces", json=body, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {}
    sink.wait_for(lambda: len(sink.spans()) == 2)
    (resource, root), (_, child) = sink.spans()
    assert resource["service.name"] == "json-svc"
    assert root.trace_id.hex() == trace_id and root.span_id.hex() == root_id
    assert child.parent_span_id.hex() == root_id
    assert root.end_time_unix_nano == 1700000000500000000
    assert col.value("spans_received_total") == 2


@pytest.mark.parametrize("transport", ["grpc", "http-protobuf", "http-json"])
def test_spans_with_invalid_ids_are_rejected_as_partial_success(
    transport: str, sink: OTLPSink, start_collector: Callable[..., Collector]
) -> None:
    col = start_collector(sink.endpoint)
    good = (b"\x0a" * 16, b"\x0b" * 8, b"")
    request = spans_request(
        good,
        (b"\x0a" * 15, b"\x0c" * 8, b""),  # short trace id
        (b"\x00" * 16, b"\x0d" * 8, b""),  # all-zero trace id
        (b"\x0a" * 16, b"\x00" * 8, b""),  # all-zero span id
        (b"\x0a" * 16, b"\x0e" * 8, b"\x01\x02"),  # parent id of 2 bytes
    )
    if transport == "grpc":
        code, error, body = raw_grpc(col.grpc_address, TRACES, request.SerializeToString())
        assert code == grpc.StatusCode.OK, error
        response = ExportTraceServiceResponse.FromString(body)
        rejected, message = response.partial_success.rejected_spans, response.partial_success.error_message
    elif transport == "http-protobuf":
        r = requests.post(
            f"{col.http_url}/v1/traces",
            data=request.SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
            timeout=10,
        )
        assert r.status_code == 200
        response = ExportTraceServiceResponse.FromString(r.content)
        rejected, message = response.partial_success.rejected_spans, response.partial_success.error_message
    else:
        from google.protobuf import json_format  # type: ignore[import-untyped, unused-ignore]

        doc = json_format.MessageToDict(request)
        # OTLP/JSON ids are hex: rewrite protobuf's base64
        import base64

        for span in doc["resourceSpans"][0]["scopeSpans"][0]["spans"]:
            for key in ("traceId", "spanId", "parentSpanId"):
                if key in span:
                    span[key] = base64.b64decode(span[key]).hex()
        r = requests.post(f"{col.http_url}/v1/traces", json=doc, timeout=10)
        assert r.status_code == 200, r.text
        partial = r.json()["partialSuccess"]
        rejected, message = int(partial["rejectedSpans"]), partial["errorMessage"]
    assert rejected == 4
    assert "trace_id must be 16 bytes" in message
    sink.wait_for(lambda: sink.spans())
    assert span_ids(sink.spans()) == {good[1].hex()}  # the valid span went on, the others did not
    assert col.value('spans_refused_total{reason="invalid_id"}') == 4


def test_downstream_down_then_back_loses_no_span(start_collector: Callable[..., Collector]) -> None:
    """The downstream first fails every call (UNAVAILABLE), then is gone (connection refused),
    then comes back on the same port: the forwarder retries until every span is delivered."""
    first = OTLPSink().start()
    port = first.port
    first.reject(grpc.StatusCode.UNAVAILABLE, times=3)
    col = start_collector(first.endpoint)
    provider, memory = tracer_provider(OTLPSpanExporter(endpoint=col.grpc_endpoint, insecure=True))
    n_plus_one_trace(provider)
    first.wait_for(lambda: first.rejected >= 3, message="the downstream refused three times")
    first.wait_for(lambda: len(first.spans()) == 8, message="delivered after the refusals")
    first.wait_for(lambda: col.value('requests_forwarded_total{signal="traces"}') == 8)  # answers seen
    first.stop()  # now the downstream is gone altogether
    n_plus_one_trace(provider, route="/books")
    n_plus_one_trace(provider, route="/reviews")
    with OTLPSink(port=port) as second:
        sent = {format(s.context.span_id, "016x") for s in memory.get_finished_spans()}
        second.wait_for(lambda: len(second.spans()) >= 16, timeout=30)
        assert span_ids(first.spans()) | span_ids(second.spans()) == sent
        assert col.value('forward_retries_total{signal="traces"}') >= 4
        assert col.value('requests_dropped_total{signal="traces"}') == 0
        assert col.shutdown()
    provider.shutdown()


def test_shutdown_flushes_the_queue_to_a_downstream_that_recovers(
    sink: OTLPSink, start_collector: Callable[..., Collector]
) -> None:
    """Requests still queued (the downstream is failing) when shutdown begins are delivered by
    it, together with the findings of the traces it analyzes on the way out."""
    col = start_collector(sink.endpoint, assembly__idle_timeout_s=600)
    sink.reject(grpc.StatusCode.UNAVAILABLE)
    provider, memory = tracer_provider(OTLPSpanExporter(endpoint=col.grpc_endpoint, insecure=True))
    n_plus_one_trace(provider)
    sink.wait_for(lambda: sink.rejected >= 1)
    result: list[bool] = []
    stopping = threading.Thread(target=lambda: result.append(col.service.shutdown(10)))
    stopping.start()
    sink.wait_for(lambda: not col.service.running)
    sink.reject(None)
    stopping.join(15)
    assert result == [True]
    assert span_ids(sink.spans()) == {format(s.context.span_id, "016x") for s in memory.get_finished_spans()}
    assert len(finding_events(sink, "n_plus_one_query")) == 1
    assert col.value('requests_dropped_total{signal="traces"}') == 0
    provider.shutdown()


def test_what_the_downstream_refuses_or_keeps_failing_is_counted_and_logged(
    sink: OTLPSink, start_collector: Callable[..., Collector], caplog: pytest.LogCaptureFixture
) -> None:
    """A request the downstream refuses for good (INVALID_ARGUMENT) is not retried; one still
    failing after retry.max_elapsed_s is given up: both counted and logged."""
    col = start_collector(sink.endpoint, downstream__retry__max_elapsed_s=0.3)
    one_span = spans_request((b"\x01" * 16, b"\x02" * 8, b"")).SerializeToString()
    sink.reject(grpc.StatusCode.INVALID_ARGUMENT, times=1)
    assert raw_grpc(col.grpc_address, TRACES, one_span)[0] == grpc.StatusCode.OK
    sink.wait_for(lambda: col.value('requests_dropped_total{signal="traces"}') == 1)
    assert "downstream refused it: gRPC INVALID_ARGUMENT" in caplog.text
    assert sink.rejected == 1  # not retried

    sink.reject(grpc.StatusCode.UNAVAILABLE)
    assert raw_grpc(col.grpc_address, TRACES, one_span)[0] == grpc.StatusCode.OK
    sink.wait_for(lambda: col.value('requests_dropped_total{signal="traces"}') == 2)
    assert "still failing after" in caplog.text
    assert sink.rejected >= 3  # retried before giving up
    assert col.value('items_dropped_total{signal="traces"}') == 2
    assert col.value('requests_forwarded_total{signal="traces"}') == 0
    assert not sink.spans()
    sink.reject(None)  # so that the findings' metrics flush at once when the collector stops


def test_what_is_left_at_the_shutdown_deadline_is_counted_and_logged(
    sink: OTLPSink, start_collector: Callable[..., Collector], caplog: pytest.LogCaptureFixture
) -> None:
    col = start_collector(sink.endpoint, downstream__workers=1)
    sink.reject(grpc.StatusCode.UNAVAILABLE)  # and it never comes back
    three_spans = spans_request(*[(b"\x03" * 16, bytes([i]) * 8, b"") for i in (1, 2, 3)])
    for _ in range(2):
        assert raw_grpc(col.grpc_address, TRACES, three_spans.SerializeToString())[0] == grpc.StatusCode.OK
    assert col.service.shutdown(1.0) is False
    assert col.value('requests_dropped_total{signal="traces"}') == 2
    assert col.value('items_dropped_total{signal="traces"}') == 6
    assert col.value('requests_forwarded_total{signal="traces"}') == 0
    assert "shutdown deadline" in caplog.text
    assert not sink.spans()


def test_findings_reach_an_http_downstream_through_a_chain(
    sink: OTLPSink, start_collector: Callable[..., Collector]
) -> None:
    """Edge collector -> (OTLP/HTTP) -> second collector (forward only) -> sink: the HTTP forwarder
    and the HTTP exporters of findings, against a real OTLP/HTTP receiver."""
    relay = start_collector(sink.endpoint, analysis__enabled=False)
    edge = start_collector(relay.http_url, downstream__protocol="http/protobuf")
    provider, memory = tracer_provider(OTLPSpanExporter(endpoint=edge.grpc_endpoint, insecure=True))
    n_plus_one_trace(provider)
    sent = {format(s.context.span_id, "016x") for s in memory.get_finished_spans()}
    sink.wait_for(lambda: span_ids(sink.spans()) == sent)
    sink.wait_for(lambda: finding_events(sink, "n_plus_one_query"))
    assert edge.shutdown()
    sink.wait_for(lambda: "otel_apm.findings" in sink.metric_names())
    assert relay.value("traces_analyzed_total") == 0
    assert edge.value("traces_analyzed_total") == 1
    provider.shutdown()


# -- back-pressure -------------------------------------------------------------------------------------


class _Recording(SpanExporter):
    """Wraps a real exporter and keeps each export's result."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.results: list[SpanExportResult] = []

    def export(self, spans: Any) -> SpanExportResult:
        result = self.inner.export(spans)
        self.results.append(result)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()


def _export_in_thread(
    exporter: SpanExporter, spans: list[ReadableSpan]
) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(exporter.export(spans)), daemon=True)
    t.start()
    return t, out


def _finished_batches(count: int) -> list[list[ReadableSpan]]:
    """``count`` traces of 8 spans each, ended, as an exporter would get them."""
    provider, memory = tracer_provider(InMemorySpanExporter())
    batches = []
    for i in range(count):
        n_plus_one_trace(provider, route=f"/r{i}")
        batches.append(list(memory.get_finished_spans()))
        memory.clear()
    provider.shutdown()
    return batches


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_a_full_forward_queue_pushes_back_and_the_exporter_retries(
    transport: str, sink: OTLPSink, start_collector: Callable[..., Collector]
) -> None:
    col = start_collector(
        sink.endpoint,
        downstream__queue_size=1,
        downstream__workers=1,
        receivers__retry_after_s=0.5,
    )
    exporter: SpanExporter = (
        OTLPSpanExporter(endpoint=col.grpc_endpoint, insecure=True, timeout=20)
        if transport == "grpc"
        else HttpSpanExporter(endpoint=f"{col.http_url}/v1/traces", timeout=20)
    )
    a, b, c = _finished_batches(3)
    sink.reject(grpc.StatusCode.UNAVAILABLE)  # the downstream is down: the worker keeps retrying
    assert exporter.export(a) == SpanExportResult.SUCCESS
    sink.wait_for(lambda: sink.rejected >= 1)  # the worker holds batch a
    assert exporter.export(b) == SpanExportResult.SUCCESS  # b waits in the queue
    thread, result = _export_in_thread(exporter, c)  # c is refused: RESOURCE_EXHAUSTED / 429
    sink.wait_for(lambda: col.value('requests_refused_total{reason="queue_full"}') >= 1)
    sink.reject(None)  # the downstream is back
    thread.join(30)
    assert result == [SpanExportResult.SUCCESS]
    sent = {format(s.context.span_id, "016x") for s in a + b + c}
    sink.wait_for(lambda: span_ids(sink.spans()) == sent)
    assert col.value('spans_refused_total{reason="queue_full"}') >= 8
    assert col.value('requests_dropped_total{signal="traces"}') == 0
    exporter.shutdown()


def test_refusal_carries_retry_info_and_too_many_spans_in_flight_push_back(
    sink: OTLPSink, start_collector: Callable[..., Collector]
) -> None:
    """The status details of RESOURCE_EXHAUSTED hold a google.rpc.RetryInfo; once the assembler
    has room again (the first trace was analyzed) the real exporter's retry gets through."""
    from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]

    col = start_collector(
        sink.endpoint,
        assembly__max_spans_in_flight=10,
        assembly__max_wait_s=1.5,
        receivers__retry_after_s=0.5,
    )
    a, b = _finished_batches(2)
    no_root_a = [s for s in a if s.parent is not None]  # 7 spans, no root: held until max_wait_s
    request = spans_request(
        *[(s.context.trace_id.to_bytes(16, "big"), s.context.span_id.to_bytes(8, "big"), b"") for s in b]
    )
    exporter = OTLPSpanExporter(endpoint=col.grpc_endpoint, insecure=True, timeout=20)
    assert exporter.export(no_root_a) == SpanExportResult.SUCCESS

    code, error, _ = raw_grpc(col.grpc_address, TRACES, request.SerializeToString())
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = dict(error.trailing_metadata())
    status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    assert status.code == 8
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.ToNanoseconds() == 500_000_000
    assert "too many spans" in error.details()
    # over HTTP: 429, Retry-After, and the same Status in the request's content type
    from google.protobuf import json_format  # type: ignore[import-untyped, unused-ignore]

    r = requests.post(f"{col.http_url}/v1/traces", json=json_format.MessageToDict(request), timeout=10)
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "1"  # whole seconds, at least one
    assert r.headers["Content-Type"] == "application/json"
    doc = r.json()
    assert doc["code"] == 8
    assert doc["details"] == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.500s"}]

    assert exporter.export(b) == SpanExportResult.SUCCESS  # refused at first, then retried in
    sent = {format(s.context.span_id, "016x") for s in no_root_a + b}
    sink.wait_for(lambda: span_ids(sink.spans()) == sent)
    assert col.value('spans_refused_total{reason="spans_in_flight"}') >= 16
    assert col.value("incomplete_traces_total") >= 1
    exporter.shutdown()


# -- telemetry -------------------------------------------------------------------------------------------


def test_own_telemetry_on_prometheus_metrics(
    sink: OTLPSink, start_collector: Callable[..., Collector]
) -> None:
    col = start_collector(sink.endpoint)
    provider, _ = tracer_provider(OTLPSpanExporter(endpoint=col.grpc_endpoint, insecure=True))
    n_plus_one_trace(provider, queries=2)  # clean: under the N+1 threshold
    sink.wait_for(lambda: len(sink.spans()) == 4)
    base = f"http://127.0.0.1:{col.service.metrics_port}"
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = r.read().decode()
    assert "# TYPE otel_apm_collector_spans_received_total counter" in text
    assert "# TYPE otel_apm_collector_forward_queue_depth gauge" in text
    sink.wait_for(lambda: col.value("traces_analyzed_total") == 1)
    values = col.telemetry()
    assert values["otel_apm_collector_spans_received_total"] == 4
    assert values['otel_apm_collector_requests_received_total{signal="traces"}'] == 4
    assert values["otel_apm_collector_spans_in_flight"] == 0
    assert values["otel_apm_collector_traces_in_flight"] == 0
    assert values["otel_apm_collector_forward_queue_depth"] == 0
    assert values['otel_apm_collector_findings_total{type="n_plus_one_query"}'] == 0
    assert values["otel_apm_collector_analysis_errors_total"] == 0
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
        assert r.status == 200
    provider.shutdown()


def test_shutdown_closes_idle_keep_alive_connections(start_collector: Callable[..., Collector]) -> None:
    """A client holding a keep-alive connection open does not hold the collector's stop up."""
    import http.client

    col = start_collector(None)
    conn = http.client.HTTPConnection("127.0.0.1", col.service.http_port, timeout=10)
    body = spans_request((b"\x01" * 16, b"\x02" * 8, b"")).SerializeToString()
    conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
    response = conn.getresponse()
    response.read()
    assert response.status == 200
    assert not response.will_close  # HTTP/1.1 keep-alive
    assert col.service.shutdown(10) is True
    with pytest.raises((OSError, http.client.HTTPException)):
        conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
        conn.getresponse()
    conn.close()


# -- the command, stopped by SIGTERM with traces in flight -------------------------------------------------


@contextmanager
def collector_process(
    config: Path, *args: str
) -> Iterator[tuple[subprocess.Popen[str], dict[str, str], list[str]]]:
    """``otel-apm collector --config FILE``: (process, addresses from its start-up line, stderr lines)."""
    env = clean_environ()
    proc = subprocess.Popen(
        [str(OTEL_APM), "collector", "--config", str(config), *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    lines: list[str] = []
    ready = threading.Event()
    addresses: dict[str, str] = {}

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r"OTLP/gRPC (\S+), OTLP/HTTP (\S+?)[;,( ].*/metrics (\S+)", line)
            if m:
                addresses.update(grpc=m.group(1), http=m.group(2), metrics=m.group(3))
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(30), "".join(lines)
        assert addresses, "the collector did not start:\n" + "".join(lines)
        yield proc, addresses, lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        reader.join(5)


def test_sigterm_analyzes_and_forwards_what_is_in_flight_then_exits_0(sink: OTLPSink, tmp_path: Path) -> None:
    config = tmp_path / "collector.yaml"
    config.write_text(
        f"""
receivers:
  grpc: {{endpoint: "127.0.0.1:0"}}
  http: {{endpoint: "127.0.0.1:0"}}
downstream:
  endpoint: {sink.endpoint}
assembly:
  idle_timeout_s: 600     # nothing is analyzed before the signal
  max_wait_s: 600
  gc_young_threshold: 4321
analysis:
  n_plus_one_threshold: 5
  console_enabled: true
telemetry: {{endpoint: "127.0.0.1:0"}}
shutdown: {{timeout_s: 15}}
"""
    )
    with collector_process(config) as (proc, addresses, lines):
        provider, memory = tracer_provider(
            OTLPSpanExporter(endpoint=f"http://{addresses['grpc']}", insecure=True)
        )
        for route in ("/a", "/b"):
            n_plus_one_trace(provider, route=route)
        sent = {format(s.context.span_id, "016x") for s in memory.get_finished_spans()}
        sink.wait_for(lambda: span_ids(sink.spans()) == sent)
        with urllib.request.urlopen(f"http://{addresses['metrics']}/metrics", timeout=5) as r:
            values = parse_prometheus(r.read().decode())
        assert values["otel_apm_collector_traces_in_flight"] == 2  # both traces wait for analysis
        assert not finding_events(sink)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, "".join(lines)
        provider.shutdown()
    events = finding_events(sink, "n_plus_one_query")
    assert sorted(e["otel_apm.finding.endpoint"] for e in events) == ["GET /a", "GET /b"]
    assert "otel_apm.findings" in sink.metric_names()
    output = "".join(lines)
    assert "SIGTERM received, shutting down" in output
    assert "2 traces analyzed, 2 findings" in output
    assert "[otel-apm] WARNING n_plus_one_query" in output  # analysis.console_enabled
    assert "young-generation GC threshold 4321" in output  # the process's own, as set


def test_cli_invalid_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("downstream:\n  protocol: udp\n")
    result = subprocess.run(
        [str(OTEL_APM), "collector", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "downstream.protocol: expected grpc or http/protobuf, got 'udp'" in result.stderr


def test_cli_port_in_use_exits_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [
                str(OTEL_APM),
                "collector",
                "--http-endpoint",
                f"127.0.0.1:{port}",
                "--grpc-endpoint",
                "127.0.0.1:0",
                "--metrics-endpoint",
                "none",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_many_concurrent_exporters_lose_nothing(
    sink: OTLPSink, start_collector: Callable[..., Collector]
) -> None:
    col = start_collector(sink.endpoint)
    batches = _finished_batches(40)

    def send(i: int) -> SpanExportResult:
        exporter: SpanExporter = (
            OTLPSpanExporter(endpoint=col.grpc_endpoint, insecure=True)
            if i % 2
            else HttpSpanExporter(endpoint=f"{col.http_url}/v1/traces")
        )
        try:
            return exporter.export(batches[i])
        finally:
            exporter.shutdown()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, range(len(batches))))
    assert results == [SpanExportResult.SUCCESS] * len(batches)
    sent = {format(s.context.span_id, "016x") for batch in batches for s in batch}
    sink.wait_for(lambda: span_ids(sink.spans()) == sent)
    sink.wait_for(lambda: len(finding_events(sink, "n_plus_one_query")) == 40)
    assert col.shutdown()
