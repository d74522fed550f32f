"""What the analyzer does around the detectors, through the processor: code locations recorded at
span start, suppression rules, disabled detectors, ranking by impact and recurrence, and the
memory it keeps between traces."""

from __future__ import annotations

import dataclasses
import gc
import inspect
import sys
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import OTel, code_function_name
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from otel_apm import APMConfig, APMSpanProcessor
from otel_apm.analyze import Analyzer
from otel_apm.config import ConfigError, Suppression
from otel_apm.detectors.base import EvidenceValue, Finding
from otel_apm.detectors.dbshape import StatementGroups
from otel_apm.detectors.history import FindingRates, QueryHistory
from otel_apm.emit.attributes import finding_attributes
from otel_apm.ingest.callsite import CallSite
from otel_apm.model import DB, SpanView
from otel_apm.native import native
from otel_apm.sql import parse_sql

F = "otel_apm.finding."
BOOKS = "SELECT books.id, books.title FROM books WHERE books.author_id = %(param_1)s"
AUTHORS = "SELECT authors.id, authors.name FROM authors"


def query(otel: OTel, statement: str = BOOKS, **attrs: object) -> None:
    attributes = {"db.system": "postgresql", "db.statement": statement, **attrs}
    with otel.tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT, attributes=attributes):  # type: ignore[arg-type]
        pass


def load_books(otel: OTel, n: int) -> None:
    for _ in range(n):
        query(otel)  # THE N+1 LINE


def request(otel: OTel, route: str = "/authors", n: int = 6) -> None:
    attrs = {"http.request.method": "GET", "http.route": route}
    with otel.tracer.start_as_current_span(f"GET {route}", kind=SpanKind.SERVER, attributes=attrs):
        query(otel, AUTHORS)
        load_books(otel, n)


def line_of(function: Callable[..., object], marker: str) -> int:
    lines, first = inspect.getsourcelines(function)
    return first + next(i for i, line in enumerate(lines) if marker in line)


# -- code location -------------------------------------------------------------------------------


def test_client_spans_carry_the_application_frame_that_made_the_call(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel(code_attributes_min_ms=0)  # every client span exported with its code.*
    request(otel)
    db = [s for s in otel.spans() if s.kind is SpanKind.CLIENT]
    assert len(db) == 7
    attrs = db[-1].attributes or {}
    assert attrs["code.file.path"] == __file__
    assert attrs["code.function.name"] == "query"  # the first frame outside the SDK and otel_apm
    server = next(s for s in otel.spans() if s.kind is SpanKind.SERVER)
    assert "code.file.path" not in (server.attributes or {})  # only DB and HTTP client calls


def timed_query(otel: OTel, seconds: float) -> None:
    attributes = {"db.system": "postgresql", "db.statement": BOOKS}
    with otel.tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT, attributes=attributes):
        time.sleep(seconds)


@pytest.mark.parametrize("mode", ["passthrough", "tail"])
@pytest.mark.parametrize("native_enabled", [True, False], ids=["compiled", "python"])
def test_only_slow_calls_are_exported_with_their_code_attributes(
    make_otel: Callable[..., OTel], mode: str
) -> None:
    """Three code.* attributes on every client span cost the OTLP exporter more than the rest of
    the processor (bench/README.md, session 11): the span keeps them from
    APM_CODE_ATTRIBUTES_MIN_MS on, and the findings name the line of every call either way."""
    otel = make_otel(code_attributes_min_ms=30, export_mode=mode)
    for _ in range(2):  # the second as the compiled intake reads spans: as they end
        with otel.tracer.start_as_current_span("GET /x", kind=SpanKind.SERVER):
            load_books(otel, 5)
            timed_query(otel, 0.04)
    spans = [s for s in otel.spans() if s.kind is SpanKind.CLIENT]
    assert [s.end_time - s.start_time >= 30_000_000 for s in spans] == ([False] * 5 + [True]) * 2  # type: ignore[operator]
    names = [(s.attributes or {}).get("code.function.name") for s in spans]
    assert names == ([None] * 5 + ["timed_query"]) * 2
    events = otel.events("n_plus_one_query")  # of the five fast ones
    assert [(e.log_record.attributes or {})[F + "code_location"] for e in events] == [
        f"{__file__}:{line_of(query, 'start_as_current_span')}:query"
    ] * 2
    assert otel.processor._code_pending == {}  # every site taken by its span's view


@pytest.mark.parametrize("native_enabled", [True, False], ids=["compiled", "python"])
def test_a_failure_adding_the_code_attributes_stays_ours(make_otel: Callable[..., OTel]) -> None:
    """The attributes are added as the span ends, on the application's thread: whatever goes
    wrong there is contained and counted, and the span still ends, is exported and analyzed."""
    otel = make_otel(code_attributes_min_ms=0)
    with (
        otel.tracer.start_as_current_span("GET /x", kind=SpanKind.SERVER),
        otel.tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as span,
    ):
        span._attributes.maxlen = "not a number"  # type: ignore[attr-defined]
    assert [s.name for s in otel.spans()] == ["SELECT", "GET /x"]
    stats = otel.stats()
    assert stats["errors_intake"] == 1 and stats["spans_analyzed"] == 2


@pytest.mark.parametrize("native_enabled", [True, False], ids=["compiled", "python"])
def test_the_site_of_a_span_that_is_never_analyzed_is_let_go(otel: OTel) -> None:
    """A client span that ends after its root (late) is exported, not read: its site must not
    stay behind in the processor's map."""
    root = otel.tracer.start_span("GET /x", kind=SpanKind.SERVER)
    with trace.use_span(root, end_on_exit=False):
        late = otel.tracer.start_span("SELECT", kind=SpanKind.CLIENT, attributes={"db.statement": BOOKS})
    assert list(otel.processor._code_pending or ()) == [late.get_span_context().span_id]
    root.end()
    late.end()
    assert otel.processor.stats()["spans_late"] == 1
    assert otel.processor._code_pending == {}


def test_findings_name_the_line_of_the_call(otel: OTel) -> None:
    def nested(n: int) -> None:
        with otel.tracer.start_as_current_span("GET /x", kind=SpanKind.SERVER):
            for _ in range(n):
                with otel.tracer.start_as_current_span(  # THE CALL
                    "SELECT", kind=SpanKind.CLIENT, attributes={"db.system": "sqlite", "db.statement": BOOKS}
                ):
                    pass

    nested(5)
    (event,) = otel.events("n_plus_one_query")
    attrs = event.log_record.attributes or {}
    line = line_of(nested, "# THE CALL")
    qualname = code_function_name("test_findings_name_the_line_of_the_call.<locals>.nested")
    assert attrs[F + "code_location"] == f"{__file__}:{line}:{qualname}"
    assert (attrs["code.file.path"], attrs["code.line.number"], attrs["code.function.name"]) == (
        __file__,
        line,
        qualname,
    )


def test_code_location_can_be_switched_off(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel(code_location_enabled=False)
    request(otel)
    assert not any("code.file.path" in (s.attributes or {}) for s in otel.spans())
    (event,) = otel.events("n_plus_one_query")
    assert F + "code_location" not in (event.log_record.attributes or {})


def test_code_attributes_set_by_the_instrumentation_are_kept(otel: OTel) -> None:
    code: dict[str, Any] = {"code.file.path": "/srv/app.py", "code.line.number": 3}
    query(otel, **code)
    (span,) = otel.spans()
    assert (span.attributes or {})["code.file.path"] == "/srv/app.py"


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        (SpanLimits(max_span_attribute_length=6), {"code.file.path": __file__[:6]}),
        # No room for all three: none is added, rather than evict the statement.
        (SpanLimits(max_span_attributes=3), {"db.statement": "select 1", "code.file.path": None}),
        (
            SpanLimits(max_span_attributes=5),
            {
                "db.statement": "select 1",
                "code.function.name": code_function_name(
                    "test_code_attributes_obey_the_span_limits.<locals>.test_span_limits"
                ),
            },
        ),
    ],
)
def test_code_attributes_obey_the_span_limits(limits: SpanLimits, expected: dict[str, object]) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=limits)
    provider.add_span_processor(
        APMSpanProcessor(SimpleSpanProcessor(exporter), console_enabled=False, code_attributes_min_ms=0)
    )
    tracer = provider.get_tracer("tests")

    def test_span_limits() -> None:
        attrs = {"db.system": "sqlite", "db.statement": "select 1"}
        with tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT, attributes=attrs):
            pass

    test_span_limits()
    provider.shutdown()
    (span,) = exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert len(attributes) <= (limits.max_span_attributes or 128)
    for key, value in expected.items():
        assert attributes.get(key) == value, (key, attributes)


def test_library_and_own_frames_are_not_application_frames() -> None:
    site = CallSite()
    assert site.is_app(__file__)
    assert not site.is_app(inspect.getfile(inspect))  # the standard library
    assert not site.is_app(inspect.getfile(pytest))  # an installed package
    assert not site.is_app(inspect.getfile(CallSite))  # otel_apm itself
    assert not site.is_app("<frozen importlib._bootstrap>")
    assert site.find(sys._getframe()) == (__file__, sys._getframe().f_lineno, inspect.stack()[0].function)


# -- suppression ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule",
    [
        {"type": "n_plus_one_query"},
        {"endpoint": "GET /auth*"},
        {"statement": "SELECT books.id*"},  # matched against the normalized (lower-case) text
        {"code": "*test_analysis.py:*:query"},
        {"type": "n_plus_one_query", "endpoint": "GET /authors"},
    ],
)
def test_a_matching_rule_silences_the_finding_and_counts_it(
    make_otel: Callable[..., OTel], rule: dict[str, str]
) -> None:
    otel = make_otel(suppressions=[rule])
    request(otel)
    request(otel, "/books")
    assert [(e.log_record.attributes or {})[F + "endpoint"] for e in otel.events()] == (
        [] if "endpoint" not in rule else ["GET /books"]
    )
    assert otel.stats()["findings_suppressed"] == (1 if "endpoint" in rule else 2)


@pytest.mark.parametrize(
    "rule",
    [
        {"type": "slow_query"},
        {"endpoint": "GET /other"},
        {"code": "*other.py:*"},
        {"type": "n_plus_one_query", "endpoint": "POST /authors"},
    ],
)
def test_a_rule_that_does_not_match_every_key_keeps_the_finding(
    make_otel: Callable[..., OTel], rule: dict[str, str]
) -> None:
    otel = make_otel(suppressions=[rule])
    request(otel)
    assert len(otel.events("n_plus_one_query")) == 1
    assert otel.stats()["findings_suppressed"] == 0


def test_rules_come_from_the_file_the_variable_names(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("- type: n_plus_one_query\n  endpoint: GET /reports/*\n- code: '*/batch.py:*'\n")
    config = APMConfig.from_env({"APM_SUPPRESSIONS_FILE": str(path)})
    assert config.suppressions == (
        Suppression(type="n_plus_one_query", endpoint="GET /reports/*"),
        Suppression(code="*/batch.py:*"),
    )
    json_path = tmp_path / "rules.json"
    json_path.write_text('[{"statement": "select * from audit*"}]')
    assert APMConfig.from_env({"APM_SUPPRESSIONS_FILE": str(json_path)}).suppressions == (
        Suppression(statement="select * from audit*"),
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("- typo: x\n", r"unknown key\(s\) \['typo'\]"),
        ("- {}\n", "needs at least one of"),
        ("type: x\n", "expected a list of rules"),
        ("- [1, 2]\n", "a suppression rule is a mapping"),
        ("- type: [\n", "cannot read the rules"),
    ],
)
def test_a_bad_rules_file_is_refused_naming_the_variable(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        APMConfig.from_env({"APM_SUPPRESSIONS_FILE": str(path)})


def test_a_missing_rules_file_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"APM_SUPPRESSIONS_FILE='/nonexistent.yaml': cannot read"):
        APMConfig.from_env({"APM_SUPPRESSIONS_FILE": "/nonexistent.yaml"})


# -- disabling detectors -------------------------------------------------------------------------


def test_a_disabled_detector_does_not_run(make_otel: Callable[..., OTel]) -> None:
    config = APMConfig.from_env({"APM_DISABLED_DETECTORS": "n_plus_one_query, slow_query"})
    assert config.disabled_detectors == ("n_plus_one_query", "slow_query")
    otel = make_otel(disabled_detectors=config.disabled_detectors)
    request(otel)
    assert otel.events() == []


def test_an_unknown_detector_name_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown detector.*n_plus_one_queries.*known: .*n_plus_one_query"):
        Analyzer(APMConfig(disabled_detectors=("n_plus_one_queries",)))


# -- ranking and memory --------------------------------------------------------------------------


def test_findings_carry_impact_and_rate_and_a_recurring_one_rates_higher(otel: OTel) -> None:
    request(otel, n=6)
    request(otel, n=6)
    first, second = (e.log_record.attributes or {} for e in otel.events("n_plus_one_query"))
    assert first[F + "fingerprint"] == second[F + "fingerprint"]
    assert float(first[F + "impact_ms"]) >= 0  # type: ignore[arg-type]
    assert float(second[F + "rate_per_min"]) > float(first[F + "rate_per_min"]) > 0  # type: ignore[arg-type]


def test_rates_decay_when_a_problem_stops() -> None:
    now = [0.0]
    rates = FindingRates(time_constant_s=60.0, clock=lambda: now[0])
    for _ in range(10):
        rates.observe("a")
    busy = rates.observe("a")
    now[0] = 600.0  # ten time constants later
    assert rates.observe("a") < busy / 100 + 1.01
    assert rates.observe("b") == pytest.approx(1.0)  # one occurrence over a one-minute constant


def trips(durations_ms: dict[str, list[float]]) -> StatementGroups:
    """One trace's DB round trips of service "svc": spans of the given durations by fingerprint."""
    return {
        ("svc", fingerprint): (
            parse_sql(f"SELECT {fingerprint}"),
            [SpanView(1, 2, 1, "SELECT", 0, 10**9, 10**9 + round(ms * 1e6), False, "svc", DB) for ms in runs],
        )
        for fingerprint, runs in durations_ms.items()
    }


def test_rates_and_query_history_are_bounded() -> None:
    rates = FindingRates(max_keys=3)
    for key in "abcd":
        rates.observe(key)
    assert len(rates._counts) == 3 and "a" not in rates._counts
    history = QueryHistory(max_keys=2)
    for key in ("a", "b", "c"):
        history.add_trips(trips({key: [1.0] * 30}))
    assert len(history) == 2 and history.p95(("svc", "a"), 1) is None


def test_query_history_evicts_the_least_recently_updated_statement() -> None:
    """One trace's statements are written together; a statement written again moves last."""
    history = QueryHistory(max_keys=3)
    history.add_trips(trips({"a": [1.0], "b": [2.0], "c": [3.0]}))
    history.add_trips(trips({"a": [1.5], "d": [4.0]}))  # b is now the oldest
    assert len(history) == 3
    assert history.p95(("svc", "b"), 1) is None
    assert [history.p95(("svc", k), 1) for k in "acd"] == [1.5, 3.0, 4.0]
    history.add_trips(trips({"e": [5.0], "b": [6.0]}))  # then c, then a go
    assert [history.p95(("svc", k), 1) for k in "abcde"] == [None, 6.0, None, 4.0, 5.0]


def test_query_history_p95_over_the_recent_samples() -> None:
    history = QueryHistory()
    key = ("svc", "f")
    assert history.p95(key, 1) is None
    history.add_trips(trips({"f": [float(i) for i in range(1, 101)]}))  # 1..100
    assert history.p95(key, 20) == 95.0
    assert history.p95(key, 101) is None  # too few samples to trust
    history.add_trips(trips({"f": [1000.0] * 256}))  # only the last 256 are kept
    assert history.p95(key, 20) == 1000.0


@pytest.mark.parametrize("native_enabled", [True, False])
def test_query_history_keeps_the_last_256_in_a_ring_the_collector_does_not_walk(native_enabled: bool) -> None:
    """Past 256 samples each new one replaces the oldest, whichever writes them (the compiled
    twin or Python); the ring is an array of doubles, whose samples the cycle collector does
    not visit (a deque's 256 floats were each visited by every full collection)."""
    history = QueryHistory(compiled=native(native_enabled))
    key = ("svc", "f")
    history.add_trips(trips({"f": [float(i) for i in range(200)]}))
    history.add_trips(trips({"f": [float(i) for i in range(200, 300)]}))  # wraps: 0..43 go
    samples = history._samples[key]
    assert samples.added == 300
    assert sorted(samples) == [float(i) for i in range(44, 300)]
    assert isinstance(samples.ring, array) and samples.ring.typecode == "d"
    assert gc.get_referents(samples.ring) == [array]  # its type only
    assert samples.ring[300 % 256 - 1] == 299.0  # the newest sits just before the next write


def test_query_history_p95_is_recomputed_after_16_new_samples() -> None:
    """Between refreshes a read returns the p95 last computed, though samples came meanwhile;
    the count carries over batches and the refresh is per statement."""
    history = QueryHistory()
    key, other = ("svc", "f"), ("svc", "g")
    history.add_trips(trips({"f": [1.0] * 100, "g": [2.0] * 20}))
    assert history.p95(key, 1) == 1.0 and history.p95(other, 1) == 2.0
    for _ in range(3):
        history.add_trips(trips({"f": [500.0] * 5, "g": [9.0] * 16}))  # 15 new samples of f
    assert history.p95(key, 1) == 1.0  # cached
    assert history.p95(other, 1) == 9.0  # 48 new samples of g: recomputed
    history.add_trips(trips({"f": [500.0]}))  # the 16th
    assert history.p95(key, 1) == 500.0


def test_evidence_is_named_alike_past_the_bound_of_remembered_names() -> None:
    """The joined evidence names are remembered up to a bound; past it they are joined anew,
    with the same attributes in the same order."""
    evidence: dict[str, EvidenceValue] = {f"e{i}": i for i in range(300)}
    evidence["tables"] = ("a", "b")
    finding = Finding(
        "n_plus_one_query",
        "N+1",
        "warning",
        "f00d",
        "svc",
        "/a",
        1,
        (2, 3),
        2,
        1.0,
        0.5,
        "Fix",
        evidence=evidence,
    )
    for _ in range(2):  # names made, then names remembered (those within the bound)
        attrs = dict(finding_attributes(dataclasses.replace(finding)))
        named = {k: v for k, v in attrs.items() if k.startswith(F + "evidence.")}
        assert list(named) == [F + "evidence." + k for k in evidence]
        assert named[F + "evidence.e299"] == 299 and named[F + "evidence.tables"] == ["a", "b"]
        assert attrs[F + "span_ids"] == ["0000000000000002", "0000000000000003"]


def test_a_rated_copy_of_a_finding_has_attributes_of_its_own() -> None:
    """The attributes a finding caches are of its own rate: the ranked copy builds its own."""
    finding = Finding(
        "n_plus_one_query", "N+1", "warning", "f00d", "svc", "/a", 1, (2, 3), 2, 1.0, 0.5, "Fix"
    )
    assert finding_attributes(finding)[F + "rate_per_min"] == 0.0
    rated = finding.rated(2.5)
    assert rated == dataclasses.replace(finding, rate_per_min=2.5)
    assert finding_attributes(rated)[F + "rate_per_min"] == 2.5
    assert finding_attributes(finding)[F + "rate_per_min"] == 0.0
