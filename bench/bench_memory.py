"""What the memory monitor and tracemalloc cost, against the same workload without them.

    .venv/bin/python bench/bench_memory.py [--traces N] [--rounds R]

The workload is the traced request of bench/workload.py (23 spans, the N+1 variant) through
TracerProvider + APMSpanProcessor (analysis only, no exporter, monitor off): allocation-heavy
Python, as a web request is.  Variants, interleaved per round (a, b, c, a, b, c, ...):

    a  the workload alone
    b  the same with tracemalloc tracing (1 frame, as a heap profile runs it)
    c  the same with a MemoryMonitor sampling every 0.1 s (300 times the default rate)

It prints the median ms per round of each, the medians of the per-round ratios b/a and c/a, the
monitor's cost per check (timed directly) and what that is at the default interval, and what
ending a heap profile (snapshot and comparison) costs after one round of tracing.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence

from opentelemetry.sdk.trace import TracerProvider
from workload import WORKLOADS, run_trace

from otel_apm import APMConfig, APMSpanProcessor
from otel_apm.profiling.heap import HeapProfiler
from otel_apm.profiling.memory import MemoryMonitor


def make_workload() -> Callable[[int], None]:
    provider = TracerProvider()
    provider.add_span_processor(
        APMSpanProcessor(None, APMConfig(console_enabled=False, memory_monitor_enabled=False))
    )
    tracer = provider.get_tracer("bench")
    calls = WORKLOADS["nplusone"]

    def run(traces: int) -> None:
        for _ in range(traces):
            run_trace(tracer, calls)

    return run


def timed(run: Callable[[int], None], traces: int) -> float:
    gc.collect()
    start = time.perf_counter()
    run(traces)
    return (time.perf_counter() - start) * 1e3


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--traces", type=int, default=1000, help="traces per variant per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)

    run = make_workload()
    run(args.traces // 4)  # warm-up: caches, imports
    config = APMConfig(memory_check_interval_s=0.1)
    times: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    traced_bytes = 0
    for _ in range(args.rounds):
        times["a"].append(timed(run, args.traces))
        tracemalloc.start()
        times["b"].append(timed(run, args.traces))
        traced_bytes = max(traced_bytes, tracemalloc.get_tracemalloc_memory())
        tracemalloc.stop()
        monitor = MemoryMonitor(config, lambda findings: None, lambda: "bench")
        monitor.start()
        times["c"].append(timed(run, args.traces))
        checks = monitor.stats()["checks"]
        monitor.stop()
        if checks == 0:
            raise SystemExit("the monitor made no check during a round: raise --traces")

    # One check, timed directly; the 200 samples stay in the default window, so each check
    # after the first 8 fits the trend over as many as it compares (64): the worst case.
    probe = MemoryMonitor(APMConfig(), lambda findings: None, lambda: "bench")
    per_check = []
    for _ in range(200):
        start = time.perf_counter()
        probe.check()
        per_check.append((time.perf_counter() - start) * 1e6)
    # Ending a heap profile after one round of tracing: two snapshots' worth of comparison.
    profiler = HeapProfiler(top=10)
    profiler.begin()
    run(args.traces)
    start = time.perf_counter()
    sites = profiler.end()
    end_ms = (time.perf_counter() - start) * 1e3

    med = {k: statistics.median(v) for k, v in times.items()}
    b_a = statistics.median(b / a for a, b in zip(times["a"], times["b"], strict=True))
    c_a = statistics.median(c / a for a, c in zip(times["a"], times["c"], strict=True))
    check_us = statistics.median(per_check)
    print(f"{args.rounds} rounds x {args.traces} traces (23 spans each), medians:")
    print(f"  a workload alone                  {med['a']:9.1f} ms")
    print(f"  b with tracemalloc on             {med['b']:9.1f} ms   b/a = {b_a:.3f}")
    print(f"  c with the monitor every 0.1 s    {med['c']:9.1f} ms   c/a = {c_a:.3f}")
    print(f"tracemalloc's own memory at the end of a round: {traced_bytes / 1024 / 1024:.1f} MiB")
    print(
        f"one monitor check: {check_us:.1f} µs (median of 200); at the default 30 s interval "
        f"{check_us / 30e6 * 100:.5f}% of one core"
    )
    print(f"ending a heap profile after one traced round: {end_ms:.1f} ms, {len(sites)} sites")
    return 0


if __name__ == "__main__":
    sys.exit(main())
