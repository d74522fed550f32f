"""Throughput of the collector's analysis engine on one core, against what a pure forwarder pays.

    .venv/bin/python bench/bench_collector_engine.py [--requests N] [--rounds R] [--workload W]
        [--memory-traces K] [--cpu C] [--profile]

Workload: N distinct OTLP ExportTraceServiceRequests of 100 traces x 23 spans each (one SERVER
root ``GET /orders/{id}``, 20 PostgreSQL client spans in six statement shapes, 2 HTTP client
spans; the attributes the SQLAlchemy/psycopg2/requests/Flask instrumentations set, most of which
analysis does not read), recorded with the real SDK and encoded by the real OTLP encoder, then
serialized: the bytes a collector receives.  ``--workload nplusone`` (default) repeats one shape 6
times per trace, so every trace has an N+1 finding; ``clean`` has no finding.

Per round, interleaved so drift hits both alike:

  forwarder  ExportTraceServiceRequest.ParseFromString of every payload: what a collector that
             only forwards pays to look at what it received (the forwarder itself sends the raw
             bytes and decodes nothing; a receiver validating its input decodes once).
  engine     the same decode (the receiver's check of its input), then views_from_payload of the
             payload (as the collector's pipeline reads it), TraceAssembler.add, ready() (a fake clock
             moved by idle_timeout_s after each request, so each request's traces are due), and
             Analyzer(APMConfig()).analyze of every trace handed out.  Emission (log records,
             metrics) is not included.
  views      views_from_payload of every payload alone, compiled (csrc/otlpviews.c) and Python
             (native_enabled false): what the compiled reader saves, measured side by side.

The garbage collector stays on; gc.collect() runs before each round, outside the timing.  The
process is pinned to one CPU (``--cpu``, default the first the process may use).  Reported: the
median over R rounds of spans/s for each, and the median of the per-round ratios engine/forwarder,
plus the engine's time split by stage (summed over rounds), the engine without its analyze stage
(the detectors' share apart), and the target (>= 50,000 spans/s).

Memory: K traces are decoded and read into views; tracemalloc's traced memory (after
gc.collect()) with the views held by a TraceAssembler, minus the reading before the requests were
decoded, divided by the spans: the bytes one span in flight costs.  The same with the views in a
plain list gives the assembler's own share.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import statistics
import sys
import time
import tracemalloc
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from workload import SPANS_PER_TRACE, WORKLOADS, run_trace

from otel_apm.analyze import Analyzer
from otel_apm.assemble.distributed import TraceAssembler
from otel_apm.config import APMConfig
from otel_apm.ingest.otlp import IngestCounts, views_from_payload
from otel_apm.model import SpanView
from otel_apm.native import native

TARGET_SPANS_PER_S = 50_000
TRACES_PER_REQUEST = 100
IDLE_S = 2.0
RESOURCE = Resource.create(
    {
        "service.name": "orders-api",
        "service.version": "1.4.2",
        "deployment.environment.name": "bench",
        "host.name": "orders-api-7d9f8b6c5-x2k4q",
        "process.pid": 4242,
    }
)


def build_payloads(n: int, workload: str) -> list[bytes]:
    """``n`` serialized requests of TRACES_PER_REQUEST traces each, every trace id distinct."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("bench")
    db_calls = WORKLOADS[workload]
    payloads = []
    for _ in range(n):
        for _ in range(TRACES_PER_REQUEST):
            run_trace(tracer, db_calls)
        spans = exporter.get_finished_spans()
        exporter.clear()
        assert len(spans) == TRACES_PER_REQUEST * SPANS_PER_TRACE
        payloads.append(encode_spans(spans).SerializeToString())
    provider.shutdown()
    return payloads


# ---------------------------------------------------------------------------------------------
# Rounds.


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def forwarder_round(payloads: Sequence[bytes]) -> int:
    t0 = time.perf_counter_ns()
    for payload in payloads:
        ExportTraceServiceRequest().ParseFromString(payload)
    return time.perf_counter_ns() - t0


STAGES = ("decode", "views", "add+ready", "analyze")


def views_round(payloads: Sequence[bytes], native_enabled: bool) -> int:
    counts = IngestCounts()
    t0 = time.perf_counter_ns()
    for payload in payloads:
        views_from_payload(payload, counts, native_enabled)
    return time.perf_counter_ns() - t0


def engine_round(
    payloads: Sequence[bytes], analyzer: Analyzer, stage_ns: dict[str, int]
) -> tuple[int, int, int]:
    """(elapsed ns, traces analyzed, N+1 findings).  Only the N+1s are the workload's: span
    durations are real, recorded as the payloads were built, so on a busy machine a slow-query
    outlier may come up too."""
    clock = FakeClock()
    assembler = TraceAssembler(IDLE_S, 30.0, 500_000, clock=clock)
    counts = IngestCounts()
    traces = findings = 0
    decode = views_ns = assemble = analyze = 0
    perf = time.perf_counter_ns
    t0 = perf()
    for payload in payloads:
        a = perf()
        ExportTraceServiceRequest().ParseFromString(payload)
        b = perf()
        views = views_from_payload(payload, counts)
        c = perf()
        if not assembler.add(views):
            raise RuntimeError("assembler refused a request")
        clock.now += IDLE_S
        ready = assembler.ready()
        d = perf()
        for tr in ready:
            findings += sum(f.type == "n_plus_one_query" for f in analyzer.analyze(tr))
        e = perf()
        traces += len(ready)
        decode += b - a
        views_ns += c - b
        assemble += d - c
        analyze += e - d
    elapsed = perf() - t0
    for key, ns in zip(STAGES, (decode, views_ns, assemble, analyze), strict=True):
        stage_ns[key] += ns
    if counts.malformed_spans or assembler.stats()["late_spans"]:
        raise RuntimeError(f"unexpected: {counts.snapshot()} {assembler.stats()}")
    return elapsed, traces, findings


def pin_to_one_cpu(cpu: int | None) -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity)"
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[0] if cpu is None else cpu
    os.sched_setaffinity(0, {chosen})
    return f"pinned to CPU {chosen} of {len(allowed)} allowed"


def measure_memory(traces: int, workload: str) -> None:
    requests_needed = -(-traces // TRACES_PER_REQUEST)
    payloads = build_payloads(requests_needed, workload)
    spans = requests_needed * TRACES_PER_REQUEST * SPANS_PER_TRACE

    def held(into_assembler: bool) -> tuple[int, int]:
        gc.collect()
        tracemalloc.start()
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        assembler = TraceAssembler(IDLE_S, 30.0, spans, clock=FakeClock())
        kept: list[SpanView] = []
        for payload in payloads:
            views = views_from_payload(payload, IngestCounts())
            if into_assembler:
                assert assembler.add(views)
            else:
                kept.extend(views)
            del views
        gc.collect()
        in_flight = tracemalloc.get_traced_memory()[0] - base
        assert assembler.stats()["spans_in_flight"] == (spans if into_assembler else 0)
        drained = assembler.drain()
        kept.clear()
        del drained
        gc.collect()
        residual = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        return in_flight, residual

    in_assembler, residual = held(True)
    in_list, _ = held(False)
    print(
        f"\nmemory, {requests_needed * TRACES_PER_REQUEST} traces x {SPANS_PER_TRACE} spans in flight "
        f"({spans} spans, tracemalloc):"
    )
    print(f"  per span in flight (views + assembler)  {in_assembler / spans:8.0f} B")
    print(f"  of which the views themselves           {in_list / spans:8.0f} B")
    print(f"  of which the assembler's structures     {(in_assembler - in_list) / spans:8.0f} B")
    print(f"  per trace in flight                     {in_assembler / (spans / SPANS_PER_TRACE):8.0f} B")
    print(f"  residual after drain (recent trace ids)  {residual / 1024:7.0f} KiB")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10, help="requests of 100 traces per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds of each first")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="nplusone")
    parser.add_argument("--memory-traces", type=int, default=2000)
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: first allowed)")
    parser.add_argument("--profile", action="store_true", help="profile one engine round with cProfile")
    args = parser.parse_args(argv)

    pinned = pin_to_one_cpu(args.cpu)
    payloads = build_payloads(args.requests, args.workload)
    spans = args.requests * TRACES_PER_REQUEST * SPANS_PER_TRACE
    analyzer = Analyzer(APMConfig())
    print(
        f"{args.requests} requests x {TRACES_PER_REQUEST} traces x {SPANS_PER_TRACE} spans "
        f"({spans} spans, {sum(map(len, payloads)) / len(payloads) / 1024:.0f} KiB a request), "
        f"workload {args.workload}, {args.rounds} rounds, Python {sys.version.split()[0]}, {pinned}"
    )

    stage_ns = dict.fromkeys(STAGES, 0)
    for _ in range(args.warmup):
        forwarder_round(payloads)
        engine_round(payloads, analyzer, dict.fromkeys(STAGES, 0))

    fwd_rates: list[float] = []
    eng_rates: list[float] = []
    ratios: list[float] = []
    views_us: dict[bool, list[float]] = {True: [], False: []}
    views_ratios: list[float] = []
    expected_findings = {"nplusone": 1, "clean": 0}[args.workload] * args.requests * TRACES_PER_REQUEST
    for _ in range(args.rounds):
        gc.collect()
        fwd_ns = forwarder_round(payloads)
        gc.collect()
        eng_ns, traces, findings = engine_round(payloads, analyzer, stage_ns)
        if traces != args.requests * TRACES_PER_REQUEST or findings != expected_findings:
            raise RuntimeError(
                f"analyzed {traces} traces with {findings} N+1 findings, expected {expected_findings}"
            )
        for native_enabled in (True, False):
            gc.collect()
            views_us[native_enabled].append(views_round(payloads, native_enabled) / spans / 1000)
        views_ratios.append(views_us[False][-1] / views_us[True][-1])
        fwd_rates.append(spans / (fwd_ns / 1e9))
        eng_rates.append(spans / (eng_ns / 1e9))
        ratios.append(eng_ns / fwd_ns)

    fwd, eng = statistics.median(fwd_rates), statistics.median(eng_rates)
    print(f"\n{'':34}{'spans/s':>12}{'µs/span':>10}")
    print(f"  forwarder: ParseFromString      {fwd:12,.0f}{1e6 / fwd:10.2f}")
    print(f"  engine: decode..analyze         {eng:12,.0f}{1e6 / eng:10.2f}")
    print(f"  ratio engine/forwarder (median of per-round ratios): {statistics.median(ratios):.1f}x")
    verdict = "meets" if eng >= TARGET_SPANS_PER_S else "MISSES"
    print(f"  target >= {TARGET_SPANS_PER_S:,} spans/s per core with analysis: {verdict} it")
    total = sum(stage_ns.values())
    print("\nengine time by stage (all timed rounds):")
    for key in STAGES:
        per_span = stage_ns[key] / (spans * args.rounds) / 1000
        print(f"  {key:10} {per_span:6.2f} µs/span  {100 * stage_ns[key] / total:5.1f}%")
    intake = sum(stage_ns[key] for key in STAGES if key != "analyze") / (spans * args.rounds) / 1000
    print(f"  without analyze (decode, views, assembly): {intake:.2f} µs/span, {1e6 / intake:,.0f} spans/s")
    compiled = "compiled" if native() is not None else "compiled NOT BUILT, Python"
    print(
        f"\nviews alone: {compiled} {statistics.median(views_us[True]):.2f} µs/span, Python "
        f"{statistics.median(views_us[False]):.2f}; Python/compiled {statistics.median(views_ratios):.1f}x"
    )

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        engine_round(payloads, analyzer, dict.fromkeys(STAGES, 0))
        profiler.disable()
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(15)

    if args.memory_traces > 0:
        measure_memory(args.memory_traces, args.workload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
