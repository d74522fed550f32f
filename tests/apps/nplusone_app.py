"""A tiny app with an N+1, to be run under ``opentelemetry-instrument``.

    opentelemetry-instrument python tests/apps/nplusone_app.py /tmp/x.db

It does not configure the SDK: the configurator selected by the environment does.  One request
span ("GET /authors", SERVER) runs 1 query for the authors and then, touching each author's lazy
``books`` relationship, 1 query per author (8): the N+1.  The SQLAlchemy instrumentation that
opentelemetry-instrument loaded makes the DB spans.

To tell the test which spans it made, it adds an in-memory exporter to the global tracer
provider and prints, as one JSON line on stdout at the end::

    {"span_ids": [...], "trace_id": "...", "root_span_id": "...", "provider": "TracerProvider",
     "threads": [the names of the threads alive at the end], ...}

The database path comes from argv[1], else NPLUSONE_DB, else a temporary file.  With
NPLUSONE_LEAVE_OPEN=1 the request span is never ended: the process exits with it open.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading

from opentelemetry import metrics, trace
from opentelemetry._logs import get_logger_provider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from otel_apm.demo.app import Author, add_authors

AUTHORS = 8
BOOKS_PER_AUTHOR = 2


def _db_path() -> str:
    if len(sys.argv) > 1:
        return sys.argv[1]
    if os.environ.get("NPLUSONE_DB"):
        return os.environ["NPLUSONE_DB"]
    fd, path = tempfile.mkstemp(suffix=".db", prefix="nplusone-")
    os.close(fd)
    return path


def _flush(provider: object) -> None:
    flush = getattr(provider, "force_flush", None)
    if callable(flush):
        flush()


def main() -> int:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        # Not configured (no SDK set-up ran): say so; the test asserts on it.
        print(json.dumps({"span_ids": [], "provider": type(provider).__name__}))
        return 0
    # NPLUSONE_LEAVE_OPEN=1: the request span is still open when the process exits, as a
    # request in flight at shutdown would be.
    leave_open = os.environ.get("NPLUSONE_LEAVE_OPEN") == "1"
    seen = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(seen))

    path = _db_path()
    if os.path.exists(path):
        os.remove(path)
    engine = create_engine(f"sqlite:///{path}")
    add_authors(engine, AUTHORS, BOOKS_PER_AUTHOR)

    tracer = trace.get_tracer("nplusone_app")
    root = tracer.start_span(
        "GET /authors",
        kind=SpanKind.SERVER,
        attributes={"http.route": "/authors", "http.request.method": "GET", "http.response.status_code": 200},
    )
    titles = 0
    with trace.use_span(root, end_on_exit=False), Session(engine) as session:
        for author in session.scalars(select(Author).order_by(Author.id)):
            titles += len(author.books)  # one lazy SELECT per author
    ctx = root.get_span_context()
    if not leave_open:
        root.end()
    engine.dispose()

    _flush(provider)
    _flush(get_logger_provider())
    _flush(metrics.get_meter_provider())
    spans = seen.get_finished_spans()
    print(
        json.dumps(
            {
                "span_ids": [format(s.context.span_id, "016x") for s in spans],
                "span_names": [s.name for s in spans],
                "trace_id": format(ctx.trace_id, "032x"),
                "root_span_id": format(ctx.span_id, "016x"),
                "titles": titles,
                "provider": type(provider).__name__,
                "root_ended": not leave_open,
                "threads": sorted(t.name for t in threading.enumerate()),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
