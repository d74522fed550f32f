"""What the CPU profiler (APM_PROFILING_ENABLED) costs the application, at its default rate.

    .venv/bin/python bench/bench_profiler.py [--requests N] [--rounds R] [--hz HZ] [--workload cpu|flask|both]

Two workloads, each served through one TracerProvider whose span processor is switched, round
by round, between two freshly built APMSpanProcessors (console off, no-op exporters), alike but
for ``profiling_enabled``:

  off  APMSpanProcessor(BatchSpanProcessor(no-op exporter))
  on   the same with profiling_enabled=True (20 Hz default, 1 % budget, 60 s period)

  cpu    a SERVER span around pure-Python work (sorting and formatting records, ~0.6 ms)
  flask  the demo's Flask + SQLAlchemy app on SQLite through Flask's test client, instrumented
         by the Flask and SQLAlchemy instrumentations: GET /authors (an N+1 of 13 queries) and
         GET /authors/eager, alternately

Rounds come in pairs, off-on then on-off, so a load that drifts hits both alike.  A round times
N requests with time.perf_counter (wall) and time.process_time (the process's CPU, the sampler
thread's included); the processors are built before and shut down after the timed region (the profiler's
once-a-period report is not in it).  Printed: the median of each per request, and on/off both
as the ratio of the medians and as the median of the per-pair ratios, against the target of
<= 1.02.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench_processor import RESOURCE, NoopSpanExporter
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Tracer

from otel_apm.config import APMConfig
from otel_apm.processors.apm import APMSpanProcessor

TARGET_RATIO = 1.02
profiler_settings: dict[str, Any] = {}  # --hz sets profiling_sample_hz
VARIANTS = ("off", "on")


class Switch(SpanProcessor):
    """Hands every span to the processor of the current round; costs both variants the same."""

    def __init__(self) -> None:
        self.target: SpanProcessor = SpanProcessor()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.target.on_start(span, parent_context=parent_context)

    def _on_ending(self, span: Span) -> None:
        self.target._on_ending(span)

    def on_end(self, span: ReadableSpan) -> None:
        self.target.on_end(span)


def build(variant: str) -> APMSpanProcessor:
    config = APMConfig(console_enabled=False, profiling_enabled=variant == "on", **profiler_settings)
    return APMSpanProcessor(BatchSpanProcessor(NoopSpanExporter(), max_queue_size=1 << 16), config)


def cpu_workload(tracer: Tracer) -> Callable[[int], None]:
    records = [{"id": i, "name": f"item {i}", "score": (i * 7919) % 1000} for i in range(2000)]

    def request(i: int) -> None:
        with tracer.start_as_current_span(
            "GET /rank", kind=SpanKind.SERVER, attributes={"http.route": "/rank"}
        ):
            ranked = sorted(records, key=lambda r: (r["score"], r["name"]))
            "".join(f"{r['id']}:{r['score']};" for r in ranked[:500])

    return request


def flask_workload(provider: TracerProvider, workdir: str) -> Callable[[int], None]:
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from sqlalchemy import create_engine

    from otel_apm.demo.app import add_authors, create_app

    engine = create_engine(f"sqlite:///{os.path.join(workdir, 'bench.db')}")
    add_authors(engine, 12, 3)
    app = create_app(engine)
    FlaskInstrumentor.instrument_app(app, tracer_provider=provider)  # type: ignore[no-untyped-call]
    SQLAlchemyInstrumentor().instrument(engine=engine, tracer_provider=provider)
    client = app.test_client()
    paths = ("/authors", "/authors/eager")

    def request(i: int) -> None:
        response = client.get(paths[i % 2])
        assert response.status_code == 200, response.status_code

    return request


def timed_round(switch: Switch, variant: str, request: Callable[[int], None], n: int) -> tuple[float, float]:
    processor = build(variant)
    switch.target = processor
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        request(i)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    switch.target = SpanProcessor()
    processor.shutdown()
    return wall, cpu


def bench(name: str, switch: Switch, request: Callable[[int], None], n: int, rounds: int) -> None:
    for i in range(n // 4):  # warm-up: imports, caches, the SQLite file
        request(i)
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        # off-on, then on-off: a load that drifts within a pair of rounds hits both alike.
        for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
            times[variant].append(timed_round(switch, variant, request, n))
    medians = {
        v: (statistics.median(w for w, _ in times[v]), statistics.median(c for _, c in times[v]))
        for v in VARIANTS
    }
    print(f"{name}: {rounds} rounds x {n} requests, medians per request")
    for v in VARIANTS:
        wall, cpu = medians[v]
        print(f"  profiling {v:<3}  wall {wall / n * 1e6:9.1f} us   process CPU {cpu / n * 1e6:9.1f} us")
    for i, measure in enumerate(("wall", "process CPU")):
        of_medians = medians["on"][i] / medians["off"][i]
        per_round = statistics.median(
            on[i] / off[i] for on, off in zip(times["on"], times["off"], strict=True)
        )
        verdict = "met" if of_medians <= TARGET_RATIO else "MISSED"
        print(
            f"  on/off {measure:<11}  ratio of medians {of_medians:.3f}  median of round ratios "
            f"{per_round:.3f}  (target <= {TARGET_RATIO}: {verdict})"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300, help="requests per round (default 300)")
    parser.add_argument("--rounds", type=int, default=21, help="rounds per variant (default 21)")
    parser.add_argument("--hz", type=float, help="APM_PROFILING_SAMPLE_HZ for the 'on' variant (default 20)")
    parser.add_argument("--workload", choices=("cpu", "flask", "both"), default="both")
    args = parser.parse_args(argv)
    if args.hz is not None:
        profiler_settings["profiling_sample_hz"] = args.hz
    switch = Switch()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(switch)
    tracer = provider.get_tracer("bench")
    with tempfile.TemporaryDirectory() as workdir:
        if args.workload in ("cpu", "both"):
            bench("cpu", switch, cpu_workload(tracer), args.requests, args.rounds)
        if args.workload in ("flask", "both"):
            bench("flask", switch, flask_workload(provider, workdir), args.requests, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
