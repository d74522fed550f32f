"""Writes the labelled trace corpus: one OTLP/JSON ExportTraceServiceRequest per case, and labels.yaml.

Run it after editing a case (``python tests/corpus/make_corpus.py``); the JSON files and labels.yaml
it writes are the fixture ``otel-apm evaluate`` and tests/test_corpus.py read, committed as they
are so a reader can open a trace without running anything.

Each case is a compact description of a request as real instrumentations record it (Flask and
Django server spans with ``http.route``; SQLAlchemy, psycopg2 and pymysql DB spans; requests and
httpx client spans; redis cache spans), in the older or the stable semantic conventions, with the
findings the default settings must produce.  Timings are chosen so the labels are unambiguous:
requests stay under 100 ms (below the chatty-share and bottleneck minimums) unless the case is
about time, and in longer requests no span and no group of like spans (one name, one statement,
one URL template) reaches 30 % of the request unless the case is a bottleneck.  Ids are derived
from the case name, so a re-run writes the same bytes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BASE_NS = 1_717_243_200_000_000_000  # 2024-06-01T12:00:00Z: fixed, so the files never change
TRACE_SPACING_MS = 1000.0  # traces of one file start one second apart, in order

INTERNAL, SERVER, CLIENT = 1, 2, 3  # OTLP SpanKind values
SCOPE_VERSION = "0.66b1"

SQLALCHEMY = "opentelemetry.instrumentation.sqlalchemy"
PSYCOPG2 = "opentelemetry.instrumentation.psycopg2"
PYMYSQL = "opentelemetry.instrumentation.pymysql"
FLASK = "opentelemetry.instrumentation.flask"
DJANGO = "opentelemetry.instrumentation.django"
REQUESTS = "opentelemetry.instrumentation.requests"
HTTPX = "opentelemetry.instrumentation.httpx"
REDIS = "opentelemetry.instrumentation.redis"
APP = "app"  # hand-made spans (manual instrumentation)


@dataclass
class Code:
    """Where the application made the call, as code.* attributes (stable names, or the older ones)."""

    path: str
    line: int
    function: str
    stable: bool = True

    def attrs(self) -> dict[str, Any]:
        if self.stable:
            return {
                "code.file.path": self.path,
                "code.line.number": self.line,
                "code.function.name": self.function,
            }
        return {"code.filepath": self.path, "code.lineno": self.line, "code.function": self.function}

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.function}"


@dataclass
class S:
    """A span: times in milliseconds from the start of its trace; children are real children."""

    name: str
    kind: int
    scope: str
    start: float
    dur: float
    attrs: dict[str, Any]
    children: list[S] = field(default_factory=list)
    error: str | None = None  # status message: the span's status is ERROR
    exceptions: list[tuple[str, str]] = field(default_factory=list)  # (exception.type, message)
    service: str | None = None  # another service than the parent's: a new resource


@dataclass
class Case:
    name: str
    description: str
    traces: list[tuple[str, S]]  # (service, root span), in the order they ran
    expect: list[dict[str, Any]]
    negative_for: list[str] = field(default_factory=list)


class Clock:
    """Lays spans out one after another: ``clock.next(3)`` is (start, 3) and moves past it."""

    def __init__(self, start: float, gap: float = 0.5) -> None:
        self.now = start
        self.gap = gap

    def next(self, dur: float) -> tuple[float, float]:
        start = self.now
        self.now += dur + self.gap
        return start, dur


# -- span helpers, one per instrumentation ------------------------------------------------------


def flask(
    route: str,
    dur: float,
    children: list[S],
    *,
    method: str = "GET",
    target: str | None = None,
    status: int = 200,
    stable: bool = False,
    start: float = 0.0,
    response_size: int | None = None,
    request_size: int | None = None,
    error: str | None = None,
    exceptions: list[tuple[str, str]] | None = None,
    service: str | None = None,
) -> S:
    path = target or route.replace("<int:", "").replace("<", "").replace(">", "")
    if stable:
        attrs: dict[str, Any] = {
            "http.request.method": method,
            "url.scheme": "http",
            "url.path": path,
            "http.route": route,
            "server.address": "localhost",
            "network.protocol.version": "1.1",
            "http.response.status_code": status,
        }
        if response_size is not None:
            attrs["http.response.body.size"] = response_size
        if request_size is not None:
            attrs["http.request.body.size"] = request_size
    else:
        attrs = {
            "http.method": method,
            "http.scheme": "http",
            "http.target": path,
            "http.route": route,
            "http.host": "localhost:5000",
            "http.flavor": "1.1",
            "net.host.port": 5000,
            "http.status_code": status,
        }
        if response_size is not None:
            attrs["http.response_content_length"] = response_size
        if request_size is not None:
            attrs["http.request_content_length"] = request_size
    return S(
        f"{method} {route}", SERVER, FLASK, start, dur, attrs, children, error, exceptions or [], service
    )


def django(
    route: str, dur: float, children: list[S], *, method: str = "GET", status: int = 200, **kw: Any
) -> S:
    """A Django server span: its route has no leading slash (``api/orders/<int:pk>/``)."""
    span = flask(route, dur, children, method=method, status=status, target="/" + route, **kw)
    span.scope = DJANGO
    span.attrs.pop("http.host", None)
    span.attrs.pop("net.host.port", None)
    return span


def _statement_op(statement: str) -> str:
    return statement.split(None, 1)[0].upper()


def sqla(
    statement: str,
    at: tuple[float, float],
    *,
    db: str = "shop",
    system: str = "postgresql",
    code: Code | None = None,
    cached: bool = False,
    error: tuple[str, str] | None = None,
) -> S:
    """A SQLAlchemy span as opentelemetry-instrumentation-sqlalchemy names it: "SELECT shop"."""
    attrs: dict[str, Any] = {
        "db.statement": statement,
        "db.system": system,
        "db.name": db,
        "net.peer.name": "db",
        "net.peer.port": 5432 if system == "postgresql" else 3306,
    }
    if code:
        attrs.update(code.attrs())
    if cached:
        attrs["cache.hit"] = True
    return _db_span(f"{_statement_op(statement)} {db}", SQLALCHEMY, at, attrs, error)


def connect(at: tuple[float, float], *, db: str = "shop") -> S:
    """SQLAlchemy's pool checkout span: "connect", with no statement."""
    attrs = {"db.system": "postgresql", "db.name": db, "net.peer.name": "db", "net.peer.port": 5432}
    return S("connect", CLIENT, SQLALCHEMY, at[0], at[1], attrs)


def dbapi(
    statement: str,
    at: tuple[float, float],
    *,
    lib: str = "psycopg2",
    stable: bool = False,
    table: str | None = None,
    db: str = "backoffice",
    code: Code | None = None,
    params: str | None = None,
    stable_params: list[str] | None = None,
    error: tuple[str, str] | None = None,
) -> S:
    """A DB-API span (psycopg2 or pymysql).  Old conventions: named by the first word ("SELECT");
    stable ones: "{db.operation.name} {db.collection.name}" ("SELECT orders")."""
    scope = PSYCOPG2 if lib == "psycopg2" else PYMYSQL
    system = "postgresql" if lib == "psycopg2" else "mysql"
    port = 5432 if lib == "psycopg2" else 3306
    op = _statement_op(statement)
    if stable:
        attrs: dict[str, Any] = {
            "db.system.name": system,
            "db.query.text": statement,
            "db.namespace": db,
            "db.operation.name": op,
            "server.address": "db",
            "server.port": port,
        }
        if table:
            attrs["db.collection.name"] = table
        name = f"{op} {table}" if table else op
    else:
        attrs = {
            "db.system": system,
            "db.statement": statement,
            "db.name": db,
            "db.user": "app",
            "net.peer.name": "db",
            "net.peer.port": port,
        }
        name = op
    if params is not None:
        attrs["db.statement.parameters"] = params
    for i, value in enumerate(stable_params or []):
        attrs[f"db.query.parameter.{i}"] = value
    if code:
        attrs.update(code.attrs())
    return _db_span(name, scope, at, attrs, error)


def _db_span(name: str, scope: str, at: tuple[float, float], attrs: dict[str, Any], error: Any) -> S:
    span = S(name, CLIENT, scope, at[0], at[1], attrs)
    if error:
        span.error = f"{error[0]}: {error[1]}"
        span.exceptions = [error]
    return span


def http(
    method: str,
    url: str,
    at: tuple[float, float],
    *,
    lib: str = "requests",
    stable: bool = False,
    status: int | None = 200,
    code: Code | None = None,
    children: list[S] | None = None,
    response_size: int | None = None,
    exception: tuple[str, str] | None = None,
) -> S:
    """An HTTP client span (requests or httpx), named by its method as both name it."""
    host = url.split("://", 1)[1].split("/", 1)[0]
    name_part, _, port = host.partition(":")
    if stable:
        attrs: dict[str, Any] = {
            "http.request.method": method,
            "url.full": url,
            "server.address": name_part,
            "server.port": int(port or 80),
        }
        if status is not None:
            attrs["http.response.status_code"] = status
        if response_size is not None:
            attrs["http.response.body.size"] = response_size
    else:
        attrs = {"http.method": method, "http.url": url}
        if status is not None:
            attrs["http.status_code"] = status
        if response_size is not None:
            attrs["http.response_content_length"] = response_size
    if code:
        attrs.update(code.attrs())
    span = S(method, CLIENT, REQUESTS if lib == "requests" else HTTPX, at[0], at[1], attrs, children or [])
    if exception:
        span.error = f"{exception[0]}: {exception[1]}"
        span.exceptions = [exception]
        if stable:
            attrs["error.type"] = exception[0]
    elif status is not None and status >= 400:
        span.error = ""  # the client instrumentations mark 4xx/5xx responses as errors
        if stable:
            attrs["error.type"] = str(status)
    return span


def redis(command: str, at: tuple[float, float]) -> S:
    attrs = {
        "db.system": "redis",
        "db.statement": command,
        "db.redis.database_index": 0,
        "net.peer.name": "cache",
        "net.peer.port": 6379,
    }
    return S(command.split()[0], CLIENT, REDIS, at[0], at[1], attrs)


def internal(name: str, at: tuple[float, float], children: list[S] | None = None) -> S:
    return S(name, INTERNAL, APP, at[0], at[1], {}, children or [])


# -- the cases ----------------------------------------------------------------------------------

CASES: list[Case] = []


def case(
    description: str, expect: list[dict[str, Any]], negative_for: list[str] | None = None
) -> Callable[[Callable[[], list[tuple[str, S]]]], None]:
    """Registers the decorated function's traces as the case named after the function."""

    def register(build: Callable[[], list[tuple[str, S]]]) -> None:
        CASES.append(Case(build.__name__, description, build(), expect, negative_for or []))

    return register


AUTHORS = "SELECT authors.id, authors.name FROM authors ORDER BY authors.name"
BOOKS_BY_AUTHOR = (
    "SELECT books.id, books.title, books.author_id FROM books WHERE %(param_1)s = books.author_id"
)


# n_plus_one_query ------------------------------------------------------------------------------


@case(
    "Flask + SQLAlchemy: the author list touches author.books lazily, one query per author (10).",
    [
        {
            "type": "n_plus_one_query",
            "count": 10,
            "code": "shop/views.py:57:list_authors",
            "service": "shop",
            "endpoint": "GET /authors",
        }
    ],
    ["consecutive_db_queries", "chatty_transaction", "repeated_identical_query", "mn_plus_one_query"],
)
def nplus1_sqlalchemy_authors() -> list[tuple[str, S]]:
    t = Clock(1.0)
    code = Code("shop/views.py", 57, "list_authors")
    spans = [sqla(AUTHORS, t.next(3))] + [sqla(BOOKS_BY_AUTHOR, t.next(3.5), code=code) for _ in range(10)]
    return [("shop", flask("/authors", 60, spans))]


@case(
    "Django + psycopg2 in the stable conventions (db.query.text): the order list fetches each "
    "order's customer on its own (8 queries); code location in the older code.* attributes.",
    [
        {
            "type": "n_plus_one_query",
            "count": 8,
            "code": "orders/views.py:88:order_list",
            "endpoint": "GET api/orders/",
        }
    ],
    ["repeated_identical_query"],
)
def nplus1_django_psycopg2_stable() -> list[tuple[str, S]]:
    t = Clock(2.0)
    code = Code("orders/views.py", 88, "order_list", stable=False)
    spans = [
        dbapi(
            "SELECT id, status, customer_id FROM orders WHERE status = %s",
            t.next(4),
            stable=True,
            table="orders",
        )
    ] + [
        dbapi(
            "SELECT id, name, email FROM customers WHERE id = %s",
            t.next(3),
            stable=True,
            table="customers",
            code=code,
        )
        for _ in range(8)
    ]
    return [("backoffice", django("api/orders/", 80, spans))]


@case(
    "Flask + pymysql with literal values in the text: one users query per comment, each with "
    "another id (6); the texts differ, so this is no repeated identical query.",
    [{"type": "n_plus_one_query", "count": 6, "service": "blog"}],
    ["repeated_identical_query"],
)
def nplus1_pymysql_literals() -> list[tuple[str, S]]:
    t = Clock(1.0)
    spans = [
        dbapi(
            "SELECT id, author_id, body FROM comments WHERE post_id = 7", t.next(3), lib="pymysql", db="blog"
        )
    ]
    for uid in (12, 31, 7, 58, 4, 90):
        spans.append(
            dbapi(f"SELECT id, name FROM users WHERE id = {uid}", t.next(2.5), lib="pymysql", db="blog")
        )
    return [("blog", flask("/posts/<int:post_id>", 50, spans, target="/posts/7"))]


@case(
    "Two services: the gateway calls catalog, whose reviews endpoint loads each reviewer on its "
    "own (7).  The finding belongs to catalog and its endpoint, not to the gateway.",
    [
        {
            "type": "n_plus_one_query",
            "count": 7,
            "code": "catalog/reviews.py:31:reviews_for",
            "service": "catalog",
            "endpoint": "GET /products/<int:product_id>/reviews",
        }
    ],
    ["n_plus_one_api_call"],
)
def nplus1_cross_service() -> list[tuple[str, S]]:
    t = Clock(4.0)
    code = Code("catalog/reviews.py", 31, "reviews_for")
    queries = [
        sqla(
            "SELECT reviews.id, reviews.user_id, reviews.body FROM reviews "
            "WHERE reviews.product_id = %(product_id_1)s",
            t.next(4),
            db="catalog",
        )
    ] + [
        sqla(
            "SELECT users.id, users.name FROM users WHERE users.id = %(pk_1)s",
            t.next(5),
            db="catalog",
            code=code,
        )
        for _ in range(7)
    ]
    callee = flask(
        "/products/<int:product_id>/reviews",
        58,
        queries,
        stable=True,
        start=3,
        target="/products/42/reviews",
        service="catalog",
    )
    call = http("GET", "http://catalog:8000/products/42/reviews", (2, 60), stable=True, children=[callee])
    return [("gateway", flask("/products/<int:product_id>/page", 70, [call], target="/products/42/page"))]


@case(
    "SQLAlchemy with a NullPool: a connect span before each query.  Connection checkouts are not "
    "DB statements and do not break the run of 6 line-item queries.",
    [{"type": "n_plus_one_query", "count": 6}],
)
def nplus1_connection_checkouts() -> list[tuple[str, S]]:
    t = Clock(1.0)
    spans = [connect(t.next(0.4)), sqla("SELECT orders.id FROM orders WHERE orders.id = %(pk_1)s", t.next(2))]
    for _ in range(6):
        spans.append(connect(t.next(0.4)))
        spans.append(
            sqla("SELECT products.id, products.name FROM products WHERE products.id = %(pk_1)s", t.next(3))
        )
    return [("shop", flask("/orders/<int:order_id>/items", 70, spans, target="/orders/5/items"))]


@case(
    "A template helper runs the very same literal statement for every cart row (6): the loop of an "
    "N+1, but with identical values, so it is reported once, as the cache candidate it is.",
    [{"type": "repeated_identical_query", "count": 6, "code": "shop/templatetags.py:12:cart_count"}],
    ["n_plus_one_query"],
)
def nplus1_identical_literal() -> list[tuple[str, S]]:
    t = Clock(1.0)
    code = Code("shop/templatetags.py", 12, "cart_count")
    spans = [
        sqla("SELECT count(*) FROM cart_items WHERE cart_id = 7", t.next(2), code=code) for _ in range(6)
    ]
    return [("shop", flask("/cart", 40, spans))]


@case(
    "An N+1 of 40 price lookups in a 200 ms request: 41 queries cross the chatty threshold (30) "
    "too.  DB time is a quarter of the request, so neither the DB share nor a bottleneck applies.",
    [{"type": "n_plus_one_query", "count": 40}, {"type": "chatty_transaction"}],
    ["bottleneck", "slow_request"],
)
def nplus1_chatty_40() -> list[tuple[str, S]]:
    t = Clock(2.0, gap=0.4)
    spans = [
        sqla("SELECT products.id FROM products WHERE products.category_id = %(category_id_1)s", t.next(3))
    ]
    spans += [
        sqla("SELECT prices.amount FROM prices WHERE prices.product_id = %(product_id_1)s", t.next(1.2))
        for _ in range(40)
    ]
    return [("shop", flask("/catalog", 200, spans))]


@case(
    "Five sequential 40 ms price queries of one shape: they would save 160 ms run concurrently, "
    "but a run of one shape repeated to the N+1 threshold is left to the N+1 detector.",
    [{"type": "n_plus_one_query", "count": 5, "endpoint": "GET reports/prices/"}],
    ["consecutive_db_queries", "bottleneck"],
)
def nplus1_sequential_would_save() -> list[tuple[str, S]]:
    t = Clock(5.0)
    spans = [
        dbapi("SELECT amount FROM prices WHERE sku = %s", t.next(40), stable=True, table="prices")
        for _ in range(5)
    ]
    return [("backoffice", django("reports/prices/", 700, spans))]


@case(
    "Eager loading with one JOIN (joinedload): one query instead of N.",
    [],
    ["n_plus_one_query", "slow_query"],
)
def eager_join() -> list[tuple[str, S]]:
    join = (
        "SELECT authors.id, authors.name, books_1.id AS books_1_id, books_1.title FROM authors "
        "LEFT OUTER JOIN books AS books_1 ON authors.id = books_1.author_id ORDER BY authors.name"
    )
    return [("shop", flask("/authors", 30, [sqla(join, (2, 12))], target="/authors?eager=joined"))]


@case(
    "Eager loading with selectinload: the authors, then every book in one IN query.",
    [],
    ["n_plus_one_query"],
)
def eager_selectin() -> list[tuple[str, S]]:
    t = Clock(1.0)
    books = (
        "SELECT books.author_id, books.id, books.title FROM books "
        "WHERE books.author_id IN (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)"
    )
    return [("shop", flask("/authors", 30, [sqla(AUTHORS, t.next(3)), sqla(books, t.next(6))]))]


DASHBOARD = [
    "SELECT count(*) FROM orders WHERE created_at >= %s",
    "SELECT sum(total) FROM orders WHERE created_at >= %s AND status = %s",
    "SELECT product_id, sum(qty) FROM order_lines GROUP BY product_id ORDER BY 2 DESC LIMIT 5",
    "SELECT count(*) FROM customers WHERE joined_at >= %s",
    "SELECT count(*) FROM tickets WHERE status = %s",
    "SELECT sku, qty FROM stock WHERE qty < %s",
    "SELECT count(*), sum(amount) FROM refunds WHERE created_at >= %s",
]


@case(
    "An intentional loop of DIFFERENT queries (a dashboard's 7 widgets, 3 ms each): no N+1, no "
    "repeated sequence, and running them concurrently would save far less than 100 ms.",
    [],
    ["n_plus_one_query", "mn_plus_one_query", "consecutive_db_queries", "chatty_transaction"],
)
def loop_of_different_queries() -> list[tuple[str, S]]:
    t = Clock(2.0)
    return [("backoffice", django("dashboard/", 60, [dbapi(q, t.next(3)) for q in DASHBOARD]))]


@case(
    "Six product lookups answered by the ORM's query cache (cache.hit true, 0.2 ms each): cached "
    "spans cost no round trip and never count towards an N+1.",
    [],
    ["n_plus_one_query"],
)
def cached_spans() -> list[tuple[str, S]]:
    t = Clock(1.0)
    spans = [sqla("SELECT categories.id FROM categories WHERE categories.slug = %(slug_1)s", t.next(2))]
    spans += [
        sqla(
            "SELECT products.id, products.name FROM products WHERE products.id = %(pk_1)s",
            t.next(0.2),
            cached=True,
        )
        for _ in range(6)
    ]
    return [("shop", flask("/products", 40, spans))]


@case(
    "The friends list reads each friend from redis (8 GETs): cache work, not DB queries.",
    [],
    ["n_plus_one_query", "repeated_identical_query"],
)
def redis_cache_loop() -> list[tuple[str, S]]:
    t = Clock(1.0)
    spans = [
        sqla(
            "SELECT friendships.friend_id FROM friendships WHERE friendships.user_id = %(user_id_1)s",
            t.next(3),
        )
    ]
    spans += [redis(f"GET user:{uid}", t.next(0.8)) for uid in (3, 17, 21, 40, 41, 52, 77, 80)]
    return [("shop", flask("/users/<int:user_id>/friends", 30, spans, target="/users/9/friends"))]


@case(
    "An export pages through events with LIMIT/OFFSET (6 pages of one shape): intentional batching.",
    [],
    ["n_plus_one_query", "consecutive_db_queries", "repeated_identical_query"],
)
def paginated_batch() -> list[tuple[str, S]]:
    t = Clock(2.0)
    page = "SELECT id, kind, payload FROM events ORDER BY id LIMIT %s OFFSET %s"
    return [("backoffice", django("export/events/", 90, [dbapi(page, t.next(8)) for _ in range(6)]))]


@case(
    "Keyset pagination: ORDER BY id LIMIT with a range predicate on id, 6 pages: intentional.",
    [],
    ["n_plus_one_query"],
)
def keyset_pagination() -> list[tuple[str, S]]:
    t = Clock(2.0)
    page = "SELECT id, email FROM subscribers WHERE id > %s ORDER BY id LIMIT 1000"
    return [("backoffice", django("export/subscribers/", 80, [dbapi(page, t.next(7)) for _ in range(6)]))]


@case(
    "Products loaded in IN-list chunks of 100 ids (5 chunks): an intentional batch, not an N+1.",
    [],
    ["n_plus_one_query"],
)
def in_list_batches() -> list[tuple[str, S]]:
    t = Clock(2.0)
    spans = []
    for chunk in range(5):
        ids = ", ".join(str(chunk * 100 + i) for i in range(1, 11))
        spans.append(
            dbapi(f"SELECT id, name, price FROM products WHERE id IN ({ids})", t.next(5), lib="pymysql")
        )
    return [("backoffice", django("sync/products/", 60, spans))]


@case(
    "Four lazy loads of one shape: below the N+1 threshold (5).",
    [],
    ["n_plus_one_query", "repeated_identical_query"],
)
def nplus1_below_threshold() -> list[tuple[str, S]]:
    t = Clock(1.0)
    spans = [sqla(AUTHORS, t.next(3))] + [sqla(BOOKS_BY_AUTHOR, t.next(3)) for _ in range(4)]
    return [("shop", flask("/authors", 40, spans))]


@case(
    "Three lookups, another statement, three more lookups of the first shape: another DB "
    "statement breaks a run, and neither run of 3 reaches the threshold.",
    [],
    ["n_plus_one_query", "mn_plus_one_query"],
)
def run_broken_by_other_statement() -> list[tuple[str, S]]:
    t = Clock(1.0)
    lookup = "SELECT tags.id, tags.name FROM tags WHERE tags.id = %(pk_1)s"
    spans = [sqla(lookup, t.next(2)) for _ in range(3)]
    spans.append(sqla("SELECT settings.value FROM settings WHERE settings.name = %(name_1)s", t.next(2)))
    spans += [sqla(lookup, t.next(2)) for _ in range(3)]
    return [("shop", flask("/tags", 40, spans))]


# mn_plus_one_query -----------------------------------------------------------------------------


@case(
    "For each of 6 orders the view loads the customer, then the order lines: a 2-statement "
    "sequence repeated 6 times.  No run of one shape, so no plain N+1.",
    [{"type": "mn_plus_one_query", "endpoint": "GET /orders"}],
    ["n_plus_one_query"],
)
def mn_plus_one_orders() -> list[tuple[str, S]]:
    t = Clock(1.0)
    spans = [
        sqla("SELECT orders.id, orders.customer_id FROM orders WHERE orders.status = %(status_1)s", t.next(3))
    ]
    for _ in range(6):
        spans.append(
            sqla(
                "SELECT customers.id, customers.name FROM customers WHERE customers.id = %(pk_1)s",
                t.next(2.5),
                code=Code("shop/orders.py", 40, "order_rows"),
            )
        )
        spans.append(
            sqla(
                "SELECT order_lines.id, order_lines.qty FROM order_lines "
                "WHERE order_lines.order_id = %(order_id_1)s",
                t.next(3),
                code=Code("shop/orders.py", 41, "order_rows"),
            )
        )
    return [("shop", flask("/orders", 70, spans))]


@case(
    "Restocking 5 SKUs, each a read, an update and an insert (3-statement period, 5 times).",
    [{"type": "mn_plus_one_query"}],
    ["n_plus_one_query"],
)
def mn_plus_one_period3() -> list[tuple[str, S]]:
    t = Clock(2.0)
    spans = []
    for _ in range(5):
        spans.append(dbapi("SELECT qty FROM stock WHERE sku = %s FOR UPDATE", t.next(5)))
        spans.append(dbapi("UPDATE stock SET qty = qty + %s WHERE sku = %s", t.next(5)))
        spans.append(dbapi("INSERT INTO stock_moves (sku, qty, reason) VALUES (%s, %s, %s)", t.next(5)))
    return [("backoffice", django("inventory/restock/", 90, spans, method="POST"))]


@case(
    "The customer-then-lines sequence only 4 times: below the MN+1 threshold (5).",
    [],
    ["mn_plus_one_query", "n_plus_one_query"],
)
def mn_below_threshold() -> list[tuple[str, S]]:
    t = Clock(1.0)
    spans = []
    for _ in range(4):
        spans.append(sqla("SELECT customers.id FROM customers WHERE customers.id = %(pk_1)s", t.next(2.5)))
        spans.append(
            sqla(
                "SELECT order_lines.id FROM order_lines WHERE order_lines.order_id = %(order_id_1)s",
                t.next(3),
            )
        )
    return [("shop", flask("/orders", 40, spans))]


# n_plus_one_api_call ---------------------------------------------------------------------------


@case(
    "requests, older conventions (http.url): one stock call per cart line (6), numeric ids.",
    [
        {
            "type": "n_plus_one_api_call",
            "count": 6,
            "code": "shop/cart.py:73:stock_levels",
            "endpoint": "GET /cart/summary",
        }
    ],
    ["consecutive_http_calls"],
)
def api_nplus1_requests() -> list[tuple[str, S]]:
    t = Clock(2.0)
    code = Code("shop/cart.py", 73, "stock_levels", stable=False)
    spans = [
        http("GET", f"http://inventory:8080/api/stock/{sku}", t.next(6), code=code)
        for sku in (10234, 10235, 20411, 30001, 30007, 41000)
    ]
    return [("shop", flask("/cart/summary", 60, spans))]


@case(
    "httpx, stable conventions (url.full): one profile call per feed item, UUID ids and a query "
    "string (5: exactly the threshold).",
    [{"type": "n_plus_one_api_call", "count": 5, "code": "gateway/feed.py:19:hydrate"}],
    ["consecutive_http_calls"],
)
def api_nplus1_httpx_uuid_stable() -> list[tuple[str, S]]:
    t = Clock(2.0)
    code = Code("gateway/feed.py", 19, "hydrate")
    uuids = [
        "0b7e6f4c-2f1a-4d7e-9c1b-8f2d3a4b5c6d",
        "1c8f7a5d-3a2b-4e8f-8d2c-9a3e4b5c6d7e",
        "2d9a8b6e-4b3c-4f9a-9e3d-ab4f5c6d7e8f",
        "3eab9c7f-5c4d-4a0b-8f4e-bc5a6d7e8f9a",
        "4fbcad8a-6d5e-4b1c-9a5f-cd6b7e8f9aab",
    ]
    spans = [
        http(
            "GET",
            f"http://profiles:9000/v1/profiles/{u}?fields=avatar",
            t.next(10),
            lib="httpx",
            stable=True,
            code=code,
        )
        for u in uuids
    ]
    return [("gateway", flask("/feed", 80, spans, stable=True))]


@case(
    "Two services: the gateway fetches each recipient from the users service (5 calls); each "
    "callee request runs one query, under its own parent.",
    [
        {
            "type": "n_plus_one_api_call",
            "count": 5,
            "service": "gateway",
            "endpoint": "GET /orders/<order_id>/recipients",
        }
    ],
    ["n_plus_one_query"],
)
def api_nplus1_cross_service() -> list[tuple[str, S]]:
    t = Clock(2.0)
    calls = []
    for uid in (5, 8, 13, 21, 34):
        start, _ = t.next(12)
        query = sqla(
            "SELECT users.id, users.email FROM users WHERE users.id = %(pk_1)s", (start + 3, 2), db="users"
        )
        callee = flask(
            "/users/<int:user_id>", 10, [query], start=start + 1, target=f"/users/{uid}", service="users"
        )
        calls.append(http("GET", f"http://users:8000/users/{uid}", (start, 12), children=[callee]))
    return [("gateway", flask("/orders/<order_id>/recipients", 90, calls, target="/orders/77/recipients"))]


@case("Four calls of one template: below the N+1 API threshold (5).", [], ["n_plus_one_api_call"])
def api_below_threshold() -> list[tuple[str, S]]:
    t = Clock(2.0)
    spans = [http("GET", f"http://inventory:8080/api/stock/{sku}", t.next(6)) for sku in (1, 2, 3, 4)]
    return [("shop", flask("/cart/summary", 40, spans))]


@case(
    "Page start-up calls 6 different endpoints (config, flags, ...), 5 ms each: not one template, "
    "and concurrency would save 25 ms only.",
    [],
    ["n_plus_one_api_call", "consecutive_http_calls"],
)
def api_distinct_endpoints() -> list[tuple[str, S]]:
    t = Clock(2.0)
    paths = ["config", "flags", "me", "cart", "recommendations", "banners"]
    spans = [http("GET", f"http://bff:8080/api/{p}", t.next(5), lib="httpx") for p in paths]
    return [("gateway", flask("/", 50, spans))]


@case("One call to a batch endpoint with every id: the fix for an N+1 API call.", [], ["n_plus_one_api_call"])
def api_batch_endpoint() -> list[tuple[str, S]]:
    url = "http://inventory:8080/api/stock?skus=10234,10235,20411,30001,30007,41000"
    return [("shop", flask("/cart/summary", 30, [http("GET", url, (2, 12), stable=True)]))]


# consecutive_db_queries ------------------------------------------------------------------------


@case(
    "Three independent report SELECTs (80, 70, 60 ms) one after another: concurrently they would "
    "take 80 ms, saving 130 ms.",
    [{"type": "consecutive_db_queries", "count": 3, "endpoint": "GET dashboard/sales/"}],
    ["bottleneck", "chatty_transaction"],
)
def consecutive_db_dashboard() -> list[tuple[str, S]]:
    t = Clock(5.0)
    spans = [
        dbapi(
            "SELECT count(*), sum(total) FROM orders WHERE created_at >= %s",
            t.next(80),
            stable=True,
            table="orders",
        ),
        dbapi(
            "SELECT count(*) FROM customers WHERE joined_at >= %s", t.next(70), stable=True, table="customers"
        ),
        dbapi(
            "SELECT count(*), sum(amount) FROM refunds WHERE created_at >= %s",
            t.next(60),
            stable=True,
            table="refunds",
        ),
    ]
    return [("backoffice", django("dashboard/sales/", 300, spans))]


@case(
    "The account page reads profile, addresses, payment methods and recent orders in turn, 40 ms "
    "each (saving 120 ms).",
    [{"type": "consecutive_db_queries", "count": 4}],
    ["bottleneck"],
)
def consecutive_db_four() -> list[tuple[str, S]]:
    t = Clock(5.0)
    reads = [
        ("SELECT id, name, email FROM profiles WHERE user_id = %s", "profiles"),
        ("SELECT id, street, city FROM addresses WHERE user_id = %s", "addresses"),
        ("SELECT id, brand, last4 FROM payment_methods WHERE user_id = %s", "payment_methods"),
        ("SELECT id, total FROM orders WHERE user_id = %s ORDER BY created_at DESC LIMIT 5", "orders"),
    ]
    spans = [dbapi(q, t.next(40), stable=True, table=tbl, db="shop") for q, tbl in reads]
    return [("shop", flask("/account", 400, spans, stable=True))]


@case(
    "Three distinct SELECTs run concurrently (asyncio.gather), 60 ms each, overlapping: already "
    "parallel, nothing to save.",
    [],
    ["consecutive_db_queries", "chatty_transaction", "bottleneck"],
)
def parallel_queries() -> list[tuple[str, S]]:
    spans = [
        sqla("SELECT listings.id FROM listings WHERE listings.city = %(city_1)s", (2, 60), db="search"),
        sqla("SELECT hosts.id FROM hosts WHERE hosts.rating >= %(rating_1)s", (2.5, 60), db="search"),
        sqla(
            "SELECT reviews.listing_id FROM reviews WHERE reviews.score >= %(score_1)s", (3, 60), db="search"
        ),
    ]
    return [("search", flask("/search", 80, spans))]


@case(
    "Three sequential distinct SELECTs of 30 ms in a 150 ms request: concurrency would save 60 ms, "
    "under the 100 ms minimum; no span or group reaches 30 % of the request.",
    [],
    ["consecutive_db_queries", "bottleneck", "chatty_transaction"],
)
def consecutive_db_small_saving() -> list[tuple[str, S]]:
    t = Clock(5.0)
    spans = [
        dbapi("SELECT id FROM warehouses WHERE region = %s", t.next(30), stable=True, table="warehouses"),
        dbapi("SELECT id FROM carriers WHERE active", t.next(30), stable=True, table="carriers"),
        dbapi("SELECT id FROM holidays WHERE day >= %s", t.next(30), stable=True, table="holidays"),
    ]
    return [("backoffice", django("shipping/options/", 150, spans))]


@case(
    "SELECT, UPDATE, SELECT (80 ms each): the write between the reads means they are not "
    "independent, so there is no run of reads to parallelize.",
    [],
    ["consecutive_db_queries", "bottleneck"],
)
def consecutive_db_broken_by_write() -> list[tuple[str, S]]:
    t = Clock(5.0)
    spans = [
        dbapi("SELECT id, balance FROM accounts WHERE id = %s", t.next(80), stable=True, table="accounts"),
        dbapi(
            "UPDATE ledger SET settled = true WHERE account_id = %s", t.next(80), stable=True, table="ledger"
        ),
        dbapi(
            "SELECT id, amount FROM statements WHERE account_id = %s",
            t.next(80),
            stable=True,
            table="statements",
        ),
    ]
    return [("backoffice", django("accounts/settle/", 400, spans, method="POST"))]


# consecutive_http_calls ------------------------------------------------------------------------


@case(
    "Checkout review calls pricing, shipping and tax one after another (70, 60, 50 ms): "
    "concurrently they would save 110 ms.",
    [{"type": "consecutive_http_calls", "count": 3, "endpoint": "GET /checkout/review"}],
    ["bottleneck", "n_plus_one_api_call"],
)
def consecutive_http_requests() -> list[tuple[str, S]]:
    t = Clock(5.0)
    spans = [
        http("GET", "http://pricing:8080/quote?cart=991", t.next(70)),
        http("GET", "http://shipping:8080/rates?zip=10115", t.next(60)),
        http("GET", "http://tax:8080/rates/DE", t.next(50)),
    ]
    return [("shop", flask("/checkout/review", 700, spans))]


@case(
    "A deep health check, httpx in the stable conventions: GET then HEAD (120, 110 ms), saving 110 ms.",
    [{"type": "consecutive_http_calls", "count": 2}],
    ["bottleneck"],
)
def consecutive_http_stable_head() -> list[tuple[str, S]]:
    t = Clock(5.0)
    spans = [
        http("GET", "http://db-proxy:9000/ready", t.next(120), lib="httpx", stable=True),
        http("HEAD", "http://assets:9000/static/logo.png", t.next(110), lib="httpx", stable=True),
    ]
    return [("gateway", flask("/health/deep", 800, spans, stable=True))]


@case(
    "Three GETs sent concurrently (60 ms each, overlapping): nothing to save.",
    [],
    ["consecutive_http_calls", "bottleneck"],
)
def parallel_http_calls() -> list[tuple[str, S]]:
    spans = [
        http("GET", "http://pricing:8080/quote?cart=5", (2, 60), lib="httpx"),
        http("GET", "http://shipping:8080/rates?zip=80331", (2.3, 60), lib="httpx"),
        http("GET", "http://tax:8080/rates/DE", (2.6, 60), lib="httpx"),
    ]
    return [("shop", flask("/checkout/review", 80, spans))]


@case(
    "Three sequential POSTs (payment, shipment, e-mail; 70 ms each): not safe to reorder or run "
    "concurrently, so not reported.",
    [],
    ["consecutive_http_calls", "bottleneck"],
)
def consecutive_http_unsafe() -> list[tuple[str, S]]:
    t = Clock(5.0)
    spans = [
        http("POST", "http://payments:8000/charges", t.next(70), status=201),
        http("POST", "http://shipping:8080/shipments", t.next(70), status=201),
        http("POST", "http://mailer:8025/send", t.next(70), status=202),
    ]
    return [("shop", flask("/checkout", 800, spans, method="POST"))]


@case(
    "Three sequential GETs of 30 ms in a 95 ms request: concurrency would save 60 ms only.",
    [],
    ["consecutive_http_calls", "bottleneck"],
)
def consecutive_http_small_saving() -> list[tuple[str, S]]:
    t = Clock(2.0)
    spans = [
        http("GET", "http://pricing:8080/quote?cart=5", t.next(30)),
        http("GET", "http://shipping:8080/rates?zip=80331", t.next(30)),
        http("GET", "http://tax:8080/rates/AT", t.next(30)),
    ]
    return [("shop", flask("/checkout/review", 95, spans))]


@case(
    "Six sequential calls of one URL template (40 ms each, 200 ms to save): an N+1 API call, "
    "which the consecutive-calls detector leaves to the N+1 detector.",
    [{"type": "n_plus_one_api_call", "count": 6}],
    ["consecutive_http_calls", "bottleneck"],
)
def api_nplus1_would_save() -> list[tuple[str, S]]:
    t = Clock(5.0)
    spans = [http("GET", f"http://rates:8080/fx/{pair}/latest", t.next(40)) for pair in (1, 2, 3, 4, 5, 6)]
    return [("shop", flask("/prices/converted", 900, spans))]


# slow_query ------------------------------------------------------------------------------------


@case(
    "A 150 ms ILIKE search in a 600 ms request (a quarter of it).",
    [{"type": "slow_query", "count": 1, "code": "shop/search.py:22:search", "endpoint": "GET /search"}],
    ["bottleneck", "slow_query_outlier"],
)
def slow_query_single() -> list[tuple[str, S]]:
    t = Clock(3.0)
    spans = [
        sqla(
            "SELECT products.id, products.name FROM products WHERE products.name ILIKE %(name_1)s "
            "ORDER BY products.name",
            t.next(150),
            code=Code("shop/search.py", 22, "search"),
        ),
        sqla("SELECT categories.id, categories.name FROM categories", t.next(3)),
        sqla("SELECT count(*) FROM products WHERE products.name ILIKE %(name_1)s", t.next(3)),
    ]
    return [("shop", flask("/search", 600, spans, target="/search?q=lamp"))]


@case(
    "A monthly report (1.5 s) with two different slow statements, a 250 ms SELECT and a 180 ms "
    "UPDATE: two slow queries, and the request is slow.",
    [
        {"type": "slow_query", "count": 1, "code": "reports/monthly.py:40:build_report"},
        {"type": "slow_query", "count": 1, "code": "reports/monthly.py:61:build_report"},
        {"type": "slow_request", "count": 1, "endpoint": "GET reports/monthly/"},
    ],
    ["bottleneck", "consecutive_db_queries"],
)
def slow_query_two_shapes_slow_request() -> list[tuple[str, S]]:
    t = Clock(20.0)
    spans = [
        dbapi(
            "SELECT customer_id, sum(total) FROM invoices WHERE issued_at >= %s AND issued_at < %s "
            "GROUP BY customer_id",
            t.next(250),
            stable=True,
            table="invoices",
            code=Code("reports/monthly.py", 40, "build_report"),
        ),
        dbapi(
            "UPDATE report_cache SET body = %s, built_at = now() WHERE id = %s",
            t.next(180),
            stable=True,
            table="report_cache",
            code=Code("reports/monthly.py", 61, "build_report"),
        ),
        dbapi("SELECT id, name FROM customers WHERE id = ANY(%s)", t.next(6), stable=True, table="customers"),
    ]
    return [("backoffice", django("reports/monthly/", 1500, spans))]


@case(
    "The same audit query slow twice (120 ms each) in a 900 ms request: one slow-query finding "
    "for the statement, with both executions.",
    [{"type": "slow_query", "count": 2}],
    ["bottleneck", "consecutive_db_queries", "repeated_identical_query"],
)
def slow_query_repeated_shape() -> list[tuple[str, S]]:
    t = Clock(10.0)
    audit = "SELECT id, action FROM audit_log WHERE actor_id = %s ORDER BY at DESC"
    spans = [
        dbapi(audit, t.next(120), stable=True, table="audit_log", params="(7,)"),
        dbapi(audit, t.next(120), stable=True, table="audit_log", params="(8,)"),
    ]
    return [("backoffice", django("audit/compare/", 900, spans))]


@case(
    "A query of exactly 100 ms, the threshold ('at or over').",
    [{"type": "slow_query", "count": 1}],
    ["bottleneck"],
)
def slow_query_exact_threshold() -> list[tuple[str, S]]:
    spans = [
        dbapi("SELECT id FROM sessions WHERE expires_at < now()", (10, 100), stable=True, table="sessions")
    ]
    return [("backoffice", django("sessions/expired/", 500, spans))]


@case(
    "A 150 ms query is half of a 300 ms request: it is the slow query, and the bottleneck finding "
    "that would name the same span is dropped.",
    [{"type": "slow_query", "count": 1}],
    ["bottleneck", "chatty_transaction"],
)
def slow_query_dominant_bottleneck_suppressed() -> list[tuple[str, S]]:
    stmt = "SELECT id, total FROM orders WHERE customer_id = %s ORDER BY created_at DESC"
    return [
        (
            "backoffice",
            django("customers/orders/", 300, [dbapi(stmt, (40, 150), stable=True, table="orders")]),
        )
    ]


@case(
    "A 99 ms query in a 400 ms request: just under the slow-query threshold.",
    [],
    ["slow_query", "bottleneck"],
)
def query_just_under_threshold() -> list[tuple[str, S]]:
    stmt = "SELECT id FROM sessions WHERE expires_at < now()"
    return [
        (
            "backoffice",
            django("sessions/expired/", 400, [dbapi(stmt, (10, 99), stable=True, table="sessions")]),
        )
    ]


# slow_query_outlier ----------------------------------------------------------------------------

PRODUCT_BY_ID = "SELECT products.id, products.name, products.price FROM products WHERE products.id = %(pk_1)s"


def _product_requests(durations: list[float], code: Code | None = None) -> list[tuple[str, S]]:
    """One GET /products/<id> request per duration, each running the product query once."""
    out = []
    for i, dur in enumerate(durations):
        request_ms = max(20.0, dur * 4 + 10)
        spans = [sqla(PRODUCT_BY_ID, (2, dur), code=code)]
        out.append(
            ("shop", flask("/products/<int:product_id>", request_ms, spans, target=f"/products/{i + 1}"))
        )
    return out


def _steady(n: int, low: float, high: float) -> list[float]:
    """n durations spread evenly over [low, high]: a stable statement's recent history."""
    return [round(low + (high - low) * ((i * 7) % n) / (n - 1), 3) for i in range(n)]


@case(
    "25 product lookups of 3-4 ms, then one of 40 ms: over 3 x the recent p95 and over 10 ms, "
    "but under the 100 ms slow-query threshold.",
    [{"type": "slow_query_outlier", "count": 1, "code": "shop/products.py:18:product_detail"}],
    ["slow_query"],
)
def outlier_after_history() -> list[tuple[str, S]]:
    return _product_requests([*_steady(25, 3.0, 4.0), 40.0], Code("shop/products.py", 18, "product_detail"))


@case(
    "Only 15 earlier executions before the 40 ms one: too little history (20) to judge.",
    [],
    ["slow_query_outlier"],
)
def outlier_too_few_samples() -> list[tuple[str, S]]:
    return _product_requests([*_steady(15, 3.0, 4.0), 40.0])


@case(
    "25 lookups of 1-1.5 ms, then one of 8 ms: 5 x the p95, but under the 10 ms minimum.",
    [],
    ["slow_query_outlier"],
)
def outlier_under_min_ms() -> list[tuple[str, S]]:
    return _product_requests([*_steady(25, 1.0, 1.5), 8.0])


@case(
    "25 lookups of 3-4 ms, then one of 150 ms: over the absolute threshold, so a slow query and "
    "not an outlier.",
    [{"type": "slow_query", "count": 1}],
    ["slow_query_outlier", "bottleneck"],
)
def outlier_over_absolute_threshold() -> list[tuple[str, S]]:
    return _product_requests([*_steady(25, 3.0, 4.0), 150.0])


@case(
    "25 lookups spread over 8-15 ms, then one of 30 ms: twice the p95, under the factor 3.",
    [],
    ["slow_query_outlier"],
)
def outlier_within_spread() -> list[tuple[str, S]]:
    return _product_requests([*_steady(25, 8.0, 15.0), 30.0])


# chatty_transaction ----------------------------------------------------------------------------

MODELS = [
    "users",
    "groups",
    "permissions",
    "orders",
    "order_lines",
    "products",
    "categories",
    "brands",
    "suppliers",
    "warehouses",
    "stock",
    "carriers",
    "shipments",
    "returns",
    "refunds",
    "invoices",
    "payments",
    "coupons",
    "campaigns",
    "newsletters",
    "subscribers",
    "tickets",
    "ticket_notes",
    "reviews",
    "questions",
    "answers",
    "wishlists",
    "carts",
    "cart_items",
    "addresses",
    "regions",
    "tax_rates",
    "currencies",
    "audit_log",
    "sessions",
]


@case(
    "An admin overview counts rows of 35 models, one distinct query each (1 ms): 35 queries, "
    "over the chatty threshold (30), though only a quarter of the 150 ms request.",
    [{"type": "chatty_transaction", "endpoint": "GET admin/overview/"}],
    ["n_plus_one_query", "consecutive_db_queries", "bottleneck", "mn_plus_one_query"],
)
def chatty_many_distinct_queries() -> list[tuple[str, S]]:
    t = Clock(5.0)
    spans = [dbapi(f"SELECT count(*) FROM {m}", t.next(1)) for m in MODELS]
    return [("backoffice", django("admin/overview/", 150, spans))]


@case(
    "Checkout (200 ms): 8 statements of 21 ms, reads and writes alternating, 84 % of the request "
    "in the database: chatty by share; no single statement or name reaches 30 %.",
    [{"type": "chatty_transaction", "endpoint": "POST /checkout"}],
    ["bottleneck", "consecutive_db_queries"],
)
def chatty_db_share() -> list[tuple[str, S]]:
    t = Clock(3.0, gap=0.4)
    statements = [
        ("SELECT id, user_id FROM carts WHERE id = %s", "carts"),
        ("UPDATE inventory SET reserved = reserved + %s WHERE sku = %s", "inventory"),
        ("SELECT id, city FROM addresses WHERE user_id = %s", "addresses"),
        ("INSERT INTO orders (user_id, total) VALUES (%s, %s)", "orders"),
        ("SELECT id, token FROM payment_methods WHERE user_id = %s", "payment_methods"),
        ("INSERT INTO order_lines (order_id, sku, qty) VALUES (%s, %s, %s)", "order_lines"),
        ("UPDATE carts SET status = %s WHERE id = %s", "carts_status"),
        ("INSERT INTO payments (order_id, amount) VALUES (%s, %s)", "payments"),
    ]
    spans = [dbapi(q, t.next(21), stable=True, table=tbl, db="shop") for q, tbl in statements]
    return [("shop", flask("/checkout", 200, spans, method="POST", stable=True))]


@case(
    "29 distinct count queries in a 60 ms request: one under the chatty threshold.",
    [],
    ["chatty_transaction"],
)
def chatty_below_count() -> list[tuple[str, S]]:
    t = Clock(3.0)
    spans = [dbapi(f"SELECT count(*) FROM {m}", t.next(1)) for m in MODELS[:29]]
    return [("backoffice", django("admin/overview/", 60, spans))]


@case(
    "An 80 ms request spending 90 % in the database: under the 100 ms minimum for the DB share.",
    [],
    ["chatty_transaction", "bottleneck", "consecutive_db_queries"],
)
def chatty_fast_request_high_share() -> list[tuple[str, S]]:
    t = Clock(2.0)
    spans = [
        dbapi("SELECT id, qty FROM stock WHERE sku = %s", t.next(24), stable=True, table="stock"),
        dbapi(
            "UPDATE stock SET qty = qty - %s WHERE sku = %s", t.next(24), stable=True, table="stock_update"
        ),
        dbapi("SELECT id FROM backorders WHERE sku = %s", t.next(24), stable=True, table="backorders"),
    ]
    return [("backoffice", django("stock/take/", 80, spans, method="POST"))]


@case(
    "A 300 ms request with 75 % in the database (reads and writes alternating, 45 ms each): "
    "under the 80 % share.",
    [],
    ["chatty_transaction", "bottleneck", "consecutive_db_queries"],
)
def chatty_share_below() -> list[tuple[str, S]]:
    t = Clock(3.0)
    statements = [
        ("SELECT id FROM carts WHERE id = %s", "carts"),
        ("UPDATE inventory SET reserved = reserved + %s WHERE sku = %s", "inventory"),
        ("SELECT id FROM addresses WHERE user_id = %s", "addresses"),
        ("INSERT INTO orders (user_id, total) VALUES (%s, %s)", "orders"),
        ("SELECT id FROM payment_methods WHERE user_id = %s", "payment_methods"),
    ]
    spans = [dbapi(q, t.next(45), stable=True, table=tbl, db="shop") for q, tbl in statements]
    return [("shop", flask("/checkout", 300, spans, method="POST", stable=True))]


# bottleneck ------------------------------------------------------------------------------------


@case(
    "The ranking service takes 220 ms of a 400 ms recommendations request: one call is 55 % of it.",
    [{"type": "bottleneck", "endpoint": "GET /recommendations"}],
    ["consecutive_http_calls"],
)
def bottleneck_http_call() -> list[tuple[str, S]]:
    t = Clock(3.0)
    spans = [
        sqla("SELECT views.product_id FROM views WHERE views.user_id = %(user_id_1)s", t.next(3)),
        http("POST", "http://ml-ranker:8500/v1/rank", t.next(220), stable=True),
        sqla("SELECT products.id, products.name FROM products WHERE products.id IN (1, 2, 3)", t.next(3)),
    ]
    return [("shop", flask("/recommendations", 400, spans))]


@case(
    "Rendering the annual report template (a manual internal span) is 300 ms of 450 ms.",
    [{"type": "bottleneck"}],
    ["slow_request"],
)
def bottleneck_internal_render() -> list[tuple[str, S]]:
    t = Clock(3.0)
    spans = [
        dbapi("SELECT id, total FROM invoices WHERE year = %s", t.next(5)),
        dbapi("SELECT id, name FROM customers WHERE id = ANY(%s)", t.next(4)),
        internal("render reports/annual.html", t.next(300)),
    ]
    return [("backoffice", django("reports/annual/", 450, spans))]


@case(
    "The leaderboard asks redis for 10 scores one by one (12 ms each): the group of ZSCORE spans "
    "is 40 % of the 300 ms request.  Cache work, so no N+1 query.",
    [{"type": "bottleneck"}],
    ["n_plus_one_query", "consecutive_db_queries"],
)
def bottleneck_redis_group() -> list[tuple[str, S]]:
    t = Clock(3.0)
    spans = [redis(f"ZSCORE leaderboard user:{uid}", t.next(12)) for uid in range(101, 111)]
    return [("shop", flask("/leaderboard", 300, spans))]


@case(
    "One 70 ms call is most of a 90 ms request, but the request is under the 100 ms minimum.",
    [],
    ["bottleneck"],
)
def bottleneck_short_request() -> list[tuple[str, S]]:
    return [("shop", flask("/recommendations", 90, [http("POST", "http://ml-ranker:8500/v1/rank", (5, 70))]))]


@case(
    "A 500 ms request whose work is spread out: two reads, a redis hash, a GET and a POST, 50 ms "
    "each; nothing reaches 30 %, and the rest is the view's own code.",
    [],
    ["bottleneck", "consecutive_db_queries", "consecutive_http_calls", "chatty_transaction"],
)
def bottleneck_spread_out() -> list[tuple[str, S]]:
    t = Clock(5.0)
    spans = [
        dbapi("SELECT id FROM orders WHERE user_id = %s", t.next(50), stable=True, table="orders"),
        dbapi("SELECT id FROM customers WHERE id = %s", t.next(50), stable=True, table="customers"),
        redis("HGETALL session:9f2c", t.next(50)),
        http("GET", "http://pricing:8080/quote?cart=12", t.next(50)),
        http("POST", "http://events:8080/track", t.next(50), status=202),
    ]
    return [("backoffice", django("orders/history/", 500, spans))]


# slow_request ----------------------------------------------------------------------------------


@case(
    "Rendering an invoice PDF in the view's own code: 1.2 s, three quick queries.",
    [
        {
            "type": "slow_request",
            "count": 1,
            "service": "shop",
            "endpoint": "GET /invoices/<int:invoice_id>/pdf",
        }
    ],
    ["bottleneck", "slow_query"],
)
def slow_request_app_code() -> list[tuple[str, S]]:
    t = Clock(3.0)
    spans = [
        sqla("SELECT invoices.id, invoices.total FROM invoices WHERE invoices.id = %(pk_1)s", t.next(4)),
        sqla(
            "SELECT invoice_lines.id FROM invoice_lines WHERE invoice_lines.invoice_id = %(invoice_id_1)s",
            t.next(4),
        ),
        sqla("SELECT customers.id FROM customers WHERE customers.id = %(pk_1)s", t.next(4)),
    ]
    return [("shop", flask("/invoices/<int:invoice_id>/pdf", 1200, spans, target="/invoices/3/pdf"))]


@case(
    "Two services: the gateway's search takes 1.3 s; its call to the search service 300 ms.  Only "
    "the gateway's request is slow.",
    [{"type": "slow_request", "count": 1, "service": "gateway", "endpoint": "GET /search"}],
    ["bottleneck", "chatty_transaction"],
)
def slow_request_cross_service() -> list[tuple[str, S]]:
    query = dbapi(
        "SELECT id, title FROM documents WHERE tsv @@ plainto_tsquery(%s) LIMIT 20",
        (30, 20),
        stable=True,
        table="documents",
        db="search",
    )
    callee = flask("/query", 290, [query], stable=True, start=11, service="search")
    call = http(
        "GET", "http://search:9200/query?q=lamp", (10, 300), lib="httpx", stable=True, children=[callee]
    )
    return [("gateway", flask("/search", 1300, [call], stable=True))]


@case("A 999 ms request: just under the slow-request threshold.", [], ["slow_request", "bottleneck"])
def request_just_under_1s() -> list[tuple[str, S]]:
    t = Clock(3.0)
    spans = [sqla("SELECT invoices.id FROM invoices WHERE invoices.id = %(pk_1)s", t.next(4))]
    return [("shop", flask("/invoices/<int:invoice_id>/pdf", 999, spans, target="/invoices/4/pdf"))]


# error -----------------------------------------------------------------------------------------


@case(
    "An unhandled ZeroDivisionError: the Flask server span is an error with the exception event.",
    [{"type": "error", "count": 1, "endpoint": "GET /cart/total"}],
)
def error_unhandled_exception() -> list[tuple[str, S]]:
    spans = [sqla("SELECT cart_items.price FROM cart_items WHERE cart_items.cart_id = %(cart_id_1)s", (1, 2))]
    exc = ("ZeroDivisionError", "division by zero")
    return [
        ("shop", flask("/cart/total", 15, spans, status=500, error=f"{exc[0]}: {exc[1]}", exceptions=[exc]))
    ]


@case(
    "A duplicate key on INSERT: the psycopg2 span records UniqueViolation and so does the Django "
    "server span it propagates to; one error, counted once.",
    [{"type": "error", "endpoint": "POST api/customers/"}],
)
def error_propagated_db() -> list[tuple[str, S]]:
    exc = (
        "psycopg2.errors.UniqueViolation",
        'duplicate key value violates unique constraint "customers_email_key"',
    )
    spans = [
        dbapi("SELECT id FROM customers WHERE email = %s", (2, 3)),
        dbapi("INSERT INTO customers (email, name) VALUES (%s, %s)", (6, 4), error=exc),
    ]
    return [
        (
            "backoffice",
            django(
                "api/customers/",
                25,
                spans,
                method="POST",
                status=500,
                error=f"{exc[0]}: {exc[1]}",
                exceptions=[exc],
            ),
        )
    ]


@case(
    "The shipping service answers 503 (no exception: requests marks the client span an error); "
    "the view falls back to a default estimate and answers 200.",
    [{"type": "error", "count": 1, "endpoint": "GET /shipping/estimate"}],
)
def error_http_503() -> list[tuple[str, S]]:
    spans = [http("GET", "http://shipping:8080/estimate?zip=10115", (2, 30), status=503)]
    return [("shop", flask("/shipping/estimate", 40, spans))]


@case(
    "Three retries of a weather call all time out (httpx.ReadTimeout, stable conventions): one "
    "error finding for the type, with the 3 spans.",
    [{"type": "error", "count": 3, "endpoint": "GET /weather"}],
    ["consecutive_http_calls", "n_plus_one_api_call"],
)
def error_retries_timeout() -> list[tuple[str, S]]:
    t = Clock(2.0)
    exc = ("httpx.ReadTimeout", "timed out")
    spans = [
        http(
            "GET",
            "http://weather-api/v2/current?city=Berlin",
            t.next(25),
            lib="httpx",
            stable=True,
            status=None,
            exception=exc,
        )
        for _ in range(3)
    ]
    return [("gateway", flask("/weather", 95, spans, stable=True))]


@case(
    "Two services: payments raises KeyError (500); the gateway's client span gets the 500 and "
    "the gateway shows a retry page (200).  Two errors of two types in two endpoints.",
    [
        {"type": "error", "service": "payments", "endpoint": "POST /charges"},
        {"type": "error", "service": "gateway", "endpoint": "GET /checkout/confirm"},
    ],
)
def error_cross_service() -> list[tuple[str, S]]:
    exc = ("KeyError", "'currency'")
    callee = flask(
        "/charges",
        20,
        [],
        method="POST",
        status=500,
        start=6,
        error=f"{exc[0]}: {exc[1]}",
        exceptions=[exc],
        service="payments",
    )
    call = http("POST", "http://payments:8000/charges", (5, 22), status=500, children=[callee])
    return [("gateway", flask("/checkout/confirm", 50, [call]))]


@case(
    "A product that does not exist: 404 with the server span's status unset (a client error is "
    "not a server error).",
    [],
    ["error"],
)
def not_found_404() -> list[tuple[str, S]]:
    spans = [sqla(PRODUCT_BY_ID, (1, 2))]
    return [("shop", flask("/products/<int:product_id>", 8, spans, status=404, target="/products/999"))]


# repeated_identical_query ----------------------------------------------------------------------


@case(
    "psycopg2 with capture_parameters: the coupon query runs 3 times with the same parameters "
    "(42,) in one request, between other queries.",
    [{"type": "repeated_identical_query", "count": 3, "code": "cart/pricing.py:27:best_coupon"}],
    ["n_plus_one_query"],
)
def repeated_identical_params() -> list[tuple[str, S]]:
    t = Clock(2.0)
    coupon = "SELECT id, discount FROM coupons WHERE user_id = %s AND active"
    code = Code("cart/pricing.py", 27, "best_coupon", stable=False)
    spans = []
    for other in (
        "SELECT id FROM carts WHERE user_id = %s",
        "SELECT sku, qty FROM cart_items WHERE cart_id = %s",
        "SELECT id FROM addresses WHERE user_id = %s",
    ):
        spans.append(dbapi(other, t.next(2), params="(42,)"))
        spans.append(dbapi(coupon, t.next(2), params="(42,)", code=code))
    return [("backoffice", django("api/cart/", 50, spans))]


@case(
    "Stable conventions, parameters as db.query.parameter.0: the plan of account 981 and the "
    "features of plan 'pro' each read 4 times in one request.",
    [{"type": "repeated_identical_query", "count": 4}, {"type": "repeated_identical_query", "count": 4}],
    ["n_plus_one_query"],
)
def repeated_identical_stable_params() -> list[tuple[str, S]]:
    t = Clock(2.0)
    plan = "SELECT plan, seats FROM subscriptions WHERE account_id = $1"
    spans = []
    for _ in range(4):
        spans.append(dbapi(plan, t.next(2), stable=True, table="subscriptions", stable_params=["981"]))
        spans.append(
            dbapi(
                "SELECT id FROM features WHERE plan = $1",
                t.next(1),
                stable=True,
                table="features",
                stable_params=["pro"],
            )
        )
    return [("backoffice", django("api/features/", 40, spans))]


@case(
    "pymysql, literals in the text: the currency setting read 3 times (no placeholders, so the "
    "text alone says the values are the same).",
    [{"type": "repeated_identical_query", "count": 3}],
)
def repeated_identical_literals() -> list[tuple[str, S]]:
    t = Clock(2.0)
    setting = "SELECT value FROM settings WHERE name = 'currency'"
    spans = []
    for post in (7, 8, 9):
        spans.append(dbapi(f"SELECT id, title, price FROM posts WHERE id = {post}", t.next(2), lib="pymysql"))
        spans.append(dbapi(setting, t.next(1), lib="pymysql"))
    return [("blog", flask("/posts/featured", 30, spans))]


@case(
    "The same placeholder statement 4 times with no recorded parameters: the values are unknown, "
    "so nothing is reported.",
    [],
    ["repeated_identical_query", "n_plus_one_query"],
)
def repeated_placeholders_no_params() -> list[tuple[str, S]]:
    t = Clock(2.0)
    spans = []
    for _ in range(4):
        spans.append(dbapi("SELECT id, discount FROM coupons WHERE user_id = %s AND active", t.next(2)))
        spans.append(dbapi("SELECT id FROM carts WHERE user_id = %s", t.next(2)))
    return [("backoffice", django("api/cart/", 40, spans))]


@case(
    "One statement 4 times with 4 different recorded parameters: no repeat of the same query.",
    [],
    ["repeated_identical_query"],
)
def repeated_different_params() -> list[tuple[str, S]]:
    t = Clock(2.0)
    spans = [
        dbapi("SELECT id, discount FROM coupons WHERE user_id = %s AND active", t.next(2), params=f"({uid},)")
        for uid in (1, 2, 3, 4)
    ]
    return [("backoffice", django("api/coupons/", 30, spans))]


@case(
    "A literal statement run twice: under the threshold (3).",
    [],
    ["repeated_identical_query"],
)
def repeated_below_threshold() -> list[tuple[str, S]]:
    t = Clock(2.0)
    setting = "SELECT value FROM settings WHERE name = 'currency'"
    spans = [dbapi(setting, t.next(1), lib="pymysql"), dbapi(setting, t.next(1), lib="pymysql")]
    return [("blog", flask("/posts/featured", 20, spans))]


# large_payload ---------------------------------------------------------------------------------


@case(
    "A CSV export answers with 2.4 MB (http.response.body.size on the server span).",
    [{"type": "large_payload", "count": 1, "endpoint": "GET /export/orders.csv"}],
)
def large_response_export() -> list[tuple[str, S]]:
    spans = [sqla("SELECT orders.id, orders.total FROM orders WHERE orders.created_at >= %(since)s", (3, 40))]
    return [("shop", flask("/export/orders.csv", 90, spans, stable=True, response_size=2_400_000))]


@case(
    "A sync job's requests call pulls the full ERP catalog: 1.5 MB in the older "
    "http.response_content_length, on the client span.",
    [{"type": "large_payload", "count": 1, "code": "sync/tasks.py:14:pull_catalog"}],
)
def large_client_response_old() -> list[tuple[str, S]]:
    call = http(
        "GET",
        "http://erp:8080/catalog/full",
        (3, 60),
        response_size=1_500_000,
        code=Code("sync/tasks.py", 14, "pull_catalog", stable=False),
    )
    return [("backoffice", django("sync/catalog/", 80, [call]))]


@case(
    "An upload of exactly 1,000,000 bytes (http.request.body.size): at the size, so reported.",
    [{"type": "large_payload", "count": 1, "endpoint": "POST /uploads"}],
)
def large_request_exact() -> list[tuple[str, S]]:
    return [
        ("shop", flask("/uploads", 60, [], method="POST", stable=True, request_size=1_000_000, status=201))
    ]


@case(
    "A response of 999,999 bytes: one byte under the size.",
    [],
    ["large_payload"],
)
def payload_just_under() -> list[tuple[str, S]]:
    return [("shop", flask("/export/orders.csv", 70, [], stable=True, response_size=999_999))]


# clean requests --------------------------------------------------------------------------------


@case(
    "A health check: one fast request, nothing under it.",
    [],
    ["slow_request", "bottleneck", "error", "large_payload"],
)
def fast_health_check() -> list[tuple[str, S]]:
    return [("shop", flask("/health", 2, [], response_size=15))]


@case(
    "Two services, every threshold far away: the gateway calls catalog, which runs 2 queries.",
    [],
    ["n_plus_one_query", "n_plus_one_api_call", "slow_request", "error", "chatty_transaction"],
)
def fast_cross_service_clean() -> list[tuple[str, S]]:
    t = Clock(5.0)
    queries = [
        sqla(
            "SELECT products.id, products.name FROM products WHERE products.id = %(pk_1)s",
            t.next(3),
            db="catalog",
        ),
        sqla(
            "SELECT stock.qty FROM stock WHERE stock.product_id = %(product_id_1)s", t.next(2), db="catalog"
        ),
    ]
    callee = flask(
        "/products/<int:product_id>",
        12,
        queries,
        stable=True,
        start=4,
        target="/products/42",
        service="catalog",
        response_size=2048,
    )
    call = http(
        "GET", "http://catalog:8000/products/42", (3, 14), stable=True, children=[callee], response_size=2048
    )
    return [
        (
            "gateway",
            flask("/products/<int:product_id>/page", 25, [call], stable=True, target="/products/42/page"),
        )
    ]


@case(
    "A Django detail view in the stable conventions: two queries and a cache read, 20 ms.",
    [],
    ["n_plus_one_query", "slow_query", "chatty_transaction", "repeated_identical_query", "bottleneck"],
)
def fast_django_stable_clean() -> list[tuple[str, S]]:
    t = Clock(2.0)
    spans = [
        redis("GET product:42:html", t.next(0.6)),
        dbapi("SELECT id, name FROM products WHERE id = %s", t.next(3), stable=True, table="products"),
        dbapi(
            "SELECT id, body FROM reviews WHERE product_id = %s LIMIT 10",
            t.next(4),
            stable=True,
            table="reviews",
        ),
    ]
    return [("backoffice", django("products/<int:pk>/", 20, spans, stable=True))]


# -- OTLP/JSON encoding -------------------------------------------------------------------------


def _value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # OTLP/JSON writes 64-bit integers as strings
    if isinstance(value, float):
        return {"doubleValue": value}
    return {"stringValue": str(value)}


def _attributes(attrs: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _value(v)} for k, v in attrs.items()]


def _hex(seed: str, nbytes: int) -> str:
    return hashlib.blake2b(seed.encode(), digest_size=nbytes).hexdigest()


def _ns(ms: float) -> int:
    return round(ms * 1_000_000)


def _exception_event(at_ns: int, etype: str, message: str) -> dict[str, Any]:
    """An exception event as the SDK's record_exception writes it."""
    attrs = {
        "exception.type": etype,
        "exception.message": message,
        "exception.stacktrace": f"Traceback (most recent call last):\n  ...\n{etype}: {message}",
        "exception.escaped": "False",
    }
    return {"timeUnixNano": str(at_ns), "name": "exception", "attributes": _attributes(attrs)}


def _emit(
    span: S,
    service: str,
    parent: str | None,
    ids: Iterator[str],
    trace_id: str,
    origin: int,
    grouped: dict[str, dict[str, list[dict[str, Any]]]],
) -> None:
    """Appends the span and its subtree to ``grouped`` (service -> scope -> spans)."""
    here = span.service or service
    span_id = next(ids)
    start = origin + _ns(span.start)
    end = start + _ns(span.dur)
    out: dict[str, Any] = {"traceId": trace_id, "spanId": span_id}
    if parent:
        out["parentSpanId"] = parent
    out |= {
        "name": span.name,
        "kind": span.kind,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(end),
        "attributes": _attributes(span.attrs),
    }
    if span.exceptions:
        out["events"] = [_exception_event(end, etype, message) for etype, message in span.exceptions]
    if span.error is None:
        out["status"] = {}
    else:
        out["status"] = {"code": 2, "message": span.error} if span.error else {"code": 2}
    grouped.setdefault(here, {}).setdefault(span.scope, []).append(out)
    for child in span.children:
        _emit(child, here, span_id, ids, trace_id, origin, grouped)


def encode(case: Case, index: int) -> dict[str, Any]:
    """The case as one ExportTraceServiceRequest: a ResourceSpans per service, a ScopeSpans per
    instrumentation.  Each case's traces start an hour after the previous case's."""
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for n, (service, root) in enumerate(case.traces):
        trace_id = _hex(f"{case.name}/{n}", 16)
        origin = BASE_NS + _ns(index * 3_600_000 + n * TRACE_SPACING_MS)
        ids = (_hex(f"{case.name}/{n}/{i}", 8) for i in itertools.count(1))
        _emit(root, service, None, ids, trace_id, origin, grouped)
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": _attributes(
                        {
                            "service.name": service,
                            "telemetry.sdk.language": "python",
                            "telemetry.sdk.name": "opentelemetry",
                            "telemetry.sdk.version": "1.45.1",
                        }
                    )
                },
                "scopeSpans": [
                    {"scope": {"name": scope, "version": SCOPE_VERSION}, "spans": spans}
                    for scope, spans in scopes.items()
                ],
            }
            for service, scopes in grouped.items()
        ]
    }


def to_json(value: Any, indent: str = "") -> str:
    """JSON where every object or array that fits on one line (an attribute, a scope, a status) is
    written on one, and the rest one member a line: a span reads as a short block."""
    flat = json.dumps(value)
    if len(indent) + len(flat) <= 100 or not isinstance(value, (dict, list)) or not value:
        return flat
    inner = indent + "  "
    if isinstance(value, dict):
        members = [f"{inner}{json.dumps(k)}: {to_json(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(members) + "\n" + indent + "}"
    items = [f"{inner}{to_json(v, inner)}" for v in value]
    return "[\n" + ",\n".join(items) + "\n" + indent + "]"


def labels_yaml(cases: list[Case]) -> str:
    """labels.yaml, written by hand-rolled YAML so every expected finding stays on one line."""
    lines = [
        "# The findings the default settings must produce for each file in this folder, and nothing",
        "# else: a finding not listed is a false positive, a listed one not found a false negative.",
        "# Each expected finding: type, and optionally count, code (path:line:function), service and",
        "# endpoint.  negative_for names the detectors the file was designed not to fire (it does",
        "# not change the scoring: every type absent from expect is a negative anyway).",
        "# Written by make_corpus.py from its cases: edit the case there and run it again.",
        "",
    ]
    for c in cases:
        lines.append(f"{c.name}:")
        lines.append("  description: >-")
        lines += [f"    {line}" for line in textwrap.wrap(c.description, 96)]
        if c.negative_for:
            lines.append(f"  negative_for: [{', '.join(c.negative_for)}]")
        if not c.expect:
            lines.append("  expect: []")
            continue
        lines.append("  expect:")
        for e in c.expect:
            fields = ", ".join(
                f"{k}: {json.dumps(v) if isinstance(v, str) and not v.isidentifier() else v}"
                for k, v in e.items()
            )
            lines.append(f"    - {{{fields}}}")
    return "\n".join(lines) + "\n"


def main() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    for old in HERE.glob("*.json"):
        old.unlink()
    for index, c in enumerate(CASES):
        body = to_json(encode(c, index))
        (HERE / f"{c.name}.json").write_text(body + "\n", encoding="utf-8")
    (HERE / "labels.yaml").write_text(labels_yaml(CASES), encoding="utf-8")
    print(f"wrote {len(CASES)} traces files and labels.yaml to {HERE}")


if __name__ == "__main__":
    main()
