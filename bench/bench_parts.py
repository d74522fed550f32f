"""What each per-trace part of the analysis costs, timed: the summary, the analysis, the statistics
and the metrics reporter, in µs a trace.

    .venv/bin/python bench/bench_parts.py [--workload clean|nplusone] [--traces N] [--rounds R]
        [--set NAME=VALUE]

The workload's traces are recorded once through a real TracerProvider and read into views as
the processor reads them (bench_detectors.record_views).  Each round times, over N fresh Trace
objects (made outside the timing, so nothing one round derived is reused):

  summary  TraceSummary, made as the analyzer makes it (compiled or not, by native_enabled)
  analyze  Analyzer.analyze on other fresh traces, the summary included
  stats    Statistics.emit of those analyzed traces (it reads what the analysis filed)
  metrics  MetricsEmitter.emit of the same traces, after the statistics

and prints the median over R rounds.  Wall-clock, so the machine's load moves it: run builds
interleaved and compare within one run, or count instructions (bench_emit_instructions.py).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import bench_processor as bp
from bench_detectors import record_views
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from workload import FINDINGS_PER_TRACE

from otel_apm.analyze import Analyzer
from otel_apm.config import APMConfig
from otel_apm.detectors.summary import TraceSummary
from otel_apm.emit.metrics import MetricsEmitter
from otel_apm.model import Trace
from otel_apm.native import native
from otel_apm.stats import Statistics

T = TypeVar("T")


def timed(step: Callable[..., T], calls: list[tuple[Any, ...]]) -> tuple[float, list[T]]:
    """Nanoseconds to make every call of ``step``, and what they returned."""
    start = time.perf_counter_ns()
    out = [step(*args) for args in calls]
    return time.perf_counter_ns() - start, out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", choices=sorted(FINDINGS_PER_TRACE), default="clean")
    parser.add_argument("--traces", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    bp.add_set_argument(parser)
    args = parser.parse_args(argv)
    bp.override(args.set)
    config = APMConfig(memory_monitor_enabled=False, console_enabled=False, **bp.overrides)
    recorded = record_views(args.workload, args.traces)
    compiled = native(config.native_enabled)
    analyzer = Analyzer(config)
    stats = Statistics(config)
    metrics = MetricsEmitter(MeterProvider(metric_readers=[InMemoryMetricReader()]), config)
    times: dict[str, list[float]] = {"summary": [], "analyze": [], "stats": [], "metrics": []}

    def fresh() -> list[Trace]:
        return [Trace(trace_id, list(views), root) for trace_id, views, root in recorded]

    for _ in range(args.rounds):
        gc.collect()
        times["summary"].append(timed(TraceSummary.of, [(t, compiled) for t in fresh()])[0])
        traces = fresh()
        gc.collect()
        elapsed, found = timed(analyzer.analyze, [(t,) for t in traces])
        times["analyze"].append(elapsed)
        pairs = list(zip(traces, found, strict=True))
        times["stats"].append(timed(stats.emit, pairs)[0])
        times["metrics"].append(timed(metrics.emit, pairs)[0])
    print(
        f"µs a trace, median of {args.rounds} rounds x {args.traces} traces, workload {args.workload}, "
        f"native {'on' if compiled is not None else 'off'}"
    )
    for part, values in times.items():
        print(f"  {part:<8} {statistics.median(values) / 1000 / args.traces:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
