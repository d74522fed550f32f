"""N+1, MN+1 and repeated identical queries, and the stack-fitted advice they give, through the real
SDK pipeline (spans with exact start and end times, findings read from the exported log records),
plus the collector's path (OTLP protobuf -> views -> Analyzer) where intake differs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import OTel
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span, SpanKind, Tracer, set_span_in_context
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session

from otel_apm import APMConfig
from otel_apm.analyze import Analyzer
from otel_apm.demo.app import Author, Book, add_authors
from otel_apm.detectors import Finding
from otel_apm.ingest.otlp import views_from_request
from otel_apm.model import Trace
from otel_apm.sql import MAX_STATEMENT_CHARS

F = "otel_apm.finding."
T0 = 1_700_000_000_000_000_000
MS = 1_000_000

AUTHORS = "SELECT authors.id, authors.name FROM authors"
BOOKS = "SELECT books.id, books.title FROM books WHERE books.author_id = %(param_1)s"
REVIEWS = "SELECT reviews.id, reviews.body FROM reviews WHERE reviews.author_id = %(param_1)s"
BOOK_BY_ID = "SELECT books.id, books.title FROM books WHERE books.id = %(pk_1)s"
SETTINGS = "SELECT settings.value FROM settings WHERE settings.key = 'currency'"


class Request:
    """One server transaction built span by span, one after the other, with exact times."""

    def __init__(self, tracer: Tracer, route: str = "/authors") -> None:
        self.tracer = tracer
        attrs = {"http.request.method": "GET", "http.route": route}
        self.root = tracer.start_span(f"GET {route}", kind=SpanKind.SERVER, attributes=attrs, start_time=T0)
        self.context = set_span_in_context(self.root)
        self.now = T0 + MS

    def query(
        self,
        statement: str | None,
        ms: float = 1.0,
        *,
        parent: Span | None = None,
        tracer: Tracer | None = None,
        start: int | None = None,
        **attrs: Any,
    ) -> Span:
        """A PostgreSQL client span of ``ms`` milliseconds, starting 0.1 ms after the last one."""
        attributes: dict[str, Any] = {"db.system": "postgresql", **attrs}
        if statement is not None:
            attributes["db.statement"] = statement
        return self.span("SELECT", ms, parent=parent, tracer=tracer, start=start, **attributes)

    def span(
        self,
        name: str,
        ms: float = 1.0,
        *,
        parent: Span | None = None,
        tracer: Tracer | None = None,
        start: int | None = None,
        kind: SpanKind = SpanKind.CLIENT,
        **attrs: Any,
    ) -> Span:
        begin = self.now + MS // 10 if start is None else start
        context = self.context if parent is None else set_span_in_context(parent)
        span = (tracer or self.tracer).start_span(
            name, context=context, kind=kind, attributes=attrs, start_time=begin
        )
        end = begin + int(ms * MS)
        span.end(end_time=end)
        self.now = max(self.now, end)
        return span

    def queries(self, statement: str, n: int, ms: float = 1.0, **attrs: Any) -> list[Span]:
        return [self.query(statement, ms, **attrs) for _ in range(n)]

    def end(self) -> None:
        self.root.end(end_time=self.now + MS)


def findings(otel: OTel, finding_type: str) -> list[dict[str, Any]]:
    return [
        {k: list(v) if isinstance(v, tuple | list) else v for k, v in (r.log_record.attributes or {}).items()}
        for r in otel.events(finding_type)
    ]


def hexes(spans: list[Span]) -> list[str]:
    return [format(s.get_span_context().span_id, "016x") for s in spans]


# -- n_plus_one_query ----------------------------------------------------------------------------


def test_a_run_of_one_statement_is_an_n_plus_one_with_its_source_and_numbers(otel: OTel) -> None:
    req = Request(otel.tracer)
    source = req.query(AUTHORS, 2.0)
    loop = [req.query(BOOKS, ms) for ms in (1.0, 2.0, 3.0, 1.0, 2.0, 3.0)]
    req.end()
    (found,) = findings(otel, "n_plus_one_query")
    assert found[F + "count"] == 6
    assert found[F + "span_ids"] == hexes(loop)
    assert found[F + "total_duration_ms"] == 12.0  # disjoint: the sum
    assert found[F + "impact_ms"] == 10.0  # 12 ms less one average query of 2 ms
    assert found[F + "evidence.source.statement"] == "select authors.id, authors.name from authors"
    assert found[F + "evidence.source.span_id"] == hexes([source])[0]
    assert found["db.query.text"] == "select books.id, books.title from books where books.author_id = ?"
    assert "runs" not in str(found.keys())
    rec = found[F + "recommendation"]
    assert "6 queries on books" in rec and "12.0 ms" in rec and "save about 10.0 ms" in rec
    assert otel.events("mn_plus_one_query") == [] and otel.events("repeated_identical_query") == []


def test_overlapping_queries_count_their_union(otel: OTel) -> None:
    req = Request(otel.tracer)
    base = req.now + MS
    for i in range(6):
        req.query(BOOKS, 2.0, start=base + i * MS)  # each overlaps the next by 1 ms
    req.end()
    (found,) = findings(otel, "n_plus_one_query")
    assert found[F + "total_duration_ms"] == 7.0
    assert found[F + "impact_ms"] == 5.0  # 7 ms less the 2 ms average


def test_non_db_siblings_do_not_break_a_run(otel: OTel) -> None:
    req = Request(otel.tracer)
    checkout: dict[str, Any] = {"db.system": "postgresql"}  # a pool checkout: db.connection
    cache: dict[str, Any] = {"db.system": "redis", "db.statement": "GET author:?"}
    for _ in range(6):
        req.span("connect", **checkout)
        req.span("GET", **cache)
        req.span("render", kind=SpanKind.INTERNAL)
        req.query(BOOKS)
    req.end()
    (found,) = findings(otel, "n_plus_one_query")
    assert found[F + "count"] == 6


def test_another_statement_breaks_a_run(otel: OTel) -> None:
    req = Request(otel.tracer)
    req.queries(BOOKS, 3)
    req.query(AUTHORS)
    req.queries(BOOKS, 3)
    req.end()
    assert otel.events("n_plus_one_query") == []


def test_two_runs_of_one_statement_under_one_parent_are_one_finding(otel: OTel) -> None:
    req = Request(otel.tracer)
    first = req.queries(BOOKS, 5)
    req.query(AUTHORS)
    second = req.queries(BOOKS, 6)
    req.end()
    (found,) = findings(otel, "n_plus_one_query")
    assert found[F + "count"] == 11
    assert found[F + "span_ids"] == hexes(first + second)
    assert found[F + "evidence.runs"] == 2
    assert found[F + "impact_ms"] == 9.0  # each run keeps one query: 4 + 5 saved


def test_runs_under_different_parents_are_not_merged(otel: OTel) -> None:
    req = Request(otel.tracer)
    a = req.span("load a", kind=SpanKind.INTERNAL)
    b = req.span("load b", kind=SpanKind.INTERNAL)
    for _ in range(3):
        req.query(BOOKS, parent=a)
        req.query(BOOKS, parent=b)
    req.end()
    assert otel.events("n_plus_one_query") == []


def test_cached_queries_neither_count_nor_break_a_run(otel: OTel) -> None:
    cached: dict[str, Any] = {"cache.hit": True}
    req = Request(otel.tracer)
    req.queries(BOOKS, 4)
    req.query(BOOKS, **cached)
    req.end()
    assert otel.events("n_plus_one_query") == []  # four round trips, one cached

    req = Request(otel.tracer, route="/other")
    loop = req.queries(BOOKS, 3)
    req.query(AUTHORS, **cached)
    loop += req.queries(BOOKS, 2)
    req.end()
    (found,) = findings(otel, "n_plus_one_query")
    assert found[F + "span_ids"] == hexes(loop)


def test_truncated_statements_neither_count_nor_break_a_run(otel: OTel) -> None:
    huge = "SELECT * FROM books WHERE books.id IN (" + ", ".join(["%s"] * MAX_STATEMENT_CHARS) + ")"
    req = Request(otel.tracer)
    loop = req.queries(BOOKS, 3)
    req.query(huge)
    loop += req.queries(BOOKS, 2)
    req.end()
    (found,) = findings(otel, "n_plus_one_query")
    assert found[F + "span_ids"] == hexes(loop)

    req = Request(otel.tracer, route="/huge")
    req.queries(huge.replace("books", "authors"), 6)
    req.end()
    assert len(otel.events("n_plus_one_query")) == 1  # still only the first


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT books.id FROM books ORDER BY books.id LIMIT %(limit)s OFFSET %(offset)s",
        "SELECT books.id FROM books ORDER BY books.id LIMIT %s, %s",
        "SELECT books.id FROM books WHERE books.id > %(after)s ORDER BY books.id LIMIT %(n)s",
        "SELECT books.id FROM books WHERE %(before)s >= books.id ORDER BY books.id DESC LIMIT 50",
        "SELECT books.id FROM books WHERE books.id BETWEEN %s AND %s ORDER BY books.id LIMIT 100",
        "SELECT books.id FROM books WHERE books.author_id IN (%(a_1)s, %(a_2)s, %(a_3)s)",
    ],
)
def test_pagination_and_in_list_batches_are_never_an_n_plus_one(otel: OTel, statement: str) -> None:
    req = Request(otel.tracer)
    req.queries(statement, 8)
    req.end()
    assert otel.events("n_plus_one_query") == []


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT books.id FROM books WHERE books.author_id = %s ORDER BY books.id LIMIT 10",  # no range
        "SELECT books.id FROM books WHERE books.price > %s AND books.author_id = %s",  # no LIMIT
        "SELECT books.id FROM books WHERE books.id <> %s ORDER BY books.id LIMIT 10",  # <> is no range
    ],
)
def test_what_only_looks_like_pagination_is_an_n_plus_one(otel: OTel, statement: str) -> None:
    req = Request(otel.tracer)
    req.queries(statement, 6)
    req.end()
    assert len(otel.events("n_plus_one_query")) == 1


def test_the_minimum_duration_applies_to_the_union(make_otel: Callable[..., OTel]) -> None:
    strict = make_otel(n_plus_one_min_duration_ms=6.5)
    req = Request(strict.tracer)
    req.queries(BOOKS, 6)  # 6 ms of union
    req.end()
    assert strict.events("n_plus_one_query") == []
    loose = make_otel(n_plus_one_min_duration_ms=6.0)
    req = Request(loose.tracer)
    req.queries(BOOKS, 6)
    req.end()
    assert len(loose.events("n_plus_one_query")) == 1
    assert APMConfig.from_env({"APM_N_PLUS_ONE_MIN_DURATION_MS": "25"}).n_plus_one_min_duration_ms == 25.0


def test_a_loop_of_two_statements_is_one_mn_plus_one_and_no_n_plus_one(
    make_otel: Callable[..., OTel],
) -> None:
    otel = make_otel()
    req = Request(otel.tracer)
    req.query(AUTHORS)
    for _ in range(5):
        req.queries(BOOKS, 5)  # an N+1 of books inside each turn of the outer loop...
        req.query(REVIEWS)  # ...whose body is 6 statements
    req.end()
    assert otel.events("n_plus_one_query") == []
    (found,) = findings(otel, "mn_plus_one_query")
    assert found[F + "evidence.period"] == 6 and found[F + "evidence.repetitions"] == 5

    alone = make_otel(disabled_detectors=("mn_plus_one_query",))
    req = Request(alone.tracer)
    req.query(AUTHORS)
    for _ in range(5):
        req.queries(BOOKS, 5)
        req.query(REVIEWS)
    req.end()
    (found,) = findings(alone, "n_plus_one_query")
    assert found[F + "count"] == 25 and found[F + "evidence.runs"] == 5


def test_a_run_of_identical_queries_is_a_repeated_query_not_an_n_plus_one(
    make_otel: Callable[..., OTel],
) -> None:
    otel = make_otel()
    req = Request(otel.tracer)
    req.queries(SETTINGS, 6)
    params: dict[str, Any] = {"db.statement.parameters": "(7,)"}
    req.queries(BOOKS, 6, **params)
    req.end()
    assert otel.events("n_plus_one_query") == []
    assert len(otel.events("repeated_identical_query")) == 2

    alone = make_otel(disabled_detectors=("repeated_identical_query",))
    req = Request(alone.tracer)
    req.queries(SETTINGS, 6)
    req.end()
    assert len(alone.events("n_plus_one_query")) == 1


def test_a_run_with_other_values_stays_an_n_plus_one(otel: OTel) -> None:
    req = Request(otel.tracer)
    for i in range(6):
        params: dict[str, Any] = {"db.statement.parameters": f"({i},)"}
        req.query(BOOKS, **params)
    req.end()
    assert len(otel.events("n_plus_one_query")) == 1
    assert otel.events("repeated_identical_query") == []


def test_a_run_that_repeats_some_values_is_both_problems(otel: OTel) -> None:
    req = Request(otel.tracer)
    for i in range(6):
        params: dict[str, Any] = {"db.statement.parameters": f"({i % 2},)"}  # 0 1 0 1 0 1
        req.query(BOOKS, **params)
    req.end()
    assert len(otel.events("n_plus_one_query")) == 1  # one query per row: eager-load them
    (repeated,) = findings(otel, "repeated_identical_query")  # and each row's twice: reuse it
    assert repeated[F + "evidence.value_sets"] == 2


# -- mn_plus_one_query ---------------------------------------------------------------------------


def loop_of(
    otel: OTel, body: list[str], reps: int, *, route: str = "/authors", prefix: tuple[str, ...] = ()
) -> list[Span]:
    req = Request(otel.tracer, route=route)
    req.query(AUTHORS)
    for statement in prefix:
        req.query(statement)
    spans = [req.query(statement) for _ in range(reps) for statement in body]
    req.end()
    return spans


def test_a_repeated_sequence_is_an_mn_plus_one_with_its_period_and_numbers(otel: OTel) -> None:
    spans = loop_of(otel, [BOOKS, REVIEWS], 5)
    (found,) = findings(otel, "mn_plus_one_query")
    assert found[F + "count"] == 10
    assert found[F + "span_ids"] == hexes(spans)
    assert found[F + "evidence.repetitions"] == 5
    assert found[F + "evidence.period"] == 2
    assert found[F + "evidence.period.statements"] == [
        "select books.id, books.title from books where books.author_id = ?",
        "select reviews.id, reviews.body from reviews where reviews.author_id = ?",
    ]
    assert found[F + "evidence.db.tables"] == ["books", "reviews"]
    assert found[F + "evidence.source.statement"] == "select authors.id, authors.name from authors"
    # Ten 1 ms queries 0.1 ms apart: 10.9 ms of wall time... the union counts only the queries.
    assert found[F + "total_duration_ms"] == 10.0
    assert found[F + "impact_ms"] == 8.0  # less one period of 2 ms
    rec = found[F + "recommendation"]
    assert "ran 5 times in a row" in rec and "10 queries in 10.0 ms" in rec and "save about 8.0 ms" in rec
    assert otel.events("n_plus_one_query") == []


def test_fewer_repetitions_than_the_threshold_are_no_mn_plus_one(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel()
    loop_of(otel, [BOOKS, REVIEWS], 4)
    assert otel.events("mn_plus_one_query") == []
    four = make_otel(mn_plus_one_threshold=4)
    loop_of(four, [BOOKS, REVIEWS], 4)
    (found,) = findings(four, "mn_plus_one_query")
    assert found[F + "evidence.threshold"] == 4
    assert APMConfig.from_env({"APM_MN_PLUS_ONE_THRESHOLD": "7"}).mn_plus_one_threshold == 7


def test_the_shortest_period_is_reported(otel: OTel) -> None:
    loop_of(otel, [BOOKS, REVIEWS], 10)  # also (A B A B) x 5
    (found,) = findings(otel, "mn_plus_one_query")
    assert (found[F + "evidence.period"], found[F + "evidence.repetitions"]) == (2, 10)


def test_periods_of_three_to_eight_and_not_nine(otel: OTel) -> None:
    tables = [f"t{i}" for i in range(9)]
    body = [f"SELECT {t}.v FROM {t} WHERE {t}.author_id = %s" for t in tables]
    loop_of(otel, body[:3], 5, route="/three")
    loop_of(otel, body[:8], 5, route="/eight")
    loop_of(otel, body, 5, route="/nine")
    assert sorted(f[F + "evidence.period"] for f in findings(otel, "mn_plus_one_query")) == [3, 8]


def test_one_statement_repeated_is_no_mn_plus_one(otel: OTel) -> None:
    loop_of(otel, [BOOKS], 12)
    assert otel.events("mn_plus_one_query") == []
    assert len(otel.events("n_plus_one_query")) == 1


def test_where_the_loop_is_entered_does_not_change_the_fingerprint(otel: OTel) -> None:
    loop_of(otel, [BOOKS, REVIEWS], 5)
    loop_of(otel, [BOOKS, REVIEWS], 5, prefix=(REVIEWS,))  # seen as (REVIEWS, BOOKS) x 5
    first, second = findings(otel, "mn_plus_one_query")
    assert first[F + "evidence.period.statements"] != second[F + "evidence.period.statements"]
    assert first[F + "fingerprint"] == second[F + "fingerprint"]


def test_a_sequence_spread_over_parents_is_no_mn_plus_one(otel: OTel) -> None:
    req = Request(otel.tracer)
    a = req.span("load a", kind=SpanKind.INTERNAL)
    b = req.span("load b", kind=SpanKind.INTERNAL)
    for _ in range(5):
        req.query(BOOKS, parent=a)
        req.query(REVIEWS, parent=b)
    req.end()
    assert otel.events("mn_plus_one_query") == []


# -- repeated_identical_query --------------------------------------------------------------------


def test_the_same_literal_statement_anywhere_in_a_request_is_a_repeated_query(otel: OTel) -> None:
    req = Request(otel.tracer)
    a = req.span("header", kind=SpanKind.INTERNAL)
    b = req.span("footer", kind=SpanKind.INTERNAL)
    spans = [req.query(SETTINGS, 2.0, parent=a), req.query(AUTHORS), req.query(SETTINGS, 4.0, parent=b)]
    spans.append(req.query(SETTINGS, 3.0))
    req.end()
    (found,) = findings(otel, "repeated_identical_query")
    repeats = [spans[0], spans[2], spans[3]]
    assert found[F + "span_ids"] == hexes(repeats)
    assert found[F + "count"] == 3
    assert found[F + "total_duration_ms"] == 9.0
    assert found[F + "impact_ms"] == 6.0  # 9 ms less one average run of 3 ms
    assert found[F + "evidence.values"] == "literals in the text"
    assert found["db.query.text"] == "select settings.value from settings where settings.key = ?"
    assert "currency" not in repr(found)  # the literal never leaves
    rec = found[F + "recommendation"]
    assert "ran 3 times" in rec and "9.0 ms" in rec and "save about 6.0 ms" in rec


def test_fewer_repeats_than_the_threshold_are_no_finding(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel()
    req = Request(otel.tracer)
    req.queries(SETTINGS, 2)
    req.end()
    assert otel.events("repeated_identical_query") == []
    two = make_otel(repeated_query_threshold=2)
    req = Request(two.tracer)
    req.queries(SETTINGS, 2)
    req.end()
    assert len(two.events("repeated_identical_query")) == 1


def test_placeholders_without_recorded_parameters_are_unknown_values(otel: OTel) -> None:
    req = Request(otel.tracer)
    req.queries(BOOK_BY_ID, 3)
    req.end()
    assert otel.events("repeated_identical_query") == []


def test_recorded_parameters_decide_what_is_identical(otel: OTel) -> None:
    req = Request(otel.tracer)
    params: dict[str, Any] = {"db.statement.parameters": "{'pk_1': 7}"}
    req.queries(BOOK_BY_ID, 3, **params)
    req.end()
    (found,) = findings(otel, "repeated_identical_query")
    assert found[F + "evidence.values"] == "recorded parameters"
    assert "{'pk_1': 7}" not in repr(found)

    req = Request(otel.tracer, route="/other")
    for pk in (1, 2, 3):
        params = {"db.statement.parameters": f"{{'pk_1': {pk}}}"}
        req.query(BOOK_BY_ID, **params)
    req.end()
    assert len(otel.events("repeated_identical_query")) == 1  # still only the first


def test_several_value_sets_of_one_statement_are_one_finding(otel: OTel) -> None:
    req = Request(otel.tracer)
    one: dict[str, Any] = {"db.statement.parameters": "(1,)"}
    two: dict[str, Any] = {"db.statement.parameters": "(2,)"}
    three: dict[str, Any] = {"db.statement.parameters": "(3,)"}
    for _ in range(3):
        req.query(BOOK_BY_ID, 1.0, **one)
        req.query(BOOK_BY_ID, 2.0, **two)
    req.query(BOOK_BY_ID, 2.0, **three)  # once: not a repeat
    req.end()
    (found,) = findings(otel, "repeated_identical_query")
    assert found[F + "count"] == 6
    assert found[F + "evidence.value_sets"] == 2
    assert found[F + "impact_ms"] == 6.0  # (3 - 1) + (6 - 2)
    assert otel.events("mn_plus_one_query") == []  # 3 repetitions of the pair: under 5


def test_cached_runs_are_not_repeats(otel: OTel) -> None:
    req = Request(otel.tracer)
    req.queries(SETTINGS, 2)
    req.queries(SETTINGS, 3, **{"cache.hit": True})
    req.end()
    assert otel.events("repeated_identical_query") == []


def otlp_trace(body: Callable[[Request], None]) -> Trace:
    """``body``'s spans, encoded by the real OTLP encoder and read as the collector reads them."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    req = Request(provider.get_tracer("tests"))
    body(req)
    req.end()
    provider.shutdown()
    wire = ExportTraceServiceRequest()
    wire.ParseFromString(encode_spans(exporter.get_finished_spans()).SerializeToString())
    views = views_from_request(wire)
    root = next(v for v in views if not v.parent_id)
    return Trace(root.trace_id, views, root)


def of_type(found: list[Finding], finding_type: str) -> list[Finding]:
    return [f for f in found if f.type == finding_type]


def test_the_collector_compares_stable_parameter_attributes() -> None:
    def same(req: Request) -> None:
        req.queries(
            "SELECT users.name FROM users WHERE users.id = $1", 3, **{"db.query.parameter.0": 9876543}
        )

    def other(req: Request) -> None:
        for i in range(3):
            params: dict[str, Any] = {"db.query.parameter.0": i}
            req.query("SELECT users.name FROM users WHERE users.id = $1", **params)

    analyzer = Analyzer(APMConfig())
    (found,) = of_type(analyzer.analyze(otlp_trace(same)), "repeated_identical_query")
    assert found.count == 3 and found.evidence["values"] == "recorded parameters"
    assert "9876543" not in repr(found)
    assert of_type(analyzer.analyze(otlp_trace(other)), "repeated_identical_query") == []


def test_the_collector_finds_the_same_n_plus_one_and_mn_plus_one() -> None:
    def body(req: Request) -> None:
        req.query(AUTHORS)
        req.queries(BOOKS, 6)
        for _ in range(5):
            req.query(BOOKS.replace("books", "shelves"))
            req.query(REVIEWS)

    found = Analyzer(APMConfig()).analyze(otlp_trace(body))
    assert sorted(f.type for f in found) == ["mn_plus_one_query", "n_plus_one_query"]
    (n_plus_one,) = of_type(found, "n_plus_one_query")
    assert n_plus_one.count == 6 and n_plus_one.endpoint == "GET /authors"


# -- advice that fits the stack ------------------------------------------------------------------


@pytest.fixture
def library(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'library.db'}")
    add_authors(engine, 6, 2)
    yield engine
    engine.dispose()


def test_sqlalchemy_one_to_many_names_selectinload_of_the_collection(
    otel: OTel, library: Engine, instrument_sqlalchemy: Callable[..., None]
) -> None:
    instrument_sqlalchemy([library], otel.tracer_provider)
    with otel.tracer.start_as_current_span("GET /authors", kind=SpanKind.SERVER), Session(library) as session:
        for author in session.scalars(select(Author).order_by(Author.id)):
            assert len(author.books) == 2
    (found,) = findings(otel, "n_plus_one_query")
    rec = found[F + "recommendation"]
    assert "`.options(selectinload(Author.books))`" in rec
    assert "likely relationship" in rec and "6 queries on books" in rec


def test_sqlalchemy_many_to_one_names_joinedload_of_the_parent(
    otel: OTel, library: Engine, instrument_sqlalchemy: Callable[..., None]
) -> None:
    instrument_sqlalchemy([library], otel.tracer_provider)
    with otel.tracer.start_as_current_span("GET /books", kind=SpanKind.SERVER), Session(library) as session:
        for book in session.scalars(select(Book).order_by(Book.id)):
            assert book.author.name
    (found,) = findings(otel, "n_plus_one_query")
    assert found[F + "count"] == 6  # one per author: the identity map answers the second book
    assert "`.options(joinedload(Book.author))`" in found[F + "recommendation"]


def test_sqlalchemy_mn_plus_one_names_every_relationship(otel: OTel) -> None:
    orm = otel.tracer_provider.get_tracer("opentelemetry.instrumentation.sqlalchemy")
    req = Request(otel.tracer)
    req.query(AUTHORS, tracer=orm)
    for _ in range(5):
        req.query(BOOKS, tracer=orm)
        req.query(REVIEWS, tracer=orm)
    req.end()
    (found,) = findings(otel, "mn_plus_one_query")
    assert (
        "`.options(selectinload(Author.books), selectinload(Author.reviews))`" in found[F + "recommendation"]
    )


DJANGO_AUTHORS = 'SELECT "shop_author"."id", "shop_author"."name" FROM "shop_author"'
DJANGO_BOOKS = 'SELECT "shop_book"."id" FROM "shop_book" WHERE "shop_book"."author_id" = %s'
DJANGO_BOOKS_ALL = 'SELECT "shop_book"."id", "shop_book"."author_id" FROM "shop_book"'
DJANGO_AUTHOR = 'SELECT "shop_author"."id" FROM "shop_author" WHERE "shop_author"."id" = %s LIMIT 21'


@pytest.mark.parametrize(
    ("source", "repeated", "advice"),
    [
        (DJANGO_AUTHORS, DJANGO_BOOKS, '`.prefetch_related("book_set")`'),
        (DJANGO_BOOKS_ALL, DJANGO_AUTHOR, '`.select_related("author")`'),
    ],
)
def test_django_names_select_related_or_prefetch_related(
    otel: OTel, source: str, repeated: str, advice: str
) -> None:
    req = Request(otel.tracer_provider.get_tracer("opentelemetry.instrumentation.django"))
    req.query(source)
    req.queries(repeated, 6)
    req.end()
    (found,) = findings(otel, "n_plus_one_query")
    assert advice in found[F + "recommendation"]
    assert "likely field" in found[F + "recommendation"]


@pytest.mark.parametrize(
    ("source", "repeated", "advice"),
    [
        (AUTHORS, BOOKS, "`SELECT ... FROM books WHERE books.author_id IN (...)` with every authors id"),
        (
            "SELECT books.id, books.author_id FROM books",
            "SELECT authors.name FROM authors WHERE authors.id = %s",
            "`JOIN authors ON authors.id = books.author_id`",
        ),
        (
            AUTHORS,
            "SELECT tags.name FROM tags WHERE tags.label = %s",
            "one `WHERE ... IN (...)` over the ids",
        ),
    ],
)
def test_raw_sql_names_the_in_list_or_join(otel: OTel, source: str, repeated: str, advice: str) -> None:
    req = Request(otel.tracer)
    req.query(source)
    req.queries(repeated, 6)
    req.end()
    (found,) = findings(otel, "n_plus_one_query")
    assert advice in found[F + "recommendation"]


def test_without_a_relationship_to_name_the_advice_stays_general(otel: OTel) -> None:
    orm = otel.tracer_provider.get_tracer("opentelemetry.instrumentation.sqlalchemy")
    req = Request(otel.tracer)
    req.queries("SELECT tags.name FROM tags WHERE tags.label = %s", 6, tracer=orm)  # no source at all
    req.end()
    (found,) = findings(otel, "n_plus_one_query")
    assert "selectinload(Model.collection)" in found[F + "recommendation"]
    assert "likely" not in found[F + "recommendation"]


def test_repeated_primary_key_lookups_in_sqlalchemy_point_at_session_get(otel: OTel) -> None:
    orm = otel.tracer_provider.get_tracer("opentelemetry.instrumentation.sqlalchemy")
    req = Request(otel.tracer)
    params: dict[str, Any] = {"db.statement.parameters": "(5,)"}
    req.queries(BOOK_BY_ID, 3, tracer=orm, **params)
    req.end()
    (found,) = findings(otel, "repeated_identical_query")
    assert "`session.get(Book, id)`" in found[F + "recommendation"]


def test_repeated_queries_in_django_are_told_to_keep_the_evaluated_queryset(otel: OTel) -> None:
    req = Request(otel.tracer_provider.get_tracer("opentelemetry.instrumentation.django"))
    req.queries(SETTINGS, 3)
    req.end()
    (found,) = findings(otel, "repeated_identical_query")
    assert "queryset runs again each time" in found[F + "recommendation"]
