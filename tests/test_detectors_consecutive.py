"""consecutive_db_queries and consecutive_http_calls, through the real SDK pipeline.

Every span gets explicit start and end times, so durations (and what overlaps what) are exact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from conftest import OTel
from opentelemetry import trace
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.trace import SpanKind

T0 = 1_700_000_000_000_000_000
MS = 1_000_000

# (attributes, start ms, duration ms), or (attributes, start ms, duration ms, parent name)
Child = tuple[Mapping[str, Any], float, float] | tuple[Mapping[str, Any], float, float, str]


def q(statement: str, **extra: Any) -> dict[str, Any]:
    return {"db.system": "postgresql", "db.statement": statement, **extra}


def call(method: str, url: str) -> dict[str, Any]:
    host = url.partition("://")[2].partition("/")[0].partition(":")[0]
    return {"http.request.method": method, "url.full": url, "server.address": host}


def run(
    otel: OTel, children: Sequence[Child], *, groups: Sequence[str] = (), route: str = "/dashboard"
) -> None:
    """One GET ``route`` request of 2 s; ``groups`` are internal spans under the root (0-2 s)
    that children can name as their parent; the other children are the root's."""
    root = otel.tracer.start_span(
        f"GET {route}",
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "GET", "http.route": route},
        start_time=T0,
    )
    parents = {"": root}
    for name in groups:
        parents[name] = otel.tracer.start_span(name, trace.set_span_in_context(root), start_time=T0)
    for child in children:
        attrs, start, duration = child[0], child[1], child[2]
        parent = parents[child[3] if len(child) == 4 else ""]
        kind_name = str(attrs.get("http.request.method") or "SELECT")
        span = otel.tracer.start_span(
            kind_name,
            trace.set_span_in_context(parent),
            kind=SpanKind.CLIENT,
            attributes=attrs,
            start_time=T0 + int(start * MS),
        )
        span.end(end_time=T0 + int((start + duration) * MS))
    for name in groups:
        parents[name].end(end_time=T0 + 2000 * MS)
    root.end(end_time=T0 + 2000 * MS)


def attrs_of(record: ReadableLogRecord) -> Mapping[str, Any]:
    return record.log_record.attributes or {}


def evidence(record: ReadableLogRecord, key: str) -> Any:
    value = attrs_of(record)[f"otel_apm.finding.evidence.{key}"]
    return list(value) if isinstance(value, tuple) else value


USERS = "SELECT users.id, users.name FROM users WHERE users.id = 42"
CART = "SELECT carts.id, carts.total FROM carts WHERE carts.user_id = %(user_id)s"
RECS = "SELECT products.id FROM products WHERE products.category = 'books' LIMIT 10"
ITEMS = "SELECT items.id FROM items WHERE items.cart_id = %(cart_id)s"


# -- consecutive_db_queries --------------------------------------------------------------------------


def test_sequential_independent_selects_are_one_finding_with_the_time_concurrency_saves(otel: OTel) -> None:
    run(otel, [(q(USERS), 0, 150), (q(CART), 160, 200), (q(RECS), 370, 100)])
    (finding,) = otel.events("consecutive_db_queries")
    a = attrs_of(finding)
    assert a["otel_apm.finding.count"] == 3
    assert a["otel_apm.finding.total_duration_ms"] == 450.0
    assert a["otel_apm.finding.impact_ms"] == 250.0  # 450 less the longest, 200
    assert a["otel_apm.finding.endpoint"] == "GET /dashboard"
    assert evidence(finding, "concurrent_saving_ms") == 250.0
    assert evidence(finding, "durations_ms") == ["150.000", "200.000", "100.000"]
    statements = evidence(finding, "db.statements")
    assert statements == [
        "select users.id, users.name from users where users.id = ?",
        "select carts.id, carts.total from carts where carts.user_id = ?",
        "select products.id from products where products.category = ? limit ?",
    ]
    assert "42" not in a["db.query.text"] and "books" not in a["db.query.text"]
    recommendation = a["otel_apm.finding.recommendation"]
    assert "450.0 ms" in recommendation and "250.0 ms" in recommendation
    assert "own connection" in recommendation and "asyncio.gather()" in recommendation
    assert a["otel_apm.finding.severity"] == "warning"


def test_the_fingerprint_is_the_set_of_statements_whatever_their_values(otel: OTel) -> None:
    run(otel, [(q(USERS), 0, 150), (q(CART), 160, 200)])
    run(otel, [(q(USERS.replace("42", "7")), 0, 180), (q(CART), 200, 120)])
    run(otel, [(q(USERS), 0, 150), (q(RECS), 160, 200)])
    first, second, other = (
        attrs_of(r)["otel_apm.finding.fingerprint"] for r in otel.events("consecutive_db_queries")
    )
    assert first == second != other


@pytest.mark.parametrize(
    ("durations", "min_saved", "fires"),
    [
        ((150, 99.0), 100.0, False),  # saves 99 ms
        ((150, 100.0), 100.0, True),  # saves exactly the setting
        ((40, 60), 100.0, False),
        ((40, 60), 40.0, True),
    ],
)
def test_reported_when_the_saving_reaches_the_setting(
    make_otel: Callable[..., OTel], durations: tuple[float, float], min_saved: float, fires: bool
) -> None:
    otel = make_otel(consecutive_db_min_saved_ms=min_saved)
    run(otel, [(q(USERS), 0, durations[0]), (q(CART), 200, durations[1])])
    assert len(otel.events("consecutive_db_queries")) == (1 if fires else 0)


def test_queries_that_overlap_already_run_concurrently(otel: OTel) -> None:
    run(otel, [(q(USERS), 0, 150), (q(CART), 100, 200)])
    assert otel.events("consecutive_db_queries") == []


def test_an_overlap_ends_one_run_and_starts_the_next(otel: OTel) -> None:
    run(otel, [(q(USERS), 0, 150), (q(CART), 100, 200), (q(RECS), 300, 150)])
    (finding,) = otel.events("consecutive_db_queries")
    assert evidence(finding, "durations_ms") == ["200.000", "150.000"]  # CART then RECS


@pytest.mark.parametrize(
    "between",
    [
        "UPDATE carts SET total = 3 WHERE id = 1",
        "INSERT INTO audit (x) VALUES (1)",
        "BEGIN",
        "COMMIT",
        "SELECT carts.id FROM carts WHERE carts.id = 1 FOR UPDATE",
        "SELECT set_config('TimeZone', 'UTC', false)",  # Django's per-connection session setup
    ],
)
def test_a_write_transaction_control_or_locking_read_ends_the_run(otel: OTel, between: str) -> None:
    run(otel, [(q(USERS), 0, 150), (q(between), 160, 5), (q(CART), 170, 150)])
    assert otel.events("consecutive_db_queries") == []


def test_without_the_write_between_them_the_same_reads_are_reported(otel: OTel) -> None:
    run(otel, [(q(USERS), 0, 150), (q(CART), 170, 150)])
    assert len(otel.events("consecutive_db_queries")) == 1


def test_one_shape_repeated_is_not_independent_work(otel: OTel) -> None:
    run(otel, [(q(USERS), 0, 150), (q(USERS.replace("42", "43")), 160, 150)])
    assert otel.events("consecutive_db_queries") == []


def test_a_repeated_shape_starts_the_next_run(otel: OTel) -> None:
    run(otel, [(q(USERS), 0, 150), (q(CART), 160, 150), (q(USERS), 320, 150)])
    (finding,) = otel.events("consecutive_db_queries")
    assert attrs_of(finding)["otel_apm.finding.count"] == 2
    assert evidence(finding, "concurrent_saving_ms") == 150.0


def test_an_n_plus_one_is_left_to_the_n_plus_one_detector(make_otel: Callable[..., OTel]) -> None:
    children: list[Child] = [(q(USERS), 0, 200)]
    children += [(q(ITEMS), 210 + i * 130, 120) for i in range(5)]
    otel = make_otel()
    run(otel, children)
    assert len(otel.events("n_plus_one_query")) == 1
    assert otel.events("consecutive_db_queries") == []
    # Below the N+1 threshold the loop's queries are ordinary siblings: USERS then ITEMS is a run.
    otel = make_otel(n_plus_one_threshold=6)
    run(otel, children)
    assert otel.events("n_plus_one_query") == []
    (finding,) = otel.events("consecutive_db_queries")
    assert attrs_of(finding)["otel_apm.finding.count"] == 2


def test_queries_under_different_parents_are_not_a_run(otel: OTel) -> None:
    run(otel, [(q(USERS), 0, 150, "a"), (q(CART), 160, 150, "b")], groups=["a", "b"])
    assert otel.events("consecutive_db_queries") == []
    run(otel, [(q(USERS), 0, 150, "a"), (q(CART), 160, 150, "a")], groups=["a", "b"])
    assert len(otel.events("consecutive_db_queries")) == 1


def test_a_cached_query_neither_counts_nor_ends_the_run(otel: OTel) -> None:
    run(
        otel,
        [(q(USERS), 0, 150), (q(RECS, **{"cache.hit": True}), 160, 150), (q(CART), 320, 150)],
    )
    (finding,) = otel.events("consecutive_db_queries")
    assert attrs_of(finding)["otel_apm.finding.count"] == 2
    assert len(evidence(finding, "db.statements")) == 2


def test_other_work_between_the_queries_does_not_end_the_run(otel: OTel) -> None:
    post = call("POST", "http://audit.internal/events")
    run(otel, [(q(USERS), 0, 150), (post, 160, 20), (q(CART), 190, 150)])
    assert len(otel.events("consecutive_db_queries")) == 1


# -- consecutive_http_calls --------------------------------------------------------------------------

PROFILE = "http://users.internal:8080/users/1042/profile"
FLAGS = "http://flags.internal/flags?user=1042"
HEALTH = "http://stock.internal/health"


def test_sequential_safe_calls_are_one_finding_with_their_templates(otel: OTel) -> None:
    run(
        otel,
        [
            (call("GET", PROFILE), 0, 200),
            (call("get", FLAGS), 210, 150),
            (call("HEAD", HEALTH), 370, 50),
            (call("OPTIONS", HEALTH), 430, 50),
        ],
    )
    (finding,) = otel.events("consecutive_http_calls")
    a = attrs_of(finding)
    assert a["otel_apm.finding.count"] == 4
    assert a["otel_apm.finding.impact_ms"] == 250.0  # 450 less 200
    assert evidence(finding, "http.calls") == [
        "GET http://users.internal:8080/users/{id}/profile",
        "GET http://flags.internal/flags?user=?",
        "HEAD http://stock.internal/health",
        "OPTIONS http://stock.internal/health",
    ]
    assert evidence(finding, "durations_ms") == ["200.000", "150.000", "50.000", "50.000"]
    recommendation = a["otel_apm.finding.recommendation"]
    assert "250.0 ms" in recommendation and "httpx.AsyncClient" in recommendation
    assert "ThreadPoolExecutor" in recommendation
    assert "1042" not in str(dict(a))


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_an_unsafe_method_ends_the_run(otel: OTel, method: str) -> None:
    run(
        otel,
        [(call("GET", PROFILE), 0, 200), (call(method, FLAGS), 210, 150), (call("GET", HEALTH), 370, 200)],
    )
    assert otel.events("consecutive_http_calls") == []


def test_calls_that_overlap_already_run_concurrently(otel: OTel) -> None:
    run(otel, [(call("GET", PROFILE), 0, 200), (call("GET", FLAGS), 50, 200)])
    assert otel.events("consecutive_http_calls") == []


def test_a_call_repeated_below_the_n_plus_one_threshold_still_counts(otel: OTel) -> None:
    run(otel, [(call("GET", PROFILE), 0, 200), (call("GET", PROFILE.replace("1042", "7")), 210, 150)])
    (finding,) = otel.events("consecutive_http_calls")
    assert evidence(finding, "http.calls") == ["GET http://users.internal:8080/users/{id}/profile"] * 2


def test_an_n_plus_one_of_calls_is_left_to_the_n_plus_one_api_detector(otel: OTel) -> None:
    loop: list[Child] = [(call("GET", f"http://users.internal/users/{i}"), i * 110, 100) for i in range(5)]
    run(otel, [*loop, (call("GET", FLAGS), 600, 150), (call("GET", HEALTH), 760, 150)])
    assert len(otel.events("n_plus_one_api_call")) == 1
    (finding,) = otel.events("consecutive_http_calls")  # only what is not the loop
    assert evidence(finding, "http.calls") == [
        "GET http://flags.internal/flags?user=?",
        "GET http://stock.internal/health",
    ]


def test_below_the_setting_calls_are_not_reported(make_otel: Callable[..., OTel]) -> None:
    children: list[Child] = [(call("GET", PROFILE), 0, 200), (call("GET", FLAGS), 210, 60)]
    otel = make_otel()
    run(otel, children)
    assert otel.events("consecutive_http_calls") == []
    otel = make_otel(consecutive_http_min_saved_ms=60)
    run(otel, children)
    assert len(otel.events("consecutive_http_calls")) == 1
