"""The call-site walk in C (csrc/callsite.c) against its Python twin (CallSite.record), on real
stacks: each workload runs through two pipelines, compiled walk and Python walk, and both must
name the same application line, the one the test marks."""

from __future__ import annotations

import asyncio
import inspect
import sys
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
import requests
from conftest import OTel, in_forked_child, require_native
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.trace import Span, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Tracer
from sqlalchemy import create_engine, text

from otel_apm import APMSpanProcessor
from otel_apm.ingest.callsite import (
    CODE_FILE_PATH,
    CODE_FUNCTION_NAME,
    CODE_LINE_NUMBER,
    MAX_DEPTH,
    MAX_PENDING,
    CallSite,
    recorder,
)

Found = tuple[object, object, object]  # code.file.path, code.line.number, code.function.name
Site = Found | None
Work = Callable[[OTel], None]


def sites(otel: OTel) -> list[Site]:
    """The code.* attributes of each client span, in the order the spans ended."""
    out: list[Site] = []
    for span in otel.spans():
        if span.kind is SpanKind.CLIENT:
            a = span.attributes or {}
            found = (a.get(CODE_FILE_PATH), a.get(CODE_LINE_NUMBER), a.get(CODE_FUNCTION_NAME))
            out.append(None if found == (None, None, None) else found)
    return out


def marked(function: Callable[..., object], marker: str, name: str = "") -> Found:
    """The site of the line of ``function`` holding ``marker``."""
    lines, first = inspect.getsourcelines(function)
    line = first + next(i for i, text in enumerate(lines) if marker in text)
    return (inspect.getsourcefile(function), line, name or function.__qualname__)


def require_compiled_walk() -> ModuleType:
    """The extension, or skip: its walk is built only for the interpreters whose frame layout it
    knows (CPython 3.11); elsewhere record() is the Python version whichever is asked for."""
    module = require_native()
    if not hasattr(module, "CallSiteRecorder"):
        pytest.skip(f"csrc/callsite.c has no walk for Python {sys.version_info[:2]}")
    return module


@pytest.fixture
def both(make_otel: Callable[..., OTel]) -> Callable[[Work], list[Site]]:
    """``both(work)``: run ``work`` in a pipeline with the compiled walk, then in one with the
    Python walk; the sites they recorded, which must be the same.  Every client span is exported
    with its code.* attributes here (APM_CODE_ATTRIBUTES_MIN_MS=0), so each site found is seen."""
    module = require_compiled_walk()
    assert getattr(recorder(CallSite(), module), "__self__", None).__class__ is module.CallSiteRecorder

    def run(work: Work) -> list[Site]:
        compiled = make_otel(native_enabled=True, code_attributes_min_ms=0)
        python = make_otel(native_enabled=False, code_attributes_min_ms=0)
        work(compiled)
        work(python)
        assert sites(compiled) == sites(python)
        return sites(compiled)

    return run


def start_client_span(tracer: Tracer) -> None:
    with tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT):  # THE SPAN
        pass


# -- real instrumentations ----------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'callsite.db'}"


def test_sqlalchemy_over_sqlite(both: Callable[[Work], list[Site]], sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)

    def work(otel: OTel) -> None:
        instrumentor = SQLAlchemyInstrumentor()
        instrumentor.instrument(engine=engine, tracer_provider=otel.tracer_provider)
        try:
            with engine.connect() as conn:  # THE CONNECT
                for _ in range(3):
                    conn.execute(text("SELECT 1")).all()  # THE QUERY
        finally:
            instrumentor.uninstrument()

    try:
        found = both(work)
    finally:
        engine.dispose()
    name = "test_sqlalchemy_over_sqlite.<locals>.work"
    assert found == [marked(work, "# THE CONNECT", name)] + [marked(work, "# THE QUERY", name)] * 3


def test_requests_to_a_local_server(both: Callable[[Work], list[Site]], serve_wsgi: Any) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    url = serve_wsgi(app)

    def work(otel: OTel) -> None:
        instrumentor = RequestsInstrumentor()
        instrumentor.instrument(tracer_provider=otel.tracer_provider)
        try:
            assert requests.get(url, timeout=10).text == "ok"  # THE CALL
        finally:
            instrumentor.uninstrument()

    assert both(work) == [marked(work, "# THE CALL", "test_requests_to_a_local_server.<locals>.work")]


# -- frames of every kind ------------------------------------------------------------------------


def rows(tracer: Tracer, n: int) -> Iterator[int]:
    for i in range(n):
        with tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT):  # IN THE GENERATOR
            pass
        yield i


def test_a_generator(both: Callable[[Work], list[Site]]) -> None:
    def work(otel: OTel) -> None:
        assert list(rows(otel.tracer, 3)) == [0, 1, 2]

    assert both(work) == [marked(rows, "# IN THE GENERATOR")] * 3


async def fetch(tracer: Tracer) -> None:
    with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT):  # BEFORE AWAITING
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT):  # AFTER RESUMING
        pass


def test_a_coroutine(both: Callable[[Work], list[Site]]) -> None:
    assert both(lambda otel: asyncio.run(fetch(otel.tracer))) == [
        marked(fetch, "# BEFORE AWAITING"),
        marked(fetch, "# AFTER RESUMING"),
    ]


def test_another_thread(both: Callable[[Work], list[Site]]) -> None:
    def work(otel: OTel) -> None:
        thread = threading.Thread(target=start_client_span, args=(otel.tracer,))
        thread.start()
        thread.join()

    assert both(work) == [marked(start_client_span, "# THE SPAN")]


def test_code_run_by_exec_is_not_the_application(both: Callable[[Work], list[Site]]) -> None:
    def work(otel: OTel) -> None:
        source = "with tracer.start_as_current_span('SELECT', kind=CLIENT):\n    pass\n"
        exec(source, {"tracer": otel.tracer, "CLIENT": SpanKind.CLIENT})  # THE EXEC

    assert both(work) == [
        marked(work, "# THE EXEC", "test_code_run_by_exec_is_not_the_application.<locals>.work")
    ]


DIVE = """
def dive(n, tracer, kind):
    if n:
        return dive(n - 1, tracer, kind)
    with tracer.start_as_current_span("SELECT", kind=kind):
        pass
"""


def test_recursion_past_max_depth(both: Callable[[Work], list[Site]]) -> None:
    """Library frames (here exec'd code) deeper than MAX_DEPTH hide the application: both walks
    give up at the same depth."""
    namespace: dict[str, Any] = {}
    exec(compile(DIVE, "<string>", "exec"), namespace)
    depths = range(MAX_DEPTH - 12, MAX_DEPTH + 1)

    def work(otel: OTel) -> None:
        for n in depths:
            namespace["dive"](n, otel.tracer, SpanKind.CLIENT)  # THE DIVE

    found = both(work)
    site = marked(work, "# THE DIVE", "test_recursion_past_max_depth.<locals>.work")
    assert site in found and None in found
    assert found == sorted(found, key=lambda s: s is None)  # found while shallow enough, then not


# -- the span's attributes -----------------------------------------------------------------------


def test_the_instrumentations_code_attributes_are_kept(both: Callable[[Work], list[Site]]) -> None:
    def work(otel: OTel) -> None:
        attrs: dict[str, str | int] = {CODE_FILE_PATH: "/srv/app.py", CODE_LINE_NUMBER: 3}
        with otel.tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT, attributes=attrs):
            pass

    assert both(work) == [("/srv/app.py", 3, None)]


STATEMENT = {"db.statement": "select 1"}


def start_client_span_with_statement(tracer: Tracer) -> None:
    with tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT, attributes=STATEMENT):  # HERE
        pass


FILE, LINE, FUNCTION = marked(start_client_span_with_statement, "# HERE")


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        # full: without room for all three, none is added (the SDK would evict the statement)
        (SpanLimits(max_span_attributes=2), STATEMENT),
        (
            SpanLimits(max_span_attributes=4),
            {**STATEMENT, CODE_FILE_PATH: FILE, CODE_LINE_NUMBER: LINE, CODE_FUNCTION_NAME: FUNCTION},
        ),
        # a value-length limit: added through the SDK's own method, which cuts every value
        (
            SpanLimits(max_span_attribute_length=6),
            {
                "db.statement": "select",
                CODE_FILE_PATH: str(FILE)[:6],
                CODE_LINE_NUMBER: LINE,
                CODE_FUNCTION_NAME: "start_",
            },
        ),
    ],
    ids=["full", "room", "value_length"],
)
@pytest.mark.parametrize("compiled", [True, False], ids=["c", "python"])
def test_span_limits(limits: SpanLimits, expected: dict[str, object], compiled: bool) -> None:
    if compiled:
        require_compiled_walk()
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=limits)
    provider.add_span_processor(
        APMSpanProcessor(
            SimpleSpanProcessor(exporter),
            console_enabled=False,
            native_enabled=compiled,
            code_attributes_min_ms=0,
        )
    )
    start_client_span_with_statement(provider.get_tracer("tests"))
    provider.shutdown()
    (span,) = exporter.get_finished_spans()
    assert dict(span.attributes or {}) == expected


def test_what_is_not_a_span_fails_alike() -> None:
    """Anything but the SDK's span goes to the Python version, so it fails the same way (the
    processor contains and counts it)."""
    module = require_compiled_walk()
    callsite = CallSite()
    with pytest.raises(AttributeError):
        callsite.record(object())  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        recorder(callsite, module)(object())  # type: ignore[arg-type]
    with pytest.raises(AttributeError):  # it reads the CallSite's memo of classified files
        module.CallSiteRecorder(object())


def test_a_span_is_asked_whether_it_records_unless_its_class_answers_as_the_sdks() -> None:
    """The compiled walk reads the end time where the SDK's Span.is_recording() would; a span
    class with an is_recording() of its own is asked, as the Python version asks every span.
    Either way an ended span gets nothing, and a recording one the call's site, pending by its id."""
    module = require_compiled_walk()
    tracer = TracerProvider().get_tracer("tests")
    asked: list[str] = []

    class Asked(type(tracer.start_span("probe"))):  # type: ignore[misc]
        def is_recording(self) -> bool:
            asked.append(self.name)
            return bool(super().is_recording())

    for callsite, compiled in ((CallSite(), False), (CallSite(), True)):
        record = recorder(callsite, module) if compiled else callsite.record
        ended = tracer.start_span("ended", kind=SpanKind.CLIENT)
        ended.end()
        own = tracer.start_span("own", kind=SpanKind.CLIENT)
        own.__class__ = Asked
        assert isinstance(ended, Span) and isinstance(own, Span)  # the SDK's, whose attributes are read
        for span in (ended, own):
            record(span)
        assert ended.context.span_id not in callsite.pending
        attrs, location = callsite.pending[own.context.span_id]
        assert attrs[CODE_FILE_PATH] == __file__ and location.startswith(f"{__file__}:")
        assert CODE_FILE_PATH not in (own.attributes or {})  # the span itself is not written
    assert asked == ["own", "own"]


@pytest.mark.parametrize("compiled", [True, False], ids=["c", "python"])
def test_the_sites_waiting_are_bounded(compiled: bool) -> None:
    """Spans that start and never end (an application's leak, or a span this processor never
    sees end) must not grow the map without end: at MAX_PENDING it starts over."""
    callsite = CallSite()
    record = recorder(callsite, require_compiled_walk()) if compiled else callsite.record
    tracer = TracerProvider().get_tracer("tests")
    spans = [tracer.start_span("SELECT", kind=SpanKind.CLIENT) for _ in range(MAX_PENDING + 1)]
    for span in spans:
        assert isinstance(span, Span)  # the SDK's
        record(span)
    assert list(callsite.pending) == [spans[-1].get_span_context().span_id]


def test_a_forked_child_forgets_the_parents_waiting_sites() -> None:
    """The parent's spans end in the parent: a child (gunicorn --preload) starts with none."""
    callsite = CallSite()
    span = TracerProvider().get_tracer("tests").start_span("SELECT", kind=SpanKind.CLIENT)
    assert isinstance(span, Span)  # the SDK's
    callsite.record(span)
    assert len(callsite.pending) == 1
    in_forked_child(lambda: not callsite.pending)
    assert len(callsite.pending) == 1
