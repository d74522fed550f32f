"""Two services for the collector's cross-service test: the same script runs either one.

    python two_services.py shop --endpoint URL --protocol http/protobuf --db-url URL --schema S
    python two_services.py storefront --endpoint URL --protocol grpc --shop-url http://127.0.0.1:P

``shop`` (service B) is a Flask app on PostgreSQL with an N+1 in ``GET /authors``: one query for
the authors (the demo's ORM models), then one per author when its lazy ``books`` are touched.
Its tables live in the schema ``--schema`` (search_path), which the caller created and filled.

``storefront`` (service A) is a Flask app whose ``GET /catalog`` calls the shop's ``/authors``
``--calls`` times, one ``requests`` call after the other: an N+1 of API calls.  The requests
instrumentation makes a CLIENT span for each call and propagates the trace context, so the
shop's spans land in the storefront's trace.

Each service sets up its SDK by hand, with no APM processor (the collector does the analysis):
a TracerProvider with ``service.name``, a BatchSpanProcessor with the real OTLP exporter (gRPC or
HTTP/protobuf) to ``--endpoint`` (its schedule delay from OTEL_BSP_SCHEDULE_DELAY), and a
SimpleSpanProcessor into memory to tell the test which spans it produced.

Protocol on stdout, one JSON object a line:

* ``{"ready": true, "port": P}`` once it serves on 127.0.0.1:P (an ephemeral port);
* it serves until its stdin reaches end of file (the test closes it, or dies), then stops the
  server, shuts the provider down (exporting every span) and prints
  ``{"service": ..., "spans": [{"span_id", "trace_id", "parent_id", "name", "kind"}, ...]}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any

import requests
from flask import Flask, Response, jsonify, request
from opentelemetry import trace
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from werkzeug.serving import make_server

STOREFRONT = "storefront"
SHOP = "shop"
HTTP_TIMEOUT_S = 10


def _exporter(protocol: str, endpoint: str) -> SpanExporter:
    """The real OTLP span exporter for ``protocol``, towards the collector at ``endpoint``."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, insecure=True)
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        return HttpSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces")
    raise SystemExit(f"unknown protocol {protocol!r}")


def _provider(service: str, protocol: str, endpoint: str) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(_exporter(protocol, endpoint)))
    produced = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(produced))
    return provider, produced


def _storefront_app(provider: TracerProvider, shop_url: str, calls: int) -> Flask:
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    RequestsInstrumentor().instrument(tracer_provider=provider)
    app = Flask(STOREFRONT)

    @app.get("/catalog")
    def catalog() -> Response:
        authors = 0
        for shelf in range(calls):  # one call per shelf: the N+1 of API calls
            r = requests.get(f"{shop_url}/authors", params={"shelf": shelf}, timeout=HTTP_TIMEOUT_S)
            r.raise_for_status()
            authors = len(r.json())
        ctx = trace.get_current_span().get_span_context()
        return jsonify({"trace_id": format(ctx.trace_id, "032x"), "calls": calls, "authors": authors})

    return app


def _shop_app(provider: TracerProvider, db_url: str, schema: str) -> tuple[Flask, Any]:
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from sqlalchemy import create_engine, select, text
    from sqlalchemy.orm import Session

    from otel_apm.demo.app import Author

    engine = create_engine(db_url, connect_args={"options": f"-csearch_path={schema}"})
    with engine.connect() as conn:  # connect (and let the dialect initialize) before tracing
        conn.execute(text("SELECT 1"))
    SQLAlchemyInstrumentor().instrument(engine=engine, tracer_provider=provider)
    app = Flask(SHOP)

    @app.get("/authors")
    def authors() -> Response:
        shelf = request.args.get("shelf", "")
        with Session(engine) as session:
            rows = [
                {"name": a.name, "shelf": shelf, "books": [b.title for b in a.books]}  # one query each
                for a in session.scalars(select(Author).order_by(Author.id))
            ]
        return jsonify(rows)

    return app, engine


def _span_record(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.context
    assert ctx is not None
    return {
        "span_id": format(ctx.span_id, "016x"),
        "trace_id": format(ctx.trace_id, "032x"),
        "parent_id": format(span.parent.span_id, "016x") if span.parent is not None else None,
        "name": span.name,
        "kind": span.kind.name,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("service", choices=[STOREFRONT, SHOP])
    parser.add_argument("--endpoint", required=True, help="the collector, e.g. http://127.0.0.1:4317")
    parser.add_argument("--protocol", required=True, choices=["grpc", "http/protobuf"])
    parser.add_argument("--shop-url", help="storefront: where the shop serves")
    parser.add_argument("--calls", type=int, default=6, help="storefront: calls to the shop per request")
    parser.add_argument("--db-url", help="shop: SQLAlchemy URL of the PostgreSQL database")
    parser.add_argument("--schema", help="shop: the schema holding the authors and books tables")
    args = parser.parse_args(argv)

    provider, produced = _provider(args.service, args.protocol, args.endpoint)
    engine = None
    if args.service == STOREFRONT:
        if not args.shop_url:
            parser.error("storefront needs --shop-url")
        app = _storefront_app(provider, args.shop_url.rstrip("/"), args.calls)
    else:
        if not args.db_url or not args.schema:
            parser.error("shop needs --db-url and --schema")
        app, engine = _shop_app(provider, args.db_url, args.schema)
    FlaskInstrumentor.instrument_app(app, tracer_provider=provider)  # type: ignore[no-untyped-call]

    server = make_server("127.0.0.1", 0, app, threaded=False)
    serving = threading.Thread(target=server.serve_forever, name=f"{args.service}-http", daemon=True)
    serving.start()
    print(json.dumps({"ready": True, "port": server.server_port}), flush=True)
    try:
        sys.stdin.read()  # until end of file: the test is done with us (or gone)
    finally:
        server.shutdown()
        server.server_close()
        serving.join(10)
        if engine is not None:
            engine.dispose()
        provider.shutdown()  # the BatchSpanProcessor exports what it still holds
    spans = [_span_record(s) for s in produced.get_finished_spans()]
    print(json.dumps({"service": args.service, "spans": spans}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
