"""csrc/sdkviews.c, the compiled SDK intake: every view it makes equals the Python reader's.

The reference is ``SpanReader()`` without the compiled module (its views are _view_fields',
proved against the public properties on the first span); the compiled reader is
``SpanReader(otel_apm._native)``.  Spans come from the real SDK, through real instrumentations
(SQLAlchemy on SQLite, Flask served by werkzeug, requests) and from hypothesis-made attributes,
and each batch is read twice: once filling the shape cache, once from it.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
import requests
from conftest import OTel, require_native
from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags
from opentelemetry.trace import Status as ApiStatus
from opentelemetry.util.types import AttributeValue
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.orm import Session

from otel_apm import model
from otel_apm.demo.app import Author, add_authors
from otel_apm.ingest import sdk
from otel_apm.ingest.sdk import SpanReader
from otel_apm.model import SpanView
from otel_apm.semconv import ANALYZED_KEYS, filled_slots

SERVICE = "sdkviews-svc"


@pytest.fixture(autouse=True)
def fresh_fills(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with an empty shape cache, so its first read fills it."""
    monkeypatch.setattr(sdk, "_FILLS", None)  # the first compiled reader makes a new one


def compiled_reader(probe: ReadableSpan) -> SpanReader:
    """A reader on the compiled path, which it takes only after agreeing on ``probe``."""
    reader = SpanReader(require_native())
    reader.read(probe, SERVICE)
    assert reader.compiled and reader.fast
    return reader


def assert_same_views(spans: Sequence[ReadableSpan]) -> list[SpanView]:
    """The compiled views of ``spans``, read twice (filling the cache, then from it), equal
    the Python reader's in every slot, value and type alike, and are left out of the cycle
    collector's walks.  Returns them."""
    expected = SpanReader().read_all(spans, SERVICE)
    reader = compiled_reader(spans[0])
    for _ in range(2):
        views = reader.read_all(spans, SERVICE)
        assert len(views) == len(spans)
        for span, view, want in zip(spans, views, expected, strict=True):
            assert type(view) is SpanView
            # Atomic slots only: the cycle collector need not walk the view (apm_view_untrack_if_atomic).
            assert not gc.is_tracked(view), span.name
            for slot in SpanView.__slots__:
                got, wanted = getattr(view, slot), getattr(want, slot)
                assert (type(got), got) == (type(wanted), wanted), (span.name, slot)
    return views


# -- real instrumentations -----------------------------------------------------------------------


class Boom(Exception):
    """What the failing route raises: its type is the exception event's."""


def make_app(engine: Engine) -> Flask:
    app = Flask(__name__)

    def authors() -> ResponseReturnValue:
        with Session(engine) as session:  # the N+1: one lazy load of books per author
            found = session.scalars(select(Author).order_by(Author.id)).all()
            return jsonify([{"name": a.name, "books": len(a.books)} for a in found])

    def author(author_id: int) -> ResponseReturnValue:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT name FROM authors WHERE id = :id"), {"id": author_id}).first()
        return jsonify(name=None if row is None else row[0])

    def broken() -> ResponseReturnValue:
        with engine.connect() as conn:
            conn.execute(text("SELECT * FROM no_such_table"))  # a failing query, then a 500
        raise Boom("unreachable")

    def fails() -> ResponseReturnValue:
        raise Boom("the route failed")

    app.add_url_rule("/authors", view_func=authors)
    app.add_url_rule("/authors/<int:author_id>", view_func=author)
    app.add_url_rule("/broken", view_func=broken)
    app.add_url_rule("/fails", view_func=fails)
    return app


@pytest.fixture
def engine(tmp_path: Any) -> Iterator[Engine]:
    # The werkzeug server thread uses the engine too, hence check_same_thread.
    engine = create_engine(f"sqlite:///{tmp_path / 'library.db'}", connect_args={"check_same_thread": False})
    add_authors(engine, 4, 2)
    yield engine
    engine.dispose()


def test_views_of_a_flask_sqlalchemy_requests_app_match(
    make_otel: Callable[..., OTel],
    engine: Engine,
    instrument_sqlalchemy: Callable[..., None],
    instrument_flask: Callable[..., None],
    instrument_requests: Callable[..., None],
    serve_wsgi: Callable[[Any], str],
) -> None:
    otel = make_otel(code_attributes_min_ms=0)  # the client spans exported with their code.*
    instrument_sqlalchemy([engine], otel.tracer_provider)
    app = make_app(engine)
    instrument_flask(app, otel.tracer_provider)
    instrument_requests(otel.tracer_provider)
    base = serve_wsgi(app)
    with otel.tracer.start_as_current_span("job"):  # the client spans' local root
        for path in ("/authors", "/authors/2", "/authors/3", "/broken", "/fails", "/missing"):
            requests.get(base + path, timeout=10)
        with pytest.raises(requests.ConnectionError):
            requests.get("http://127.0.0.1:9/refused", timeout=10)  # an exception event
    otel.wait_for(lambda: len([s for s in otel.spans() if s.kind == SpanKind.SERVER]) == 6)
    views = assert_same_views(otel.spans())
    categories = {v.category for v in views}
    assert {model.DB, model.DB_CONNECTION, model.HTTP_SERVER, model.HTTP_CLIENT} <= categories
    errors = {v.exception_type for v in views if v.error}
    assert {"test_sdkviews.Boom", "requests.exceptions.ConnectionError"} <= errors
    assert any(v.code for v in views if v.category == model.DB)  # our code.* attributes, read
    assert any(v.http_route == "/authors/<int:author_id>" for v in views)
    assert len(sdk._FILLS) > 0


# -- odd attributes ------------------------------------------------------------------------------

_TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["redis", "sqlite", "GET", "POST", "connect", "SELECT 1", "/users/{id}", "200"]),
    st.builds(lambda n, c: c * n, st.integers(10_000, 300_000), st.sampled_from("xé")),  # huge
)
_SCALARS = st.one_of(
    _TEXT,
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, 200, 404, True, False, 0.0, -0.0, 1.0, 200.0, 1.5]),
    st.booleans(),
    st.floats(),
)
_VALUES = st.one_of(
    _SCALARS,
    st.lists(st.integers(0, 500), max_size=3).map(tuple),
    st.lists(st.text(max_size=5), max_size=3).map(tuple),
    st.lists(st.booleans(), max_size=3).map(tuple),
    st.lists(st.floats(), max_size=3).map(tuple),
)
_KEYS = st.one_of(
    st.sampled_from(sorted(ANALYZED_KEYS)),
    st.sampled_from(["db.query.parameter.id", "http.route.template", "custom", "code.column"]),
)
_TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C


@dataclass
class SpanSpec:
    name: str
    kind: SpanKind
    attributes: dict[str, Any]
    error: bool
    parent: str  # "none", "local" or "remote"
    exception: type[BaseException] | None
    other_events: bool


_SPECS = st.builds(
    SpanSpec,
    name=st.one_of(st.sampled_from(["connect", "SELECT", "GET /users/{id}", ""]), st.text(max_size=8)),
    kind=st.sampled_from(list(SpanKind)),
    attributes=st.dictionaries(_KEYS, _VALUES, max_size=10),
    error=st.booleans(),
    parent=st.sampled_from(["none", "local", "remote"]),
    exception=st.sampled_from([None, None, ValueError, TimeoutError, Boom]),
    other_events=st.booleans(),
)
_PROVIDER = TracerProvider()  # no processor: the ended spans are read directly


def make_span(spec: SpanSpec) -> ReadableSpan:
    tracer = _PROVIDER.get_tracer("hypothesis")
    context = None
    if spec.parent == "remote":
        remote = SpanContext(_TRACE_ID, 0x1234, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
        context = trace.set_span_in_context(NonRecordingSpan(remote))
    elif spec.parent == "local":
        context = trace.set_span_in_context(tracer.start_span("outer"))
    span = tracer.start_span(spec.name, context=context, kind=spec.kind, attributes=spec.attributes)
    if spec.other_events:
        span.add_event("retry", {"exception.type": "NotAnException"})  # not an exception event
        span.add_event("exception", {"exception.message": "no type"})
    if spec.exception is not None:
        span.record_exception(spec.exception("odd"))
    if spec.error:
        span.set_status(ApiStatus(StatusCode.ERROR))
    span.end()
    assert isinstance(span, ReadableSpan)
    return span


def client_span(attributes: dict[str, Any]) -> ReadableSpan:
    """A plain client span with these attributes, no parent, no error."""
    return make_span(SpanSpec("q", SpanKind.CLIENT, attributes, False, "none", None, False))


def refreshed(value: Any) -> Any:
    """An equal value in other objects where Python makes new ones (not the cached small ints,
    the empty string or one-character strings), as an instrumentation may make them each span."""
    if type(value) is str:
        return "".join(list(value))
    if type(value) is int:
        return int(str(value))
    if type(value) is tuple:
        return tuple(refreshed(v) for v in value)
    return value


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(_SPECS, min_size=1, max_size=6))
def test_views_of_odd_attributes_match(specs: list[SpanSpec]) -> None:
    sdk._FILLS = None
    again = [
        SpanSpec(**{**vars(spec), "attributes": {k: refreshed(v) for k, v in spec.attributes.items()}})
        for spec in specs
    ]
    spans = [make_span(spec) for spec in specs + specs + again]  # each shape thrice in the batch
    assert_same_views(spans)


def test_equal_values_of_other_types_make_other_shapes() -> None:
    """True == 1 == 1.0 and -0.0 == 0.0 in Python, but each reads otherwise (str(), cache.hit)."""
    values: list[Any] = [1, True, 1.0, 0, False, 0.0, -0.0, "1", "True"]
    keys = ("db.operation", "cache.hit", "db.collection.name")
    views = assert_same_views([client_span({"db.system": "x", key: v}) for key in keys for v in values])
    assert [v.db_operation for v in views[: len(values)]] == [str(v) for v in values]
    assert [v.cached for v in views[len(values) : 2 * len(values)]] == [v is True for v in values]


def test_spans_with_attributes_outside_the_sdk_dict_are_read_by_python() -> None:
    """A ReadableSpan made by hand keeps a plain dict, not BoundedAttributes: the compiled
    reader hands it to _view_fields, which reads the public mapping."""
    context = SpanContext(_TRACE_ID, 0x99, is_remote=False)
    spans = [
        ReadableSpan(
            name="SELECT",
            context=context,
            kind=SpanKind.CLIENT,
            attributes={"db.system": "postgresql", "db.statement": "SELECT 1"},
        ),
        ReadableSpan(name="bare", context=context),
    ]
    views = assert_same_views(spans)
    assert views[0].statement == "SELECT 1" and views[1].category == model.INTERNAL


def test_the_fills_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdk, "FILLS_MAX", 2)
    assert_same_views([client_span({"db.system": "sqlite", "db.statement": f"SELECT {i}"}) for i in range(5)])
    assert len(sdk._FILLS) <= 2


def test_huge_strings_are_read_but_not_cached() -> None:
    """A long one-off statement (values inlined) is read, but kept out of the cache of shapes."""
    statement = "SELECT 1 -- " + "x" * 10_000
    views = assert_same_views([client_span({"db.system": "x", "db.statement": statement})])
    assert views[0].statement == statement
    assert len(sdk._FILLS) == 0


def test_equal_values_in_other_objects_are_one_shape() -> None:
    """The shapes are found by their values, not their objects: a statement made afresh for each
    query (as Django's compiler makes it) takes the fill of the first."""
    statements = ["".join(["SELECT * FROM t WHERE id = ", "%s"]) for _ in range(3)]
    assert statements[0] is not statements[1]
    spans = [client_span({"db.system": "pg", "db.statement": q, "code.lineno": 7}) for q in statements]
    views = assert_same_views(spans)
    assert {v.statement for v in views} == {statements[0]}
    assert len(sdk._FILLS) == 1


def test_attributes_set_again_or_evicted_are_read_from_what_is_left() -> None:
    """An attribute set again is removed and added anew, and a full span drops its oldest: the
    SDK's dict then holds removed entries, which the compiled walk of it skips."""
    tracer = TracerProvider(span_limits=SpanLimits(max_span_attributes=3)).get_tracer("limits")
    spans = []
    for i in range(3):
        first: dict[str, AttributeValue] = {"custom": 1, "db.system": "sqlite", "db.statement": f"SELECT {i}"}
        span = tracer.start_span("q", kind=SpanKind.CLIENT, attributes=first)
        span.set_attribute("db.statement", "SELECT 9")  # removed, then added last
        span.set_attribute("server.address", "db.local")  # drops the oldest: custom
        span.end()
        assert isinstance(span, ReadableSpan)
        spans.append(span)
    views = assert_same_views(spans)
    assert [(v.category, v.statement, v.server_address) for v in views] == [
        (model.DB, "SELECT 9", "db.local")
    ] * 3


# -- where the fields are kept (csrc/fields.c) ---------------------------------------------------


def test_spans_whose_dict_was_made_are_read_from_it() -> None:
    """``vars(span)`` moves an instance's attributes from the class's shared layout into a dict
    of its own: the compiled reader then reads them as getattr does, changes included."""
    spans = [client_span({"db.system": "sqlite", "db.statement": f"SELECT {i}"}) for i in range(4)]
    assert_same_views(spans)
    vars(spans[1])["_name"] = "renamed"
    vars(spans[2])
    views = assert_same_views(spans)
    assert [v.name for v in views] == ["q", "renamed", "q", "q"]


def test_a_span_class_changed_after_reading_is_read_as_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled reader learns where a class keeps its fields; a field the class then defines
    itself (a property over the instance's value) is read through it, as getattr reads it."""
    spans = [client_span({"db.system": "sqlite"}), client_span({"http.request.method": "GET"})]
    assert [v.kind for v in assert_same_views(spans)] == [SpanKind.CLIENT.value] * 2
    monkeypatch.setattr(type(spans[0]), "_kind", property(lambda span: SpanKind.PRODUCER), raising=False)
    views = assert_same_views(spans)
    assert [v.kind for v in views] == [SpanKind.PRODUCER.value] * 2
    assert views[1].category == model.HTTP_SERVER  # not a client any more


def test_a_field_missing_from_a_span_raises_attribute_error() -> None:
    span = client_span({"db.system": "x"})
    reader = compiled_reader(span)
    assert reader.read_all([span], SERVICE)[0].scope == "hypothesis"
    del span._instrumentation_scope
    with pytest.raises(AttributeError):
        reader.read_all([span], SERVICE)
    with pytest.raises(AttributeError):
        sdk._view_fields(span, SERVICE)


# -- the probe rule and odd input ----------------------------------------------------------------


def test_the_compiled_path_is_taken_only_once_it_agreed() -> None:
    """A compiled reader whose view differs from the public properties' is never used."""
    real = require_native()
    fake = ModuleType("fake_native")

    def read_sdk_spans(spans: Sequence[ReadableSpan], *args: Any) -> list[SpanView]:
        views: list[SpanView] = real.read_sdk_spans(spans, *args)
        for view in views:
            view.scope = "wrong"
        return views

    fake.read_sdk_spans = read_sdk_spans  # type: ignore[attr-defined]
    fake.Fills = real.Fills  # type: ignore[attr-defined]
    span = client_span({"db.system": "x"})
    reader = SpanReader(fake)
    first = reader.read(span, SERVICE)
    assert reader.fast and not reader.compiled
    assert first.scope == "hypothesis"
    assert [v.scope for v in reader.read_all([span, span], SERVICE)] == [first.scope, first.scope]


def test_the_keys_analyzed_are_those_of_the_set_given() -> None:
    """The compiled reader remembers which attribute keys are analyzed, for the set it is given:
    another set (or a mutable one) is answered afresh."""
    module = require_native()
    span = client_span({"db.system": "x", "db.statement": "SELECT 1"})

    def category(keys: Any) -> str:
        args = (SERVICE, keys, sdk._KIND, StatusCode.ERROR, module.Fills(10), filled_slots)
        views = module.read_sdk_spans([span], *args, sdk._read_exception, sdk._view_fields, BoundedList)
        return str(views[0].category)

    # A span with no key in the set is not filled at all; one with any is filled from all its keys.
    for keys in (ANALYZED_KEYS, frozenset({"http.route"}), set(ANALYZED_KEYS), frozenset(), ANALYZED_KEYS):
        assert category(keys) == (model.DB if "db.system" in keys else model.INTERNAL)


def test_odd_input_raises_python_exceptions() -> None:
    module = require_native()
    span = client_span({"db.system": "x"})

    def args(**given: Any) -> list[Any]:
        named = {
            "spans": [span],
            "service": SERVICE,
            "keys": ANALYZED_KEYS,
            "kinds": {k: k.value for k in SpanKind},
            "error": StatusCode.ERROR,
            "fills": module.Fills(10),
            "fill": lambda view, attrs: (),
            "read_exception": lambda view, events: None,
            "read_one": lambda span, service: (_ for _ in ()).throw(AttributeError("not a span")),
            "bounded_list": BoundedList,
        }
        return list({**named, **given}.values())

    assert module.read_sdk_spans(*args())[0].category == model.INTERNAL  # fill set nothing
    with pytest.raises(TypeError):
        module.read_sdk_spans(span)
    with pytest.raises(TypeError):
        module.read_sdk_spans(*args(fills=[]))
    with pytest.raises(TypeError):
        module.read_sdk_spans(*args(spans=3))
    with pytest.raises(AttributeError):
        module.read_sdk_spans(*args(spans=[span, object()]))  # the fallback's error, raised
    with pytest.raises(KeyError):
        module.read_sdk_spans(*args(kinds={}))
    with pytest.raises(TypeError):
        module.read_sdk_spans(*args(bounded_list=None))
    with pytest.raises(ValueError):
        module.read_sdk_spans(*args(fill=lambda view, attrs: (("no_such_slot", 1),)))
    with pytest.raises(TypeError):
        module.read_sdk_spans(*args(fill=lambda view, attrs: None))
    with pytest.raises(ZeroDivisionError):
        module.read_sdk_spans(*args(fill=lambda view, attrs: 1 / 0))
    with pytest.raises(TypeError):
        module.read_sdk_spans(*args(fills={}))
    with pytest.raises(ValueError):
        module.Fills(0)
