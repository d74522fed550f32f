"""Real workloads through the APM processor: SQLAlchemy ORM on SQLite, PostgreSQL and MariaDB, a Flask app
served by a real werkzeug server and called with ``requests``.

Everything is asserted on what leaves the pipeline: spans from the in-memory span exporter, finding
events from the in-memory log exporter, and metrics from the in-memory metric reader.
"""

from __future__ import annotations

import inspect
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
import requests
from conftest import code_function_name
from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import Attributes
from sqlalchemy import Engine, create_engine, make_url, select, text
from sqlalchemy.orm import Session, joinedload, selectinload

from otel_apm.demo.app import Author, add_authors

if TYPE_CHECKING:
    from conftest import OTel

AUTHORS = 10
BOOKS_PER_AUTHOR = 2
F = "otel_apm.finding."

# What the N+1 of ``list_authors(..., "select")`` normalizes to: the per-author lazy load and the
# query that loaded the authors. Same text on SQLite (``?``) and PostgreSQL (``%(param_1)s``).
BOOKS_BY_AUTHOR = (
    "select books.id as books_id, books.title as books_title, books.author_id as books_author_id "
    "from books where ? = books.author_id order by books.id"
)
ALL_AUTHORS = "select authors.id, authors.name from authors order by authors.id"


# -- the application -----------------------------------------------------------------------------


def seed(engine: Engine) -> None:
    add_authors(engine, AUTHORS, BOOKS_PER_AUTHOR)


def list_authors(engine: Engine, loader: str) -> list[dict[str, Any]]:
    """Authors with their book titles; ``loader`` "select" is the lazy default, i.e. the N+1."""
    stmt = select(Author).order_by(Author.id)
    if loader == "selectin":
        stmt = stmt.options(selectinload(Author.books))
    elif loader == "joined":
        stmt = stmt.options(joinedload(Author.books))
    else:
        assert loader == "select", loader
    with Session(engine) as session:
        authors = session.scalars(stmt).unique().all()
        return [{"name": a.name, "books": [b.title for b in a.books]} for a in authors]


def list_authors_with_views(engine: Engine, cache: Any, prefix: str) -> list[tuple[str, int]]:
    """Each author's page views, read from Redis one author at a time, beside the lazy load of
    their books: an N+1 with a cache read between its queries, as an app caching per row has."""
    with Session(engine) as session:
        return [
            (a.name, int(cache.get(f"{prefix}:views:{a.id}") or 0) + len(a.books))
            for a in session.scalars(select(Author).order_by(Author.id))
        ]


EXPECTED_AUTHORS = [
    {"name": f"author {a}", "books": [f"book {a}.{b}" for b in range(BOOKS_PER_AUTHOR)]}
    for a in range(AUTHORS)
]

SLOW_ROUTE_SLEEP_S = 0.12


def make_app(engine: Engine) -> Flask:
    app = Flask(__name__)

    def authors() -> ResponseReturnValue:
        return jsonify(list_authors(engine, "select"))

    def catalog_authors(page: int) -> ResponseReturnValue:
        return jsonify(list_authors(engine, "select"))  # the same N+1, behind another route

    def authors_selectin() -> ResponseReturnValue:
        return jsonify(list_authors(engine, "selectin"))

    def authors_joined() -> ResponseReturnValue:
        return jsonify(list_authors(engine, "joined"))

    def slow() -> ResponseReturnValue:
        time.sleep(SLOW_ROUTE_SLEEP_S)
        return "done"

    app.add_url_rule("/authors", view_func=authors)
    app.add_url_rule("/catalog/<int:page>/authors", view_func=catalog_authors)
    app.add_url_rule("/authors/selectin", view_func=authors_selectin)
    app.add_url_rule("/authors/joined", view_func=authors_joined)
    app.add_url_rule("/slow", view_func=slow)
    return app


# -- helpers -------------------------------------------------------------------------------------


def attrs_of(item: ReadableLogRecord | ReadableSpan | Event) -> dict[str, Any]:
    """Attributes as plain values; sequences as lists (span attributes store tuples, logs lists)."""
    raw: Attributes = item.log_record.attributes if isinstance(item, ReadableLogRecord) else item.attributes
    return {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in (raw or {}).items()}


def finding_span_events(span: ReadableSpan) -> list[dict[str, Any]]:
    return [attrs_of(e) for e in span.events if e.name == "otel_apm.finding"]


def hex_id(span: ReadableSpan) -> str:
    return format(span.context.span_id, "016x")


def statement_of(span: ReadableSpan) -> str:
    a = span.attributes or {}
    return str(a.get("db.query.text") or a.get("db.statement") or "")


def spans_of_trace(otel: OTel, trace_id: int) -> list[ReadableSpan]:
    return sorted(
        (s for s in otel.spans() if s.context.trace_id == trace_id), key=lambda s: s.start_time or 0
    )


def findings_of_trace(otel: OTel, trace_id: int, finding_type: str | None = None) -> list[dict[str, Any]]:
    return [attrs_of(r) for r in otel.events(finding_type) if r.log_record.trace_id == trace_id]


@dataclass
class Call:
    response: requests.Response
    client: ReadableSpan  # the requests instrumentation's span, a local root in the test's thread
    server: ReadableSpan  # the Flask span, a local root in the server's thread (remote parent)

    @property
    def trace_id(self) -> int:
        return int(self.server.context.trace_id)


def get(otel: OTel, url: str) -> Call:
    """GET ``url`` and wait until the server's span (the last of its local trace) is exported."""
    clients_before = {s.context.span_id for s in otel.spans() if s.kind is SpanKind.CLIENT}
    response = requests.get(url, timeout=30)
    response.raise_for_status()
    clients = [
        s
        for s in otel.spans()
        if s.kind is SpanKind.CLIENT and s.context.span_id not in clients_before and s.parent is None
    ]
    assert len(clients) == 1, clients
    client = clients[0]

    def server_spans() -> list[ReadableSpan]:
        return [
            s
            for s in otel.spans()
            if s.kind is SpanKind.SERVER and s.context.trace_id == client.context.trace_id
        ]

    otel.wait_for(lambda: len(server_spans()) == 1)
    return Call(response, client, server_spans()[0])


@pytest.fixture
def sqlite_engine(tmp_path: Any) -> Iterator[Engine]:
    # The werkzeug server thread uses the engine too, hence check_same_thread.
    engine = create_engine(f"sqlite:///{tmp_path / 'library.db'}", connect_args={"check_same_thread": False})
    seed(engine)
    yield engine
    engine.dispose()


@contextmanager
def scratch_engine(
    admin_url: str, create: str, drop: str, engine_url: str, **connect: Any
) -> Iterator[Engine]:
    """An engine on a scratch namespace (``create`` makes it, ``drop`` removes it after), seeded."""
    admin = create_engine(admin_url, connect_args={"connect_timeout": 5})
    with admin.begin() as conn:
        conn.execute(text(create))
    engine = create_engine(engine_url, connect_args={"connect_timeout": 5, **connect})
    try:
        seed(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(drop))
        admin.dispose()


@pytest.fixture
def pg_engine(postgres_url: str) -> Iterator[Engine]:
    """An engine whose search_path is a fresh schema holding the seeded tables, dropped after."""
    schema = f"otel_apm_wl_{uuid.uuid4().hex[:12]}"
    with scratch_engine(
        postgres_url,
        f'CREATE SCHEMA "{schema}"',
        f'DROP SCHEMA "{schema}" CASCADE',
        postgres_url,
        options=f"-csearch_path={schema}",
    ) as engine:
        yield engine


@pytest.fixture
def mariadb_engine(mariadb_url: str) -> Iterator[Engine]:
    """An engine (PyMySQL driver) on a fresh database holding the seeded tables, dropped after."""
    database = f"otel_apm_wl_{uuid.uuid4().hex[:12]}"
    with scratch_engine(
        mariadb_url,
        f"CREATE DATABASE {database}",
        f"DROP DATABASE {database}",
        make_url(mariadb_url).set(database=database).render_as_string(hide_password=False),
    ) as engine:
        yield engine


# The databases behind the ORM tests: (fixture giving the seeded engine, db.system reported).
SERVER_DATABASES = {"postgresql": ("pg_engine", "postgresql"), "mariadb": ("mariadb_engine", "mysql")}


@pytest.fixture(params=sorted(SERVER_DATABASES))
def server_engine(request: pytest.FixtureRequest) -> tuple[Engine, str]:
    """(seeded engine, its db.system) on PostgreSQL, then on MariaDB."""
    fixture, system = SERVER_DATABASES[request.param]
    engine: Engine = request.getfixturevalue(fixture)
    return engine, system


StartApp = Callable[["OTel"], str]


@pytest.fixture
def start_app(
    sqlite_engine: Engine,
    instrument_sqlalchemy: Callable[..., None],
    instrument_flask: Callable[..., None],
    instrument_requests: Callable[..., None],
    serve_wsgi: Callable[[Any], str],
) -> StartApp:
    """``start_app(otel)``: the Flask app, instrumented into ``otel``, served; returns its base URL."""

    def start(otel: OTel) -> str:
        instrument_sqlalchemy([sqlite_engine], otel.tracer_provider)
        app = make_app(sqlite_engine)
        instrument_flask(app, otel.tracer_provider)
        instrument_requests(otel.tracer_provider)
        return serve_wsgi(app)

    return start


def assert_names_the_lazy_load(attrs: dict[str, Any]) -> None:
    """The line to change: where the lazy relationship is touched, not SQLAlchemy's internals."""
    lines, first = inspect.getsourcelines(list_authors)
    lazy_line = first + next(i for i, text in enumerate(lines) if "for b in a.books" in text)
    assert attrs["code.file.path"] == __file__
    assert attrs["code.line.number"] == lazy_line
    name = str(attrs["code.function.name"])
    if sys.version_info >= (3, 11):
        assert name.startswith("list_authors")  # 3.11: list_authors.<locals>.<listcomp>; 3.12 inlines it
    else:
        assert name == code_function_name("list_authors.<locals>.<listcomp>") == "<listcomp>"


def only(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


def line_of(function: Callable[..., Any], marker: str) -> int:
    """The line of ``function`` whose text holds ``marker``: where a finding must point."""
    lines, first = inspect.getsourcelines(function)
    index: int = only([i for i, text in enumerate(lines) if marker in text])
    return first + index


def assert_points_at(attrs: dict[str, Any], function: Callable[..., Any], marker: str) -> None:
    """The finding names the line of ``function`` that holds ``marker``."""
    line = line_of(function, marker)
    path = inspect.getsourcefile(function)
    assert attrs["code.file.path"] == path
    assert attrs["code.line.number"] == line
    assert attrs["code.function.name"] == function.__name__
    assert attrs[F + "code_location"] == f"{path}:{line}:{function.__name__}"


def point_for(points: list[Any], **attributes: Any) -> Any:
    """The one data point whose attributes include ``attributes``."""
    return only([p for p in points if all((p.attributes or {}).get(k) == v for k, v in attributes.items())])


# -- N+1 through a real Flask route on SQLite ----------------------------------------------------


def test_n_plus_one_in_flask_route_on_sqlite(otel: OTel, start_app: StartApp) -> None:
    base = start_app(otel)
    call = get(otel, base + "/authors")
    assert call.response.json() == EXPECTED_AUTHORS

    trace_spans = spans_of_trace(otel, call.trace_id)
    book_spans = [s for s in trace_spans if "FROM books" in statement_of(s)]
    author_spans = [s for s in trace_spans if "FROM authors" in statement_of(s)]
    assert len(book_spans) == AUTHORS
    assert len(author_spans) == 1
    assert all(s.parent is not None and s.parent.span_id == call.server.context.span_id for s in book_spans)

    # Exactly one N+1 in the whole run (the client's local trace has no DB work).
    event = only(otel.events("n_plus_one_query"))
    attrs = attrs_of(event)
    assert attrs[F + "count"] == AUTHORS
    assert attrs[F + "endpoint"] == "GET /authors"
    assert attrs[F + "service"] == "test-svc"
    assert attrs[F + "severity"] == "warning"  # 10 < critical_factor 5 x threshold 5

    statement = attrs["db.query.text"]
    assert statement == BOOKS_BY_AUTHOR
    assert "from books" in statement
    assert "?" in statement
    assert not any(ch.isdigit() for ch in statement)  # no author id leaked into the shape
    assert attrs[F + "evidence.source.statement"] == ALL_AUTHORS
    assert attrs[F + "evidence.source.span_id"] == hex_id(author_spans[0])
    assert attrs[F + "evidence.db.system"] == "sqlite"

    assert list(attrs[F + "span_ids"]) == [hex_id(s) for s in book_spans]
    assert_names_the_lazy_load(attrs)
    assert event.log_record.trace_id == call.server.context.trace_id
    assert event.log_record.span_id == book_spans[0].context.span_id

    # The exported root (the Flask span) carries the same finding as a span event.
    assert finding_span_events(call.server) == [attrs]


def test_n_plus_one_fingerprint_is_per_problem_not_per_request(otel: OTel, start_app: StartApp) -> None:
    base = start_app(otel)
    calls = [
        get(otel, base + "/authors"),
        get(otel, base + "/authors"),
        get(otel, base + "/catalog/1/authors"),
        get(otel, base + "/catalog/2/authors"),
    ]
    found = [only(findings_of_trace(otel, c.trace_id, "n_plus_one_query")) for c in calls]
    assert len({c.trace_id for c in calls}) == 4
    assert [f[F + "endpoint"] for f in found] == [
        "GET /authors",
        "GET /authors",
        "GET /catalog/<int:page>/authors",
        "GET /catalog/<int:page>/authors",
    ]
    fingerprints = [f[F + "fingerprint"] for f in found]
    assert fingerprints[0] == fingerprints[1]  # same request, two traces
    assert fingerprints[2] == fingerprints[3]  # same route, different URLs
    assert fingerprints[0] != fingerprints[2]  # same statement, another endpoint
    # The statement itself is the same everywhere: only the endpoint tells the two apart.
    assert {f["db.query.text"] for f in found} == {BOOKS_BY_AUTHOR}


@pytest.mark.parametrize(("route", "queries"), [("/authors/selectin", 2), ("/authors/joined", 1)])
def test_eager_loading_has_no_n_plus_one(otel: OTel, start_app: StartApp, route: str, queries: int) -> None:
    base = start_app(otel)
    call = get(otel, base + route)
    assert call.response.json() == EXPECTED_AUTHORS

    db_spans = [s for s in spans_of_trace(otel, call.trace_id) if statement_of(s)]
    assert len(db_spans) == queries
    assert otel.events("n_plus_one_query") == []
    # The trace was analyzed (not silently dropped): its transaction was measured.
    point = point_for(
        otel.data_points("otel_apm.transaction.duration"), **{"otel_apm.endpoint": "GET " + route}
    )
    assert point.count == 1


# -- Flask: endpoint naming, client spans, slow requests, metrics ---------------------------------


def test_client_span_carries_the_url_and_propagates_the_trace(otel: OTel, start_app: StartApp) -> None:
    base = start_app(otel)
    call = get(otel, base + "/catalog/7/authors")
    client_attrs = attrs_of(call.client)
    assert (client_attrs.get("url.full") or client_attrs.get("http.url")) == base + "/catalog/7/authors"
    assert (client_attrs.get("http.request.method") or client_attrs.get("http.method")) == "GET"
    # The server continued the client's trace: one trace id, two local roots.
    assert call.server.context.trace_id == call.client.context.trace_id
    assert call.server.parent is not None and call.server.parent.is_remote
    assert call.server.parent.span_id == call.client.context.span_id
    assert attrs_of(call.server)["http.route"] == "/catalog/<int:page>/authors"
    # The finding names the route, not the URL.
    assert only(findings_of_trace(otel, call.trace_id, "n_plus_one_query"))[F + "endpoint"] == (
        "GET /catalog/<int:page>/authors"
    )


def test_slow_request_names_the_endpoint(make_otel: Callable[..., OTel], start_app: StartApp) -> None:
    otel = make_otel(slow_request_threshold_ms=50)
    base = start_app(otel)
    call = get(otel, base + "/slow")
    assert call.response.text == "done"

    finding = only(
        [
            f
            for f in findings_of_trace(otel, call.trace_id, "slow_request")
            if f[F + "endpoint"] == "GET /slow"
        ]
    )
    assert "GET /slow" in finding[F + "title"]
    assert list(finding[F + "span_ids"]) == [hex_id(call.server)]
    assert "(threshold 50 ms)" in finding[F + "title"]
    assert finding[F + "count"] == 1
    assert finding_span_events(call.server) == [finding]


def test_slow_request_evidence_has_the_breakdown(make_otel: Callable[..., OTel], start_app: StartApp) -> None:
    otel = make_otel(slow_request_threshold_ms=0)  # every transaction is "slow"
    base = start_app(otel)
    call = get(otel, base + "/authors")
    finding = only(
        [
            f
            for f in findings_of_trace(otel, call.trace_id, "slow_request")
            if f[F + "endpoint"] == "GET /authors"
        ]
    )
    assert finding[F + "evidence.threshold_ms"] == 0
    assert finding[F + "evidence.db.count"] >= AUTHORS + 1
    assert F + "evidence.db.duration_ms" in finding


def test_metrics_per_endpoint(otel: OTel, start_app: StartApp) -> None:
    base = start_app(otel)
    get(otel, base + "/authors")
    get(otel, base + "/authors/joined")

    endpoint = {"otel_apm.endpoint": "GET /authors"}
    assert point_for(otel.data_points("otel_apm.transaction.duration"), **endpoint).count == 1
    queries = point_for(otel.data_points("otel_apm.transaction.db.queries"), **endpoint)
    joined = point_for(
        otel.data_points("otel_apm.transaction.db.queries"), **{"otel_apm.endpoint": "GET /authors/joined"}
    )
    # The lazy route ran one query per author more than the eager one (eager: 1 query).
    assert (queries.value, joined.value) == (AUTHORS + 1, 1)
    db_time = point_for(otel.data_points("otel_apm.transaction.db.duration"), **endpoint)
    assert 0 < db_time.value < 10  # seconds summed over the one transaction's queries

    findings = otel.data_points("otel_apm.findings")
    assert point_for(findings, **{"otel_apm.finding.type": "n_plus_one_query", **endpoint}).value == 1
    assert [
        p for p in findings if (p.attributes or {}).get("otel_apm.endpoint") == "GET /authors/joined"
    ] == []


def test_db_queries_metric_counts_the_statements_run(otel: OTel, start_app: StartApp) -> None:
    base = start_app(otel)
    call = get(otel, base + "/authors")
    statements = [s for s in spans_of_trace(otel, call.trace_id) if statement_of(s)]
    assert len(statements) == AUTHORS + 1
    queries = point_for(
        otel.data_points("otel_apm.transaction.db.queries"), **{"otel_apm.endpoint": "GET /authors"}
    )
    assert queries.value == AUTHORS + 1
    get(otel, base + "/authors")
    queries = point_for(
        otel.data_points("otel_apm.transaction.db.queries"), **{"otel_apm.endpoint": "GET /authors"}
    )
    assert queries.value == 2 * (AUTHORS + 1)  # summed per endpoint across transactions


def test_every_span_is_exported_once(make_otel: Callable[..., OTel], start_app: StartApp) -> None:
    otel = make_otel(slow_request_threshold_ms=50)
    base = start_app(otel)
    calls = [
        get(otel, base + path) for path in ("/authors", "/authors/selectin", "/slow", "/catalog/3/authors")
    ]

    spans = otel.spans()
    assert len(spans) == otel.counter.ended == otel.counter.started
    assert len({s.context.span_id for s in spans}) == len(spans)
    stats = otel.stats()
    assert stats["spans_late"] == 0
    assert stats["spans_truncated"] == 0
    assert stats["traces_in_flight"] == 0
    assert stats["traces_analyzed"] == 2 * len(calls)  # a client and a server local root each
    assert stats["spans_analyzed"] == len(spans)
    assert {k: v for k, v in stats.items() if k.startswith("errors_")} == dict.fromkeys(
        ("errors_intake", "errors_analysis", "errors_emit", "errors_detector"), 0
    )


# -- PostgreSQL and MariaDB ------------------------------------------------------------------------


def test_n_plus_one_on_a_database_server(
    otel: OTel, server_engine: tuple[Engine, str], instrument_sqlalchemy: Callable[..., None]
) -> None:
    engine, db_system = server_engine
    instrument_sqlalchemy([engine], otel.tracer_provider)
    with otel.tracer.start_as_current_span(
        "GET /authors",
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "GET", "http.route": "/authors"},
    ) as root:
        assert list_authors(engine, "select") == EXPECTED_AUTHORS
    root_ctx = root.get_span_context()

    trace_spans = spans_of_trace(otel, root_ctx.trace_id)
    book_spans = [s for s in trace_spans if "FROM books" in statement_of(s)]
    assert len(book_spans) == AUTHORS

    event = only(otel.events("n_plus_one_query"))
    attrs = attrs_of(event)
    assert attrs[F + "count"] == AUTHORS
    assert attrs[F + "endpoint"] == "GET /authors"
    assert attrs[F + "evidence.db.system"] == db_system
    assert attrs["db.query.text"] == BOOKS_BY_AUTHOR
    assert attrs[F + "evidence.source.statement"] == ALL_AUTHORS
    assert list(attrs[F + "span_ids"]) == [hex_id(s) for s in book_spans]
    assert_names_the_lazy_load(attrs)
    assert event.log_record.trace_id == root_ctx.trace_id

    exported_root = only([s for s in trace_spans if s.context.span_id == root_ctx.span_id])
    assert finding_span_events(exported_root) == [attrs]


def test_n_plus_one_with_a_redis_read_per_row(
    otel: OTel,
    sqlite_engine: Engine,
    redis_client: Any,
    instrument_sqlalchemy: Callable[..., None],
    instrument: Callable[..., None],
) -> None:
    """The Redis instrumentation's spans (db.system redis) are cache reads, not DB siblings: one
    between each lazy load does not break the N+1's run, and none is counted in it."""
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    prefix = f"otel-apm-test:{uuid.uuid4().hex}"
    redis_client.set(f"{prefix}:views:1", 7)
    instrument_sqlalchemy([sqlite_engine], otel.tracer_provider)
    instrument(RedisInstrumentor(), tracer_provider=otel.tracer_provider)
    try:
        with otel.tracer.start_as_current_span(
            "GET /authors/views",
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "GET", "http.route": "/authors/views"},
        ) as root:
            rows = list_authors_with_views(sqlite_engine, redis_client, prefix)
    finally:
        redis_client.delete(f"{prefix}:views:1")
    assert rows[0] == ("author 0", 7 + BOOKS_PER_AUTHOR) and len(rows) == AUTHORS

    trace_spans = spans_of_trace(otel, root.get_span_context().trace_id)
    cache_spans = [s for s in trace_spans if (s.attributes or {}).get("db.system") == "redis"]
    book_spans = [s for s in trace_spans if "FROM books" in statement_of(s)]
    assert len(cache_spans) == len(book_spans) == AUTHORS
    kinds = ["cache" if s in cache_spans else "books" for s in trace_spans if s in cache_spans + book_spans]
    assert kinds == ["cache", "books"] * AUTHORS  # a cache read between each two lazy loads

    attrs = attrs_of(only(otel.events("n_plus_one_query")))
    assert attrs[F + "count"] == AUTHORS
    assert attrs["db.query.text"] == BOOKS_BY_AUTHOR
    assert list(attrs[F + "span_ids"]) == [hex_id(s) for s in book_spans]


@pytest.mark.parametrize("loader", ["selectin", "joined"])
def test_eager_loading_on_a_database_server_has_no_n_plus_one(
    otel: OTel, server_engine: tuple[Engine, str], instrument_sqlalchemy: Callable[..., None], loader: str
) -> None:
    engine, _ = server_engine
    instrument_sqlalchemy([engine], otel.tracer_provider)
    with otel.tracer.start_as_current_span("GET /authors", kind=SpanKind.SERVER) as root:
        assert list_authors(engine, loader) == EXPECTED_AUTHORS
    assert [s for s in spans_of_trace(otel, root.get_span_context().trace_id) if statement_of(s)] != []
    assert otel.events("n_plus_one_query") == []
    assert otel.stats()["traces_analyzed"] == 1


def _sleep_in_postgres(otel: OTel, engine: Engine) -> tuple[int, ReadableSpan]:
    with otel.tracer.start_as_current_span("nightly-report") as root, engine.connect() as conn:
        conn.execute(text("SELECT pg_sleep(0.15)"))
    trace_id = root.get_span_context().trace_id
    sleep = only([s for s in spans_of_trace(otel, trace_id) if "pg_sleep" in statement_of(s)])
    return trace_id, sleep


def test_slow_query_on_postgresql(
    otel: OTel, postgres_url: str, instrument_sqlalchemy: Callable[..., None]
) -> None:
    engine = create_engine(postgres_url)
    try:
        instrument_sqlalchemy([engine], otel.tracer_provider)
        trace_id, sleep = _sleep_in_postgres(otel, engine)
    finally:
        engine.dispose()

    event = only(otel.events("slow_query"))
    attrs = attrs_of(event)
    assert attrs["db.query.text"] == "select pg_sleep(?)"
    assert attrs[F + "severity"] == "warning"
    assert attrs[F + "count"] == 1
    assert list(attrs[F + "span_ids"]) == [hex_id(sleep)]
    assert attrs[F + "endpoint"] == "nightly-report"
    assert attrs[F + "evidence.db.system"] == "postgresql"
    assert attrs[F + "evidence.threshold_ms"] == 100
    assert event.log_record.trace_id == trace_id
    # The raw text (with its literal) stays on the DB span only.
    assert "0.15" not in str(attrs)


def test_slow_query_threshold_is_respected(
    make_otel: Callable[..., OTel], postgres_url: str, instrument_sqlalchemy: Callable[..., None]
) -> None:
    otel = make_otel(slow_query_threshold_ms=1000)
    engine = create_engine(postgres_url)
    try:
        instrument_sqlalchemy([engine], otel.tracer_provider)
        _sleep_in_postgres(otel, engine)
    finally:
        engine.dispose()
    assert otel.events("slow_query") == []
    assert otel.stats()["traces_analyzed"] == 1
