"""What the analysis, the statistics, the metrics reporter and the query history cost per trace,
in instructions (callgrind).

    .venv/bin/python bench/bench_emit_instructions.py [--workload W] [--parts LIST] [--set NAME=VALUE]
        [--keep FILE | --recorded FILE]

bench_instructions.py's ablation (variant b with ``--set stats_enabled=false`` or
``--set reporters=``) cannot resolve them: the batch processors' threads wake by the clock, and
runs of one build differ by more than these reporters cost (about 19,000 instructions a span on
the clean trace).  Here the script records the workload's traces once, outside valgrind (see
record()), and a child loads them, analyzes them all (the detectors'
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
  hist      the SDK's Histogram.record alone, with the transaction histogram's typical attribute set
  direct    the same point through the metrics' DirectHistogram, the set's route already learnt
  history   the slow-query-outlier detector's history write of a trace that cannot fire (on_skip),
            into a history of its own
  summary   the TraceSummary the analyzer makes first (with the trace's filings)
  analyze   Analyzer.analyze, the summary included

With summary or analyze, each trace is a fresh Trace of the recorded spans (its making counted),
so nothing the first analysis derived is reused and the parts after them read what they made:
``analyze+stats+metrics`` is what a trace costs after its spans are read.

``--set NAME=VALUE`` gives the config a setting, as in bench_processor.py: ``--set
native_enabled=false`` counts the Python twins of the compiled parts.  ``--keep FILE`` keeps the
recorded traces, and ``--recorded FILE`` counts those again (another build, another setting):
then the two counts differ only by what changed.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import sys
import tempfile
from collections.abc import Callable, Sequence
from functools import reduce

import bench_processor as bp
from bench_detectors import record_views
from bench_instructions import callgrind_count
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from workload import FINDINGS_PER_TRACE

from otel_apm.analyze import Analyzer
from otel_apm.config import APMConfig
from otel_apm.detectors.base import Finding
from otel_apm.detectors.dbshape import statements_of
from otel_apm.detectors.history import History
from otel_apm.detectors.slow_query_outlier import SlowQueryOutlierDetector
from otel_apm.detectors.summary import TraceSummary
from otel_apm.emit.histogram import DirectHistogram
from otel_apm.emit.metrics import ENDPOINT, SERVICE, MetricsEmitter
from otel_apm.model import Trace
from otel_apm.native import native
from otel_apm.stats import Statistics

WARMUP, COUNTED = 100, 200
Step = Callable[[Trace, Sequence[Finding]], object]


def steps(part: str, config: APMConfig, analyzer: Analyzer) -> list[Step]:
    now = [1_000_000.0]

    def clock() -> float:
        now[0] += 1 / 60
        return now[0]

    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    out: list[Step] = []
    names = part.split("+")
    # The analysis first, as in the processor: it makes what the reporters read.
    if "summary" in names:
        compiled = native(config.native_enabled)
        out.append(lambda t, _: TraceSummary(t, compiled))
    if "analyze" in names:
        out.append(lambda t, _: analyzer.analyze(t))
    if "group" in names:
        out.append(lambda t, _: (statements_of(t), t.breakdown()))
    if "stats" in names:
        out.append(Statistics(config, clock=clock).emit)
    if "metrics" in names:
        out.append(MetricsEmitter(meter_provider, config).emit)
    attributes = {SERVICE: "bench", ENDPOINT: "GET /orders/{id}", "http.route": "/orders/{id}"}
    if "hist" in names:
        record = meter_provider.get_meter("bench").create_histogram("hist").record
        out.append(lambda *_: record(0.01, {**attributes, "http.request.method": "GET"}))
    if "direct" in names:
        direct = DirectHistogram(meter_provider.get_meter("bench").create_histogram("direct"))
        direct.record_new("GET /orders/{id}", 0.01, {**attributes, "http.request.method": "GET"})
        out.append(lambda *_: direct.record("GET /orders/{id}", 0.01))
    if "history" in names:
        history = History(native(config.native_enabled))
        out.append(lambda t, _: SlowQueryOutlierDetector.on_skip(config, TraceSummary.of(t), history))
    return out


def child(part: str, recorded: str) -> None:
    """Load the recorded traces, analyze, warm up, then run the part over COUNTED traces inside
    reduce()."""
    config = APMConfig(memory_monitor_enabled=False, console_enabled=False, **bp.overrides)
    analyzer = Analyzer(config)
    with open(recorded, "rb") as f:
        traces = [Trace(trace_id, views, root) for trace_id, views, root in pickle.load(f)]
    analyzed = [(t, analyzer.analyze(t)) for t in traces]
    run = steps(part, config, analyzer)

    fresh = "summary" in part or "analyze" in part

    def feed(pairs: Sequence[tuple[Trace, list[Finding]]]) -> None:
        for t, found in pairs:
            if fresh:  # nothing the first analysis derived is reused; the parts after see this one
                t = Trace(t.trace_id, t.spans, t.root)
            for step in run:
                step(t, found)

    feed(analyzed[:WARMUP])
    gc.collect()
    gc.disable()
    reduce(lambda _, pairs: feed(pairs), [analyzed[WARMUP:]], None)
    os._exit(0)


def instructions(part: str, recorded: str, settings: Sequence[str]) -> int:
    return callgrind_count(
        [__file__, "--recorded", recorded, "--child", part, *(f"--set={item}" for item in settings)],
        ["--toggle-collect=*functools_reduce*"],
    )


def record(workload: str, path: str) -> None:
    """The workload's traces recorded here, outside valgrind, for every child to load: under
    valgrind a span lasts fifty times as long, and a clean trace's summed query time would
    cross detectors' bounds (chatty, bottleneck) and make them run; recorded once, every part
    and every run of the script reads the same durations."""
    recorded = record_views(workload, WARMUP + COUNTED)
    config = APMConfig(memory_monitor_enabled=False, console_enabled=False)
    analyzer = Analyzer(config)
    found = [len(analyzer.analyze(Trace(*trace))) for trace in recorded]
    if found != [FINDINGS_PER_TRACE[workload]] * len(recorded):
        raise SystemExit(f"findings per trace {found}, not {FINDINGS_PER_TRACE[workload]}: record again")
    with open(path, "wb") as f:
        pickle.dump(recorded, f)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", choices=sorted(FINDINGS_PER_TRACE), default="clean")
    parser.add_argument(
        "--parts", default="group,stats,metrics,group+stats+metrics", help="comma-separated (see above)"
    )
    parser.add_argument(
        "--recorded", help="the traces recorded by an earlier run (--keep), instead of recording anew"
    )
    parser.add_argument("--keep", help="keep the recorded traces in this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    bp.add_set_argument(parser)
    args = parser.parse_args(argv)
    bp.override(args.set)
    if args.child:
        child(args.child, args.recorded)
    with tempfile.TemporaryDirectory() as tmp:
        recorded = args.recorded or args.keep or os.path.join(tmp, "recorded.pickle")
        if not args.recorded:
            record(args.workload, recorded)
        counted = f"recorded in {args.recorded}" if args.recorded else f"workload {args.workload}"
        print(f"Instructions per trace ({COUNTED} traces, {counted})")
        for part in args.parts.split(","):
            count = instructions(part, recorded, args.set)
            print(f"  {part:<24} {count / COUNTED:>10,.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
