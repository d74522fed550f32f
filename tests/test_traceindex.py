"""csrc/traceindex.c, the compiled per-trace index: what it returns and files in the trace equals
the Python reference's (summary.index_trace, dbshape.by_fingerprint), on the labelled corpus and
on hypothesis-made traces, and what it declines is left to Python untouched.

Each comparison runs the two implementations on two Trace objects over the same SpanViews.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import native_load_error, require_native
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_apm import APMConfig
from otel_apm.analyze import Analyzer
from otel_apm.detectors.base import finding_spans
from otel_apm.detectors.dbshape import StatementGroups, by_fingerprint, db_texts, statements_of
from otel_apm.detectors.history import QueryHistory
from otel_apm.detectors.loops import _sequence
from otel_apm.detectors.mn_plus_one import repetitions
from otel_apm.detectors.repeated_query import repeats_knowable
from otel_apm.detectors.summary import TraceSummary, count_by_fingerprint, index_trace
from otel_apm.evaluate import load_traces
from otel_apm.model import (
    CACHE,
    DB,
    DB_CONNECTION,
    HTTP_CLIENT,
    HTTP_SERVER,
    INTERNAL,
    SpanView,
    Trace,
)
from otel_apm.sql import MAX_STATEMENT_CHARS, SqlShape

CORPUS = Path(__file__).parent / "corpus"
T0 = 1_700_000_000_000_000_000
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture
def compiled() -> ModuleType:
    return require_native()


def twin(trace: Trace) -> Trace:
    """A fresh Trace over the same spans: nothing filed yet."""
    return Trace(trace.trace_id, list(trace.spans), trace.root, trace.complete)


def assert_indexed_alike(compiled: ModuleType, trace: Trace) -> None:
    """The compiled index of ``trace`` and the Python one of its twin agree, in what they return
    (values and types) and in what they leave filed in the trace."""
    python = twin(trace)
    expected = index_trace(python)
    got = compiled.index_trace(trace)
    assert got is not None
    assert got == expected
    assert [type(v) for v in got] == [type(v) for v in expected]
    by_category, texts, _, total_ns, longest_ns, _ = got
    assert list(by_category) == list(expected[0])  # arrival order of the categories
    assert list(texts) == list(expected[1])
    assert all(type(n) is int for n in (*total_ns.values(), *longest_ns.values()))
    # What it filed is what the trace's readers now get, without making it again.
    assert trace.by_category() is by_category
    assert db_texts(trace) is texts
    assert trace.breakdown() == python.breakdown()
    assert [type(v) for entry in trace.breakdown().values() for v in entry] == [
        type(v) for entry in python.breakdown().values() for v in entry
    ]
    assert statements_of(trace, compiled.by_fingerprint) == statements_of(python)


def assert_regrouped_alike(compiled: ModuleType, by_text: dict[Any, list[SpanView]]) -> None:
    expected = by_fingerprint(by_text)
    got = compiled.by_fingerprint(by_text)
    assert list(got.items()) == list(expected.items())  # keys, order, shapes and spans
    given_lists = {id(spans) for spans in by_text.values()}
    assert not any(id(spans) in given_lists for _, spans in got.values())  # copied, not extended


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.json")), ids=lambda p: p.name)
def test_the_corpus_is_indexed_and_analyzed_alike(compiled: ModuleType, path: Path) -> None:
    for trace in load_traces(path):
        assert_indexed_alike(compiled, trace)
        assert_regrouped_alike(compiled, db_texts(trace))
    on = Analyzer(APMConfig(console_enabled=False, native_enabled=True))
    off = Analyzer(APMConfig(console_enabled=False, native_enabled=False))
    for native_trace, python_trace in zip(load_traces(path), load_traces(path), strict=True):
        assert on.analyze(native_trace) == off.analyze(python_trace)
        assert native_trace.breakdown() == python_trace.breakdown()
        assert ids(statements_of(native_trace)) == ids(statements_of(python_trace))


def ids(groups: StatementGroups) -> list[tuple[Any, SqlShape, list[int]]]:
    """The groups with their spans' ids: the views of two readings of a file are not one object."""
    return [(key, shape, [s.span_id for s in spans]) for key, (shape, spans) in groups.items()]


STATEMENTS = (
    None,
    "",
    "SELECT users.id FROM users WHERE users.id = %(pk_1)s",
    "SELECT 1",  # no table: a span's db_table is added to its shape
    "select  users.id from users where users.id = 7",  # another text of the same shape as above
    "UPDATE orders SET status = 'x' WHERE id = 3",
    "SELECT * FROM t WHERE a = " + "1" * MAX_STATEMENT_CHARS,  # over-long: parse_sql truncates
)


CATEGORIES = (DB, DB, DB, DB_CONNECTION, CACHE, HTTP_CLIENT, HTTP_SERVER, INTERNAL)  # DB the most


@st.composite
def spans(draw: st.DrawFn) -> SpanView:
    start = T0 + draw(st.integers(0, 10**9))
    view = SpanView(
        trace_id=1,
        span_id=draw(st.integers(1, 2**64 - 1)),
        parent_id=draw(st.integers(0, 3)),
        name=draw(st.sampled_from(("SELECT users", "GET", "work"))),
        kind=draw(st.integers(0, 4)),
        start_ns=start,
        end_ns=start + draw(st.integers(-1000, 10**9)),  # a clock step can end a span early
        error=draw(st.booleans()),
        service=draw(st.sampled_from(("orders", "users"))),
        category=draw(st.sampled_from(CATEGORIES)),
    )
    view.statement = draw(st.sampled_from(STATEMENTS))
    view.db_table = draw(st.sampled_from((None, "", "users", "orders")))
    view.db_operation = draw(st.sampled_from((None, "SELECT", "find")))
    view.exception_type = draw(st.sampled_from((None, None, None, "ValueError")))
    view.cached = draw(st.sampled_from((False, False, False, True)))
    return view


@st.composite
def traces(draw: st.DrawFn) -> Trace:
    views = draw(st.lists(spans(), max_size=30))
    root = draw(st.sampled_from([None, *views])) if views else None
    return Trace(1, views, root)


@FUZZ
@given(traces())
def test_random_traces_are_indexed_alike(trace: Trace) -> None:
    compiled = require_native()
    assert_indexed_alike(compiled, trace)
    assert_regrouped_alike(compiled, db_texts(trace))
    native_trace, python_trace = twin(trace), twin(trace)  # held: a summary refers to its trace weakly
    on, off = TraceSummary(native_trace, compiled), TraceSummary(python_trace)
    assert on.fingerprint_counts() == off.fingerprint_counts()
    assert on.round_trips() == off.round_trips()
    assert on.statements == off.statements


def test_a_trace_with_cache_hits_regroups_only_its_round_trips(compiled: ModuleType) -> None:
    views = [
        SpanView(1, i + 2, 1, "SELECT users", 0, T0, T0 + 1000 * (i + 1), False, "orders", category=DB)
        for i in range(3)
    ]
    for view in views:
        view.statement = "SELECT users.id FROM users WHERE users.id = %(pk_1)s"
    views[1].cached = True
    summary = TraceSummary(Trace(1, views, None), compiled)
    ((shape, trips),) = summary.round_trips().values()
    assert trips == [views[0], views[2]]
    assert summary.fingerprint_counts() == {shape.fingerprint: 2}
    assert summary.round_trips() == TraceSummary(Trace(1, views, None)).round_trips()


def test_a_summary_kept_past_its_trace_says_so() -> None:
    """The summary refers to its trace weakly (the trace holds the summary; a strong reference
    back made every analyzed trace cyclic garbage): kept past the trace, it says so plainly
    rather than answer from freed state."""
    view = SpanView(1, 2, 1, "SELECT users", 0, T0, T0 + 1000, False, "orders", category=DB)
    view.statement = "SELECT users.id FROM users WHERE users.id = %(pk_1)s"
    summary = TraceSummary(Trace(1, [view], None))
    with pytest.raises(ReferenceError, match="after its trace was freed"):
        summary.round_trips()


def declined(compiled: ModuleType, trace: Trace) -> None:
    """The compiled index leaves ``trace`` to Python, changing nothing, and the summary made
    through it is Python's."""
    assert compiled.index_trace(trace) is None
    summary = TraceSummary(trace, compiled)
    other = twin(trace)
    expected = TraceSummary(other)
    assert (summary.error, summary.total_ns, summary.longest_ns, summary.statements) == (
        expected.error,
        expected.total_ns,
        expected.longest_ns,
        expected.statements,
    )
    assert trace.breakdown() == twin(trace).breakdown()


def query(start: int, end: int) -> SpanView:
    view = SpanView(1, 2, 1, "SELECT users", 0, start, end, False, "orders", category=DB)
    view.statement = "SELECT users.id FROM users"
    return view


@pytest.mark.parametrize(
    "start,end",
    [(0, 2**64 - 1), (2**63 - 1, -(2**63)), (-(2**63), 2**63 - 1)],
    ids=["unsigned-64-bit-time", "negative-overflow", "positive-overflow"],
)
def test_times_past_64_bits_are_left_to_python(compiled: ModuleType, start: int, end: int) -> None:
    declined(compiled, Trace(1, [query(0, 10), query(start, end)], None))


def test_sums_past_64_bits_are_left_to_python(compiled: ModuleType) -> None:
    declined(compiled, Trace(1, [query(0, 2**62), query(0, 2**62), query(0, 2**62)], None))


def test_a_trace_already_filed_is_left_to_python(compiled: ModuleType) -> None:
    trace = Trace(1, [query(0, 10), query(5, 30)], None)
    filing = trace.by_category()
    declined(compiled, trace)
    assert trace.by_category() is filing
    trace = Trace(1, [query(0, 10)], None)
    texts = db_texts(trace)
    declined(compiled, trace)
    assert db_texts(trace) is texts


def test_spans_it_cannot_read_exactly_are_left_to_python(compiled: ModuleType) -> None:
    odd_flag = query(0, 10)
    odd_flag.error = 1  # type: ignore[assignment]
    odd_time = query(0, 10)
    odd_time.end_ns = 10.5  # type: ignore[assignment]
    odd_category = query(0, 10)
    odd_category.category = type("Category", (str,), {})(DB)
    for odd in (odd_flag, odd_time, odd_category):
        declined(compiled, Trace(1, [query(0, 5), odd], None))


def test_the_regrouping_takes_only_the_grouping_it_is_made_for(compiled: ModuleType) -> None:
    with pytest.raises(TypeError):
        compiled.by_fingerprint([])
    with pytest.raises(TypeError):
        compiled.by_fingerprint({("orders", "SELECT 1"): ()})
    with pytest.raises(TypeError):
        compiled.index_trace([query(0, 1)])


def assert_finding_spans_alike(compiled: ModuleType, trace: Trace, spans: list[SpanView]) -> bool:
    """What a finding reads of ``spans`` is the same compiled (unless declined) as in Python,
    to the types and the entry span's identity; whether C answered."""
    got = compiled.finding_spans(trace.spans, spans)
    expected = finding_spans(twin(trace), spans)
    if got is not None:
        assert got == expected
        assert [type(v) for v in got] == [type(v) for v in expected]
        assert got[0] is expected[0]
    return got is not None


@FUZZ
@given(traces(), st.lists(st.integers(0, 29), min_size=1, max_size=8), st.data())
def test_what_a_finding_reads_of_its_spans_is_read_alike(
    trace: Trace, picks: list[int], data: st.DataObject
) -> None:
    """Ids drawn small so that parents are found, and some ids repeat (the last span with an id
    is the parent, as in Trace._spans_by_id), chains cross services, cycles happen; services
    and code locations empty or not."""
    compiled = require_native()
    if not trace.spans:
        return
    for view in trace.spans:
        view.span_id = data.draw(st.integers(1, 12))
        view.parent_id = data.draw(st.integers(0, 12))
        view.service = data.draw(st.sampled_from(("orders", "users", "")))
        view.code = data.draw(st.sampled_from((None, "", "app.py:3:f", "lib.py:9:g")))
    spans = [trace.spans[i % len(trace.spans)] for i in picks]
    assert_finding_spans_alike(compiled, trace, spans)


def test_a_finding_of_a_plain_trace_is_read_by_c(compiled: ModuleType) -> None:
    """The N+1 shape: queries under a root, a service of their own below another's call."""
    root = SpanView(1, 1, 0, "GET /a", 1, T0, T0 + 10**7, False, "front", HTTP_SERVER)
    call = SpanView(1, 2, 1, "GET", 2, T0, T0 + 9 * 10**6, False, "front", HTTP_CLIENT)
    server = SpanView(1, 3, 2, "GET /b", 1, T0, T0 + 8 * 10**6, False, "back", HTTP_SERVER)
    queries = [
        SpanView(1, 10 + i, 3, "SELECT", 2, T0 + i, T0 + 1000 * i, False, "back", DB) for i in range(6)
    ]
    queries[2].code = "app.py:3:f"
    trace = Trace(1, [root, call, server, *queries], root)
    assert assert_finding_spans_alike(compiled, trace, queries)
    entry, services, span_ids, longest, code = compiled.finding_spans(trace.spans, queries)
    assert (entry, services, span_ids, longest, code) == (
        server,
        ("back", "front"),
        tuple(range(10, 16)),
        4995,
        code,
    )
    assert assert_finding_spans_alike(compiled, trace, [root])


def test_what_a_finding_reads_that_c_cannot_is_left_to_python(compiled: ModuleType) -> None:
    chain = [SpanView(1, i + 1, i, "work", 0, T0, T0 + 1, False, "orders") for i in range(40)]
    trace = Trace(1, chain, chain[0])
    assert compiled.finding_spans(trace.spans, [chain[-1]]) is None  # a walk of 39 steps
    assert finding_spans(trace, [chain[-1]])[0] is chain[0]
    cycle = [
        SpanView(1, 1, 2, "a", 0, T0, T0 + 1, False, "s"),
        SpanView(1, 2, 1, "b", 0, T0, T0 + 1, False, "s"),
    ]
    assert compiled.finding_spans(cycle, [cycle[0]]) is None  # back to the first span's id
    assert finding_spans(Trace(1, cycle, None), [cycle[0]])[0] is None
    outsider = query(0, 1)
    assert compiled.finding_spans([query(0, 1)], [outsider]) is None  # not one of the trace's spans
    assert compiled.finding_spans([outsider], []) is None
    assert compiled.finding_spans((outsider,), [outsider]) is None
    for name, value in (("span_id", 1.0), ("service", None), ("code", b"x"), ("end_ns", 2**64)):
        odd = query(0, 1)
        setattr(odd, name, value)
        assert compiled.finding_spans([odd], [odd]) is None, name
    assert compiled.finding_spans([outsider, unset("service")], [outsider]) is None


def test_the_extension_refuses_to_load_when_trace_loses_a_slot_it_reads() -> None:
    stderr = native_load_error(
        "import otel_apm.model as model\n"
        "class Trace:\n"
        "    __slots__ = ('spans', 'root', '_by_category', '_breakdown')\n"
        "model.Trace = Trace\n"
    )
    assert "ImportError: otel_apm._native: Trace has no slot _derived" in stderr


@FUZZ
@given(st.lists(st.tuples(spans(), st.integers(0, 5)), max_size=30))
def test_a_parents_statement_sequence_is_made_alike(drawn: list[tuple[SpanView, int]]) -> None:
    """The compiled sequence sorts the siblings in place as list.sort does (stably: starts tie
    here), and keeps the spans and shapes Python keeps."""
    compiled = require_native()
    for view, start in drawn:
        view.start_ns = T0 + start
    siblings = [view for view, _ in drawn]
    python_siblings = list(siblings)
    got = compiled.db_sequence(siblings)
    assert got == _sequence(python_siblings, None)
    assert [id(s) for s in siblings] == [id(s) for s in python_siblings]


def test_a_sequence_it_cannot_read_exactly_is_left_to_python(compiled: ModuleType) -> None:
    odd_time = query(0, 10)
    odd_time.start_ns = 0.5  # type: ignore[assignment]
    odd_flag = query(0, 10)
    odd_flag.cached = 0  # type: ignore[assignment]
    odd_text = query(0, 10)
    odd_text.statement = type("Text", (str,), {})("SELECT 1")
    for odd in (odd_time, odd_flag, odd_text, query(2**63, 2**63 + 5)):
        siblings = [query(5, 10), odd, query(0, 3)]
        before = list(siblings)
        assert compiled.db_sequence(siblings) is None
        assert siblings == before  # not sorted: Python sorts it
        python_siblings = list(siblings)
        assert _sequence(siblings, compiled) == _sequence(python_siblings, None)


@FUZZ
@given(
    st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=60).map(lambda picks: [p * 2 for p in picks]),
    st.integers(1, 7),
)
def test_repeated_sequences_are_found_alike(fingerprints: list[str], threshold: int) -> None:
    """Equal fingerprints that are not one object (made apart here) compare equal in C too."""
    compiled = require_native()
    got = compiled.repetitions(fingerprints, threshold)
    assert got == repetitions(fingerprints, threshold)
    assert repetitions(fingerprints, threshold, compiled) == got


@FUZZ
@given(traces(), st.lists(st.booleans(), max_size=30), st.integers(1, 5))
def test_whether_repeats_can_be_known_alike_is_answered_alike(
    trace: Trace, recorded: list[bool], threshold: int
) -> None:
    """The repeated-query bound over the summary's statements, spans with recorded parameters
    here and there, over-long (truncated) and placeholder-free texts among them."""
    compiled = require_native()
    for view, params in zip(trace.spans, recorded, strict=False):
        view.db_params = "(1,)" if params else None
    summary = TraceSummary(twin(trace))
    assert compiled.repeats_knowable(summary.statements, threshold) is repeats_knowable(summary, threshold)


def test_a_repeats_bound_it_cannot_read_is_left_to_python(compiled: ModuleType) -> None:
    odd_text = type("Text", (str,), {})("SELECT 1")
    assert compiled.repeats_knowable({("orders", odd_text): [query(0, 1)] * 3}, 3) is None
    assert compiled.repeats_knowable({("orders", "SELECT 1"): [object()] * 3}, 3) is None
    assert compiled.repeats_knowable({("orders", "SELECT 1"): (query(0, 1),) * 3}, 3) is None
    assert compiled.repeats_knowable({("orders", "SELECT 1"): [query(0, 1)] * 3}, 3) is True


@FUZZ
@given(traces(), st.booleans())
def test_siblings_are_filed_by_parent_alike(trace: Trace, big_ids: bool) -> None:
    """Equal parent ids that are not one object (64-bit ids, made apart) are one parent in C too;
    the lists and the parents come in arrival order."""
    compiled = require_native()
    if big_ids:
        for view in trace.spans:
            view.parent_id = int(str(2**63 + view.parent_id))
    for category in (*CATEGORIES, "none of them"):
        got = twin(trace).siblings(category, compiled)
        expected = twin(trace).siblings(category)
        assert list(got.items()) == list(expected.items())
        assert [[id(s) for s in group] for group in got.values()] == [
            [id(s) for s in group] for group in expected.values()
        ]


def unset(name: str) -> SpanView:
    """A query whose slot ``name`` was deleted: reading it raises AttributeError in Python."""
    view = query(0, 1)
    delattr(view, name)
    return view


def test_spans_with_a_slot_unset_are_left_to_python(compiled: ModuleType) -> None:
    assert compiled.by_parent([query(0, 1), unset("parent_id")], DB) is None
    assert compiled.by_parent([query(0, 1), unset("category")], DB) is None
    assert compiled.repeats_knowable({("orders", "SELECT 1"): [unset("db_params")] * 3}, 3) is None
    assert compiled.db_sequence([query(0, 1), unset("start_ns")]) is None
    assert compiled.add_trips({}, {("orders", "a"): (shape_named("a"), [unset("end_ns")])}, 10) is None


def test_siblings_it_cannot_read_are_left_to_python(compiled: ModuleType) -> None:
    assert compiled.by_parent((query(0, 1),), DB) is None
    assert compiled.by_parent([query(0, 1), object()], DB) is None
    trace = Trace(1, [query(0, 1), object()], None)  # type: ignore[list-item]
    with pytest.raises(AttributeError):  # Python reads it, and fails as it always did
        trace.siblings(DB, compiled)


def test_fingerprint_counts_of_other_groupings_are_left_to_python(compiled: ModuleType) -> None:
    shape = shape_named("a")
    assert compiled.fingerprint_counts([]) is None
    assert compiled.fingerprint_counts({("orders", "a"): (shape, (query(0, 1),))}) is None
    assert compiled.fingerprint_counts({"a": (shape, [query(0, 1)])}) is None
    groups: StatementGroups = {
        ("orders", "a"): (shape, [query(0, 1), query(1, 2)]),
        ("users", "a"): (shape, [query(0, 1)]),
        ("users", "b"): (shape_named("b"), [query(0, 1)]),
    }
    assert compiled.fingerprint_counts(groups) == count_by_fingerprint(groups) == {"a": 3, "b": 1}


def test_repetitions_of_what_it_cannot_number_are_left_to_python(compiled: ModuleType) -> None:
    odd = type("Fingerprint", (str,), {})
    loop = ["a", "b"] * 5
    assert compiled.repetitions([*loop[:-1], odd("b")], 5) is None
    assert compiled.repetitions(loop, 0) is None
    assert compiled.repetitions(tuple(loop), 5) is None
    assert repetitions([*loop[:-1], odd("b")], 5, compiled) == [(0, 2, 5)]


def history_state(history: QueryHistory) -> list[tuple[object, list[float], int]]:
    """Each statement's samples in eviction order (least recently updated first), with its count."""
    return [(key, list(samples), samples.added) for key, samples in history._samples.items()]


def history_trips(batch: list[tuple[str, list[int]]]) -> StatementGroups:
    """One trace's round trips: for each fingerprint, spans of the given durations in ns."""
    groups: StatementGroups = {}
    for fingerprint, durations in batch:
        spans = [query(T0, T0 + ns) for ns in durations]
        groups.setdefault(("orders", fingerprint), (shape_named(fingerprint), []))[1].extend(spans)
    return groups


def shape_named(fingerprint: str) -> SqlShape:
    return SqlShape(f"select {fingerprint}", fingerprint, "SELECT", (), False, False)


@FUZZ
@given(
    st.integers(1, 4),
    st.lists(
        st.lists(
            st.tuples(st.sampled_from("abcdef"), st.lists(st.integers(0, 2**40), min_size=1, max_size=40)),
            max_size=5,
        ),
        max_size=12,
    ),
)
def test_the_history_write_matches_python(max_keys: int, batches: list[list[tuple[str, list[int]]]]) -> None:
    """Samples, their order, counts, evictions and the p95s read back are Python's, trace after
    trace, with a ring that wraps (256 samples) and keys past the bound."""
    compiled = require_native()
    fast, python = QueryHistory(max_keys, compiled), QueryHistory(max_keys)
    for batch in batches:
        groups = history_trips(batch)
        assert compiled.add_trips({}, groups, max_keys) is True  # what it writes, not a decline
        fast.add_trips(groups)
        python.add_trips(groups)
        assert history_state(fast) == history_state(python)
        for key in fast._samples:
            assert fast.p95(key, 1) == python.p95(key, 1)


def test_a_history_write_it_cannot_read_exactly_is_left_to_python(compiled: ModuleType) -> None:
    """A trace with a span whose times are not ints, or past 64 bits, changes nothing in C; the
    Python version then writes it all."""
    odd_time = query(0, 10)
    odd_time.end_ns = 10.5  # type: ignore[assignment]
    for odd in (odd_time, query(-(2**63), 2**63 - 1)):
        groups: StatementGroups = {
            ("orders", "a"): (shape_named("a"), [query(0, 5)]),
            ("orders", "b"): (shape_named("b"), [query(0, 7), odd]),
        }
        fast, python = QueryHistory(compiled=compiled), QueryHistory()
        fast.add_trips(history_trips([("z", [3])]))
        python.add_trips(history_trips([("z", [3])]))
        assert compiled.add_trips(fast._samples, groups, 10) is None
        assert history_state(fast) == history_state(python)
        fast.add_trips(groups)
        python.add_trips(groups)
        assert history_state(fast) == history_state(python)
