"""The findings store on SQLite and PostgreSQL (the same tests for both), the StoreEmitter that
feeds it from the processor, and ``otel-apm report`` / ``otel-apm mute`` over a store filled by a
real Flask + SQLAlchemy workload."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
import requests
from flask import Flask
from flask.typing import ResponseReturnValue
from otlp_sink import OTLPSink
from sqlalchemy import Engine, create_engine, event, text
from test_autoinstrument import _run_app, sink  # noqa: F401 - sink: the OTLP receiver fixture
from test_collector import n_plus_one_trace
from test_workloads import list_authors, seed

from otel_apm import cli
from otel_apm.config import APMConfig, ConfigError
from otel_apm.detectors.base import Finding
from otel_apm.emit import reporters, shutdown_emitters
from otel_apm.stats import Statistics
from otel_apm.store.db import FindingsStore
from otel_apm.store.emitter import StoreEmitter
from otel_apm.store.report import build_report, parse_window

if TYPE_CHECKING:
    from conftest import OTel

HOUR = 3600.0
DAY = 86400.0


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A fresh, empty store: a SQLite file, or a PostgreSQL schema of its own (dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'findings.sqlite'}"
        return
    import psycopg2

    base: str = request.getfixturevalue("postgres_url")
    schema = f"otel_apm_store_{uuid.uuid4().hex[:12]}"
    yield f"{base}?schema={schema}"
    conn = psycopg2.connect(base.replace("+psycopg2", ""))
    try:
        with conn, conn.cursor() as cur:
            cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        conn.close()


def config_for(url: str, **settings: Any) -> APMConfig:
    return APMConfig(store_url=url, console_enabled=False, **settings)


@pytest.fixture
def open_store() -> Iterator[Callable[..., FindingsStore]]:
    """``open_store(url, **settings)``: a reader of the store, closed after the test."""
    opened: list[FindingsStore] = []

    def open_(url: str, **settings: Any) -> FindingsStore:
        store = FindingsStore.from_config(config_for(url, **settings))
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def finding(fingerprint: str, trace_id: int, impact_ms: float = 10.0, **fields: Any) -> Finding:
    values: dict[str, Any] = {
        "type": "n_plus_one_query",
        "title": f"problem {fingerprint}",
        "severity": "warning",
        "fingerprint": fingerprint,
        "service": "shop",
        "endpoint": "GET /authors",
        "trace_id": trace_id,
        "span_ids": (1, 2),
        "count": 2,
        "total_duration_ms": impact_ms,
        "max_duration_ms": impact_ms / 2,
        "recommendation": "load them in one query",
        "services": ("shop",),
        "statement": "select * from books where author_id = ?",
        "evidence": {"repetitions": 2, "tables": ("books",)},
        "impact_ms": impact_ms,
    }
    values.update(fields)
    return Finding(**values)


def at_once(work: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    """``work(item)`` for every item, each on a thread of its own, all let go at once; the
    results (or the exceptions raised) in the order of the items."""
    items = list(items)
    start = threading.Barrier(len(items))
    results: list[Any] = [None] * len(items)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = work(items[i])
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def emit_all(config: APMConfig, batches: list[list[Finding]]) -> StoreEmitter:
    """A StoreEmitter that was given ``batches`` and shut down (so everything is written)."""
    emitter = StoreEmitter(config)
    for batch in batches:
        emitter.emit(None, batch)
    emitter.shutdown(10.0)
    stats = emitter.stats()
    assert (stats["written"], stats["dropped"], stats["errors"]) == (sum(map(len, batches)), 0, 0)
    return emitter


# -- the store ------------------------------------------------------------------------------------


def test_findings_survive_a_restart(store_url: str, open_store: Callable[..., FindingsStore]) -> None:
    config = config_for(store_url)
    before = time.time()
    emit_all(config, [[finding("a", 1), finding("b", 0, impact_ms=0)], [finding("a", 2)], [finding("a", 3)]])

    store = open_store(store_url)  # a new connection: what the first process left is there
    first = {f.fingerprint: f for f in store.findings()}
    assert set(first) == {"a", "b"}
    a = first["a"]
    assert (a.occurrences, a.window_occurrences, a.total_impact_ms) == (3, 3, 30.0)
    assert sorted(a.example_trace_ids) == [f"{i:032x}" for i in (1, 2, 3)]
    assert a.state == "open" and a.services == ("shop",) and a.evidence["tables"] == ["books"]
    assert before <= a.first_seen <= a.last_seen <= time.time()
    b = first["b"]  # a finding about the process: stored, with no example trace
    assert (b.occurrences, b.example_trace_ids) == (1, ())

    emit_all(config, [[finding("a", 4, impact_ms=5.0, title="problem a again")]])  # "after a restart"
    again = {f.fingerprint: f for f in store.findings()}["a"]
    assert (again.occurrences, again.total_impact_ms, again.title) == (4, 35.0, "problem a again")
    assert again.first_seen == a.first_seen and again.last_seen >= a.last_seen
    assert [f.fingerprint for f in store.findings()] == ["a", "b"]  # costliest first


def test_example_trace_ids_are_the_latest_few(
    store_url: str, open_store: Callable[..., FindingsStore]
) -> None:
    store = open_store(store_url, store_examples=2)
    now = time.time()
    store.write([(now - 50 + i, [finding("a", 100 + i)]) for i in range(5)])
    store.write([(now, [finding("a", 7)])])
    (a,) = store.findings()
    assert a.example_trace_ids == (f"{7:032x}", f"{104:032x}")
    assert a.occurrences == 6


def test_retention_removes_old_findings_and_their_counts(
    store_url: str, open_store: Callable[..., FindingsStore]
) -> None:
    now = time.time()
    store = open_store(store_url)
    store.write(
        [
            (now - 3 * DAY, [finding("old", 1), finding("both", 2)]),
            (now - 10, [finding("both", 3), finding("new", 4)]),
        ]
    )
    assert {f.fingerprint for f in store.findings()} == {"old", "both", "new"}

    # A StoreEmitter purges when it starts (then hourly): a day of retention keeps 1 of the 3 days.
    emit_all(config_for(store_url, store_retention_days=1.0), [])
    left = {f.fingerprint: f for f in store.findings()}
    assert set(left) == {"both", "new"}
    both = left["both"]
    # The finding stays (seen lately) but its 3-day-old occurrence is gone from the counts by minute
    assert (both.occurrences, both.window_occurrences) == (2, 1)
    assert both.example_trace_ids == (f"{3:032x}", f"{2:032x}")


def test_a_window_counts_what_happened_in_it(
    store_url: str, open_store: Callable[..., FindingsStore]
) -> None:
    now = time.time()
    store = open_store(store_url)
    store.write(
        [
            (now - 2 * HOUR, [finding("a", 1), finding("a", 2), finding("gone", 3, impact_ms=99.0)]),
            (now - 60, [finding("a", 4, impact_ms=1.0)]),
        ]
    )
    hour = store.findings(now - HOUR, now=now)
    assert [(f.fingerprint, f.window_occurrences, f.window_impact_ms, f.occurrences) for f in hour] == [
        ("a", 1, 1.0, 3)
    ]
    ever = store.findings(now=now)
    assert [f.fingerprint for f in ever] == ["gone", "a"]  # 99 ms lost against 21 ms
    assert store.findings(types=["slow_query"]) == []
    assert [f.fingerprint for f in store.findings(fingerprint="gone")] == ["gone"]


def test_muted_resolved_and_open(store_url: str, open_store: Callable[..., FindingsStore]) -> None:
    now = time.time()
    store = open_store(store_url, store_resolve_after_h=1.0)
    store.write([(now - 2 * HOUR, [finding("quiet", 1), finding("muted", 2)]), (now, [finding("loud", 3)])])
    assert store.set_muted("muted", True) is True
    assert store.set_muted("no-such-fingerprint", True) is False
    states = {f.fingerprint: f.state for f in store.findings(now=now)}
    assert states == {"quiet": "resolved", "muted": "muted", "loud": "open"}
    assert [f.fingerprint for f in store.findings(state="resolved", now=now)] == ["quiet"]

    store.write([(now, [finding("quiet", 4), finding("muted", 5)])])  # seen again
    states = {f.fingerprint: f.state for f in store.findings(now=now)}
    assert states == {"quiet": "open", "muted": "muted", "loud": "open"}
    store.set_muted("muted", False)
    assert {f.state for f in store.findings(now=now)} == {"open"}


def test_analyzers_sharing_one_store_add_up(store_url: str, open_store: Callable[..., FindingsStore]) -> None:
    config = config_for(store_url)
    emitters = [StoreEmitter(config) for _ in range(3)]

    def run(n: int) -> None:
        for i in range(40):
            emitters[n].emit(None, [finding("shared", 1000 * n + i + 1)])

    at_once(run, range(len(emitters)))
    shutdown_emitters(emitters, 10.0)
    assert [e.stats()["written"] for e in emitters] == [40, 40, 40]
    (shared,) = open_store(store_url).findings()
    assert (shared.occurrences, shared.total_impact_ms) == (120, 1200.0)


def test_stores_opened_at_once_create_the_tables_once(store_url: str) -> None:
    stores = [FindingsStore(store_url) for _ in range(4)]
    results = at_once(FindingsStore.findings, stores)
    for store in stores:
        store.close()
    assert results == [[]] * len(stores)


def test_a_forked_worker_writes_with_a_thread_and_connection_of_its_own(
    store_url: str, open_store: Callable[..., FindingsStore]
) -> None:
    emitter = StoreEmitter(config_for(store_url))  # built before the fork, as with gunicorn --preload
    emitter.emit(None, [finding("parent", 1)])
    assert emitter.flush(10.0)  # the parent's writer has its connection open
    pid = os.fork()
    if pid == 0:  # the worker
        status = 1
        try:
            emitter.emit(None, [finding("worker", 2)])
            emitter.shutdown(10.0)
            status = 0 if emitter.stats()["written"] == 1 else 1
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    emitter.emit(None, [finding("parent", 3)])  # the parent's writer and connection still work
    emitter.shutdown(10.0)
    assert emitter.stats()["written"] == 2 and emitter.stats()["errors"] == 0
    found = {f.fingerprint: f.occurrences for f in open_store(store_url).findings()}
    assert found == {"parent": 2, "worker": 1}


def test_a_full_queue_drops_and_counts_instead_of_waiting(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    emitter = StoreEmitter(config_for(store_url, store_queue_size=2))
    assert emitter.flush(10.0)  # the writer has connected and purged: it waits for findings now
    with emitter.store._lock:  # the writer cannot write while we hold its connection
        for i in range(10):
            emitter.emit(None, [finding("burst", i + 1)])
    emitter.shutdown(10.0)
    stats = emitter.stats()
    # the writer may have taken a few before it blocked; the queue holds 2 more; the rest are gone
    assert stats["dropped"] >= 1 and stats["written"] + stats["dropped"] == 10, stats
    assert caplog.text.count("the store's queue is full") == 1


# -- configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("mysql://root@localhost/test", "unknown scheme 'mysql'"),
        ("findings.sqlite", "not a URL"),
        ("sqlite://findings.sqlite", "three slashes"),
        ("sqlite:///:memory:", "would not survive"),
        ("postgresql://db.example/", "no database"),
        ("postgresql:///apm", "no host"),
        ("postgresql://db:port/apm", "port is not a number"),
        ("postgresql://db/apm?schema=a;drop", "not a plain identifier"),
    ],
)
def test_bad_store_urls_are_refused_naming_the_variable(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        APMConfig.from_env({"APM_STORE_URL": url})
    message = str(caught.value)
    assert message.startswith(f"APM_STORE_URL={url!r}: ") and why in message
    assert "expected sqlite:///" in message


@pytest.mark.parametrize(
    "url",
    ["postgresql://apm:s3cret@db/apm?schema=a;drop", "postgresql://apm@db:port/apm?password=s3cret"],
)
def test_a_refused_store_url_does_not_show_its_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        APMConfig.from_env({"APM_STORE_URL": url})
    assert "s3cret" not in str(caught.value) and "***" in str(caught.value)


def test_libpq_parameters_of_a_postgresql_url_reach_the_connection(postgres_url: str) -> None:
    schema = f"otel_apm_store_{uuid.uuid4().hex[:12]}"
    url = f"{postgres_url}?options=-c%20statement_timeout%3D4321&schema={schema}&connect_timeout=3"
    store = FindingsStore(url)
    try:
        assert store.findings() == []
        assert store._transaction(lambda c: c.query("SHOW statement_timeout")) == [("4321ms",)]
        assert store._transaction(lambda c: c.query("SELECT current_schema()")) == [(schema,)]
    finally:
        store._transaction(lambda c: c.execute(f'DROP SCHEMA "{schema}" CASCADE'))
        store.close()


def test_reporters_add_the_store_only_when_configured(tmp_path: Any) -> None:
    assert not any(isinstance(r, StoreEmitter) for r in reporters(APMConfig()))
    config = APMConfig.from_env({"APM_STORE_URL": f"sqlite:///{tmp_path / 's.sqlite'}"})
    chosen = reporters(config)
    try:
        assert [type(r) for r in chosen if isinstance(r, StoreEmitter)] == [StoreEmitter]
    finally:
        shutdown_emitters(chosen, 5.0)


# -- through the processor ----------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["a directory", "a closed port"])
def test_store_failures_never_reach_the_app(
    where: str, tmp_path: Any, make_otel: Callable[..., OTel], caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path}" if where == "a directory" else "postgresql://127.0.0.1:1/test"
    store = StoreEmitter(config_for(url))
    otel = make_otel(emitters=[store])
    for _ in range(3):
        n_plus_one_trace(otel.tracer_provider)
        assert store.flush(10.0)
    otel.processor.shutdown()
    assert len(otel.spans()) == 3 * 8  # every span went on to the exporter
    assert otel.stats()["findings"] == 3
    stats = store.stats()
    assert stats["written"] == 0 and stats["dropped"] == 3 and stats["errors"] >= 3
    warnings = [
        r for r in caplog.records if r.name == "otel_apm.store.emitter" and r.levelno == logging.WARNING
    ]
    # logged once per kind: the purge at start, the writes, the findings dropped for them
    messages = [r.getMessage() for r in warnings]
    assert [sum(text in m for m in messages) for text in ("store purge failed", "store write failed")] == [
        1,
        1,
    ]
    assert sum("findings not stored: writing to the store failed" in m for m in messages) == 1


def test_processor_findings_reach_the_store(
    store_url: str, make_otel: Callable[..., OTel], open_store: Callable[..., FindingsStore]
) -> None:
    otel = make_otel(store_url=store_url)
    for _ in range(4):
        n_plus_one_trace(otel.tracer_provider)
    # a finding about the process (trace id 0), as the memory monitor reports one
    memory = finding("memory", 0, type="memory_high", endpoint="process", statement=None, impact_ms=0.0)
    otel.processor.emit_findings([memory])
    otel.processor.shutdown()  # shuts the reporters down: the store's writer flushes
    store = open_store(store_url)
    stored, high = store.findings()
    assert (stored.type, stored.endpoint, stored.occurrences) == ("n_plus_one_query", "GET /authors", 4)
    assert stored.statement == "select id, title from books where author_id = ?"
    assert len(stored.example_trace_ids) == 4
    assert (high.type, high.occurrences, high.example_trace_ids) == ("memory_high", 1, ())
    # and the statistics of the minute in progress, closed at shutdown
    assert store.statistics("all").overall.count == 4
    report = build_report(store, "1h")
    assert [f["fingerprint"] for f in report["memory_warnings"]] == ["memory"]
    assert [f["type"] for f in report["n_plus_one"]] == ["n_plus_one_query"]


def test_the_memory_monitors_finding_is_a_memory_warning_in_the_report(
    store_url: str, make_otel: Callable[..., OTel], open_store: Callable[..., FindingsStore]
) -> None:
    otel = make_otel(store_url=store_url, memory_threshold_mb=1.0, memory_check_interval_s=0.05)
    otel.wait_for(lambda: bool(otel.events("memory_high")))  # the real monitor, on its thread
    otel.processor.shutdown()
    store = open_store(store_url)
    (high,) = store.findings(types=["memory_high"])
    assert (high.occurrences, high.example_trace_ids, high.state) == (1, (), "open")
    report = build_report(store, "1h")
    assert [f["fingerprint"] for f in report["memory_warnings"]] == [high.fingerprint]
    assert report["summary"]["by_type"] == {"memory_high": 1}


def test_statistics_survive_a_restart_and_retention(
    store_url: str, make_otel: Callable[..., OTel], open_store: Callable[..., FindingsStore]
) -> None:
    now = time.time()
    clock = [now - 3 * DAY]
    statistics = Statistics(clock=lambda: clock[0])
    otel = make_otel(emitters=[statistics])
    for _ in range(2):
        n_plus_one_trace(otel.tracer_provider)
    otel.flush()  # statistics count a trace at the clock's time of its analysis
    clock[0] = now - 600
    for _ in range(3):
        n_plus_one_trace(otel.tracer_provider)
    otel.flush()
    clock[0] = now + 120  # both minutes are closed now
    live = statistics.snapshot("all")
    store = StoreEmitter(config_for(store_url), statistics)
    store.shutdown(10.0)
    assert store.stats()["minutes_written"] == 6  # 2 minutes x (1 endpoint + 2 statements)

    stored = open_store(store_url).statistics("all", now=now)  # another connection: "after a restart"
    assert stored.overall.count == live.overall.count == 5
    assert stored.overall.p95_ms == pytest.approx(live.overall.p95_ms)
    assert stored.overall.queries_per_request == 7
    statement = next(s for s in stored.statements if "books" in s.statement)
    assert (statement.statement, statement.count, statement.endpoints) == (
        "select id, title from books where author_id = ?",
        30,
        ("GET /authors",),
    )
    assert open_store(store_url).statistics("1h", now - HOUR, now).overall.count == 3

    emit_all(config_for(store_url, store_retention_days=1.0), [])  # purges at start
    assert open_store(store_url).statistics("all", now=now).overall.count == 3


def test_old_minutes_roll_up_into_hours_once(
    store_url: str, make_otel: Callable[..., OTel], open_store: Callable[..., FindingsStore]
) -> None:
    hour = int(time.time() // 3600) * 3600 - 4 * 3600  # four whole hours back
    clock = [float(hour)]
    statistics = Statistics(clock=lambda: clock[0])
    otel = make_otel(emitters=[statistics])
    for minute in range(0, 180, 10):  # a trace every 10 minutes for 3 hours: 18 minutes with data
        clock[0] = hour + minute * 60 + 5
        n_plus_one_trace(otel.tracer_provider)
        otel.flush()  # statistics count a trace at the clock's time of its analysis
    clock[0] = hour + 4 * 3600
    records = statistics.closed_minutes()
    assert len(records) == 18 * 3  # the endpoint and two statements, each minute
    writer = open_store(store_url)
    writer.write_minutes(records)
    before = writer.statistics("all")
    # a record of a later version of the format, which this one cannot read: kept, not rolled up
    later = ("endpoint", "shop", "GET /x", hour // 60, 1, '{"version": 99}')
    writer._transaction(
        lambda c: c.execute(
            "INSERT INTO apm_stats_minutes (kind, service, name, minute, minutes, record) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            later,
        )
    )

    # two analyzers sharing the store roll up at once: each minute is taken by one of them
    taken = at_once(
        lambda store: store.compact(hour + 3 * 3600), [open_store(store_url), open_store(store_url)]
    )
    # (the unreadable row, put back by one, may be taken by the other too)
    assert len(records) + 1 <= sum(taken) <= len(records) + 2
    assert writer.compact(hour + 3 * 3600) == 1  # only the unreadable one, put back each time
    assert writer._transaction(
        lambda c: c.query("SELECT minutes, record FROM apm_stats_minutes WHERE name = ?", ("GET /x",))
    ) == [(1, later[-1])]

    reader = open_store(store_url)
    assert build_report(reader, "all")["unreadable_records"] == 1  # said, not silently left out
    after = writer.statistics("all")
    assert after.overall.count == before.overall.count == 18
    assert after.overall.p95_ms == pytest.approx(before.overall.p95_ms)
    assert [(s.statement, s.count) for s in after.statements] == [
        (s.statement, s.count) for s in before.statements
    ]
    # one row per key and hour now: a window from the middle of the second hour sees the third
    assert writer.statistics("2h", hour + 90 * 60).overall.count == 6


def test_an_app_under_opentelemetry_instrument_fills_the_store(
    sink: OTLPSink,  # noqa: F811 - the fixture imported above
    tmp_path: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"sqlite:///{tmp_path / 'app-store.sqlite'}"
    run = _run_app(sink, tmp_path, APM_STORE_URL=url)
    assert run.returncode == 0, run.stderr
    # the process has exited: what it stored was written by the time its providers shut down
    store = FindingsStore(url)
    try:
        (n1,) = store.findings(types=["n_plus_one_query"])
        assert (n1.service, n1.occurrences, n1.example_trace_ids) == (
            "nplusone-app",
            1,
            (run.report["trace_id"],),
        )
        # its one request (the seeding's statements are roots of their own), the minute closed at exit
        per_endpoint = {e.endpoint: e.count for e in store.statistics("all").endpoints}
        assert per_endpoint["GET /authors"] == 1
    finally:
        store.close()
    status, out, _ = run_cli(capsys, "report", "--store", url, "--window", "1h")
    assert status == 0 and "n_plus_one_query in nplusone-app GET /authors" in out


# -- otel-apm report over a real workload ----------------------------------------------------------------

SHORT_PAUSE_MS = 110
LONG_PAUSE_MS = 200


def make_shop(engine: Engine) -> Flask:
    """An N+1 (/authors) and two slow statements: a short one run often, a long one run once."""
    app = Flask(__name__)

    def authors() -> ResponseReturnValue:
        return list_authors(engine, "select")

    def report(kind: str) -> ResponseReturnValue:
        pause = LONG_PAUSE_MS if kind == "long" else SHORT_PAUSE_MS
        with engine.connect() as conn:
            conn.execute(text(f"SELECT pause(:ms) AS {kind}"), {"ms": pause})
        return "done"

    app.add_url_rule("/authors", view_func=authors)
    app.add_url_rule("/reports/<kind>", view_func=report)
    return app


@pytest.fixture
def shop_engine(tmp_path: Any) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'shop.db'}", connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def add_pause(dbapi_connection: Any, _: Any) -> None:
        def pause(ms: float) -> int:
            time.sleep(ms / 1000)
            return 0

        dbapi_connection.create_function("pause", 1, pause)

    seed(engine)
    yield engine
    engine.dispose()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_report_on_a_real_workload_ranks_the_costliest_first(
    store_url: str,
    make_otel: Callable[..., OTel],
    shop_engine: Engine,
    instrument_sqlalchemy: Callable[..., None],
    instrument_flask: Callable[..., None],
    serve_wsgi: Callable[[Any], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The statistics' clock is ours, so the minute the workload ran in can be closed (and stored)
    clock = [time.time()]
    statistics = Statistics(clock=lambda: clock[0])
    store = StoreEmitter(config_for(store_url, service_name="shop"), statistics)
    otel = make_otel(emitters=[statistics, store], service_name="shop")
    instrument_sqlalchemy([shop_engine], otel.tracer_provider)
    app = make_shop(shop_engine)
    instrument_flask(app, otel.tracer_provider)
    base = serve_wsgi(app)
    paths = ["/authors"] * 4 + ["/reports/short"] * 5 + ["/reports/long"]
    for path in paths:
        requests.get(base + path, timeout=30).raise_for_status()
    otel.wait_for(lambda: otel.stats()["traces_analyzed"] == len(paths))
    clock[0] += 120
    otel.processor.shutdown()
    assert store.stats()["minutes_written"] >= 4  # 2 endpoints, 2+ statements

    status, out, _ = run_cli(capsys, "report", "--store", store_url, "--window", "1h", "--format", "json")
    assert status == 0
    report = json.loads(out)
    # (a query of the N+1 stalled past the threshold on a loaded machine is one more slow query)
    slow = [
        (f["statement"], f["endpoint"], f["window_occurrences"])
        for f in report["slow_queries"]
        if "pause" in f["statement"]
    ]
    # five short pauses cost more than one long one: the frequent statement ranks first
    assert slow == [
        ("select pause(?) as short", "GET /reports/<kind>", 5),
        ("select pause(?) as long", "GET /reports/<kind>", 1),
    ]
    assert report["slow_queries"][0]["window_impact_ms"] >= 5 * SHORT_PAUSE_MS
    (n1,) = report["n_plus_one"]
    assert (n1["type"], n1["endpoint"], n1["window_occurrences"], n1["service"]) == (
        "n_plus_one_query",
        "GET /authors",
        4,
        "shop",
    )
    assert report["memory_warnings"] == [] and report["summary"]["states"]["open"] >= 3
    assert report["summary"]["by_type"]["slow_query"] >= 2
    # the statistics of the same minutes, read back from the store
    transactions = report["summary"]["transactions"]
    assert transactions["count"] == len(paths) and transactions["errors"] == 0
    assert transactions["max_ms"] >= LONG_PAUSE_MS * 0.99 > transactions["p50_ms"]
    by_endpoint = {e["endpoint"]: e for e in report["endpoints"]}
    assert by_endpoint["GET /reports/<kind>"]["stats"]["count"] == 6
    assert "slow_query" in by_endpoint["GET /reports/<kind>"]["problems"]["types"]
    authors = by_endpoint["GET /authors"]
    assert (authors["stats"]["count"], authors["stats"]["queries_per_request"]) == (4, 11)
    assert "n_plus_one_query" in authors["problems"]["types"]
    short = next(s for s in report["statements"] if s["statement"] == "select pause(?) as short")
    assert (short["stats"]["count"], short["stats"]["endpoints"]) == (5, ["GET /reports/<kind>"])
    assert short["stats"]["slow"] == 5  # every run over APM_SLOW_QUERY_THRESHOLD_MS
    assert short["stats"]["mean_ms"] >= SHORT_PAUSE_MS * 0.99 and short["problems"]["findings"] == 1

    status, out, _ = run_cli(capsys, "report", "--store", store_url, "--window", "1h")
    assert status == 0
    lines = out.splitlines()
    assert lines[2].startswith(f"{len(paths)} transactions, ")
    top = lines[lines.index("Slow queries:") + 2]
    assert "slow_query in shop GET /reports/<kind>" in top and top.split()[:5:2] == ["1", "5", "open"]
    assert lines[lines.index("Slow queries:") + 3].strip() == "select pause(?) as short"
    assert any("n_plus_one_query in shop GET /authors" in line for line in lines)
    statements_at = lines.index("Statements, most time first:")
    top_statement = lines[statements_at + 2].split()
    assert (top_statement[:2], top_statement[-4:]) == (["5", "5"], ["select", "pause(?)", "as", "short"])
    endpoints_at = lines.index("Endpoints, busiest first:")
    assert lines[endpoints_at + 1].split() == [
        *("endpoint", "requests", "mean", "p95", "slow", "errors", "db", "share", "queries", "problems")
    ]

    status, out, _ = run_cli(capsys, "report", "--store", store_url, "--service", "elsewhere")
    assert status == 0 and "service elsewhere" in out.splitlines()[0]
    assert "No transaction statistics in this window." in out and "No problems found" in out

    status, out, _ = run_cli(capsys, "report", "--store", store_url, "--format", "markdown")
    assert status == 0
    assert "## Slow queries" in out and "## N+1 issues" in out
    assert "| 1 |" in out and "<br>`select pause(?) as short`<br>fix: " in out

    # mute the N+1: the report no longer lists it, the summary counts it as muted
    status, _, _ = run_cli(capsys, "mute", n1["fingerprint"], "--store", store_url)
    assert status == 0
    status, out, _ = run_cli(capsys, "report", "--store", store_url, "--format", "json")
    muted = json.loads(out)
    assert muted["n_plus_one"] == [] and muted["summary"]["states"]["muted"] == 1


def test_report_command_errors(tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    monkeypatch.delenv("APM_STORE_URL", raising=False)
    status, _, err = run_cli(capsys, "report")
    assert status == 2 and "no store: pass --store" in err
    url = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    status, _, err = run_cli(capsys, "report", "--store", url)
    assert status == 2 and "no store at" in err and not (tmp_path / "empty.sqlite").exists()
    empty = FindingsStore(url)
    assert empty.findings() == []  # the first use creates the tables
    empty.close()
    status, _, err = run_cli(capsys, "report", "--store", url, "--window", "3 weeks")
    assert status == 2 and "expected how far back" in err
    status, out, _ = run_cli(capsys, "report", "--store", url)
    assert status == 0 and "No problems found in this window." in out
    status, _, err = run_cli(capsys, "mute", "0123", "--store", url)
    assert status == 1 and "no finding '0123'" in err
    status, _, err = run_cli(capsys, "report", "--store", "mysql://x/y")
    assert status == 2 and "APM_STORE_URL='mysql://x/y'" in err
    status, _, err = run_cli(capsys, "report", "--store", "postgresql://127.0.0.1:1/test")
    assert status == 1 and err.startswith(
        "otel-apm report: cannot read the store postgresql://127.0.0.1:1/test"
    )
    with pytest.raises(SystemExit):
        cli.main(["report", "--store", url, "--limit", "0"])
    assert "expected a whole number >= 1, got '0'" in capsys.readouterr().err


def test_windows() -> None:
    assert [parse_window(w) for w in ("15m", "1h", "24h", "7d", "all")] == [900, 3600, 86400, 604800, None]
    for bad in ("0h", "1w", "h", ""):
        with pytest.raises(ValueError, match="expected how far back"):
            parse_window(bad)


def test_report_of_an_empty_window(tmp_path: Any) -> None:
    store = FindingsStore(f"sqlite:///{tmp_path / 'x.sqlite'}")
    try:
        store.write([(time.time() - 2 * DAY, [finding("a", 1)])])
        report = build_report(store, "24h")
        assert report["summary"]["findings"] == 0 and report["n_plus_one"] == []
        assert [f["fingerprint"] for f in build_report(store, "7d")["n_plus_one"]] == ["a"]
    finally:
        store.close()
