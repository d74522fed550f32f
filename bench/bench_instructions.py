"""bench_processor.py's comparison counted in instructions (valgrind's callgrind), not seconds.

    .venv/bin/python bench/bench_instructions.py [--traces N] [--workload clean|nplusone] [--set NAME=VALUE]

Wall-clock ratios swing with whatever else the machine runs; the instructions a run executes do
not.  Each variant of bench_processor.py (a: SDK + BatchSpanProcessor, b: ours in pass-through,
c: ours in tail mode) runs in a child process under ``valgrind --tool=callgrind`` twice: warm-up
only, then warm-up plus N traces and the same flushes as a timed round.  The difference is the
instructions of N traces, whatever the interpreter's start-up costs.  Hash randomization and
address-space randomization are off and the garbage collector is paused after the warm-up, so a
run repeats to within about 0.1 %; a collection would otherwise land in one run and not the other.
Instructions are not time (a cache miss costs more than an add), so this complements the timed
benchmark: it shows what a change saves, on any machine, without noise.  ``--set`` gives b, c, s,
r and n a setting, as in bench_processor.py: an ablation counted in instructions (what the statistics or
the metrics cost is b's count with them on less b's with them off).
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from functools import partial, reduce

import bench_processor as bp
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from workload import FINDINGS_PER_TRACE, SPANS_PER_TRACE, WORKLOADS

from otel_apm import APMConfig, APMSpanProcessor
from otel_apm.analyze import Analyzer
from otel_apm.emit.events import EventEmitter
from otel_apm.emit.span_events import with_finding_events
from otel_apm.ingest.sdk import SpanReader
from otel_apm.model import Trace
from otel_apm.native import native

WARMUP = 200


def recorded_trace(workload: str, config: APMConfig) -> Sequence[ReadableSpan]:
    """The ended spans of one of the workload's traces, recorded through our processor after the
    warm-up (with their code.* attributes only under --set code_attributes_min_ms=0: the
    workload's calls are fast)."""
    bp.db_calls = WORKLOADS[workload]
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=bp.RESOURCE)
    provider.add_span_processor(APMSpanProcessor(SimpleSpanProcessor(exporter), config, emitters=()))
    for _ in range(WARMUP):
        bp.run_trace(provider.get_tracer("bench"))
    return exporter.get_finished_spans()[-SPANS_PER_TRACE:]


def finding_steps(workload: str, traces: int) -> None:
    """Variant f: only what a trace's findings cost after the detectors found them, ``traces``
    times over one analyzed trace: ranking, the log records and the span event copy of the
    root.  Synchronous processors and no other reporter, so nothing that runs on a timer (a
    batch processor's thread, the statistics' minute) lands in the count."""
    logger_provider = LoggerProvider(resource=bp.RESOURCE)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(bp.NoopLogRecordExporter()))
    config = APMConfig(memory_monitor_enabled=False, console_enabled=False)
    spans = recorded_trace(workload, config)
    root = spans[-1]
    reader = SpanReader()
    views = [reader.read(s, "bench") for s in spans]
    analyzed = Trace(root.context.trace_id, views, views[-1], complete=True)
    analyzer = Analyzer(config)
    found = analyzer.analyze(analyzed)
    if len(found) != FINDINGS_PER_TRACE[workload]:
        raise SystemExit(f"expected {FINDINGS_PER_TRACE[workload]} findings, got {len(found)}")
    events = EventEmitter(logger_provider)
    gc.collect()
    gc.disable()
    for _ in range(traces):
        # Fresh findings, as analyze() makes them: _rank rates them in place, and the emitter
        # caches their attributes on them.
        ranked = analyzer._rank([f.rated(0.0) for f in found])
        events.emit(analyzed, ranked)
        with_finding_events(root, ranked)
    os._exit(0)


def reading(variant: str, workload: str, traces: int) -> None:
    """Variants r and n: only the reading of a trace's ended spans into views, as the processor
    reads them at the root's end (``SpanReader.read_all``), ``traces`` times over one trace's
    spans recorded through the processor (as :func:`recorded_trace` says): r by the Python
    reader, n by the compiled one
    (csrc/sdkviews.c).  Only the reads are counted (one reduce() call)."""
    config = APMConfig(memory_monitor_enabled=False, console_enabled=False, **bp.overrides)
    spans = recorded_trace(workload, config)
    reader = SpanReader(native() if variant == "n" else None)
    reader.read(spans[0], "bench")  # the probe: the compiled reader is used once it agreed
    if reader.compiled != (variant == "n"):
        raise SystemExit(f"variant {variant}: the compiled reader is {'not ' * reader.compiled}in use")
    gc.collect()
    gc.disable()
    reduce(lambda _, __: reader.read_all(spans, "bench"), range(traces), None)  # alone counted
    os._exit(0)


def synchronous() -> bp.Variant:
    """Variant s: b without what does work by the clock (the batch processors' threads, the
    reporters, the memory monitor): our processor over a SimpleSpanProcessor, with no emitter.
    b's count moved by up to 4 % between runs of one build on a loaded machine (valgrind slows
    the process fifty times, so its timers fire fifty times as often per span), s's by up to
    1.6 %: compare a setting (--set) with runs started together."""
    exporter = bp.NoopSpanExporter()
    config = APMConfig(memory_monitor_enabled=False, console_enabled=False, reporters=())
    provider = TracerProvider(resource=bp.RESOURCE)
    apm = APMSpanProcessor(SimpleSpanProcessor(exporter), config, emitters=(), **bp.overrides)
    provider.add_span_processor(apm)
    return bp.Variant("s", "ours, synchronous", provider, exporter)


def child(variant: str, workload: str, traces: int) -> None:
    """Warm up, pause the collector, run ``traces`` traces and the round's flushes, exit."""
    if variant == "f":
        finding_steps(workload, traces)
    if variant in ("r", "n"):
        reading(variant, workload, traces)
    bp.db_calls = WORKLOADS[workload]
    queue = max(2048, (WARMUP + traces) * SPANS_PER_TRACE + 1024)
    if variant == "a":
        v = bp.make_baseline(queue)
    elif variant == "b":
        v = bp.make_ours("b", "ours", queue)
    elif variant == "s":
        v = synchronous()
    else:
        v = bp.make_ours("c", "ours tail", queue, export_mode="tail", sample_rate=1.0)
    tracer = v.tracer
    for _ in range(WARMUP):
        bp.run_trace(tracer)
    v.flush()
    gc.collect()
    gc.disable()
    for _ in range(traces):
        bp.run_trace(tracer)
    v.flush()
    os._exit(0)  # the providers' shutdown is not part of the count


def callgrind_count(script_args: Sequence[str], valgrind_options: Sequence[str] = ()) -> int:
    """The instructions ``python <script_args>`` executes under callgrind, with address-space
    and hash randomization off (so a run repeats); shared with bench_emit_instructions.py."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [
                "setarch",
                "-R",
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={tmp}/out",
                *valgrind_options,
                sys.executable,
                *script_args,
            ],
            env={**os.environ, "PYTHONHASHSEED": "0"},
            capture_output=True,
            text=True,
            check=True,
        )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from callgrind:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def instructions(variant: str, workload: str, traces: int, settings: Sequence[str]) -> int:
    # r and n count only their reduce() call: the recording before it runs the analysis, whose
    # work moves with the durations valgrind and the machine's load give the spans.
    reading_only = ["--toggle-collect=*functools_reduce*"] if variant in ("r", "n") else []
    return callgrind_count(
        [
            __file__,
            "--child",
            variant,
            "--workload",
            workload,
            "--traces",
            str(traces),
            *(f"--set={item}" for item in settings),
        ],
        reading_only,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--traces", type=int, default=300, help="traces counted per variant (300)")
    parser.add_argument("--workload", choices=sorted(FINDINGS_PER_TRACE), default="clean")
    parser.add_argument(
        "--variants",
        default="a,b,c",
        help="of a, b, c, s (b with nothing by the clock), f (the finding steps alone), r and n "
        "(reading spans into views, by Python and compiled) (a,b,c)",
    )
    bp.add_set_argument(parser)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    bp.override(args.set)
    if args.child:
        child(args.child, args.workload, args.traces)
    variants = args.variants.split(",")
    per_span = {}
    for v in variants:
        counted = partial(instructions, v, args.workload, settings=args.set)
        delta = counted(args.traces) - counted(0)
        per_span[v] = delta / (args.traces * SPANS_PER_TRACE)
        print(f"  {v}: {per_span[v]:>10,.0f} instructions/span", file=sys.stderr, flush=True)
    settings = "".join(f", --set {item}" for item in args.set)
    print(
        f"\nInstructions per span ({args.traces} traces x {SPANS_PER_TRACE} spans, workload {args.workload}"
        f"{settings})"
    )
    for v in variants:
        ratio = f"{per_span[v] / per_span['a']:.3f}" if "a" in per_span and v in "bcs" else "-"
        print(f"  {v} {per_span[v]:>12,.0f}   ratio to a: {ratio}")
    if "r" in per_span and "n" in per_span:
        print(f"  reading spans into views, compiled/Python: {per_span['n'] / per_span['r']:.3f}")
    if "f" in per_span:
        print(f"  f: the finding steps alone, {per_span['f'] * SPANS_PER_TRACE:,.0f} instructions a trace")
    return 0


if __name__ == "__main__":
    sys.exit(main())
