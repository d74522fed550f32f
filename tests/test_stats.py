"""Rolling statistics per endpoint and statement, from real SDK spans through APMSpanProcessor
and from OTLP through the collector."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence

import pytest
from conftest import SERVICE_NAME, OTel, in_forked_child, require_native, wait_until
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue
from test_collector import Collector, n_plus_one_trace, start_collector, tracer_provider

from otel_apm.config import APMConfig, ConfigError
from otel_apm.stats import (
    OVERFLOW,
    MinuteRecord,
    Snapshot,
    Statistics,
    merge_records,
    summarize,
)

__all__ = ["start_collector"]  # a fixture, defined with the collector's tests

USERS = "SELECT * FROM users WHERE id = %s"
ORDERS = "SELECT id, total FROM orders WHERE user_id = %s"
INSERT = "INSERT INTO orders (user_id, total) VALUES (%s, %s)"


@pytest.fixture(params=[True, False], ids=["native", "python"])
def native_enabled(request: pytest.FixtureRequest) -> bool:
    """Every pipeline test here counts through the compiled tally update (csrc/sketch.c) and
    through the Python one."""
    if request.param:
        require_native()
    return bool(request.param)


def request(
    tracer: Tracer,
    route: str,
    start_ns: int,
    duration_ms: float,
    queries: Sequence[tuple[str, float]] = (),
    external_ms: float = 0.0,
    error: bool = False,
    method: str = "GET",
) -> None:
    """One server request with explicit times: its queries one after another, then an HTTP call."""
    root = tracer.start_span(
        f"{method} {route}",
        kind=SpanKind.SERVER,
        start_time=start_ns,
        attributes={"http.request.method": method, "http.route": route},
    )
    ctx = trace.set_span_in_context(root)
    at = start_ns
    for text, ms in queries:
        span = tracer.start_span(
            "query",
            context=ctx,
            kind=SpanKind.CLIENT,
            start_time=at,
            attributes={"db.system": "postgresql", "db.statement": text},
        )
        at += int(ms * 1e6)
        span.end(end_time=at)
    if external_ms:
        call = tracer.start_span(
            "GET",
            context=ctx,
            kind=SpanKind.CLIENT,
            start_time=at,
            attributes={"http.request.method": "GET", "url.full": "http://inventory/items"},
        )
        call.end(end_time=at + int(external_ms * 1e6))
    if error:
        root.set_status(Status(StatusCode.ERROR))
    root.end(end_time=start_ns + int(duration_ms * 1e6))


def exact(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def by_endpoint(snapshot: Snapshot) -> dict[str, object]:
    return {e.endpoint: e for e in snapshot.endpoints}


def test_endpoint_and_statement_statistics_from_real_spans(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel(slow_request_threshold_ms=200, slow_query_threshold_ms=30)
    stats = otel.processor.statistics
    assert stats is not None  # on by default, through emit.reporters
    base = time.time_ns()
    durations = [20.0 + i for i in range(200)]
    for i, ms in enumerate(durations):
        request(
            otel.tracer,
            "/users/{id}",
            base,
            ms,
            [(USERS, 2.0)] * 3 + [(ORDERS, 5.0)],
            external_ms=10.0,
            error=i % 10 == 0,
        )
    for _ in range(50):
        request(otel.tracer, "/orders", base, 300.0, [(INSERT, 40.0)], method="POST")
    otel.flush()

    snap = stats.snapshot("minute")
    json.dumps(snap.to_dict())  # JSON-able as it is
    assert [e.endpoint for e in snap.endpoints] == ["GET /users/{id}", "POST /orders"]  # by total time
    users = snap.endpoints[0]
    assert (users.service, users.count, users.errors, users.error_rate) == (SERVICE_NAME, 200, 20, 0.1)
    assert users.mean_ms == pytest.approx(sum(durations) / 200)
    for q, got in ((0.5, users.p50_ms), (0.95, users.p95_ms), (0.99, users.p99_ms)):
        assert got == pytest.approx(exact(durations, q), rel=0.01)
    assert users.max_ms == pytest.approx(219.0)
    assert users.slow == 20  # 200 to 219 ms, at or over APM_SLOW_REQUEST_THRESHOLD_MS
    assert users.db_ms == pytest.approx(200 * 11.0)
    assert users.db_time_share == pytest.approx(200 * 11.0 / sum(durations))
    assert users.queries_per_request == 4
    assert users.external_ms_per_request == pytest.approx(10.0)
    assert 0 < snap.seconds <= 60
    assert users.throughput_per_s == pytest.approx(200 / snap.seconds)
    assert snap.overall.count == 250 and snap.overall.errors == 20

    statements = {s.statement: s for s in snap.statements}
    select = statements["select * from users where id = ?"]
    assert (select.count, select.operation, select.tables, select.db_system) == (
        600,
        "SELECT",
        ("users",),
        "postgresql",
    )
    assert select.total_ms == pytest.approx(1200.0)
    assert select.mean_ms == pytest.approx(2.0)
    assert select.p95_ms == pytest.approx(2.0, rel=0.01)
    assert select.max_ms == pytest.approx(2.0)
    assert select.slow == 0
    assert select.endpoints == ("GET /users/{id}",)
    insert = snap.statements[0]  # the most total time: 50 x 40 ms
    assert insert.operation == "INSERT" and insert.endpoints == ("POST /orders",)
    assert insert.total_ms == pytest.approx(2000.0)
    assert insert.slow == 50  # 40 ms each, over APM_SLOW_QUERY_THRESHOLD_MS
    # The same traffic is in every longer window.
    for window in ("hour", "day", "all"):
        assert stats.snapshot(window).overall.count == 250


def test_runs_served_from_a_cache_count_in_their_statement(make_otel: Callable[..., OTel]) -> None:
    """A statement's runs are counted whether a cache served them or not; the analysis's own
    grouping leaves cached runs out, so the statistics must not take it as it is then."""
    otel = make_otel()
    stats = otel.processor.statistics
    assert stats is not None
    base = time.time_ns()
    root = otel.tracer.start_span("GET /users", kind=SpanKind.SERVER, start_time=base)
    ctx = trace.set_span_in_context(root)
    for i, hit in enumerate((False, True, False)):
        attributes: dict[str, AttributeValue] = {
            "db.system": "postgresql",
            "db.statement": USERS,
            "cache.hit": hit,
        }
        query = otel.tracer.start_span(
            "query", context=ctx, kind=SpanKind.CLIENT, start_time=base + i * 10**7, attributes=attributes
        )
        query.end(end_time=base + i * 10**7 + (i + 1) * 10**6)
    root.end(end_time=base + 5 * 10**7)
    otel.flush()
    (select,) = stats.snapshot("minute").statements
    assert select.count == 3
    assert select.total_ms == pytest.approx(6.0)
    assert select.max_ms == pytest.approx(3.0)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_windows_roll_and_closed_minutes_merge_back(
    make_otel: Callable[..., OTel], native_enabled: bool
) -> None:
    t0 = 1_800_000_000.0 - 1_800_000_000.0 % 86400  # a day's start: the rings are aligned on it
    clock = Clock(t0)
    stats = Statistics(APMConfig(native_enabled=native_enabled), clock=clock)
    otel = make_otel(emitters=[stats])
    assert otel.processor.statistics is stats
    base = time.time_ns()  # span times are the spans' own; the windows follow the clock

    clock.now = t0 + 5
    for i in range(10):
        request(otel.tracer, "/a", base, 10.0 + i, [(USERS, 1.0)])
    otel.flush()  # analyzed (and counted) at the clock's t0 + 5
    otel.processor.emit_findings([])  # findings about the process reach emitters with no trace
    stats.emit(None, ())
    clock.now = t0 + 30
    minute = stats.snapshot("minute")
    assert minute.overall.count == 10 and minute.seconds == 30
    assert minute.endpoints[0].throughput_per_s == pytest.approx(10 / 30)

    clock.now = t0 + 125
    assert stats.snapshot("minute").overall.count == 0
    assert stats.snapshot("minute").endpoints == ()
    assert stats.snapshot("hour").overall.count == 10
    first = stats.closed_minutes()
    assert {(r.kind, r.start, r.tally.count) for r in first} == {("endpoint", t0, 10), ("statement", t0, 10)}
    assert stats.closed_minutes() == []  # handed over once

    for _ in range(5):
        request(otel.tracer, "/a", base, 100.0)
    otel.flush()
    clock.now = t0 + 2 * 3600 + 200
    assert stats.snapshot("hour").overall.count == 0
    assert stats.snapshot("day").overall.count == 15
    clock.now = t0 + 2 * 86400
    assert stats.snapshot("day").overall.count == 0
    whole = stats.snapshot("all")
    assert whole.overall.count == 15 and whole.seconds == 2 * 86400
    second = stats.closed_minutes()
    assert [(r.kind, r.start, r.tally.count) for r in second] == [("endpoint", t0 + 120, 5)]

    # A store keeps the records as JSON; merged back they give the same statistics.
    kept = [MinuteRecord.from_dict(json.loads(json.dumps(r.to_dict()))) for r in first + second]
    endpoints, statements = merge_records(kept)
    merged = summarize("all", t0, clock.now, endpoints, statements)
    assert merged.endpoints[0].count == 15
    assert merged.endpoints[0].p95_ms == whole.endpoints[0].p95_ms
    assert merged.endpoints[0].p50_ms == whole.endpoints[0].p50_ms
    assert merged.statements[0].count == 10 and merged.statements[0].tables == ("users",)
    with pytest.raises(ValueError, match="version"):
        MinuteRecord.from_dict({**first[0].to_dict(), "version": 2})
    with pytest.raises(ValueError, match="window"):
        stats.snapshot("week")  # type: ignore[arg-type]


def test_endpoints_and_statements_past_the_bound_share_an_overflow_entry(
    make_otel: Callable[..., OTel],
) -> None:
    otel = make_otel(stats_max_endpoints=2, stats_max_statements=1, stats_max_endpoints_per_statement=2)
    stats = otel.processor.statistics
    assert stats is not None
    base = time.time_ns()
    for route in ("/a", "/b", "/c", "/d"):
        request(otel.tracer, route, base, 50.0, [(USERS, 1.0), (ORDERS, 1.0)])
    otel.flush()
    snap = stats.snapshot("all")
    counts = {(e.endpoint, e.overflow): e.count for e in snap.endpoints}
    assert counts == {("GET /a", False): 1, ("GET /b", False): 1, (OVERFLOW, True): 2}
    statements = {(s.fingerprint == OVERFLOW, s.overflow): s for s in snap.statements}
    assert statements[(False, False)].count == 4
    assert statements[(False, False)].endpoints == ("GET /a", "GET /b")  # bounded at 2
    assert statements[(True, True)].count == 4
    assert stats.memory_keys() == (3, 2)


def test_statistics_can_be_turned_off_and_bad_settings_name_the_variable(
    make_otel: Callable[..., OTel],
) -> None:
    assert make_otel(stats_enabled=False).processor.statistics is None
    with pytest.raises(ConfigError, match="APM_STATS_SLOTS"):
        APMConfig.from_env({"APM_STATS_SLOTS": "1"})
    with pytest.raises(ConfigError, match="APM_STATS_RELATIVE_ACCURACY"):
        APMConfig.from_env({"APM_STATS_RELATIVE_ACCURACY": "0"})
    assert APMConfig.from_env({"APM_STATS_MAX_ENDPOINTS": "5"}).stats_max_endpoints == 5


def test_a_forked_worker_counts_its_own_traces(make_otel: Callable[..., OTel]) -> None:
    """gunicorn --preload: the worker's statistics start empty (the parent's traces are the
    parent's to store), and the lock the parent's store writer may hold at the fork is not
    the worker's."""
    otel = make_otel()
    stats = otel.processor.statistics
    assert stats is not None
    request(otel.tracer, "/parent", time.time_ns(), 5.0)
    otel.flush()

    def worker() -> bool:
        request(otel.tracer, "/worker", time.time_ns(), 5.0)
        otel.flush()
        return [e.endpoint for e in stats.snapshot("minute").endpoints] == ["GET /worker"]

    in_forked_child(worker, held=stats._lock)
    assert [e.endpoint for e in stats.snapshot("minute").endpoints] == ["GET /parent"]


def test_the_collector_keeps_statistics_of_what_arrives_over_otlp(
    start_collector: Callable[..., Collector],
) -> None:
    """README: ``service.pipeline.statistics`` in the collector, as ``processor.statistics``
    in-process, from whole traces assembled from OTLP."""
    collector = start_collector(None)
    provider, _ = tracer_provider(OTLPSpanExporter(endpoint=collector.grpc_endpoint, insecure=True))
    for _ in range(2):
        n_plus_one_trace(provider)
    provider.shutdown()
    statistics = collector.service.pipeline.statistics if collector.service.pipeline else None
    assert statistics is not None
    wait_until(lambda: statistics.snapshot("minute").overall.count == 2)
    (endpoint,) = statistics.snapshot("minute").endpoints
    assert (endpoint.service, endpoint.endpoint, endpoint.queries_per_request) == ("shop", "GET /authors", 7)
    books = [s for s in statistics.snapshot("all").statements if "books" in s.statement]
    assert [(s.count, s.endpoints) for s in books] == [(12, ("GET /authors",))]
