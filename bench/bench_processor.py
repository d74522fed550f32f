"""Per-span overhead and per-held-span memory of APMSpanProcessor against the plain SDK pipeline.

    .venv/bin/python bench/bench_processor.py [--traces N] [--rounds R] [--chunk C] [--memory-traces K]
        [--profile]

Variants, all in one process, taking turns of C traces within each round (a, b, c, a, b, c, ...)
so the host's swings in speed hit them alike:

  a  baseline: TracerProvider + BatchSpanProcessor(no-op SpanExporter)
  b  ours:     TracerProvider + APMSpanProcessor(BatchSpanProcessor(no-op SpanExporter)), passthrough,
               console off, events to a bench LoggerProvider (BatchLogRecordProcessor over a no-op
               LogRecordExporter), metrics to a bench MeterProvider (InMemoryMetricReader)
  c  ours, tail mode (export_mode="tail", sample_rate=0.1)

Workload (--workload): a web-like local trace of 23 spans (1 SERVER root, 20 PostgreSQL client
spans in six statement shapes, 2 HTTP client spans), attributes passed at start as the
instrumentations do: ``clean`` (the default, the issue's trace: no shape repeated five times, no
finding; tail mode then samples at 1, so that every span is still exported and counted) or
``nplusone`` (the same with an N+1 of 6: every trace has a finding, the worst case for emission;
in tail mode every trace is kept, so sample_rate does not come into play).

A round is N traces through each variant, in turns, plus the flushes that make the deferred work
happen inside the timed region: TracerProvider.force_flush() (batch span export) for all, and for b and c the
LoggerProvider's force_flush() (finding events) and one metric collection.  The garbage collector
stays on for every variant (allocation is part of the cost); gc.collect() runs before each round,
outside the timing.  Queues are sized so nothing is dropped, and the exporters' counts are checked.

Exporter (--exporter): ``noop`` (the default) exports to a SpanExporter that only counts, so the
baseline is the SDK's work alone and our part its largest share; ``otlp`` exports every variant's
spans with the SDK's OTLP/HTTP exporter to a sink in another process that reads each request and
answers 200, over a real socket: the pipeline an application runs, whose encoding and sending on the
batch thread count in each variant's CPU (the sink's own CPU is its process's, not counted).

Memory: K local traces are opened (roots still open) and each gets its 22 children ended, with the
APM processor wrapping a processor that does nothing; tracemalloc's traced memory with the roots
open is compared with the same after the roots end, and with the same procedure under the bare
do-nothing processor, giving the bytes the processor holds per waiting span.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import multiprocessing
import pstats
import statistics
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from typing import Any

import workload
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from workload import FINDINGS_PER_TRACE, ROOT_ATTRS, SPANS_PER_TRACE, WORKLOADS, DbCalls

from otel_apm.config import APMConfig
from otel_apm.processors.apm import APMSpanProcessor

TARGET_RATIO = 1.10
RESOURCE = Resource.create({"service.name": "orders-api", "deployment.environment.name": "bench"})

# ---------------------------------------------------------------------------------------------
# Exporters that do no I/O: the export work left is the SDK's own.


class NoopSpanExporter(SpanExporter):
    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class NoopLogRecordExporter(LogRecordExporter):
    def __init__(self) -> None:
        self.exported = 0

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        self.exported += len(batch)
        return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class CountingOTLPSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter, counting the spans the sink accepted."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(endpoint=endpoint)
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = super().export(spans)
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        return result


class _SinkHandler(BaseHTTPRequestHandler):
    """Reads an OTLP/HTTP request whole and answers 200 with an empty (valid) response."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the exporter's session expects

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _sink_main(conn: Connection) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SinkHandler)
    conn.send(server.server_address[1])
    server.serve_forever()


def start_sink() -> tuple[multiprocessing.process.BaseProcess, str]:
    """The OTLP/HTTP sink for --exporter otlp, in a process of its own: (process, traces URL)."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_sink_main, args=(child,), daemon=True)
    proc.start()
    return proc, f"http://127.0.0.1:{parent.recv()}/v1/traces"


class NothingProcessor(SpanProcessor):
    """A span processor that does nothing (the SpanProcessor base methods are all no-ops)."""


# --workload chooses these; --set adds settings to variants b and c (an ablation).
overrides: dict[str, Any] = {}
db_calls: DbCalls = WORKLOADS["nplusone"]
sink_url: str | None = None  # --exporter otlp: where every variant's spans go
findings_per_trace = 1
tail_rate = 0.1


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """``--set NAME=VALUE``, repeatable, for :func:`override` (here and in bench_instructions.py)."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an APMConfig setting for the APM variants, e.g. --set stats_enabled=false (an ablation)",
    )


def override(items: Sequence[str]) -> None:
    """Add ``--set NAME=VALUE`` items to :data:`overrides` (bench_instructions.py passes its own
    to the child it counts)."""
    overrides.update(settings_of(items))


def settings_of(items: Sequence[str]) -> dict[str, Any]:
    """``NAME=VALUE`` items as APMConfig settings: comma lists for the tuple settings,
    true/false for booleans, numbers for the numeric ones."""
    settings: dict[str, Any] = {}
    for item in items:
        name, _, value = item.partition("=")
        if name in ("reporters", "disabled_detectors"):
            settings[name] = tuple(v for v in value.split(",") if v)
        elif value.lower() in ("true", "false"):
            settings[name] = value.lower() == "true"
        else:
            settings[name] = _number(value)
    return settings


def _number(value: str) -> int | float | str:
    """``value`` as an int or a float when it reads as one (the typed settings refuse strings)."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def run_trace(tracer: trace.Tracer) -> None:
    workload.run_trace(tracer, db_calls)


def run_children(tracer: trace.Tracer, parent: trace.Span) -> None:
    workload.run_children(tracer, parent, db_calls)


# ---------------------------------------------------------------------------------------------
# Timing.


@dataclass
class Variant:
    key: str
    label: str
    provider: TracerProvider
    span_exporter: NoopSpanExporter | CountingOTLPSpanExporter
    apm: APMSpanProcessor | None = None
    logger_provider: LoggerProvider | None = None
    log_exporter: NoopLogRecordExporter | None = None
    metric_reader: InMemoryMetricReader | None = None
    ns_per_span: list[float] = field(default_factory=list)  # wall clock
    cpu_ns_per_span: list[float] = field(default_factory=list)  # CPU of its threads and the main's
    extra_findings: int = 0  # beyond the workload's own: spans the machine stalled
    threads: list[threading.Thread] = field(default_factory=list)  # started by its pipeline

    def threads_cpu_ns(self) -> int:
        """CPU time its own threads (batch processors, our analysis worker, monitors) used."""
        return sum(time.clock_gettime_ns(time.pthread_getcpuclockid(t.ident or 0)) for t in self.threads)

    @property
    def tracer(self) -> trace.Tracer:
        return self.provider.get_tracer("bench", "1.0")

    def flush(self) -> None:
        self.provider.force_flush()
        if self.logger_provider is not None:
            self.logger_provider.force_flush()
        if self.metric_reader is not None:
            self.metric_reader.get_metrics_data()

    def shutdown(self) -> None:
        self.provider.shutdown()
        if self.logger_provider is not None:
            self.logger_provider.shutdown()


def _span_exporter() -> NoopSpanExporter | CountingOTLPSpanExporter:
    return NoopSpanExporter() if sink_url is None else CountingOTLPSpanExporter(sink_url)


def _bsp(exporter: SpanExporter, queue: int) -> BatchSpanProcessor:
    # The queue holds a whole round, so no span is dropped (a drop is cheaper than an export and
    # logs a warning per span); the batch size and delay are the SDK's defaults.
    return BatchSpanProcessor(exporter, max_queue_size=queue)


def make_baseline(queue: int) -> Variant:
    exporter = _span_exporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(_bsp(exporter, queue))
    return Variant("a", "baseline: BatchSpanProcessor", provider, exporter)


def make_ours(key: str, label: str, queue: int, **settings: Any) -> Variant:
    exporter = _span_exporter()
    log_exporter = NoopLogRecordExporter()
    logger_provider = LoggerProvider(resource=RESOURCE)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter, max_queue_size=queue))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], resource=RESOURCE)
    # An explicit default config, so stray APM_* variables in the environment cannot change the run.
    apm = APMSpanProcessor(
        _bsp(exporter, queue),
        APMConfig(),
        logger_provider=logger_provider,
        meter_provider=meter_provider,
        **{"console_enabled": False, **overrides, **settings},
    )
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(apm)
    return Variant(key, label, provider, exporter, apm, logger_provider, log_exporter, reader)


def _counts(v: Variant) -> tuple[int, int]:
    return v.span_exporter.exported, v.log_exporter.exported if v.log_exporter is not None else 0


def _check_round(v: Variant, before: tuple[int, int], traces: int) -> None:
    """Nothing dropped: every span exported, at least the workload's finding events."""
    sent, logged = before
    exported = v.span_exporter.exported - sent
    if exported != traces * SPANS_PER_TRACE:
        raise SystemExit(f"variant {v.key}: {exported} spans exported, expected {traces * SPANS_PER_TRACE}")
    # At least the workload's findings, none lost.  More happen when the machine stalls a span
    # (a GC pause inside a query makes a real slow_query_outlier): counted, reported at the end.
    # With APM_EVENTS_INTERVAL_S the repeats are summarized: no count of events to expect.
    if v.log_exporter is None or v.apm is None or v.apm.config.events_interval_s > 0:
        return
    events = v.log_exporter.exported - logged
    if events < traces * findings_per_trace:
        raise SystemExit(
            f"variant {v.key}: {events} finding events exported, expected {traces * findings_per_trace}"
        )
    v.extra_findings += max(0, events - traces * findings_per_trace)


def timed_round(v: Variant, traces: int) -> tuple[float, float]:
    """Wall and CPU ns per span for ``traces`` traces plus the flushes, in one go; checks
    nothing was dropped.  CPU: the main thread's and the variant's own threads'."""
    return interleaved_round([v], traces, traces)[0]


def interleaved_round(variants: Sequence[Variant], traces: int, chunk: int) -> list[tuple[float, float]]:
    """Wall and CPU ns per span of each variant for ``traces`` traces plus its flushes, the
    variants taking turns every ``chunk`` traces.  The host's speed swings by a factor of two
    over tens of milliseconds (a plain Python loop timed back to back here ranged 24-74 ms);
    turns that short put every variant under the same swings, where whole rounds one after the
    other do not.  But a variant's own threads (the batch processors' exports, our analysis
    worker) run in whichever turn holds the GIL when they wake, so the wall clock of a turn
    charges them to the others: the CPU figure counts the main thread's CPU in the variant's
    turns and its own threads' CPU over the round, each where it belongs."""
    tracers = [v.tracer for v in variants]
    before = [_counts(v) for v in variants]
    elapsed = [0] * len(variants)
    cpu = [0] * len(variants)
    gc.collect()
    own = [v.threads_cpu_ns() for v in variants]
    done = 0
    while done < traces:
        n = min(chunk, traces - done)
        for i, tracer in enumerate(tracers):
            c0 = time.thread_time_ns()
            t0 = time.perf_counter_ns()
            for _ in range(n):
                run_trace(tracer)
            elapsed[i] += time.perf_counter_ns() - t0
            cpu[i] += time.thread_time_ns() - c0
        done += n
    for i, v in enumerate(variants):
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        v.flush()
        elapsed[i] += time.perf_counter_ns() - t0
        cpu[i] += time.thread_time_ns() - c0
        _check_round(v, before[i], traces)
    spans = traces * SPANS_PER_TRACE
    return [
        (e / spans, (c + v.threads_cpu_ns() - o) / spans)
        for e, c, v, o in zip(elapsed, cpu, variants, own, strict=True)
    ]


def bench_time(
    traces: int,
    rounds: int,
    warmup: int,
    chunk: int,
    compare: dict[str, Any] | None = None,
    keys: Sequence[str] = ("a", "b", "c"),
) -> list[Variant]:
    """The variants ``keys`` names, a always; ``compare``: settings for a variant c that is b
    with them (an A/B of a setting in one run) instead of tail mode."""
    queue = max(2048, traces * SPANS_PER_TRACE + 1024)
    if compare is not None:
        label = "ours: " + " ".join(f"{k}={v}" for k, v in compare.items())
        third = partial(make_ours, "c", label[:32], queue, **compare)
    else:
        # Sample 1.0 on the clean workload: every span is then still exported, so the round's
        # check that nothing was lost holds, and the cost measured is holding and re-exporting.
        tail = f"ours: APM tail, sample {tail_rate:g}"
        third = partial(make_ours, "c", tail, queue, export_mode="tail", sample_rate=tail_rate)
    makers = {
        "a": partial(make_baseline, queue),
        "b": partial(make_ours, "b", "ours: APM passthrough", queue),
        "c": third,
    }
    variants = [with_threads(make) for key, make in makers.items() if key == "a" or key in keys]
    for v in variants:
        timed_round(v, warmup)
    for r in range(rounds):
        if chunk:
            results = interleaved_round(variants, traces, chunk)
        else:
            results = [timed_round(v, traces) for v in variants]
        for v, (wall, cpu) in zip(variants, results, strict=True):
            v.ns_per_span.append(wall)
            v.cpu_ns_per_span.append(cpu)
        line = "  ".join(
            f"{v.key}={v.ns_per_span[-1] / 1000:6.2f}/{v.cpu_ns_per_span[-1] / 1000:6.2f}" for v in variants
        )
        print(f"  round {r + 1}/{rounds}: {line}  µs/span (wall/CPU)", file=sys.stderr, flush=True)
    return variants


def with_threads(make: Callable[[], Variant]) -> Variant:
    """The variant ``make`` builds, knowing the threads its pipeline started."""
    before = set(threading.enumerate())
    v = make()
    v.threads = [t for t in threading.enumerate() if t not in before]
    return v


# ---------------------------------------------------------------------------------------------
# Memory.


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def memory_run(make_processor: Callable[[], SpanProcessor], traces: int) -> tuple[int, int, int]:
    """Traced bytes: before the roots start, with every root open and its children ended, and
    after the roots end (and the bench's references to them are gone)."""
    processor = make_processor()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("bench", "1.0")
    run_trace(tracer)  # first-use allocations (caches, interned strings) before the first reading
    start = _traced()
    roots = [
        tracer.start_span("GET /orders/{id}", kind=trace.SpanKind.SERVER, attributes=ROOT_ATTRS)
        for _ in range(traces)
    ]
    for root in roots:
        run_children(tracer, root)
    open_ = _traced()
    for root in roots:
        root.end()
    del roots
    provider.force_flush()  # the closed traces waiting for their batch's analysis are analyzed
    closed = _traced()
    provider.shutdown()
    return start, open_, closed


@dataclass
class MemoryResult:
    label: str
    open_minus_closed: int  # what ending the roots released
    held: int  # open_minus_closed beyond the baseline's: the processor's retained state
    residual: int  # closed minus start: what stays after every trace ended
    held_spans: int
    traces: int

    @property
    def per_span(self) -> float:
        return self.held / self.held_spans

    @property
    def per_trace(self) -> float:
        return self.held / self.traces


def bench_memory(traces: int) -> list[MemoryResult]:
    held_spans = traces * (SPANS_PER_TRACE - 1)
    tracemalloc.start()
    try:
        s, o, c = memory_run(NothingProcessor, traces)
        base = o - c
        results = [MemoryResult("baseline: do-nothing processor", base, 0, c - s, held_spans, traces)]
        for label, settings in (
            ("ours: APM passthrough", {}),
            ("ours: APM tail", {"export_mode": "tail", "sample_rate": 0.1}),
        ):

            def make(settings: dict[str, Any] = settings) -> SpanProcessor:
                return APMSpanProcessor(
                    NothingProcessor(),
                    APMConfig(),
                    emitters=(),
                    meter_provider=MeterProvider(),
                    console_enabled=False,
                    **settings,
                )

            s, o, c = memory_run(make, traces)
            results.append(MemoryResult(label, o - c, (o - c) - base, c - s, held_spans, traces))
    finally:
        tracemalloc.stop()
    return results


# ---------------------------------------------------------------------------------------------
# Profile.


def profile_ours(traces: int) -> list[tuple[str, int, float, float]]:
    """Top otel_apm functions by own time, variant b, one round."""
    v = make_ours("b", "ours", max(2048, traces * SPANS_PER_TRACE + 1024))
    timed_round(v, 200)
    prof = cProfile.Profile()
    prof.enable()
    timed_round(v, traces)
    prof.disable()
    v.shutdown()
    stats = pstats.Stats(prof)
    rows = []
    total_tt = 0.0
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        total_tt += tt
        if "otel_apm" in filename:
            where = filename[filename.rindex("otel_apm") :]
            rows.append((f"{where}:{line}({func})", nc, tt, ct))
    rows.sort(key=lambda r: r[2], reverse=True)
    ours_tt = sum(r[2] for r in rows)
    print(
        f"\ncProfile, variant b, {traces} traces: otel_apm own time {ours_tt * 1e3:.0f} ms "
        f"of {total_tt * 1e3:.0f} ms total ({100 * ours_tt / total_tt:.1f}%), "
        f"{ours_tt * 1e9 / (traces * SPANS_PER_TRACE) / 1000:.2f} µs/span under the profiler"
    )
    print(f"  {'function':<62} {'calls':>8} {'tottime ms':>11} {'cumtime ms':>11}")
    for name, nc, tt, ct in rows[:15]:
        print(f"  {name:<62} {nc:>8} {tt * 1e3:>11.1f} {ct * 1e3:>11.1f}")
    return rows


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--traces", type=int, default=2000, help="traces per variant per round (2000)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (7)")
    parser.add_argument("--warmup", type=int, default=500, help="warm-up traces per variant (500)")
    parser.add_argument("--memory-traces", type=int, default=2000, help="open traces for memory (2000)")
    parser.add_argument(
        "--chunk",
        type=int,
        default=10,
        help="traces per turn when the variants take turns within a round (10); 0: each variant "
        "runs its whole round in one go",
    )
    parser.add_argument("--profile", action="store_true", help="also cProfile variant b")
    parser.add_argument(
        "--workload",
        choices=sorted(FINDINGS_PER_TRACE),
        default="clean",
        help="nplusone: every trace has an N+1 finding (worst case for emission); clean: none",
    )
    parser.add_argument(
        "--exporter",
        choices=("noop", "otlp"),
        default="noop",
        help="noop: spans exported to a counter (the SDK's work alone); otlp: the SDK's OTLP/HTTP "
        "exporter to a sink process over a real socket",
    )
    add_set_argument(parser)
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="variant c is b with these settings (repeatable) instead of tail mode: an A/B in one run",
    )
    parser.add_argument(
        "--variants",
        default="a,b,c",
        help="the variants that run, a always (a,b,c): each in the process adds its objects to "
        "the heap every garbage collection walks, so a,b measures b alone against a",
    )
    args = parser.parse_args(argv)
    override(args.set)
    compare = settings_of(args.compare) if args.compare else None
    global db_calls, findings_per_trace, tail_rate, sink_url
    if args.exporter == "otlp":
        _, sink_url = start_sink()
    db_calls = WORKLOADS[args.workload]
    if args.workload == "clean":
        tail_rate = 1.0
    findings_per_trace = FINDINGS_PER_TRACE[args.workload]
    if args.traces < 1 or args.rounds < 1 or args.memory_traces < 1 or args.chunk < 0:
        parser.error("--traces, --rounds and --memory-traces must be >= 1, --chunk >= 0")
    if args.memory_traces > APMConfig().max_traces_in_flight:
        parser.error(f"--memory-traces must be <= max_traces_in_flight ({APMConfig().max_traces_in_flight})")

    started = time.monotonic()
    print(
        f"timing: {args.rounds} rounds x {args.traces} traces x {SPANS_PER_TRACE} spans per variant, "
        f"interleaved {args.variants} ({f'turns of {args.chunk} traces' if args.chunk else 'whole rounds'}) "
        f"after {args.warmup} warm-up traces each; GC on for all; "
        f"workload {args.workload}; exporter {args.exporter}",
        file=sys.stderr,
        flush=True,
    )
    keys = args.variants.split(",")
    variants = bench_time(args.traces, args.rounds, args.warmup, args.chunk, compare, keys)
    base = variants[0]
    print(f"\nPer-span cost ({args.rounds} rounds x {args.traces} traces x {SPANS_PER_TRACE} spans; GC on)")
    print(
        f"  {'variant':<34} {'wall µs/span':>12} {'ratio':>6}   {'CPU µs/span':>11} {'min':>7} {'max':>7} "
        f"{'ratio to a':>10}"
    )

    def ratio(v: Variant, cpu: bool) -> float:
        mine, theirs = (v.cpu_ns_per_span, base.cpu_ns_per_span) if cpu else (v.ns_per_span, base.ns_per_span)
        return statistics.median(x / y for x, y in zip(mine, theirs, strict=True))

    verdicts = []
    for v in variants:
        wall = statistics.median(v.ns_per_span) / 1000
        cpu = statistics.median(v.cpu_ns_per_span) / 1000
        lo, hi = min(v.cpu_ns_per_span) / 1000, max(v.cpu_ns_per_span) / 1000
        wall_s, cpu_s = ("-", "-") if v is base else (f"{ratio(v, False):.3f}", f"{ratio(v, True):.3f}")
        if v is not base:
            r = ratio(v, True)
            verdicts.append(f"{v.key}/a = {r:.3f} ({'meets' if r <= TARGET_RATIO else 'MISSES'})")
        print(
            f"  {v.key} {v.label:<32} {wall:>12.2f} {wall_s:>6}   {cpu:>11.2f} {lo:>7.2f} {hi:>7.2f} "
            f"{cpu_s:>10}"
        )
    print(f"  target: CPU ratio <= {TARGET_RATIO:.2f} (median of per-round ratios): " + "; ".join(verdicts))
    for v in variants[1:]:
        assert v.apm is not None and v.log_exporter is not None
        s = v.apm.stats()
        print(
            f"  {v.key}: traces_analyzed={s['traces_analyzed']} findings={s['findings']} "
            f"finding events exported={v.log_exporter.exported} spans exported={v.span_exporter.exported} "
            f"sampled_out={s['spans_sampled_out']} errors={s['errors_intake'] + s['errors_analysis']}"
            f"+{s['errors_emit']} findings beyond the workload's (stalls)={v.extra_findings}"
        )
    for v in variants:
        v.shutdown()

    mem = bench_memory(args.memory_traces)
    held = args.memory_traces * (SPANS_PER_TRACE - 1)
    print(
        f"\nMemory held while roots are open ({args.memory_traces} traces x {SPANS_PER_TRACE - 1} ended "
        f"children = {held} held spans; tracemalloc, gc.collect() before each reading)"
    )
    print(
        f"  {'processor':<32} {'open-closed B':>14} {'held B':>10} {'B/span':>7} {'B/trace':>8} "
        f"{'residual B':>11}"
    )
    for m in mem:
        held_s = "-" if m is mem[0] else f"{m.held:>10}"
        span_s = "-" if m is mem[0] else f"{m.per_span:.0f}"
        trace_s = "-" if m is mem[0] else f"{m.per_trace:.0f}"
        print(
            f"  {m.label:<32} {m.open_minus_closed:>14} {held_s:>10} {span_s:>7} {trace_s:>8} "
            f"{m.residual:>11}"
        )
    print("  open-closed: traced memory with the roots open minus after they ended (the baseline's is the")
    print("  open root spans themselves); held: the APM run's open-closed minus the baseline's, per held")
    print("  child span and per trace; residual: after-close minus before-start (e.g. dict capacity kept).")

    if args.profile:
        profile_ours(args.traces)
    print(f"\ntotal run time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
