"""What the statistics and the metrics reporter cost per trace, in instructions (callgrind).

    .venv/bin/python bench/bench_emit_instructions.py [--workload clean|nplusone] [--parts LIST]
        [--set NAME=VALUE]

bench_instructions.py's ablation (variant b with ``--set stats_enabled=false`` or
``--set reporters=``) cannot resolve them: the batch processors' threads wake by the clock, and
runs of one build differ by more than these reporters cost (about 19,000 instructions a span on
the clean trace).  Here a child records the workload's traces, analyzes them all (the detectors'
derived data are in place, as in the processor), feeds 100 of them to the reporters as a warm-up,
then the next 200 inside one ``functools.reduce`` call (nothing else calls it), and ``valgrind
--tool=callgrind --toggle-collect=*functools_reduce*`` counts only that call: one thread,
nothing timed, the garbage collector paused, hash and address randomization off.  The
statistics' clock moves a sixtieth of a second a trace, so their ticks and minutes close as
under load.  ``--set`` gives the reporters' APMConfig a setting, as in bench_processor.py
(``--set native_enabled=false``: their Python versions).

Parts, joined by ``+`` to run together (the shared grouping is made by the first that asks):

  group     the statement grouping and the category breakdown both read (statements_of, breakdown)
  stats     Statistics.emit
  metrics   MetricsEmitter.emit (its transaction-duration histogram included)
  hist      the histogram's record alone, the SDK's part of the metrics, with a typical attribute set
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable, Sequence
from functools import reduce

from bench_detectors import record_views
from bench_instructions import callgrind_count
from bench_processor import add_set_argument, override, overrides
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from workload import FINDINGS_PER_TRACE

from otel_apm.analyze import Analyzer
from otel_apm.config import APMConfig
from otel_apm.detectors.base import Finding
from otel_apm.detectors.dbshape import statements_of
from otel_apm.emit.metrics import ENDPOINT, SERVICE, MetricsEmitter
from otel_apm.model import Trace
from otel_apm.stats import Statistics

WARMUP, COUNTED = 100, 200
Step = Callable[[Trace, Sequence[Finding]], object]


def steps(part: str, config: APMConfig) -> list[Step]:
    now = [1_000_000.0]

    def clock() -> float:
        now[0] += 1 / 60
        return now[0]

    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    out: list[Step] = []
    if "group" in part:
        out.append(lambda t, _: (statements_of(t), t.breakdown()))
    if "stats" in part:
        out.append(Statistics(config, clock=clock).emit)
    if "metrics" in part:
        out.append(MetricsEmitter(meter_provider, config).emit)
    if "hist" in part:
        record = MetricsEmitter(meter_provider, config)._duration.record
        attributes = {SERVICE: "bench", ENDPOINT: "GET /orders/{id}", "http.route": "/orders/{id}"}
        out.append(lambda *_: record(0.01, {**attributes, "http.request.method": "GET"}))
    return out


def child(part: str, workload: str) -> None:
    """Record, analyze, warm up, then run the part over COUNTED traces inside reduce()."""
    config = APMConfig(memory_monitor_enabled=False, console_enabled=False, **overrides)
    analyzer = Analyzer(config)
    traces = [
        Trace(trace_id, views, root) for trace_id, views, root in record_views(workload, WARMUP + COUNTED)
    ]
    analyzed = [(t, analyzer.analyze(t)) for t in traces]
    run = steps(part, config)

    def feed(pairs: Sequence[tuple[Trace, list[Finding]]]) -> None:
        for t, found in pairs:
            for step in run:
                step(t, found)

    feed(analyzed[:WARMUP])
    gc.collect()
    gc.disable()
    reduce(lambda _, pairs: feed(pairs), [analyzed[WARMUP:]], None)
    os._exit(0)


def instructions(part: str, workload: str, settings: Sequence[str]) -> int:
    given = [f"--set={item}" for item in settings]
    return callgrind_count(
        [__file__, "--workload", workload, *given, "--child", part], ["--toggle-collect=*functools_reduce*"]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", choices=sorted(FINDINGS_PER_TRACE), default="clean")
    parser.add_argument(
        "--parts", default="group,stats,metrics,group+stats+metrics", help="comma-separated (see above)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    add_set_argument(parser)
    args = parser.parse_args(argv)
    override(args.set)
    if args.child:
        child(args.child, args.workload)
    print(f"Instructions per trace ({COUNTED} traces, workload {args.workload})")
    for part in args.parts.split(","):
        print(f"  {part:<24} {instructions(part, args.workload, args.set) / COUNTED:>10,.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
