"""``otel-apm demo``: the demo shop, instrumented from outside, driven by real HTTP requests."""

from __future__ import annotations

import logging
import sys
import threading
from collections import Counter
from collections.abc import Sequence

import requests
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from werkzeug.serving import make_server

from otel_apm.config import APMConfig
from otel_apm.demo.app import create_app, make_engine
from otel_apm.detectors.base import Finding
from otel_apm.emit import Emitter, reporters
from otel_apm.emit.events import EventEmitter
from otel_apm.model import Trace
from otel_apm.processors.apm import APMSpanProcessor

DEMO_REQUESTS = ("/authors", "/authors", "/authors/eager", "/reports/ratings", "/authors")
EXPECTED = ("n_plus_one_query", "slow_query")


class _Tally:
    """Counts findings by (type, endpoint) for the demo's closing summary."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.examples: dict[tuple[str, str], Finding] = {}
        self._lock = threading.Lock()

    def emit(self, trace: Trace | None, findings: Sequence[Finding]) -> None:
        with self._lock:
            for f in findings:
                key = (f.type, f.endpoint)
                self.counts[key] += 1
                self.examples.setdefault(key, f)


def run_demo(db: str, otlp_endpoint: str | None) -> int:
    """Run the demo shop, drive a few requests through it, print what was found."""
    config = APMConfig.from_env()
    resource = Resource.create({"service.name": config.service_name or "otel-apm-demo"})
    tracer_provider = TracerProvider(resource=resource)
    export: OTLPSpanExporter | None = None
    logger_provider: LoggerProvider | None = None
    meter_provider: MeterProvider | None = None
    if otlp_endpoint:
        export, logger_provider, meter_provider = _otlp_pipeline(otlp_endpoint, resource)
    tally = _Tally()
    emitters: list[Emitter] = [
        EventEmitter(logger_provider, config.events_interval_s),
        tally,
        *reporters(config, meter_provider),
    ]
    processor = APMSpanProcessor(
        BatchSpanProcessor(export) if export else None,
        config,
        emitters=emitters,
        meter_provider=meter_provider,
    )
    tracer_provider.add_span_processor(processor)

    print(f"otel-apm demo: preparing SQLite database {db} ...", file=sys.stderr)
    engine = make_engine(f"sqlite:///{db}")
    SQLAlchemyInstrumentor().instrument(engine=engine, tracer_provider=tracer_provider)
    app = create_app(engine)
    FlaskInstrumentor().instrument_app(app, tracer_provider=tracer_provider)  # type: ignore[no-untyped-call]
    RequestsInstrumentor().instrument(tracer_provider=tracer_provider)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the per-request access log is noise here
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        for path in DEMO_REQUESTS:
            response = requests.get(base + path, timeout=30)
            print(f"GET {path} -> {response.status_code}", file=sys.stderr)
    finally:
        server.shutdown()
        RequestsInstrumentor().uninstrument()
        tracer_provider.shutdown()
        for provider in (logger_provider, meter_provider):
            if provider is not None:
                provider.shutdown()

    print("\nFindings (type, endpoint, occurrences):")
    for (kind, endpoint), n in sorted(tally.counts.items()):
        example = tally.examples[(kind, endpoint)]
        print(f"  {kind:<18} {endpoint:<24} x{n}  {example.title}")
        print(f"  {'':<18} fix: {example.recommendation}")
    statistics = processor.statistics
    if statistics is not None:
        print("\nEndpoints, last minute (requests, p95, share of time in the database, queries each):")
        for e in statistics.snapshot("minute").endpoints:
            print(
                f"  {e.endpoint:<24} x{e.count:<3} p95 {e.p95_ms or 0:8.1f} ms  "
                f"DB {e.db_time_share:4.0%}  {e.queries_per_request:5.1f} queries"
            )
    stats = processor.stats()
    print(
        f"\nAnalyzed {stats['traces_analyzed']} traces, {stats['spans_analyzed']} spans; "
        f"late {stats['spans_late']}, errors "
        f"{stats['errors_intake'] + stats['errors_analysis'] + stats['errors_emit']}."
    )
    missing = [k for k in EXPECTED if not any(t == k for t, _ in tally.counts)]
    if missing:
        print(f"otel-apm demo: expected findings missing: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def _otlp_pipeline(
    endpoint: str, resource: Resource
) -> tuple[OTLPSpanExporter, LoggerProvider, MeterProvider]:
    """OTLP/gRPC exporters for the three signals, so the demo's findings reach a real backend."""

    insecure = endpoint.startswith("http://")
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(
        BatchLogRecordProcessor(OTLPLogExporter(endpoint=endpoint, insecure=insecure))
    )
    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=[
            PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint, insecure=insecure))
        ],
    )
    return OTLPSpanExporter(endpoint=endpoint, insecure=insecure), logger_provider, meter_provider
