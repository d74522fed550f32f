"""Demo traffic for docker-compose.yml: the demo shop on PostgreSQL, and a storefront that calls it.

    python demo_shop.py shop                         # the Flask shop, on 0.0.0.0:8000
    python demo_shop.py storefront --shop URL        # a loop of visits that call the shop

Both export spans, logs and metrics over OTLP to wherever the standard variables point
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_SERVICE_NAME``, ...): in the compose file, the
gateway. Neither analyzes anything itself: the otel-apm analyzers behind the gateway assemble each
trace across the two services and find the shop's N+1 and slow query. The shop is
``otel_apm.demo.app``, the same code as ``otel-apm demo``, here on PostgreSQL.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

import requests
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from otel_apm.demo.app import AUTHORS, REVIEWS, Author, add_authors, create_app, make_engine

log = logging.getLogger("demo")

# What one storefront visit asks the shop for: the N+1 page, its fixed twin, the slow report.
VISITS = ("/authors", "/authors/eager", "/reports/ratings")

# The demo app's own CREATE TABLE uses INTEGER PRIMARY KEY, which numbers rows by itself on
# SQLite only. Create the table the PostgreSQL way first, and fill it in one statement
# (generate_series) rather than 300 000 INSERT round trips; make_engine then finds the data
# in place and only creates what is missing.
_REVIEWS_TABLE = (
    "CREATE TABLE IF NOT EXISTS reviews (id SERIAL PRIMARY KEY, book_id INTEGER, rating INTEGER, body TEXT)"
)
_FILL_REVIEWS = """
INSERT INTO reviews (book_id, rating, body)
SELECT 1 + floor(random() * :books)::int, 1 + floor(random() * 5)::int,
       (SELECT string_agg((ARRAY['great','bad','fine','slow','long','short','boring','fun','dense',
                                 'light'])[1 + floor(random() * 10)::int], ' ')
          FROM generate_series(1, 12) AS w WHERE g.n > 0)
  FROM generate_series(1, :rows) AS g(n)
"""


def telemetry(resource: Resource) -> tuple[TracerProvider, LoggerProvider, MeterProvider]:
    """OTLP/gRPC for the three signals. The exporters take no endpoint argument: they read
    OTEL_EXPORTER_OTLP_ENDPOINT (and the per-signal OTEL_EXPORTER_OTLP_*_ENDPOINT) themselves."""
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    meter_provider = MeterProvider(
        resource=resource, metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]
    )
    # The demo's own log lines go out as OTLP log records too, in the context of the current span.
    logging.getLogger().addHandler(LoggingHandler(logger_provider=logger_provider))
    return tracer_provider, logger_provider, meter_provider


def prepare_database(url: str) -> Engine:
    """The demo schema and data on PostgreSQL (once: a restart finds them in place)."""
    engine = create_engine(url, pool_pre_ping=True)
    if not _seeded(engine):
        with engine.begin() as conn:
            conn.execute(text(_REVIEWS_TABLE))
            conn.execute(text("TRUNCATE reviews"))
            conn.execute(text(_FILL_REVIEWS), {"books": AUTHORS * 3, "rows": REVIEWS})
        add_authors(engine, AUTHORS, 3)
    make_engine(url).dispose()  # creates whatever else the demo app needs, seeds nothing more
    return engine


def _seeded(engine: Engine) -> bool:
    with engine.connect() as conn:
        if not conn.execute(text("SELECT to_regclass('authors') IS NOT NULL")).scalar():
            return False
    with Session(engine) as session:
        return bool(session.scalar(select(func.count()).select_from(Author)))


def run_shop(port: int, stop: threading.Event) -> None:
    url = os.environ.get("DATABASE_URL", "postgresql+psycopg2://postgres@localhost:5432/shop")
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "shop")})
    tracer_provider, logger_provider, meter_provider = telemetry(resource)
    log.warning("preparing the demo data in %s", url.rsplit("@", 1)[-1])
    engine = prepare_database(url)
    SQLAlchemyInstrumentor().instrument(
        engine=engine, tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    app = create_app(engine)
    FlaskInstrumentor().instrument_app(  # type: ignore[no-untyped-call]
        app, tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    server = make_server("0.0.0.0", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="shop", daemon=True)
    thread.start()
    log.warning("shop serving on port %d", port)
    stop.wait()
    server.shutdown()
    thread.join(timeout=10)
    for provider in (tracer_provider, logger_provider, meter_provider):
        provider.shutdown()


def run_storefront(shop: str, interval_s: float, stop: threading.Event) -> None:
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "storefront")})
    tracer_provider, logger_provider, meter_provider = telemetry(resource)
    RequestsInstrumentor().instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    tracer = tracer_provider.get_tracer("otel-apm-demo-storefront")
    while not stop.is_set():
        for path in VISITS:
            # One trace per visit, rooted here; the shop's server span continues it (traceparent).
            with tracer.start_as_current_span(f"visit {path}", kind=trace.SpanKind.SERVER):
                try:
                    response = requests.get(shop + path, timeout=30)
                    log.warning("GET %s -> %d", path, response.status_code)
                except requests.RequestException as exc:
                    log.warning("GET %s failed: %s", path, exc)
        stop.wait(interval_s)
    RequestsInstrumentor().uninstrument()
    for provider in (tracer_provider, logger_provider, meter_provider):
        provider.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    roles = parser.add_subparsers(dest="role", required=True)
    p = roles.add_parser("shop", help="serve the demo shop")
    p.add_argument("--port", type=int, default=8000)
    p = roles.add_parser("storefront", help="visit the shop in a loop")
    p.add_argument("--shop", default="http://localhost:8000", help="the shop's base URL")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between rounds of visits")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()  # docker stop sends SIGTERM: flush the telemetry and leave

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.role == "shop":
        run_shop(args.port, stop)
    else:
        run_storefront(args.shop.rstrip("/"), args.interval, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
