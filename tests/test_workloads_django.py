"""Real workloads on Django: a small project (tests/apps/djangoapp) served by a real WSGI server,
its ORM over PostgreSQL (psycopg2) and MariaDB (PyMySQL), both drivers instrumented.

Each detector that a Django request can show gets its positive view and the view that fixes it:
the finding must carry the right type, count, endpoint, normalized statement and the line of the
view that made the offending call; the fixed view must give none of that type.  Every test runs on
both databases, each in a schema (PostgreSQL) or database (MariaDB) of its own, dropped after.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
import requests
from apps import djangoapp
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from sqlalchemy.engine import make_url
from test_workloads import (
    assert_points_at,
    findings_of_trace,
    hex_id,
    only,
    spans_of_trace,
    statement_of,
)

if TYPE_CHECKING:
    from conftest import OTel

F = "otel_apm.finding."
AUTHORS = 12
BOOKS_PER_AUTHOR = 3
BOOKS = AUTHORS * BOOKS_PER_AUTHOR
EXPECTED_BOOKS = [
    {"title": f"book {a}.{b}", "author": f"author {a}"}
    for a in range(AUTHORS)
    for b in range(BOOKS_PER_AUTHOR)
]

# The normalized statements the findings must carry, the same on both databases: identifier
# quotes ("" or ``), placeholders and literals do not survive normalization.
AUTHOR_BY_ID = (
    "select djangoapp_author.id, djangoapp_author.name from djangoapp_author "
    "where djangoapp_author.id = ? limit ?"
)
BOOK_LIST = (
    "select djangoapp_book.id, djangoapp_book.title, djangoapp_book.author_id "
    "from djangoapp_book order by djangoapp_book.id asc"
)
WAIT = {"postgresql": "select pg_sleep(?)", "mariadb": "select sleep(?)"}
DB_SYSTEM = {"postgresql": "postgresql", "mariadb": "mysql"}


# -- the project, its database, its server ------------------------------------------------------


@dataclass
class Library:
    """The Django project of one test, on one database, seeded and not yet instrumented."""

    database: str  # "postgresql" or "mariadb": the Django alias
    author_ids: list[int]
    book_ids: list[int]


@pytest.fixture(params=djangoapp.DATABASE_ALIASES)
def library(request: pytest.FixtureRequest) -> Iterator[Library]:
    database: str = request.param
    url = make_url(request.getfixturevalue("postgres_url" if database == "postgresql" else "mariadb_url"))
    djangoapp.setup()
    djangoapp.use_database(database)

    from apps.djangoapp.models import Author, Book
    from django.db import connections

    db = connections[database]
    settings = db.settings_dict  # shared by every thread's connection to this alias
    name = f"otel_apm_dj_{uuid.uuid4().hex[:12]}"
    settings["USER"] = url.username
    with db.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA {name}" if database == "postgresql" else f"CREATE DATABASE {name}")
    db.close()
    if database == "postgresql":
        settings["OPTIONS"] = {"options": f"-c search_path={name}"}
    else:
        settings["NAME"] = name
    try:
        with db.schema_editor() as editor:
            editor.create_model(Author)
            editor.create_model(Book)
        Author.objects.bulk_create(Author(name=f"author {a}") for a in range(AUTHORS))
        authors = list(Author.objects.order_by("id"))
        Book.objects.bulk_create(
            Book(title=f"book {a}.{b}", author=author)
            for a, author in enumerate(authors)
            for b in range(BOOKS_PER_AUTHOR)
        )
        library = Library(
            database, [a.pk for a in authors], list(Book.objects.order_by("id").values_list("id", flat=True))
        )
        db.close()
        yield library
    finally:
        db.close()
        settings["OPTIONS"] = {}
        settings["NAME"] = url.database
        with db.cursor() as cursor:
            cursor.execute(
                f"DROP SCHEMA {name} CASCADE" if database == "postgresql" else f"DROP DATABASE {name}"
            )
        db.close()


@dataclass
class Server:
    otel: OTel
    base: str
    database: str

    def get(self, path: str, *, status: int = 200) -> tuple[requests.Response, ReadableSpan]:
        """GET ``path`` and wait for the request's server span (the root of its trace)."""
        before = {s.context.span_id for s in self.otel.spans() if s.kind is SpanKind.SERVER}
        response = requests.get(self.base + path, timeout=30)
        assert response.status_code == status, response.text[:500]

        def new() -> list[ReadableSpan]:
            return [
                s for s in self.otel.spans() if s.kind is SpanKind.SERVER and s.context.span_id not in before
            ]

        self.otel.wait_for(lambda: len(new()) == 1)
        return response, new()[0]

    def findings(self, server_span: ReadableSpan, finding_type: str) -> list[dict[str, Any]]:
        return findings_of_trace(self.otel, server_span.context.trace_id, finding_type)

    def db_spans(self, server_span: ReadableSpan, marker: str = "") -> list[ReadableSpan]:
        """The request's queries whose text holds ``marker`` (any case), in start order; without
        a marker every query, the driver's own on connect included."""
        marker = marker.lower()
        return [
            s
            for s in spans_of_trace(self.otel, server_span.context.trace_id)
            if s.kind is SpanKind.CLIENT and marker in statement_of(s).lower()
        ]


StartServer = Callable[["OTel"], Server]


@pytest.fixture
def start(library: Library, instrument: Callable[..., None], serve_wsgi: Callable[[Any], str]) -> StartServer:
    """``start(otel)``: the driver and Django instrumented into ``otel``, the project served."""

    def run(otel: OTel) -> Server:
        from django.core.handlers.wsgi import WSGIHandler
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        if library.database == "postgresql":
            from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor

            # Parameters recorded, so the same query with the same values can be recognized.
            instrument(Psycopg2Instrumentor(), tracer_provider=otel.tracer_provider, capture_parameters=True)
        else:
            from opentelemetry.instrumentation.pymysql import PyMySQLInstrumentor

            # This instrumentation has no capture_parameters: the statement text is all it records.
            instrument(PyMySQLInstrumentor(), tracer_provider=otel.tracer_provider)
        instrument(DjangoInstrumentor(), tracer_provider=otel.tracer_provider)
        return Server(otel, serve_wsgi(WSGIHandler()), library.database)  # loads the middleware

    return run


def views() -> Any:
    from apps.djangoapp import views

    return views


# -- N+1 and its fixes ---------------------------------------------------------------------------


def test_n_plus_one_in_a_django_view(otel: OTel, start: StartServer) -> None:
    server = start(otel)
    response, root = server.get("/books/")
    assert response.json() == EXPECTED_BOOKS

    lookups = server.db_spans(root, "djangoapp_author")
    book_list = only(server.db_spans(root, "djangoapp_book"))
    assert len(lookups) == BOOKS
    attrs = only(server.findings(root, "n_plus_one_query"))
    assert attrs[F + "count"] == BOOKS
    assert attrs[F + "endpoint"] == "GET books/"
    assert attrs[F + "severity"] == "critical"  # 36 >= critical factor 5 x threshold 5
    assert attrs["db.query.text"] == AUTHOR_BY_ID
    assert attrs[F + "evidence.db.system"] == DB_SYSTEM[server.database]
    assert attrs[F + "evidence.source.statement"] == BOOK_LIST
    assert attrs[F + "evidence.source.span_id"] == hex_id(book_list)
    assert attrs[F + "span_ids"] == [hex_id(s) for s in lookups]
    assert_points_at(attrs, views().books, "# N+1 here")


@pytest.mark.parametrize("path", ["/books/select-related/", "/books/prefetch-related/"])
def test_eager_loading_in_django_has_no_n_plus_one(otel: OTel, start: StartServer, path: str) -> None:
    server = start(otel)
    response, root = server.get(path)
    assert response.json() == EXPECTED_BOOKS
    assert server.db_spans(root, "djangoapp_book") != []  # the queries were traced
    assert otel.events("n_plus_one_query") == []
    assert otel.events("mn_plus_one_query") == []


def test_mn_plus_one_in_a_django_view(otel: OTel, start: StartServer) -> None:
    server = start(otel)
    response, root = server.get("/books/with-counts/")
    assert [r["written"] for r in response.json()] == [BOOKS_PER_AUTHOR] * BOOKS

    period = [
        s
        for s in server.db_spans(root)
        if "djangoapp_author" in statement_of(s) or "COUNT(*)" in statement_of(s)
    ]
    assert len(period) == 2 * BOOKS
    attrs = only(server.findings(root, "mn_plus_one_query"))
    assert attrs[F + "count"] == 2 * BOOKS  # every query of the repeats
    assert attrs[F + "span_ids"] == [hex_id(s) for s in period]
    assert attrs[F + "endpoint"] == "GET books/with-counts/"
    # The period's statements, in order: what one iteration of the loop runs.
    assert str(attrs["db.query.text"]).split("; ")[0] == AUTHOR_BY_ID
    assert "select count(*) as __count from djangoapp_book" in str(attrs["db.query.text"])
    assert_points_at(attrs, views().books_with_counts, "# MN+1: first query")
    # Alternating statements break every run of one shape: this is not an N+1 of either.
    assert server.findings(root, "n_plus_one_query") == []


# -- repeated identical queries --------------------------------------------------------------------


def test_repeated_identical_orm_query(otel: OTel, start: StartServer, library: Library) -> None:
    server = start(otel)
    author_id = library.author_ids[4]
    response, root = server.get(f"/authors/{author_id}/badge/")
    assert response.json() == {"header": "author 4", "title": "author 4", "footer": "author 4"}

    lookups = server.db_spans(root, "djangoapp_author")
    assert len(lookups) == 3
    found = server.findings(root, "repeated_identical_query")
    if library.database == "mariadb":
        # PyMySQL's instrumentation records no parameters: the values behind the placeholders
        # are unknown, so the spec says nothing can be claimed.
        assert "db.statement.parameters" not in (lookups[0].attributes or {})
        assert found == []
        return
    assert (lookups[0].attributes or {})["db.statement.parameters"] == f"({author_id},)"
    attrs = only(found)
    assert attrs[F + "count"] == 3
    assert attrs[F + "span_ids"] == [hex_id(s) for s in lookups]
    assert attrs[F + "endpoint"] == "GET authors/<int:author_id>/badge/"
    assert attrs["db.query.text"] == AUTHOR_BY_ID
    assert str(author_id) not in attrs["db.query.text"]
    assert_points_at(attrs, views().author_badge, "# repeated identical query")


def test_repeated_raw_query_with_its_literal_in_the_text(otel: OTel, start: StartServer) -> None:
    server = start(otel)
    response, root = server.get("/books/count/")
    assert response.json() == [BOOKS] * 3

    counts = server.db_spans(root, "count(*) from djangoapp_book where")
    assert len(counts) == 3
    attrs = only(server.findings(root, "repeated_identical_query"))
    assert attrs[F + "count"] == 3
    assert attrs[F + "span_ids"] == [hex_id(s) for s in counts]
    assert attrs[F + "endpoint"] == "GET books/count/"
    assert attrs["db.query.text"] == "select count(*) from djangoapp_book where author_id > ?"
    assert_points_at(attrs, views().book_count, "# repeated raw")


def test_one_statement_with_other_values_is_not_repeated(
    otel: OTel, start: StartServer, library: Library
) -> None:
    server = start(otel)
    ids = library.author_ids[:3]
    response, root = server.get("/authors/names/?ids=" + ",".join(map(str, ids)))
    assert response.json() == ["author 0", "author 1", "author 2"]
    assert len(server.db_spans(root, "djangoapp_author")) == 3
    assert otel.events("repeated_identical_query") == []


# -- slow queries ----------------------------------------------------------------------------------


def test_slow_query_in_a_django_view(otel: OTel, start: StartServer) -> None:
    server = start(otel)
    _, root = server.get("/reports/wait/?seconds=0.15")
    wait = only(server.db_spans(root, "sleep("))
    attrs = only(server.findings(root, "slow_query"))
    assert attrs[F + "count"] == 1
    assert attrs[F + "span_ids"] == [hex_id(wait)]
    assert attrs[F + "endpoint"] == "GET reports/wait/"
    assert attrs[F + "evidence.db.system"] == DB_SYSTEM[server.database]
    assert attrs["db.query.text"] == WAIT[server.database]
    assert "0.15" not in str(attrs)
    assert_points_at(attrs, views().wait, "# the wait query")


def test_fast_query_is_not_slow(otel: OTel, start: StartServer) -> None:
    server = start(otel)
    _, root = server.get("/reports/wait/?seconds=0")
    assert len(server.db_spans(root, "sleep(")) == 1
    assert otel.events("slow_query") == []


OUTLIER_SAMPLES = 20  # APM_SLOW_QUERY_OUTLIER_MIN_SAMPLES's default


@pytest.mark.parametrize(("last_seconds", "outlier"), [(0.08, True), (0, False)])
def test_slow_query_outlier_against_the_statement_history(
    otel: OTel, start: StartServer, last_seconds: float, outlier: bool
) -> None:
    """20 fast runs of one statement make its history; an 80 ms run is then an outlier (under
    the 100 ms absolute threshold, over 3 x p95 and 10 ms), a fast one is not."""
    server = start(otel)
    for _ in range(OUTLIER_SAMPLES):
        server.get("/reports/wait/?seconds=0")
    assert otel.events("slow_query_outlier") == []
    _, root = server.get(f"/reports/wait/?seconds={last_seconds}")
    found = server.findings(root, "slow_query_outlier")
    assert otel.events("slow_query") == []
    if not outlier:
        assert found == []
        return
    attrs = only(found)
    assert attrs[F + "count"] == 1
    assert attrs[F + "span_ids"] == [hex_id(only(server.db_spans(root, "sleep(")))]
    assert attrs[F + "endpoint"] == "GET reports/wait/"
    assert attrs["db.query.text"] == WAIT[server.database]
    assert_points_at(attrs, views().wait, "# the wait query")


# -- independent queries run one after the other ----------------------------------------------------


def test_consecutive_independent_queries(otel: OTel, start: StartServer) -> None:
    server = start(otel)
    response, root = server.get("/reports/dashboard/")
    assert len(response.json()) == 3
    counts = server.db_spans(root, "SELECT (SELECT")
    assert len(counts) == 3
    attrs = only(server.findings(root, "consecutive_db_queries"))
    assert attrs[F + "count"] == 3
    assert attrs[F + "span_ids"] == [hex_id(s) for s in counts]
    assert attrs[F + "endpoint"] == "GET reports/dashboard/"
    assert "0.07" not in str(attrs)
    assert_points_at(attrs, views().dashboard, "# sequential dashboard query")


def test_concurrent_queries_are_not_consecutive(otel: OTel, start: StartServer) -> None:
    server = start(otel)
    response, root = server.get("/reports/dashboard/concurrent/")
    assert len(response.json()) == 3
    counts = server.db_spans(root, "SELECT (SELECT")
    assert len(counts) == 3
    # They ran at once, each under the request span (the context went with the work).
    assert {s.parent.span_id for s in counts if s.parent} == {root.context.span_id}
    assert max(s.start_time or 0 for s in counts) < min(s.end_time or 0 for s in counts), "not concurrent"
    assert otel.events("consecutive_db_queries") == []


# -- request-level findings ----------------------------------------------------------------------


def test_chatty_transaction(otel: OTel, start: StartServer) -> None:
    server = start(otel)
    _, root = server.get("/books/")
    queries = server.db_spans(root)
    assert len(queries) >= BOOKS + 1 >= 30  # APM_CHATTY_QUERY_THRESHOLD's default
    attrs = only(server.findings(root, "chatty_transaction"))
    assert attrs[F + "endpoint"] == "GET books/"
    assert attrs[F + "count"] == len(queries)  # the offending spans are the request's queries


def test_a_request_with_one_query_is_not_chatty(otel: OTel, start: StartServer) -> None:
    server = start(otel)
    server.get("/books/select-related/")
    assert otel.events("chatty_transaction") == []


@pytest.mark.parametrize(("seconds", "dominant"), [(0.08, True), (0, False)])
def test_bottleneck(
    make_otel: Callable[..., OTel], start: StartServer, seconds: float, dominant: bool
) -> None:
    """An 80 ms query in a 200 ms request (the rest rendering) is its bottleneck, though neither
    slow (under 100 ms) nor chatty (40 % of the time in the database); a fast one is not.

    The request also opens its connection (CONN_MAX_AGE 0): on a loaded machine PyMySQL's took
    75-140 ms, which put the query at 25-29 % of the request, under the default 30 %; at 20 %
    the request may take 400 ms before the query stops being its bottleneck."""
    otel = make_otel(bottleneck_share=0.2)
    server = start(otel)
    _, root = server.get(f"/reports/summary/?seconds={seconds}")
    assert ((root.end_time or 0) - (root.start_time or 0)) / 1e6 >= 100  # long enough to qualify
    found = server.findings(root, "bottleneck")
    assert server.findings(root, "slow_query") == []
    assert server.findings(root, "chatty_transaction") == []
    if not dominant:
        assert found == []
        return
    attrs = only(found)
    assert attrs[F + "count"] == 1
    assert attrs[F + "span_ids"] == [hex_id(only(server.db_spans(root, "sleep(")))]
    assert attrs[F + "endpoint"] == "GET reports/summary/"
    assert attrs["db.query.text"] == WAIT[server.database]
    assert_points_at(attrs, views().summary, "# the dominant query")


def test_error_in_a_django_view(otel: OTel, start: StartServer, library: Library) -> None:
    server = start(otel)
    _, first = server.get(f"/books/{library.book_ids[0]}/buy/", status=500)
    _, second = server.get(f"/books/{library.book_ids[1]}/buy/", status=500)
    errors = [only(server.findings(root, "error")) for root in (first, second)]
    for attrs, root in zip(errors, (first, second), strict=True):
        assert attrs[F + "count"] == 1
        assert attrs[F + "span_ids"] == [hex_id(root)]
        assert attrs[F + "endpoint"] == "GET books/<int:book_id>/buy/"
        assert "OutOfStockError" in attrs[F + "title"]
    # Grouped by exception type and endpoint: another book is the same problem.
    assert errors[0][F + "fingerprint"] == errors[1][F + "fingerprint"]


def test_no_error_finding_for_a_good_request(otel: OTel, start: StartServer, library: Library) -> None:
    server = start(otel)
    response, _ = server.get(f"/books/{library.book_ids[0]}/")
    assert response.json() == {"title": "book 0.0"}
    assert otel.events("error") == []
