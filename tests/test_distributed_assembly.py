"""TraceAssembler: spans from several services and requests grouped into whole traces, analyzed
by the same detectors as in-process.

Cross-service traces are recorded with two real TracerProviders (one per service) and real W3C
context propagation, exported through the real OTLP encoder as one request per service, and
parsed back from bytes.  Time is a fake clock handed to the assembler.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from otel_apm.analyze import Analyzer
from otel_apm.assemble.distributed import TraceAssembler
from otel_apm.config import APMConfig
from otel_apm.ingest.otlp import otlp_json_to_request, views_from_request
from otel_apm.model import DB, SpanView, Trace
from otel_apm.sql import parse_sql

TESTDATA = Path(__file__).parent / "testdata" / "otlp"
IDLE = 2.0
MAX_WAIT = 30.0


class FakeClock:
    """The assembler's injectable clock, moved by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def assembler(clock: FakeClock, max_spans: int = 10_000, **kw: Any) -> TraceAssembler:
    return TraceAssembler(idle_timeout_s=IDLE, max_wait_s=MAX_WAIT, max_spans=max_spans, clock=clock, **kw)


def view(trace_id: int, span_id: int, parent_id: int = 0, start_ns: int = 0, name: str = "s") -> SpanView:
    return SpanView(trace_id, span_id, parent_id, name, 0, start_ns, start_ns + 1_000, False, "svc")


# -- a real cross-service trace ------------------------------------------------------------------


class Service:
    """One instrumented service: its own TracerProvider, resource and exporter."""

    def __init__(self, name: str) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(resource=Resource.create({"service.name": name}))
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests")

    def request(self) -> ExportTraceServiceRequest:
        """Its ended spans as one OTLP request, serialized and parsed as on the wire."""
        spans: tuple[ReadableSpan, ...] = self.exporter.get_finished_spans()
        req = ExportTraceServiceRequest()
        req.ParseFromString(encode_spans(spans).SerializeToString())
        return req


N_QUERIES = 6


def checkout_trace() -> tuple[ExportTraceServiceRequest, ExportTraceServiceRequest, int, int]:
    """frontend: GET /checkout (server) -> GET orders (http client) ==traceparent==> orders:
    GET /orders (server) -> 1 + N_QUERIES queries, the N an N+1.  Returns (frontend request,
    orders request, trace id, frontend root span id)."""
    frontend, orders = Service("frontend"), Service("orders")
    propagator = TraceContextTextMapPropagator()
    with (
        frontend.tracer.start_as_current_span(
            "GET /checkout/{cart}",
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": "GET",
                "http.route": "/checkout/{cart}",
                "http.response.status_code": 200,
            },
        ) as root,
        frontend.tracer.start_as_current_span(
            "GET",
            kind=SpanKind.CLIENT,
            attributes={"http.request.method": "GET", "url.full": "http://orders/orders?cart=7"},
        ),
    ):
        headers: dict[str, str] = {}
        propagator.inject(headers)
        # ---- the orders service, called over HTTP with those headers ----
        ctx = propagator.extract(headers)
        with orders.tracer.start_as_current_span(
            "GET /orders",
            context=ctx,
            kind=SpanKind.SERVER,
            attributes={"http.method": "GET", "http.route": "/orders", "http.status_code": 200},
        ):
            with orders.tracer.start_as_current_span(
                "SELECT shop",
                kind=SpanKind.CLIENT,
                attributes={
                    "db.system": "postgresql",
                    "db.statement": "SELECT id FROM orders WHERE cart_id = %(cart)s",
                    "db.operation": "SELECT",
                },
            ):
                pass
            for _ in range(N_QUERIES):
                with orders.tracer.start_as_current_span(
                    "SELECT shop",
                    kind=SpanKind.CLIENT,
                    attributes={
                        "db.system.name": "postgresql",
                        "db.query.text": "SELECT name, price FROM order_items WHERE order_id = %(id)s",
                        "db.operation.name": "SELECT",
                    },
                ):
                    pass
    ctx_root = root.get_span_context()
    return frontend.request(), orders.request(), ctx_root.trace_id, ctx_root.span_id


@pytest.mark.parametrize("order", ["frontend first", "orders first"])
def test_cross_service_trace_assembled_and_analyzed(order: str) -> None:
    front_req, orders_req, trace_id, root_id = checkout_trace()
    clock = FakeClock()
    asm = assembler(clock)
    requests = [front_req, orders_req] if order == "frontend first" else [orders_req, front_req]
    assert asm.add(views_from_request(requests[0]))
    clock.advance(0.5)
    assert asm.ready() == []  # "orders first": no root yet; "frontend first": not idle yet
    assert asm.add(views_from_request(requests[1]))
    clock.advance(IDLE - 0.01)
    assert asm.ready() == []
    clock.advance(0.01)
    (tr,) = asm.ready()

    assert tr.trace_id == trace_id and tr.complete
    assert tr.root is not None and tr.root.span_id == root_id and tr.root.service == "frontend"
    assert len(tr) == 2 + 1 + 1 + N_QUERIES
    assert tr.services == ["frontend", "orders"]
    assert tr.endpoint == "GET /checkout/{cart}"
    spans = {s.span_id: s for s in tr}
    orders_server = next(s for s in tr if s.name == "GET /orders")
    client = spans[orders_server.parent_id]  # the remote parent, from the other request
    assert client.service == "frontend" and client.parent_id == root_id
    assert asm.stats() == {
        "spans_in_flight": 0,
        "traces_in_flight": 0,
        "late_spans": 0,
        "traces_completed": 1,
        "traces_incomplete": 0,
        "duplicate_spans": 0,
        "refused_spans": 0,
    }

    findings = Analyzer(APMConfig()).analyze(tr)
    (n_plus_one,) = [f for f in findings if f.type == "n_plus_one_query"]
    assert n_plus_one.services == ("frontend", "orders")
    assert n_plus_one.count == N_QUERIES and n_plus_one.trace_id == trace_id
    # Named after where the queries run: the orders service's request, not the trace's entry.
    assert (n_plus_one.service, n_plus_one.endpoint) == ("orders", "GET /orders")
    assert n_plus_one.statement is not None and "order_items" in n_plus_one.statement
    source = parse_sql("SELECT id FROM orders WHERE cart_id = %(cart)s").normalized
    assert n_plus_one.evidence["source.statement"] == source
    assert set(n_plus_one.span_ids) == {s.span_id for s in tr if s.category == DB} - {
        next(s.span_id for s in tr if s.statement and "cart_id" in s.statement)
    }


def test_cross_service_trace_from_otlp_json() -> None:
    """The same, sent as OTLP/JSON with hex ids, one request per service (the fixture's two
    resources split apart)."""
    doc = json.loads((TESTDATA / "cross_service.json").read_text())
    bodies = [json.dumps({"resourceSpans": [rs]}).encode() for rs in doc["resourceSpans"]]
    clock = FakeClock()
    asm = assembler(clock)
    for body in reversed(bodies):  # the callee's batch first
        assert asm.add(views_from_request(otlp_json_to_request(body)))
        clock.advance(1)
    clock.advance(IDLE)
    (tr,) = asm.ready()
    assert tr.complete and tr.root is not None and tr.root.service == "frontend" and len(tr) == 10
    (finding,) = [f for f in Analyzer(APMConfig()).analyze(tr) if f.type == "n_plus_one_query"]
    assert finding.services == ("frontend", "orders") and finding.count == 6
    assert (finding.service, finding.endpoint) == ("orders", "GET /orders")


# -- timing rules --------------------------------------------------------------------------------


def test_idle_timer_restarts_with_every_span() -> None:
    clock = FakeClock()
    asm = assembler(clock)
    asm.add([view(1, 1)])  # the root
    for i in range(5):
        clock.advance(IDLE * 0.9)
        assert asm.ready() == []
        asm.add([view(1, 10 + i, parent_id=1)])
    clock.advance(IDLE)
    (tr,) = asm.ready()
    assert len(tr) == 6 and tr.complete


def test_without_root_waits_for_max_wait_and_is_incomplete() -> None:
    clock = FakeClock()
    asm = assembler(clock)
    asm.add([view(7, 2, parent_id=1), view(7, 3, parent_id=1)])
    clock.advance(IDLE * 5)
    assert asm.ready() == []  # idle, but no root: the root may still come
    clock.advance(MAX_WAIT - IDLE * 5 - 0.001)
    assert asm.ready() == []
    clock.advance(0.001)
    (tr,) = asm.ready()
    assert tr.trace_id == 7 and tr.root is None and not tr.complete and len(tr) == 2
    stats = asm.stats()
    assert stats["traces_completed"] == 1 and stats["traces_incomplete"] == 1


def test_root_arriving_late_starts_the_idle_timer() -> None:
    clock = FakeClock()
    asm = assembler(clock)
    asm.add([view(7, 2, parent_id=1)])
    clock.advance(10)
    asm.add([view(7, 1)])
    clock.advance(IDLE - 0.5)
    assert asm.ready() == []
    clock.advance(0.5)
    (tr,) = asm.ready()
    assert tr.complete and tr.root is not None and tr.root.span_id == 1


def test_trace_that_keeps_growing_is_analyzed_at_max_wait_then_late() -> None:
    clock = FakeClock()
    asm = assembler(clock)
    asm.add([view(5, 1)])
    out: list[Trace] = []
    span_id = 100
    elapsed = 0.0
    while elapsed < MAX_WAIT + 10:
        clock.advance(IDLE / 2)
        elapsed += IDLE / 2
        span_id += 1
        asm.add([view(5, span_id, parent_id=1)])
        out.extend(asm.ready())
    (tr,) = out
    assert tr.complete and tr.root is not None
    # Spans added at 1, 2, ..., 30 s were in (30 of them, the one at 30 s too: the trace went at
    # the first ready() at or after 30 s); those after it are late and not a new trace.
    assert len(tr) == 1 + int(MAX_WAIT / (IDLE / 2))
    stats = asm.stats()
    assert stats["late_spans"] == span_id - 100 - (len(tr) - 1)
    assert stats["traces_in_flight"] == 0 and stats["spans_in_flight"] == 0
    clock.advance(MAX_WAIT * 2)
    assert asm.ready() == []


def test_late_span_after_idle_completion() -> None:
    clock = FakeClock()
    asm = assembler(clock)
    asm.add([view(9, 1), view(9, 2, parent_id=1)])
    clock.advance(IDLE)
    assert len(asm.ready()) == 1
    assert asm.add([view(9, 3, parent_id=1), view(10, 1)])
    stats = asm.stats()
    assert stats["late_spans"] == 1
    assert stats["traces_in_flight"] == 1 and stats["spans_in_flight"] == 1  # trace 10 only
    clock.advance(IDLE)
    (tr,) = asm.ready()
    assert tr.trace_id == 10


def test_recent_ids_are_bounded() -> None:
    """Late spans are recognised only for the last ``recent_ids`` traces handed out; a span of an
    older trace starts a new, rootless trace (memory stays bounded)."""
    clock = FakeClock()
    asm = assembler(clock, recent_ids=2)
    for tid in (1, 2, 3):
        asm.add([view(tid, 1)])
        clock.advance(IDLE)
        assert [t.trace_id for t in asm.ready()] == [tid]
    asm.add([view(3, 5, parent_id=1), view(2, 5, parent_id=1), view(1, 5, parent_id=1)])
    stats = asm.stats()
    assert stats["late_spans"] == 2
    assert stats["traces_in_flight"] == 1
    clock.advance(MAX_WAIT)
    (tr,) = asm.ready()
    assert tr.trace_id == 1 and not tr.complete


def test_ready_returns_only_what_is_due_in_order_of_last_arrival() -> None:
    clock = FakeClock()
    asm = assembler(clock)
    asm.add([view(1, 1)])
    clock.advance(1.0)
    asm.add([view(2, 1)])
    clock.advance(0.5)
    asm.add([view(1, 2, parent_id=1)])  # trace 1 is now the more recently updated
    clock.advance(IDLE - 0.5)  # 2 s after trace 2's last span, 1.5 s after trace 1's
    assert [t.trace_id for t in asm.ready()] == [2]
    clock.advance(0.5)
    assert [t.trace_id for t in asm.ready()] == [1]
    assert asm.ready() == []


def test_interleaved_traces_in_one_batch() -> None:
    clock = FakeClock()
    asm = assembler(clock)
    batch = [
        view(1, 1),
        view(2, 1),
        view(1, 2, parent_id=1),
        view(3, 9, parent_id=8),
        view(2, 2, parent_id=1),
    ]
    batch += [view(1, 3, parent_id=1)]
    assert asm.add(batch)
    assert asm.stats()["spans_in_flight"] == 6 and asm.stats()["traces_in_flight"] == 3
    clock.advance(IDLE)
    traces = {t.trace_id: t for t in asm.ready()}
    assert sorted(traces) == [1, 2]  # trace 3 has no root
    assert [s.span_id for s in traces[1]] == [1, 2, 3]  # arrival order
    assert [s.span_id for s in traces[2]] == [1, 2]


def test_root_is_the_earliest_span_without_parent() -> None:
    clock = FakeClock()
    asm = assembler(clock)
    asm.add([view(1, 5, start_ns=500), view(1, 2, parent_id=3, start_ns=10)])
    asm.add([view(1, 3, start_ns=100), view(1, 4, start_ns=300)])
    clock.advance(IDLE)
    (tr,) = asm.ready()
    assert tr.root is not None and tr.root.span_id == 3


def test_duplicate_spans_are_analyzed_once() -> None:
    """A client retrying a request the collector did take sends its spans twice."""
    clock = FakeClock()
    asm = assembler(clock)
    batch = [view(1, 1), *(view(1, i, parent_id=1) for i in range(2, 8))]
    asm.add(batch)
    asm.add(list(batch))
    assert asm.stats()["spans_in_flight"] == 14
    clock.advance(IDLE)
    (tr,) = asm.ready()
    assert [s.span_id for s in tr] == list(range(1, 8))
    assert tr.root is batch[0]
    stats = asm.stats()
    assert stats["duplicate_spans"] == 7 and stats["spans_in_flight"] == 0


# -- bounds and back-pressure --------------------------------------------------------------------


def test_back_pressure_refuses_whole_batches() -> None:
    clock = FakeClock()
    asm = assembler(clock, max_spans=10)
    assert asm.add([view(1, 1), *(view(1, i, parent_id=1) for i in range(2, 9))])  # 8 spans
    before = asm.stats()
    assert not asm.add([view(2, 1), view(2, 2, parent_id=1), view(2, 3, parent_id=1)])  # 11 > 10
    after = asm.stats()
    assert after["spans_in_flight"] == 8 and after["traces_in_flight"] == 1
    assert after["refused_spans"] == before["refused_spans"] + 3
    assert asm.add([view(3, 1), view(3, 2, parent_id=1)])  # exactly 10 fits
    assert not asm.add([view(4, 1)])
    clock.advance(IDLE)
    assert {t.trace_id for t in asm.ready()} == {1, 3}
    assert asm.add([view(2, 1), view(2, 2, parent_id=1), view(2, 3, parent_id=1)])  # room again
    assert asm.stats()["spans_in_flight"] == 3


def test_batch_larger_than_the_bound_is_always_refused() -> None:
    asm = assembler(FakeClock(), max_spans=4)
    assert not asm.add([view(1, i) for i in range(1, 6)])
    assert asm.stats()["spans_in_flight"] == 0 and len(asm) == 0
    assert asm.add([])


def test_late_spans_do_not_hold_memory() -> None:
    clock = FakeClock()
    asm = assembler(clock, max_spans=5)
    asm.add([view(1, 1)])
    clock.advance(IDLE)
    assert len(asm.ready()) == 1
    for i in range(20):
        assert asm.add([view(1, 100 + i, parent_id=1)])
    stats = asm.stats()
    assert stats["late_spans"] == 20 and stats["spans_in_flight"] == 0


# -- shutdown ------------------------------------------------------------------------------------


def test_drain_returns_everything_then_spans_are_late() -> None:
    clock = FakeClock()
    asm = assembler(clock)
    asm.add([view(1, 1), view(1, 2, parent_id=1), view(2, 2, parent_id=1)])
    traces = {t.trace_id: t for t in asm.drain()}
    assert traces[1].complete and len(traces[1]) == 2
    assert not traces[2].complete and traces[2].root is None
    assert asm.drain() == [] and asm.ready() == []
    asm.add([view(1, 3, parent_id=1)])
    assert asm.stats()["late_spans"] == 1 and asm.stats()["traces_completed"] == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"idle_timeout_s": -1.0},
        {"max_wait_s": -0.1},
        {"max_wait_s": float("nan")},
        {"max_spans": 0},
        {"recent_ids": -1},
    ],
)
def test_invalid_settings(kwargs: dict[str, Any]) -> None:
    settings: dict[str, Any] = {"idle_timeout_s": 1.0, "max_wait_s": 2.0, "max_spans": 10, **kwargs}
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        TraceAssembler(**settings)


def test_default_clock_is_monotonic_time() -> None:
    asm = TraceAssembler(idle_timeout_s=0, max_wait_s=60, max_spans=10)
    asm.add([view(1, 1)])
    (tr,) = asm.ready()  # idle 0: due as soon as its root is in
    assert tr.complete


# -- threads -------------------------------------------------------------------------------------


def test_concurrent_adds_and_ready() -> None:
    """Four receiver threads add whole traces while an analysis thread takes ready ones: every
    span comes out exactly once, in the trace it belongs to."""
    clock = FakeClock()
    asm = TraceAssembler(idle_timeout_s=0, max_wait_s=MAX_WAIT, max_spans=1_000_000, clock=clock)
    per_thread, spans_per_trace = 500, 5
    out: list[Trace] = []
    done = threading.Event()

    def receiver(base: int) -> None:
        for t in range(per_thread):
            tid = base + t + 1
            batch = [view(tid, 1), *(view(tid, i, parent_id=1) for i in range(2, spans_per_trace + 1))]
            while not asm.add(batch):
                pass

    def analyzer() -> None:
        while not done.is_set():
            out.extend(asm.ready())
        out.extend(asm.drain())

    workers = [threading.Thread(target=receiver, args=(n * 1_000_000,)) for n in range(4)]
    reader = threading.Thread(target=analyzer)
    reader.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    done.set()
    reader.join()
    assert len(out) == 4 * per_thread
    assert len({t.trace_id for t in out}) == len(out)
    assert all(t.complete and len(t) == spans_per_trace for t in out)
    assert all({s.trace_id for s in t} == {t.trace_id} for t in out)
    stats = asm.stats()
    assert stats["spans_in_flight"] == 0 and stats["late_spans"] == 0
    assert stats["traces_completed"] == 4 * per_thread
