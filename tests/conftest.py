"""Shared fixtures: a real OTel SDK pipeline around the APM processor, real servers, real instrumentations.

Nothing here sets an OTel global (tracer, logger or meter provider): every pipeline is built per
test and handed explicitly to the processor and to the instrumentations, so tests cannot leak
state into each other through the API's globals.

Server-backed fixtures go through :func:`require_server`: when the server cannot be reached the
test is skipped with the reason, except under ``CI=true``, where a missing server is a failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, TypeVar

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

from otel_apm import APMConfig, APMSpanProcessor
from otel_apm.emit.attributes import EVENT_NAME

T = TypeVar("T")

SERVICE_NAME = "test-svc"
POSTGRES_ADDRESS = "127.0.0.1:5432"
POSTGRES_DATABASE = "test"
POSTGRES_USERS = ("postgres", "root")
MARIADB_ADDRESS = "127.0.0.1:3306"
MARIADB_DATABASE = "test"
MARIADB_USER = "root"
REDIS_ADDRESS = "127.0.0.1:6379"
CONNECT_TIMEOUT_S = 2


# The one setting the shell's environment gives the pipelines: APM_NATIVE_ENABLED=false runs the
# suite on the Python twins of the compiled paths, which must pass it alike.
NATIVE_ENABLED = APMConfig.from_env(
    {k: v for k, v in os.environ.items() if k == "APM_NATIVE_ENABLED"}
).native_enabled


def clean_environ() -> dict[str, str]:
    """This process's environment without the OTEL_* and APM_* variables of the shell running
    the tests, for a subprocess that must see only the settings its test gives."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "APM_"))}


# -- servers -------------------------------------------------------------------------------------


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def code_function_name(qualname: str) -> str:
    """The code.function.name of a function with this qualified name: on Python 3.10, whose code
    objects have no co_qualname, its last part only."""
    return qualname if sys.version_info >= (3, 11) else qualname.rsplit(".", 1)[-1]


def pyproject() -> dict[str, Any]:
    """The repository's pyproject.toml, parsed; the test is skipped on Python 3.10, which has
    no tomllib (under ``CI=true``, which runs 3.11, that is a failure)."""
    try:
        import tomllib  # type: ignore[import-not-found]  # mypy checks as Python 3.10 (pyproject), which has none
    except ImportError:  # Python 3.10
        if in_ci():
            raise
        pytest.skip("tomllib needs Python 3.11")
    path = Path(__file__).resolve().parent.parent / "pyproject.toml"
    return tomllib.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def require_server(name: str, probe: Callable[[], T], *, address: str = "") -> T:
    """``probe()``'s result, or skip the test (fail it under ``CI=true``) when it raises.

    ``probe`` connects to the server and returns what the test needs (a URL, a client); any
    exception it raises means "not reachable", and its message becomes part of the reason.
    """
    try:
        return probe()
    except Exception as exc:
        where = f" at {address}" if address else ""
        reason = f"{name} not reachable{where}: {type(exc).__name__}: {exc}".strip()
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


def require_native() -> ModuleType:
    """``otel_apm._native``, or skip the test (fail it under ``CI=true``, which builds it) when
    the extension was not built, e.g. for want of a C compiler at install time."""
    from otel_apm.native import native

    module = native()
    if module is None:
        reason = "otel_apm._native is not built (pip install needs a C compiler for it)"
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return module


def native_load_error(patch: str) -> str:
    """What importing the extension says in a fresh interpreter after ``patch`` (Python source)
    changed a class it relies on: the extension must refuse to load (so otel_apm.native falls
    back to Python) rather than misread the class.  The stderr of that import, which must fail."""
    require_native()
    script = patch + "from otel_apm.native import native\nassert native() is None\nimport otel_apm._native\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 1, done.stderr
    return done.stderr


def _probe_postgres() -> str:
    """The SQLAlchemy URL of the first user (postgres, then root) that can connect."""
    import psycopg2

    host, port = POSTGRES_ADDRESS.split(":")
    errors = []
    for user in POSTGRES_USERS:
        try:
            conn = psycopg2.connect(
                host=host,
                port=int(port),
                user=user,
                dbname=POSTGRES_DATABASE,
                connect_timeout=CONNECT_TIMEOUT_S,
            )
        except psycopg2.Error as exc:
            errors.append(f"user {user}: {' '.join(str(exc).split())}")
            continue
        conn.close()
        return f"postgresql+psycopg2://{user}@{POSTGRES_ADDRESS}/{POSTGRES_DATABASE}"
    raise ConnectionError("; ".join(errors))


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """``postgresql+psycopg2://<user>@127.0.0.1:5432/test``; skips (fails in CI) when unreachable."""
    return require_server("PostgreSQL", _probe_postgres, address=POSTGRES_ADDRESS)


@pytest.fixture(scope="session")
def require_postgres(postgres_url: str) -> str:
    """The name the brief uses; the same as ``postgres_url``."""
    return postgres_url


def _probe_mariadb() -> str:
    """The SQLAlchemy URL (PyMySQL driver) of the MariaDB test database, once a connection worked."""
    import pymysql

    host, port = MARIADB_ADDRESS.split(":")
    conn = pymysql.connect(
        host=host,
        port=int(port),
        user=MARIADB_USER,
        database=MARIADB_DATABASE,
        connect_timeout=CONNECT_TIMEOUT_S,
    )
    conn.close()
    return f"mysql+pymysql://{MARIADB_USER}@{MARIADB_ADDRESS}/{MARIADB_DATABASE}"


@pytest.fixture(scope="session")
def mariadb_url() -> str:
    """``mysql+pymysql://root@127.0.0.1:3306/test``; skips (fails in CI) when unreachable."""
    return require_server("MariaDB", _probe_mariadb, address=MARIADB_ADDRESS)


def _probe_redis() -> Any:
    """A client of the Redis server, once it answered PING."""
    import redis

    host, port = REDIS_ADDRESS.split(":")
    client = redis.Redis(host=host, port=int(port), socket_connect_timeout=CONNECT_TIMEOUT_S)
    client.ping()
    return client


@pytest.fixture(scope="session")
def redis_client() -> Iterator[Any]:
    """A ``redis.Redis`` client of 127.0.0.1:6379; skips (fails in CI) when unreachable."""
    client = require_server("Redis", _probe_redis, address=REDIS_ADDRESS)
    yield client
    client.close()


# -- the OTel pipeline ---------------------------------------------------------------------------


class EndCounter(SpanProcessor):
    """Counts the spans the SDK ended, independently of the APM processor and the exporter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = 0
        self.ended = 0

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        with self._lock:
            self.started += 1

    def on_end(self, span: ReadableSpan) -> None:
        with self._lock:
            self.ended += 1


@dataclass
class OTel:
    """One real SDK pipeline: tracer provider -> APMSpanProcessor -> SimpleSpanProcessor -> memory.

    Findings leave as log records (``events()``) and metrics (``metrics()``), exactly as they
    would towards an OTLP exporter.
    """

    tracer_provider: TracerProvider
    tracer: Tracer
    processor: APMSpanProcessor
    span_exporter: InMemorySpanExporter
    logger_provider: LoggerProvider
    log_exporter: InMemoryLogRecordExporter
    meter_provider: MeterProvider
    metric_reader: InMemoryMetricReader
    counter: EndCounter
    _closed: bool = field(default=False, repr=False)

    def flush(self) -> None:
        """What a reader of an exporter's output does first: the closed traces waiting for
        their batch's analysis (APM_ANALYSIS_DELAY_MS) are analyzed and handed on."""
        self.tracer_provider.force_flush()

    def stats(self) -> dict[str, int]:
        """The processor's counters once what waits for analysis was analyzed."""
        self.flush()
        return self.processor.stats()

    def spans(self) -> tuple[ReadableSpan, ...]:
        """Every span exported so far (finished spans, as the exporter got them), after a flush."""
        self.flush()
        return self.span_exporter.get_finished_spans()

    def log_records(self) -> tuple[ReadableLogRecord, ...]:
        self.flush()
        return self.log_exporter.get_finished_logs()

    def events(self, finding_type: str | None = None) -> list[ReadableLogRecord]:
        """Exported log records that are findings, optionally of one type."""
        out = []
        for record in self.log_records():
            lr = record.log_record
            if lr.event_name != EVENT_NAME:
                continue
            if (
                finding_type is not None
                and (lr.attributes or {}).get("otel_apm.finding.type") != finding_type
            ):
                continue
            out.append(record)
        return out

    def metrics(self) -> MetricsData | None:
        """A collection from the in-memory reader (cumulative since the pipeline was built)."""
        self.flush()
        return self.metric_reader.get_metrics_data()

    def data_points(self, name: str) -> list[Any]:
        """The data points of the metric called ``name``, over every scope."""
        data = self.metrics()
        points: list[Any] = []
        if data is None:
            return points
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points

    def wait_for(self, condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """Wait for work on other threads (a server's request thread) to reach the exporter."""
        wait_until(condition, timeout_s)

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.tracer_provider.shutdown()
        self.logger_provider.shutdown()
        self.meter_provider.shutdown()


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll ``condition`` until it holds, for work on other threads.

    Not a timing assertion: it only bounds how long a test waits before failing.
    """
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.01)


def in_forked_child(
    work: Callable[[], bool], held: threading.Lock | None = None, timeout_s: float = 30.0
) -> None:
    """Run ``work`` in a child forked from this process (as gunicorn --preload forks its workers)
    and fail unless it returns True.  ``held`` is acquired around the fork, as one of our
    background threads may hold a lock at that moment: a child that waits on it for ever is
    killed and the test fails instead of hanging."""
    if held is not None:
        held.acquire()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            status = 0 if work() else 3
        finally:
            os._exit(status)
    if held is not None:
        held.release()
    deadline = time.monotonic() + timeout_s
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung (on a lock held at the fork?)")
    assert os.waitstatus_to_exitcode(done[1]) == 0, "the forked child's check failed"


def build_otel(**settings: Any) -> OTel:
    """A fresh pipeline; ``settings`` are APMConfig fields (console output is off unless asked).

    The config starts from APMConfig's defaults, not the environment, so an ``APM_*`` variable
    in the shell running the tests cannot change their outcome; but for ``APM_NATIVE_ENABLED``,
    which switches the compiled parts, whose Python twins must give the same outcome.
    """
    resource = Resource.create({"service.name": SERVICE_NAME})
    span_exporter = InMemorySpanExporter()
    log_exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
    metric_reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[metric_reader], resource=resource)
    settings.setdefault("console_enabled", False)
    settings.setdefault("native_enabled", NATIVE_ENABLED)
    processor = APMSpanProcessor(
        SimpleSpanProcessor(span_exporter),
        APMConfig(),
        logger_provider=logger_provider,
        meter_provider=meter_provider,
        **settings,
    )
    counter = EndCounter()
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(counter)
    tracer_provider.add_span_processor(processor)
    return OTel(
        tracer_provider=tracer_provider,
        tracer=tracer_provider.get_tracer("tests"),
        processor=processor,
        span_exporter=span_exporter,
        logger_provider=logger_provider,
        log_exporter=log_exporter,
        meter_provider=meter_provider,
        metric_reader=metric_reader,
        counter=counter,
    )


@pytest.fixture
def native_enabled() -> bool:
    """Whether the pipelines ``make_otel`` builds use otel_apm._native (when built): as the
    shell's APM_NATIVE_ENABLED says (:data:`NATIVE_ENABLED`).  A test module that covers both
    implementations overrides this with a parametrized fixture."""
    return NATIVE_ENABLED


@pytest.fixture
def make_otel(native_enabled: bool) -> Iterator[Callable[..., OTel]]:
    """Factory: ``make_otel(slow_request_threshold_ms=50)``; every pipeline is shut down after."""
    built: list[OTel] = []

    def make(**settings: Any) -> OTel:
        settings.setdefault("native_enabled", native_enabled)
        otel = build_otel(**settings)
        built.append(otel)
        return otel

    yield make
    for otel in built:
        otel.shutdown()


@pytest.fixture
def otel(make_otel: Callable[..., OTel]) -> OTel:
    """A pipeline with the default APM settings (console off)."""
    return make_otel()


# -- instrumentations ----------------------------------------------------------------------------
# The instrumentors are process-wide singletons; each fixture undoes what it did at teardown.


@pytest.fixture
def instrument_sqlalchemy() -> Iterator[Callable[[Sequence[Any], TracerProvider], None]]:
    """``instrument_sqlalchemy([engine, ...], tracer_provider)``: trace those engines' queries.

    Call it once per test (the instrumentor is a singleton), after the schema and seed data are in
    place, so that only the code under test makes DB spans.
    """
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    instrumentor = SQLAlchemyInstrumentor()
    used = False

    def instrument(engines: Sequence[Any], tracer_provider: TracerProvider) -> None:
        nonlocal used
        assert not used, "instrument_sqlalchemy is called once per test"
        assert not instrumentor.is_instrumented_by_opentelemetry, "SQLAlchemy left instrumented"
        used = True
        instrumentor.instrument(engines=list(engines), tracer_provider=tracer_provider)

    yield instrument
    if used:
        instrumentor.uninstrument()


@pytest.fixture
def instrument_requests() -> Iterator[Callable[[TracerProvider], None]]:
    """``instrument_requests(tracer_provider)``: client spans for ``requests``, undone after."""
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    instrumentor = RequestsInstrumentor()
    used = False

    def instrument(tracer_provider: TracerProvider) -> None:
        nonlocal used
        assert not used, "instrument_requests is called once per test"
        assert not instrumentor.is_instrumented_by_opentelemetry, "requests left instrumented"
        used = True
        instrumentor.instrument(tracer_provider=tracer_provider)

    yield instrument
    if used:
        instrumentor.uninstrument()


class Instrumentor(Protocol):
    """What ``instrument`` uses of an instrumentor: the module of BaseInstrumentor is marked
    ``# type: ignore`` as a whole, so mypy does not see that class."""

    @property
    def is_instrumented_by_opentelemetry(self) -> bool: ...

    def instrument(self, **kwargs: Any) -> object: ...

    def uninstrument(self, **kwargs: Any) -> object: ...


@pytest.fixture
def instrument() -> Iterator[Callable[..., None]]:
    """``instrument(SomeInstrumentor(), tracer_provider=tp, **options)``: any instrumentor, with
    the options of its own (hooks, capture_parameters), undone after in reverse order."""
    done: list[Instrumentor] = []

    def run(instrumentor: Instrumentor, **options: Any) -> None:
        name = type(instrumentor).__name__
        assert not instrumentor.is_instrumented_by_opentelemetry, f"{name} left instrumented"
        instrumentor.instrument(**options)
        assert instrumentor.is_instrumented_by_opentelemetry, f"{name} refused: {options}"
        done.append(instrumentor)

    yield run
    for instrumentor in reversed(done):
        instrumentor.uninstrument()


@pytest.fixture
def serve_wsgi() -> Iterator[Callable[[Any], str]]:
    """``serve_wsgi(app)`` -> ``"http://127.0.0.1:<port>"``: a real werkzeug server in a thread."""
    from werkzeug.serving import BaseWSGIServer, make_server

    servers: list[tuple[BaseWSGIServer, threading.Thread]] = []

    def serve(app: Any) -> str:
        server = make_server("127.0.0.1", 0, app, threaded=False)
        thread = threading.Thread(target=server.serve_forever, name="wsgi-test-server", daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_port}"

    yield serve
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def instrument_flask() -> Iterator[Callable[[Any, TracerProvider], None]]:
    """``instrument_flask(app, tracer_provider)``: server spans for that app only, undone after."""
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    apps: list[Any] = []

    def instrument(app: Any, tracer_provider: TracerProvider) -> None:
        FlaskInstrumentor.instrument_app(app, tracer_provider=tracer_provider)  # type: ignore[no-untyped-call]
        apps.append(app)

    yield instrument
    for app in apps:
        FlaskInstrumentor.uninstrument_app(app)  # type: ignore[no-untyped-call]
