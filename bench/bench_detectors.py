"""What the whole detector suite costs per span, against the first four detectors alone.

    .venv/bin/python bench/bench_detectors.py [--traces N] [--rounds R] [--e2e-traces M]

Two detector sets, in one process, rounds interleaved (first, suite, first, suite, ...) so drift
hits both alike:

  first  n_plus_one_query, slow_query, slow_request, n_plus_one_api_call: the detectors that came
         first, whose cost the processor's figures in bench/README.md include
  suite  DEFAULT_DETECTORS: whatever is registered now

on both workloads of bench/workload.py (``clean``: no finding; ``nplusone``: an N+1 in every
trace), in two ways:

  analyze  Analyzer.analyze over N pre-built Trace objects per round: the spans were recorded by a
           real TracerProvider and read into views by the processor's SpanReader beforehand; each
           round gets fresh Trace objects (built outside the timing), so no per-trace cache of the
           previous round is reused.  Analysis alone, no emission.
  e2e      M traces per round through TracerProvider + APMSpanProcessor(BatchSpanProcessor(no-op))
           with the set, events and metrics as in bench_processor.py variant b, flushes included.

The garbage collector stays on; gc.collect() runs before each round, outside the timing.  Printed:
the median µs/span of each set, the ratio of the medians suite/first, and the findings per trace
of each set (so a new detector firing on the workload is seen, not mistaken for slowness).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial

import bench_processor
from bench_processor import make_ours
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from workload import SPANS_PER_TRACE, WORKLOADS, run_trace

from otel_apm.analyze import Analyzer
from otel_apm.config import APMConfig
from otel_apm.detectors import DEFAULT_DETECTORS, Detector
from otel_apm.detectors.n_plus_one import NPlusOneQueryDetector
from otel_apm.detectors.n_plus_one_api import NPlusOneApiCallDetector
from otel_apm.detectors.slow_query import SlowQueryDetector
from otel_apm.detectors.slow_request import SlowRequestDetector
from otel_apm.ingest.sdk import SpanReader
from otel_apm.model import SpanView, Trace

FIRST: tuple[type[Detector], ...] = (
    NPlusOneQueryDetector,
    SlowQueryDetector,
    SlowRequestDetector,
    NPlusOneApiCallDetector,
)
SETS = {"first": FIRST, "suite": DEFAULT_DETECTORS}
SERVICE = "orders-api"


def record_views(workload: str, traces: int) -> list[tuple[int, list[SpanView], SpanView]]:
    """``traces`` traces of the workload as (trace id, views, root), read as the processor reads them."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("bench", "1.0")
    for _ in range(traces):
        run_trace(tracer, WORKLOADS[workload])
    provider.shutdown()
    read = SpanReader().read
    by_trace: dict[int, list[SpanView]] = {}
    for span in exporter.get_finished_spans():
        view = read(span, SERVICE)
        by_trace.setdefault(view.trace_id, []).append(view)
    out = []
    for trace_id, views in by_trace.items():
        (root,) = [v for v in views if not v.parent_id]
        out.append((trace_id, views, root))
    return out


def analyze_round(
    analyzer: Analyzer, recorded: list[tuple[int, list[SpanView], SpanView]]
) -> tuple[float, int]:
    """ns per span and findings for one pass of Analyzer.analyze over fresh Trace objects."""
    traces = [Trace(trace_id, views, root) for trace_id, views, root in recorded]
    analyze = analyzer.analyze
    gc.collect()
    t0 = time.perf_counter_ns()
    found = sum(len(analyze(t)) for t in traces)
    elapsed = time.perf_counter_ns() - t0
    return elapsed / (len(traces) * SPANS_PER_TRACE), found


def e2e_round(variant: bench_processor.Variant, traces: int) -> tuple[float, int]:
    """ns per span for ``traces`` traces through the processor, flushes included, and findings."""
    assert variant.apm is not None
    tracer = variant.tracer
    before = variant.apm.stats()["findings"]
    gc.collect()
    t0 = time.perf_counter_ns()
    for _ in range(traces):
        bench_processor.run_trace(tracer)
    variant.flush()
    elapsed = time.perf_counter_ns() - t0
    return elapsed / (traces * SPANS_PER_TRACE), variant.apm.stats()["findings"] - before


def report(title: str, runs: dict[str, list[float]], found: dict[str, int], traces: int) -> None:
    print(f"\n{title}")
    print(
        f"  {'set':<6} {'detectors':>9} {'median µs/span':>15} {'min':>8} {'max':>8} {'findings/trace':>15}"
    )
    for name, ns in runs.items():
        print(
            f"  {name:<6} {len(SETS[name]):>9} {statistics.median(ns) / 1000:>15.3f} {min(ns) / 1000:>8.3f} "
            f"{max(ns) / 1000:>8.3f} {found[name] / traces:>15.2f}"
        )
    ratio = statistics.median(runs["suite"]) / statistics.median(runs["first"])
    print(f"  ratio of medians suite/first: {ratio:.3f}")


def interleave(
    rounds: int, steps: dict[str, Callable[[], tuple[float, int]]]
) -> tuple[dict[str, list[float]], dict[str, int]]:
    runs: dict[str, list[float]] = {name: [] for name in steps}
    found = dict.fromkeys(steps, 0)
    for step in steps.values():  # warm-up: caches, first-use allocations
        step()
    for _ in range(rounds):
        for name, step in steps.items():
            ns, n = step()
            runs[name].append(ns)
            found[name] += n
    return runs, found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--traces", type=int, default=2000, help="traces per Analyzer round (2000)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (7)")
    parser.add_argument("--e2e-traces", type=int, default=1000, help="traces per end-to-end round (1000)")
    args = parser.parse_args(argv)
    if min(args.traces, args.rounds, args.e2e_traces) < 1:
        parser.error("--traces, --rounds and --e2e-traces must be >= 1")
    started = time.monotonic()
    print(
        f"suite: {', '.join(d.type for d in DEFAULT_DETECTORS)}\nfirst: {', '.join(d.type for d in FIRST)}",
        flush=True,
    )
    queue = max(2048, args.e2e_traces * SPANS_PER_TRACE + 1024)
    for workload in ("clean", "nplusone"):
        recorded = record_views(workload, args.traces)
        analyzers = {name: Analyzer(APMConfig(), detectors) for name, detectors in SETS.items()}
        runs, found = interleave(
            args.rounds,
            {name: partial(analyze_round, a, recorded) for name, a in analyzers.items()},
        )
        report(
            f"analyze, workload {workload} "
            f"({args.rounds} rounds x {args.traces} traces x {SPANS_PER_TRACE} spans)",
            runs,
            found,
            args.rounds * args.traces,
        )

        bench_processor.db_calls = WORKLOADS[workload]
        variants = {
            name: make_ours(name, name, queue, detectors=detectors) for name, detectors in SETS.items()
        }
        runs, found = interleave(
            args.rounds,
            {name: partial(e2e_round, v, args.e2e_traces) for name, v in variants.items()},
        )
        for v in variants.values():
            v.shutdown()
        report(
            f"e2e through APMSpanProcessor, workload {workload} "
            f"({args.rounds} rounds x {args.e2e_traces} traces x {SPANS_PER_TRACE} spans)",
            runs,
            found,
            args.rounds * args.e2e_traces,
        )
    print(f"\ntotal run time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
