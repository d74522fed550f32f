"""csrc/sketch.c, the statistics' compiled per-span work: ``sketch_add`` and ``tally_add_spans``
leave every sketch and tally exactly as ``DDSketch.add`` and ``Tally.add_spans`` (the Python
references) do, and ``Statistics`` reports the same with either.

Sketches are compared by the repr of their ``to_dict()`` (so -0.0 against 0.0, or an int against
a float, is a difference) and their bucket range; errors by type and message.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Callable
from functools import partial
from types import MappingProxyType
from typing import Any, cast

import pytest
from conftest import native_load_error, require_native
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_apm.config import APMConfig
from otel_apm.detectors.dbshape import statements_of
from otel_apm.model import DB, HTTP_SERVER, KIND_CLIENT, KIND_SERVER, SpanView, Trace
from otel_apm.stats import DDSketch, Statistics, Tally, rollup
from otel_apm.stats.sketch import MIN_VALUE

EXAMPLES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALUES = st.one_of(
    st.floats(),  # NaN, infinities, -0.0, subnormals and the largest doubles among them
    st.floats(min_value=1e-3, max_value=1e5),  # milliseconds, the common case
    st.floats(min_value=1e-11, max_value=1e-7),  # around MIN_VALUE
    st.sampled_from([0.0, -0.0, MIN_VALUE, math.nextafter(MIN_VALUE, 1), math.nextafter(MIN_VALUE, 0)]),
    st.integers(min_value=-(10**30), max_value=10**30),  # ints: the Python method's own
)


def outcome(add: Callable[[], object]) -> tuple[str, str] | None:
    try:
        add()
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return None


def state(sketch: DDSketch) -> tuple[str, int, int]:
    return repr(sketch.to_dict()), sketch._offset, len(sketch)


@EXAMPLES
@given(
    alpha=st.sampled_from([0.01, 0.05, 0.5]),
    max_buckets=st.one_of(st.integers(min_value=2, max_value=40), st.just(2048)),
    values=st.lists(VALUES, max_size=200),
)
def test_compiled_sketch_add_counts_as_python(alpha: float, max_buckets: int, values: list[float]) -> None:
    """Zero, negatives, huge and tiny values, NaN and infinities refused alike, and the lowest
    buckets collapsing past a small max_buckets."""
    compiled = require_native().sketch_add
    python, ours = DDSketch(alpha, max_buckets), DDSketch(alpha, max_buckets)
    for value in values:
        assert outcome(partial(compiled, ours, value)) == outcome(partial(python.add, value))
        assert state(ours) == state(python), value


def test_sketch_add_is_compiled_for_floats_and_python_for_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Floats never reach DDSketch.add; ints, a subclass, and a sketch past what C holds do."""
    compiled = require_native().sketch_add
    reference = DDSketch.add
    called: list[object] = []

    def spy(self: DDSketch, value: float) -> None:
        called.append(value)
        reference(self, value)

    monkeypatch.setattr(DDSketch, "add", spy)
    sketch = DDSketch(0.01, 4)
    for value in (1.5, 0.0, -2.0, 1e300, 1e-300, 3.0):  # 1e300 then 1e-300: widened and collapsed
        compiled(sketch, value)
    assert called == [] and sketch.count == 6 and len(sketch) == 4
    compiled(sketch, 7)
    assert called == [7]

    class Logged(DDSketch):
        __slots__ = ()

    compiled(Logged(), 2.0)
    far = DDSketch.from_dict(
        {**DDSketch(0.01, 4).to_dict(), "count": 1, "bins": [[2**70, 1]], "min": 1.0, "max": 1.0}
    )
    compiled(far, 2.0)  # an offset past 64 bits
    doubles = DDSketch()
    doubles._counts = cast(Any, array("d"))  # deliberately not the array("q") the type says
    compiled(doubles, 3.0)  # counts of another type
    assert called == [7, 2.0, 2.0, 3.0]
    assert far.to_dict()["bins"] == [[2**70 - 3, 1], [2**70, 1]]  # 2.0 folded into the lowest kept


# Where an int's digits end (30 bits each) and a long long's range, around both signs.
EDGES = st.sampled_from([2**30, 2**60, 2**63, 2**90]).flatmap(
    lambda edge: st.sampled_from([edge - 1, edge, edge + 1, -edge + 1, -edge, -edge - 1])
)
SPANS = st.lists(
    st.tuples(
        st.one_of(
            st.integers(min_value=0, max_value=2**62),
            st.integers(min_value=-(2**70), max_value=2**70),
            EDGES,
        ),
        st.one_of(
            st.integers(min_value=-(10**9), max_value=10**13),  # ns: negatives (skewed clocks), zero
            st.integers(min_value=-(2**66), max_value=2**66),  # past a long long
        ),
        st.one_of(st.booleans(), st.integers(min_value=0, max_value=3)),  # error: an int is Python's
    ),
    max_size=40,
)
THRESHOLDS = st.one_of(
    st.floats(),
    st.integers(min_value=-(2**60), max_value=2**60),  # past 2**53, ints compare exactly in Python
    st.booleans(),
)


def view(start_ns: int, spent_ns: int, error: Any) -> SpanView:
    return SpanView(1, 2, 1, "query", KIND_CLIENT, start_ns, start_ns + spent_ns, error, "svc", DB)


@EXAMPLES
@given(
    max_buckets=st.one_of(st.integers(min_value=2, max_value=30), st.just(2048)),
    groups=st.lists(st.tuples(SPANS, THRESHOLDS, st.booleans()), max_size=6),
)
def test_compiled_tally_add_spans_counts_as_python(
    max_buckets: int, groups: list[tuple[list[tuple[int, int, Any]], float, bool]]
) -> None:
    compiled = require_native().tally_add_spans
    python, ours = Tally(DDSketch(0.01, max_buckets)), Tally(DDSketch(0.01, max_buckets))
    for spans, slow_ms, as_tuple in groups:
        views = [view(*s) for s in spans]
        python.add_spans(views, slow_ms)
        compiled(ours, tuple(views) if as_tuple else views, slow_ms)
        assert repr(ours.to_dict()) == repr(python.to_dict())
        assert state(ours.duration) == state(python.duration)


@pytest.fixture
def python_tallies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the span lists the Python Tally.add_spans counts from now on (it still does)."""
    reference = Tally.add_spans
    called: list[int] = []

    def spy(self: Tally, spans: list[SpanView], slow_ms: float) -> None:
        called.append(len(spans))
        reference(self, spans, slow_ms)

    monkeypatch.setattr(Tally, "add_spans", spy)
    return called


def test_tally_add_spans_is_compiled_for_views_and_python_for_the_rest(python_tallies: list[int]) -> None:
    compiled = require_native().tally_add_spans
    called = python_tallies
    tally = Tally(DDSketch())
    compiled(tally, [view(0, 5_000_000, True), view(10, 0, False)], 1.0)
    compiled(tally, (view(0, 7_000_000, False),), 5)
    assert called == []
    assert (tally.count, tally.errors, tally.slow, tally.duration.sum) == (3, 1, 2, 12.0)
    compiled(tally, deque([view(0, 1, False)]), 1.0)  # not a list or tuple
    compiled(tally, [view(0, 2**64, False)], 1.0)  # a duration past a long long
    compiled(tally, [view(0, 1, False)], 2**60 + 1)  # a threshold a double cannot hold
    assert called == [1, 1, 1]
    with pytest.raises(AttributeError):
        compiled(tally, [object()], 1.0)  # Python's error for what is no span


def test_the_extension_refuses_to_load_when_a_class_it_writes_into_changed() -> None:
    """A slot added to DDSketch (or Tally) that the C add would not update: ImportError, so
    otel_apm.native() falls back to the Python versions, rather than sketches half-updated."""
    stderr = native_load_error(
        "import otel_apm.stats.sketch as s\n"
        "class DDSketch:\n"
        "    __slots__ = (*s.DDSketch.__slots__, 'extra')\n"
        "s.DDSketch = DDSketch\n"
    )
    assert "ImportError: otel_apm._native: DDSketch has 12 slots, csrc knows 11" in stderr


# -- Statistics, compiled and Python --------------------------------------------------------------

STATEMENTS = (
    "SELECT * FROM users WHERE id = %s",
    "SELECT id, total FROM orders WHERE user_id = %s",
    "INSERT INTO orders (user_id, total) VALUES (%s, %s)",
    "UPDATE users SET seen = now() WHERE id = %s",
    "DELETE FROM carts WHERE user_id = %s",
)
REQUESTS = st.lists(
    st.tuples(
        st.sampled_from(["/a", "/b", "/c", "/d"]),
        st.integers(min_value=-(10**6), max_value=5 * 10**9),  # the root's duration, ns
        st.booleans(),
        st.lists(
            st.tuples(
                st.sampled_from(STATEMENTS),
                st.integers(min_value=0, max_value=10**9),
                st.booleans(),
                st.booleans(),  # run by another service the root called: the collector's case
            ),
            max_size=12,
        ),
        st.floats(min_value=0, max_value=200),  # seconds the clock moves before the request
    ),
    max_size=40,
)


Query = tuple[str, int, bool, bool]


def trace_of(number: int, route: str, spent_ns: int, error: bool, queries: list[Query]) -> Trace:
    """GET ``route`` of service "front"; a remote query runs in "back", under its GET /inner."""
    root = SpanView(number, 1, 0, f"GET {route}", KIND_SERVER, 0, spent_ns, error, "front", HTTP_SERVER)
    root.http_method, root.http_route = "GET", route
    entry = SpanView(number, 2, 1, "GET /inner", KIND_SERVER, 0, spent_ns, False, "back", HTTP_SERVER)
    entry.http_method, entry.http_route = "GET", "/inner"
    spans = [root, entry]
    for i, (text, spent, failed, remote) in enumerate(queries):
        parent = entry if remote else root
        query = SpanView(
            number, 10 + i, parent.span_id, "query", KIND_CLIENT, i, i + spent, failed, parent.service, DB
        )
        query.db_system, query.statement = "postgresql", text
        spans.append(query)
    return Trace(number, spans, root)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=REQUESTS)
def test_statistics_report_the_same_compiled_and_in_python(
    requests: list[tuple[str, int, bool, list[Query], float]],
) -> None:
    """Snapshots of every window and the closed minutes, with endpoints and statements past
    small bounds (the overflow entries), ticks and minutes closing, cross-service statements."""
    require_native()
    bounds: dict[str, Any] = {
        "stats_max_endpoints": 3,
        "stats_max_statements": 4,
        "stats_max_endpoints_per_statement": 2,
    }
    clocks = Clock(), Clock()
    compiled, python = (
        Statistics(APMConfig(native_enabled=enabled, slow_query_threshold_ms=300.0, **bounds), clock=clock)
        for enabled, clock in zip((True, False), clocks, strict=True)
    )
    for number, (route, spent_ns, error, queries, wait_s) in enumerate(requests):
        for clock in clocks:
            clock.now += wait_s
        for stats in (compiled, python):
            stats.emit(trace_of(number, route, spent_ns, error, queries), ())
        if number % 7 == 3:
            assert reports(compiled) == reports(python)
    for window in ("minute", "hour", "day", "all"):
        assert repr(compiled.snapshot(window).to_dict()) == repr(python.snapshot(window).to_dict())
    assert [repr(r.to_dict()) for r in compiled.closed_minutes(final=True)] == [
        repr(r.to_dict()) for r in python.closed_minutes(final=True)
    ]


def reports(stats: Statistics) -> list[str]:
    return [repr(stats.snapshot(window).to_dict()) for window in ("minute", "all")]


def test_statistics_take_the_compiled_path_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    require_native()

    def refuse(self: Tally, spans: list[SpanView], slow_ms: float) -> None:
        raise AssertionError("the Python reference was called")

    monkeypatch.setattr(Tally, "add_spans", refuse)
    compiled = Statistics(APMConfig(native_enabled=True))
    compiled.emit(trace_of(1, "/a", 10**7, False, [(STATEMENTS[0], 10**6, False, False)]), ())
    assert compiled.snapshot("minute").overall.count == 1
    with pytest.raises(AssertionError, match="reference"):
        Statistics(APMConfig(native_enabled=False)).emit(trace_of(1, "/a", 10**7, False, []), ())


def test_tally_statements_hands_what_it_does_not_hold_to_the_python_loop(python_tallies: list[int]) -> None:
    """Groups in a mapping that is no dict, or a cap past 64 bits: the Python loop counts them
    (its Tally.add_spans calls show it ran), to the same statistics as the compiled loop."""
    compiled = require_native().tally_statements
    ran = python_tallies
    now = 1_800_000_000.0
    queries = [
        (STATEMENTS[0], 10**6, True, False),
        (STATEMENTS[0], 10**6, False, False),
        (STATEMENTS[1], 5, False, True),
    ]
    trace = trace_of(1, "/a", 10**7, False, queries)
    groups = statements_of(trace)
    asked: list[tuple[str, int]] = []  # the services and runs of the statements names_of was asked about

    def names_of(asking: Trace, endpoint: str, spans: list[SpanView]) -> dict[str, None]:
        asked.append((spans[0].service, len(spans)))
        return rollup._entry_endpoints(asking, endpoint, spans)

    seen: set[str] = set()
    for loop, mapping, cap, python in (
        (compiled, groups, 20, False),
        (compiled, cast(Any, MappingProxyType(groups)), 20, True),  # deliberately no dict (StatementGroups)
        (compiled, groups, 2**70, True),
        (rollup._tally_statements, groups, 20, True),
    ):
        ran.clear()
        stats = Statistics(APMConfig(native_enabled=False), clock=lambda: now)
        tick = math.floor(now / 10)
        asked.clear()
        args = (tick, 100.0, "GET /a", "front", names_of, trace, cap, stats._rolling_statement)
        loop(stats._statements, mapping, *args)
        assert ran == ([2, 1] if python else [])
        assert asked == [("back", 1)]
        snapshot = stats.snapshot("minute")
        assert {(s.service, s.endpoints) for s in snapshot.statements} == {
            ("front", ("GET /a",)),
            ("back", ("GET /inner",)),
        }
        seen.add(repr(snapshot.to_dict()))
    assert len(seen) == 1
