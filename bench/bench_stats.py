"""What the rolling statistics (otel_apm.stats) cost per span, and their memory per endpoint.

    .venv/bin/python bench/bench_stats.py [--traces N] [--rounds R] [--e2e-traces M] [--hours H]

Time, on the nplusone workload of bench/workload.py (23 spans a trace, 20 of them queries in six
statement shapes), rounds interleaved so drift hits both alike, gc on, gc.collect() before each
round outside the timing:

  emit  Statistics.emit over N pre-built Trace objects per round (fresh ones each round, so no
        per-trace cache of the previous round is reused), against Analyzer.analyze over the same
        traces: the statistics' own cost, beside the analysis it follows.
  e2e   M traces per round through TracerProvider + APMSpanProcessor(BatchSpanProcessor(no-op)),
        events and metrics as in bench_processor.py variant b, once with APM_STATS_ENABLED=false
        ("without") and once with it on ("with"), flushes included; a third variant ("neither")
        also turns the per-statement metrics off (APM_METRICS_MAX_STATEMENTS=0), so "with"
        against "neither" is what statistics and statement metrics cost together.

Memory: 20 endpoints, each running 2 statements of its own, fed with lognormal durations (a
median of 20 ms and a long tail, so the sketches hold many buckets) on a simulated clock for H
hours (26), at two rates (1 and 10 requests per endpoint and simulated minute).  tracemalloc's traced
memory of the Statistics (after gc.collect()) is printed per key at checkpoints: it grows while
the rings fill (a day) and then stays flat, and is the same at ten times the traffic.

Printed: medians of µs per span, their ratio with/without, and the memory table.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Sequence
from functools import partial

import bench_processor
from bench_detectors import analyze_round, e2e_round, interleave, record_views
from bench_processor import make_ours
from workload import SPANS_PER_TRACE, WORKLOADS

from otel_apm.analyze import Analyzer
from otel_apm.config import APMConfig
from otel_apm.model import DB, HTTP_SERVER, KIND_CLIENT, KIND_SERVER, SpanView, Trace
from otel_apm.stats import Statistics

ENDPOINTS = 20
STATEMENTS_PER_ENDPOINT = 2


def emit_round(stats: Statistics, recorded: list[tuple[int, list[SpanView], SpanView]]) -> tuple[float, int]:
    traces = [Trace(trace_id, views, root) for trace_id, views, root in recorded]
    emit = stats.emit
    gc.collect()
    t0 = time.perf_counter_ns()
    for t in traces:
        emit(t, ())
    return (time.perf_counter_ns() - t0) / (len(traces) * SPANS_PER_TRACE), 0


def print_pair(title: str, runs: dict[str, list[float]], base: str, ours: str) -> None:
    print(f"\n{title}")
    for name, ns in runs.items():
        print(
            f"  {name:<8} median {statistics.median(ns) / 1000:8.3f} µs/span "
            f"(min {min(ns) / 1000:.3f}, max {max(ns) / 1000:.3f})"
        )
    b, o = statistics.median(runs[base]), statistics.median(runs[ours])
    print(f"  ratio of medians {ours}/{base}: {o / b:.3f}   ({(o - b) / 1000:+.3f} µs/span)")
    # Adjacent rounds share the machine's load: their ratio drifts less than either alone.
    paired = statistics.median(x / y for x, y in zip(runs[ours], runs[base], strict=True))
    print(f"  median of per-round ratios {ours}/{base}: {paired:.3f}")


# -- memory ----------------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def synthetic_trace(rng: random.Random, trace_id: int, endpoint: int) -> Trace:
    """A request to one of the endpoints with one query of each of its statements."""
    start = 1_000_000_000_000
    root_ms = rng.lognormvariate(3, 1.2)  # median 20 ms, p99 about 330 ms
    root = SpanView(
        trace_id,
        1,
        0,
        f"GET /r{endpoint}",
        KIND_SERVER,
        start,
        start + int(root_ms * 1e6),
        False,
        "svc",
        HTTP_SERVER,
    )
    root.http_method, root.http_route = "GET", f"/r{endpoint}/{{id}}"
    spans = [root]
    for i in range(STATEMENTS_PER_ENDPOINT):
        q_ms = rng.lognormvariate(0, 1.5)
        q = SpanView(
            trace_id, 2 + i, 1, "SELECT", KIND_CLIENT, start, start + int(q_ms * 1e6), False, "svc", DB
        )
        q.db_system, q.statement = "postgresql", f"SELECT * FROM t{endpoint}_{i} WHERE id = %s"
        spans.append(q)
    return Trace(trace_id, spans, root)


def memory_run(per_minute: int, minutes: int, checkpoints_min: Sequence[int]) -> list[tuple[int, int, float]]:
    """(simulated minutes, traces, bytes per key) at each checkpoint."""
    rng = random.Random(per_minute)
    pool = [synthetic_trace(rng, n + 1, n % ENDPOINTS) for n in range(ENDPOINTS * 200)]
    t0 = 1_800_000_000.0
    clock = Clock(t0)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    stats = Statistics(clock=clock)
    out = []
    traces = 0
    step = 60.0 / per_minute
    for minute in range(minutes + 1):
        for i in range(per_minute):
            clock.now = t0 + minute * 60 + i * step
            for e in range(ENDPOINTS):
                stats.emit(pool[(traces + e) % len(pool)], ())
            traces += ENDPOINTS
        if minute % 60 == 0:
            stats.closed_minutes()  # a store drains them, as it would in a deployment
        if minute in checkpoints_min:
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
            endpoints, statements = stats.memory_keys()
            out.append((minute, traces, held / (endpoints + statements)))
    tracemalloc.stop()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--traces", type=int, default=2000, help="traces per emit round (2000)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (7)")
    parser.add_argument("--e2e-traces", type=int, default=1000, help="traces per end-to-end round (1000)")
    parser.add_argument(
        "--hours", type=int, default=26, help="simulated hours of the memory run (26; 0: no memory run)"
    )
    args = parser.parse_args(argv)
    if min(args.traces, args.rounds, args.e2e_traces) < 1 or args.hours < 0:
        parser.error("--traces, --rounds and --e2e-traces must be >= 1, --hours >= 0")
    started = time.monotonic()

    recorded = record_views("nplusone", args.traces)
    runs, _ = interleave(
        args.rounds,
        {
            "analyze": partial(analyze_round, Analyzer(APMConfig()), recorded),
            "stats": partial(emit_round, Statistics(), recorded),
        },
    )
    print_pair(
        f"Statistics.emit alone vs Analyzer.analyze ({args.rounds} rounds x {args.traces} traces)",
        runs,
        "analyze",
        "stats",
    )

    bench_processor.db_calls = WORKLOADS["nplusone"]
    queue = max(2048, args.e2e_traces * SPANS_PER_TRACE + 1024)
    variants = {
        "neither": make_ours("neither", "stats off", queue, stats_enabled=False, metrics_max_statements=0),
        "without": make_ours("without", "stats off", queue, stats_enabled=False),
        "with": make_ours("with", "stats on", queue),
    }
    runs, _ = interleave(
        args.rounds, {name: partial(e2e_round, v, args.e2e_traces) for name, v in variants.items()}
    )
    for v in variants.values():
        v.shutdown()
    print_pair(
        f"e2e through APMSpanProcessor ({args.rounds} rounds x {args.e2e_traces} traces)",
        runs,
        "without",
        "with",
    )
    print_pair("statement metrics and statistics together", runs, "neither", "with")

    if not args.hours:
        return 0
    checkpoints = sorted({1, 10, 60, 360, 1440, args.hours * 60} & set(range(args.hours * 60 + 1)))
    print(
        f"\nmemory per key ({ENDPOINTS} endpoints x {STATEMENTS_PER_ENDPOINT} statements each, "
        "simulated clock)"
    )
    print(f"  {'rate /endpoint/min':>18} {'simulated':>10} {'traces':>10} {'bytes/key':>10}")
    for per_minute in (1, 10):
        for minute, traces, per_key in memory_run(per_minute, args.hours * 60, checkpoints):
            print(f"  {per_minute:>18} {minute / 60:>9.1f}h {traces:>10} {per_key:>10.0f}")
    print(f"\ntotal run time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
