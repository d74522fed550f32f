"""The per-trace work timed where it runs: inside the processor, between the SDK's span work.

    .venv/bin/python bench/bench_stages.py [--workload clean|nplusone] [--traces N] [--rounds R]

bench_parts.py times the analysis and the emitters in a loop over recorded traces; inside the
processor the same work costs more, because between two traces the SDK's work on 23 spans has
cooled the interpreter's caches and branch predictors.  Here three pipelines of
bench_processor.py take turns of 10 traces, as there: a (the SDK and a BatchSpanProcessor), b
(ours, closed traces analyzed in batches on the worker thread, the default) and s (ours with
``analysis_delay_ms=0``: each trace analyzed on the thread that ends its root, as it ends).  In
b and s the processor's ``_finish`` (a batch of closed traces, or one), ``Analyzer.analyze`` and
each emitter's ``emit`` are wrapped with ``time.perf_counter_ns``; the script prints each one's
µs a trace, and each pipeline's CPU µs a span as bench_processor.py counts it.  The wrappers
cost about 0.3 µs a call, the same in b and s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import bench_processor as bp
from workload import FINDINGS_PER_TRACE, SPANS_PER_TRACE, WORKLOADS


def timed(totals: dict[str, list[int]], name: str, fn: Callable[..., Any], per: Callable[..., int]) -> Any:
    """``fn`` adding its time and the traces it handled (``per(*args)``) to ``totals[name]``."""
    entry = totals.setdefault(name, [0, 0])

    def wrapper(*args: Any) -> Any:
        t0 = time.perf_counter_ns()
        try:
            return fn(*args)
        finally:
            entry[0] += time.perf_counter_ns() - t0
            entry[1] += per(*args)

    return wrapper


def instrument(v: bp.Variant, totals: dict[str, list[int]]) -> None:
    apm = v.apm
    assert apm is not None
    one = lambda *_: 1  # noqa: E731
    apm._finish = timed(totals, "finish", apm._finish, lambda closed: len(closed))  # type: ignore[method-assign]
    analyzer = apm._analyzer
    analyzer.analyze = timed(totals, "analyze", analyzer.analyze, one)  # type: ignore[method-assign]
    for emitter in apm.emitters:
        emitter.emit = timed(totals, type(emitter).__name__, emitter.emit, one)  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", choices=sorted(FINDINGS_PER_TRACE), default="clean")
    parser.add_argument("--traces", type=int, default=2000, help="traces per pipeline per round (2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (3)")
    parser.add_argument(
        "--no-stages", action="store_true", help="no wrappers: the pipelines' CPU ratios alone"
    )
    args = parser.parse_args(argv)
    bp.db_calls = WORKLOADS[args.workload]
    bp.findings_per_trace = FINDINGS_PER_TRACE[args.workload]
    queue = args.traces * SPANS_PER_TRACE + 1024
    variants = [
        bp.with_threads(lambda: bp.make_baseline(queue)),
        bp.with_threads(lambda: bp.make_ours("b", "batches", queue)),
        bp.with_threads(lambda: bp.make_ours("s", "as each root ends", queue, analysis_delay_ms=0)),
    ]
    for v in variants:
        bp.timed_round(v, 500)
    stages: dict[str, dict[str, list[int]]] = {"b": {}, "s": {}}
    for v in variants[1:]:
        if not args.no_stages:
            instrument(v, stages[v.key])
    cpu: dict[str, list[float]] = {v.key: [] for v in variants}
    for r in range(args.rounds):
        for v, (_, per_span) in zip(variants, bp.interleaved_round(variants, args.traces, 10), strict=True):
            cpu[v.key].append(per_span)
        print(f"  round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
    print(f"workload {args.workload}, {args.rounds} rounds x {args.traces} traces, turns of 10 traces")
    print(f"  {'stage, µs a trace':<22} {'b: batches':>11} {'s: as each root ends':>21}")
    for name in stages["b"]:
        (b_ns, b_n), (s_ns, s_n) = stages["b"][name], stages["s"][name]
        print(f"  {name:<22} {b_ns / max(b_n, 1) / 1000:>11.1f} {s_ns / max(s_n, 1) / 1000:>21.1f}")
    base = cpu["a"]
    for key in ("b", "s"):
        ratio = statistics.median(x / y for x, y in zip(cpu[key], base, strict=True))
        print(f"  CPU {key}/a = {ratio:.3f} (median of per-round ratios)")
    for v in variants:
        v.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
