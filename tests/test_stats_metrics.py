"""Metrics of transactions and statements through the OTel Metrics API, with their cardinality
bound, from the processor (InMemoryMetricReader) and the collector (OTLP, exponential or explicit
histograms); and the collector's rolling statistics from OTLP traces."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import SERVICE_NAME, OTel
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from otlp_sink import OTLPSink, attributes
from test_collector import Collector, collector_config, n_plus_one_trace, start_collector, tracer_provider
from test_stats import INSERT, ORDERS, USERS, request

from otel_apm.collector.config import ConfigError as CollectorConfigError
from otel_apm.emit.metrics import DURATION_BUCKETS_S

__all__ = ["start_collector"]  # the fixture, imported for these tests

OVERFLOW = {"otel.metric.overflow": True}


@pytest.fixture
def sink() -> Iterator[OTLPSink]:
    with OTLPSink() as s:
        yield s


def points(otel: OTel, name: str) -> dict[frozenset[tuple[str, Any]], Any]:
    return {frozenset((p.attributes or {}).items()): p for p in otel.data_points(name)}


def test_series_per_endpoint_and_statement_up_to_the_bound_then_overflow(
    make_otel: Callable[..., OTel],
) -> None:
    otel = make_otel(metrics_max_endpoints=2, metrics_max_statements=2)
    base = time.time_ns()
    request(otel.tracer, "/users/{id}", base, 120.0, [(USERS, 2.0)] * 3, error=True)
    request(otel.tracer, "/users/{id}", base, 80.0, [(USERS, 4.0)])
    request(otel.tracer, "/orders", base, 300.0, [(INSERT, 40.0)], method="POST")
    request(otel.tracer, "/late", base, 10.0, [(ORDERS, 1.0)])  # third endpoint, third statement

    durations = points(otel, "otel_apm.transaction.duration")
    users = {
        "otel_apm.service": SERVICE_NAME,
        "otel_apm.endpoint": "GET /users/{id}",
        "http.route": "/users/{id}",
        "http.request.method": "GET",
    }
    failed = durations[frozenset({**users, "error.type": "_OTHER"}.items())]
    assert failed.count == 1 and failed.sum == pytest.approx(0.12)
    assert tuple(failed.explicit_bounds) == DURATION_BUCKETS_S  # the advisory buckets
    assert durations[frozenset(users.items())].count == 1
    assert durations[frozenset(OVERFLOW.items())].count == 1  # GET /late: past the bound
    assert len(durations) == 4  # users ok, users failed, POST /orders, overflow

    executions = points(otel, "otel_apm.db.statement.executions")
    select = next(p for k, p in executions.items() if ("db.query.summary", "SELECT users") in k)
    attrs = dict(select.attributes)
    assert attrs["db.system.name"] == "postgresql"
    assert (attrs["db.operation.name"], attrs["db.collection.name"]) == ("SELECT", "users")
    assert select.value == 4
    time_in = points(otel, "otel_apm.db.statement.duration")
    assert time_in[frozenset(attrs.items())].value == pytest.approx(0.010)
    assert executions[frozenset(OVERFLOW.items())].value == 1  # the ORDERS select, third statement
    queries = points(otel, "otel_apm.transaction.db.queries")
    assert queries[frozenset(OVERFLOW.items())].value == 1
    assert sum(p.value for p in queries.values()) == 6  # the totals stay right


def test_statement_metrics_can_be_turned_off(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel(metrics_max_statements=0)
    request(otel.tracer, "/users/{id}", time.time_ns(), 20.0, [(USERS, 2.0)])
    assert otel.data_points("otel_apm.db.statement.executions") == []
    assert [p.value for p in otel.data_points("otel_apm.transaction.db.queries")] == [1]


@pytest.mark.parametrize(
    ("histograms", "kind"), [("exponential", "exponential_histogram"), ("env", "histogram")]
)
def test_collector_histograms_and_statistics_from_otlp(
    histograms: str, kind: str, sink: OTLPSink, start_collector: Callable[..., Collector]
) -> None:
    col = start_collector(sink.endpoint, downstream__histograms=histograms)
    provider, _ = tracer_provider(OTLPSpanExporter(endpoint=col.grpc_endpoint, insecure=True))
    for _ in range(3):
        n_plus_one_trace(provider, queries=6)
    provider.shutdown()
    pipeline = col.service.pipeline
    assert pipeline is not None and pipeline.statistics is not None
    stats = pipeline.statistics
    sink.wait_for(lambda: stats.snapshot("all").overall.count == 3, message="3 traces in the statistics")
    snap = stats.snapshot("minute")
    (endpoint,) = snap.endpoints
    assert (endpoint.service, endpoint.endpoint, endpoint.count, endpoint.queries_per_request) == (
        "shop",
        "GET /authors",
        3,
        7,
    )
    books = next(s for s in snap.statements if s.tables == ("books",))
    assert (books.count, books.endpoints, books.db_system) == (18, ("GET /authors",), "postgresql")
    assert col.shutdown()

    metrics = [m for _, m in sink.metrics() if m.name == "otel_apm.transaction.duration"]
    assert metrics and {m.WhichOneof("data") for m in metrics} == {kind}
    point = getattr(metrics[-1], kind).data_points[-1]
    assert point.count == 3 and attributes(point.attributes)["http.route"] == "/authors"
    if kind == "histogram":
        assert tuple(point.explicit_bounds) == DURATION_BUCKETS_S


def test_histogram_choice_is_validated() -> None:
    with pytest.raises(CollectorConfigError, match=r"downstream\.histograms"):
        collector_config(None, downstream__histograms="log-linear")


def test_collector_files_a_downstream_statement_under_its_own_service_entry(
    start_collector: Callable[..., Collector],
) -> None:
    """One trace across two services: the endpoint is the trace root's, and the back service's
    statement names the endpoint where it ran (its service's entry), not the front's."""
    col = start_collector(None)
    exporter = OTLPSpanExporter(endpoint=col.grpc_endpoint, insecure=True)
    front, _ = tracer_provider(exporter, service="front")
    back, _ = tracer_provider(exporter, service="back")
    front_tracer, back_tracer = front.get_tracer("tests"), back.get_tracer("tests")
    with (
        front_tracer.start_as_current_span(
            "GET /page",
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "GET", "http.route": "/page"},
        ),
        front_tracer.start_as_current_span("GET", kind=SpanKind.CLIENT) as call,
    ):
        ctx = call.get_span_context()
        remote = SpanContext(ctx.trace_id, ctx.span_id, is_remote=True, trace_flags=TraceFlags(1))
        with (
            back_tracer.start_as_current_span(
                "GET /items",
                context=trace.set_span_in_context(NonRecordingSpan(remote)),
                kind=SpanKind.SERVER,
                attributes={"http.request.method": "GET", "http.route": "/items"},
            ),
            back_tracer.start_as_current_span(
                "SELECT",
                kind=SpanKind.CLIENT,
                attributes={"db.system": "postgresql", "db.statement": USERS},
            ),
        ):
            pass
    back.shutdown()
    front.shutdown()
    pipeline = col.service.pipeline
    assert pipeline is not None and pipeline.statistics is not None
    stats = pipeline.statistics
    deadline = time.monotonic() + 10
    while stats.snapshot("all").overall.count < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    snap = stats.snapshot("all")
    assert [(e.service, e.endpoint, e.count) for e in snap.endpoints] == [("front", "GET /page", 1)]
    (statement,) = snap.statements
    assert (statement.service, statement.endpoints, statement.tables) == ("back", ("GET /items",), ("users",))
