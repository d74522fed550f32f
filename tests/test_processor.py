"""APMSpanProcessor's contract, through the real SDK: what is exported when, bounds, tail keep,
late spans, containment of failures, threads and asyncio, lifecycle."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MethodType
from typing import Any

import pytest
from conftest import OTel, in_forked_child, require_native
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AnyValue, Attributes, AttributeValue

from otel_apm.config import ConfigError, Suppression
from otel_apm.detectors.base import Detector, Finding
from otel_apm.emit.attributes import EVENT_NAME
from otel_apm.model import Trace


@pytest.fixture(params=[True, False], ids=["native", "python"])
def native_enabled(request: pytest.FixtureRequest) -> bool:
    """Every pipeline test here runs on the compiled intake (csrc/intake.c, which takes the
    common span hooks in pass-through mode) and on the Python methods alone."""
    if request.param:
        require_native()
    return bool(request.param)


BOOKS = "SELECT books.id, books.title FROM books WHERE books.author_id = %(param_1)s"
AUTHORS = "SELECT authors.id, authors.name FROM authors"


def db_span(otel: OTel, statement: str) -> None:
    attrs = {"db.system": "postgresql", "db.statement": statement}
    with otel.tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT, attributes=attrs):
        pass


def request(otel: OTel, route: str = "/authors", n: int = 6, error: bool = False) -> int:
    """One server transaction running an N+1 of ``n`` (none when n < threshold); its trace id."""
    attrs = {"http.request.method": "GET", "http.route": route}
    with otel.tracer.start_as_current_span(f"GET {route}", kind=SpanKind.SERVER, attributes=attrs) as root:
        db_span(otel, AUTHORS)
        for _ in range(n):
            db_span(otel, BOOKS)
        if error:
            root.set_status(Status(StatusCode.ERROR))
        return root.get_span_context().trace_id


def roots(otel: OTel) -> list[ReadableSpan]:
    return [s for s in otel.spans() if s.parent is None]


def present(attributes: Attributes) -> Mapping[str, AnyValue]:
    """The attributes of a finding's span event or log record, which the SDK types as optional."""
    assert attributes is not None
    return attributes


def test_children_are_exported_at_once_and_the_root_last_with_its_findings(otel: OTel) -> None:
    with otel.tracer.start_as_current_span("GET /authors", kind=SpanKind.SERVER) as root:
        for _ in range(5):
            db_span(otel, BOOKS)
        assert len(otel.spans()) == 5  # exported while the root is still open
    exported_root = otel.spans()[-1]
    assert exported_root.context == root.get_span_context()
    assert exported_root.context.trace_flags.sampled
    events = [e for e in exported_root.events if e.name == EVENT_NAME]
    assert [present(e.attributes)["otel_apm.finding.type"] for e in events] == ["n_plus_one_query"]
    assert present(events[0].attributes)["otel_apm.finding.count"] == 5


def test_a_span_ending_after_its_root_is_exported_and_counted(otel: OTel) -> None:
    root = otel.tracer.start_span("job", kind=SpanKind.SERVER)
    child = otel.tracer.start_span("late work", context=trace.set_span_in_context(root))
    root.end()
    child.end()
    assert {s.name for s in otel.spans()} == {"job", "late work"}
    assert otel.stats()["spans_late"] == 1


def test_a_remote_parent_makes_a_local_root(otel: OTel) -> None:
    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    ctx = trace.set_span_in_context(NonRecordingSpan(remote))
    with otel.tracer.start_as_current_span("GET /authors", context=ctx, kind=SpanKind.SERVER):
        for _ in range(5):
            db_span(otel, BOOKS)
    (finding,) = otel.events("n_plus_one_query")
    assert finding.log_record.trace_id == 0xABC
    assert otel.stats()["traces_analyzed"] == 1


def test_past_max_traces_the_oldest_is_analyzed_as_it_is(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel(max_traces_in_flight=2)
    open_roots = []
    for _ in range(3):
        root = otel.tracer.start_span("GET /x", kind=SpanKind.SERVER)
        open_roots.append(root)
        with trace.use_span(root, end_on_exit=False):
            for _ in range(5):
                db_span(otel, BOOKS)
    stats = otel.stats()
    assert (stats["traces_evicted"], stats["traces_in_flight"]) == (1, 2)
    (finding,) = otel.events("n_plus_one_query")  # the evicted trace, analyzed without its root
    assert finding.log_record.attributes is not None
    assert finding.log_record.attributes["otel_apm.finding.endpoint"] == "unknown"
    for root in open_roots:
        root.end()
    assert len(otel.spans()) == otel.counter.ended == 18  # nothing lost, the late root included
    assert otel.stats()["spans_late"] == 1


def test_past_max_spans_later_spans_are_exported_not_analyzed(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel(max_spans_per_trace=4)
    request(otel, n=8)
    stats = otel.stats()
    assert stats["spans_truncated"] == 5  # 1 + 8 children, 4 kept
    assert len(otel.spans()) == 10


def test_tail_mode_keeps_whole_traces_with_findings_or_errors(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel(export_mode="tail", sample_rate=0.0)
    with_finding = request(otel, n=6)
    plain = request(otel, n=1)
    failed = request(otel, n=1, error=True)
    exported = {s.context.trace_id for s in otel.spans()}
    assert exported == {with_finding, failed}
    assert len([s for s in otel.spans() if s.context.trace_id == with_finding]) == 8  # whole trace
    assert otel.stats()["spans_sampled_out"] == 3
    assert plain not in exported
    # analysis saw every trace (the N+1, and the failed request's error); only the export was sampled
    assert [len(otel.events(t)) for t in ("n_plus_one_query", "error")] == [1, 1]
    assert len(otel.events()) == 2


def test_tail_mode_sample_rate_one_keeps_everything(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel(export_mode="tail", sample_rate=1.0)
    for _ in range(5):
        request(otel, n=1)
    assert len(otel.spans()) == 5 * 3
    assert otel.stats()["spans_sampled_out"] == 0


def test_tail_mode_holds_spans_until_the_root_ends(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel(export_mode="tail", sample_rate=1.0)
    with otel.tracer.start_as_current_span("GET /a", kind=SpanKind.SERVER):
        db_span(otel, AUTHORS)
        assert otel.spans() == ()
    assert len(otel.spans()) == 2


def test_tail_mode_drops_late_spans_of_a_dropped_trace(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel(export_mode="tail", sample_rate=0.0)
    root = otel.tracer.start_span("job", kind=SpanKind.SERVER)
    child = otel.tracer.start_span("late", context=trace.set_span_in_context(root))
    root.end()
    child.end()
    assert otel.spans() == ()
    stats = otel.stats()
    assert (stats["spans_late"], stats["spans_sampled_out"]) == (1, 2)


class Exploding(Detector):
    type = "exploding"
    categories = frozenset({"db"})

    def visit_span(self, span: object) -> None:
        raise RuntimeError("detector bug")

    def on_complete(self) -> list[Finding]:
        return []


class FailingEmitter:
    def emit(self, trace: Trace | None, findings: Sequence[Finding]) -> None:
        raise ValueError("emitter bug")


def test_failures_in_analysis_never_reach_the_app(
    make_otel: Callable[..., OTel], caplog: pytest.LogCaptureFixture
) -> None:
    from otel_apm.detectors import DEFAULT_DETECTORS

    otel = make_otel(detectors=(*DEFAULT_DETECTORS, Exploding))
    with caplog.at_level(logging.WARNING, logger="otel_apm"):
        for _ in range(3):
            request(otel, n=6)
    assert len(otel.events("n_plus_one_query")) == 3  # the other detectors still ran
    assert otel.stats()["errors_detector"] == 3
    assert sum("exploding failed" in r.getMessage() for r in caplog.records) == 1  # once per kind
    assert len(otel.spans()) == 3 * 8


def test_a_detector_whose_bound_rules_the_trace_out_is_neither_built_nor_fed(
    make_otel: Callable[..., OTel],
) -> None:
    from otel_apm.config import APMConfig
    from otel_apm.detectors.history import History
    from otel_apm.detectors.n_plus_one import NPlusOneQueryDetector
    from otel_apm.detectors.summary import TraceSummary

    built: list[int] = []
    skipped: list[tuple[int, int]] = []

    class Counted(NPlusOneQueryDetector):
        def __init__(self, config: APMConfig, trace: Trace, history: History) -> None:
            super().__init__(config, trace, history)
            built.append(trace.trace_id)

    class Never(Detector):
        type = "never"
        categories = frozenset({"db"})

        @classmethod
        def can_fire(cls, config: APMConfig, summary: TraceSummary) -> bool:
            return False

        @classmethod
        def on_skip(cls, config: APMConfig, summary: TraceSummary, history: History) -> None:
            skipped.append((summary.count("db"), summary.most_repeated()))

        def on_complete(self) -> list[Finding]:
            raise AssertionError("built although it cannot fire")

    otel = make_otel(detectors=(Counted, Never))
    request(otel, n=4)  # four of one shape: under the N+1 threshold of 5
    looped = request(otel, n=6)
    otel.flush()
    assert built == [looped]
    assert [e.log_record.trace_id for e in otel.events("n_plus_one_query")] == [looped]
    assert skipped == [(5, 4), (7, 6)]
    assert otel.stats()["errors_detector"] == 0


def test_a_failing_emitter_is_contained(make_otel: Callable[..., OTel]) -> None:
    from otel_apm import APMSpanProcessor

    otel = make_otel()
    processor = APMSpanProcessor(None, otel.processor.config, emitters=[FailingEmitter()])
    otel.tracer_provider.add_span_processor(processor)
    request(otel, n=6)
    otel.flush()
    assert processor.stats()["errors_emit"] == 1
    assert len(otel.spans()) == 8


def process_finding(impact_ms: float = 0.0, **fields: Any) -> Finding:
    """A finding about the process (no trace), as a memory monitor reports through the processor."""
    values: dict[str, Any] = {
        "type": "memory_leak_suspected",
        "title": "Memory grows",
        "severity": "warning",
        "fingerprint": "f00d",
        "service": "svc",
        "endpoint": "process",
        "trace_id": 0,
        "span_ids": (),
        "count": 1,
        "total_duration_ms": 0.0,
        "max_duration_ms": 0.0,
        "recommendation": "Look at what grew",
        "impact_ms": impact_ms,
    }
    return Finding(**{**values, **fields})


def test_suppression_rules_apply_to_findings_about_the_process(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel(suppressions=(Suppression(type="cpu_hot_spot", endpoint="POST /reindex"),))
    hot = process_finding(type="cpu_hot_spot", endpoint="POST /reindex", fingerprint="c0de")
    otel.processor.emit_findings([hot, dataclasses.replace(hot, endpoint="GET /orders", fingerprint="c0df")])
    assert [
        present(e.log_record.attributes)["otel_apm.finding.endpoint"] for e in otel.events("cpu_hot_spot")
    ] == ["GET /orders"]
    stats = otel.stats()
    assert (stats["findings"], stats["findings_suppressed"]) == (1, 1)


def test_an_emitter_failing_to_shut_down_leaves_the_others_theirs(make_otel: Callable[..., OTel]) -> None:
    from otel_apm import APMSpanProcessor

    class Holding:
        def __init__(self, fails: bool) -> None:
            self.fails, self.stopped = fails, False

        def emit(self, trace: Trace | None, findings: Sequence[Finding]) -> None:
            pass

        def shutdown(self, timeout_s: float) -> None:
            self.stopped = True
            if self.fails:
                raise OSError("disk full")

    first, second = Holding(fails=True), Holding(fails=False)
    otel = make_otel()
    processor = APMSpanProcessor(None, otel.processor.config, emitters=[first, second])
    processor.shutdown()
    assert (first.stopped, second.stopped) == (True, True)
    assert processor.stats()["errors_emit"] == 1


def test_a_forked_worker_is_not_stopped_by_a_lock_the_metrics_export_held(
    make_otel: Callable[..., OTel],
) -> None:
    """The SDK's export thread reads the metrics reporter's totals under its lock: a worker
    forked at that moment (gunicorn --preload) must still get its requests through."""
    from otel_apm.emit.metrics import MetricsEmitter

    otel = make_otel()
    (metrics,) = [e for e in otel.processor.emitters if isinstance(e, MetricsEmitter)]

    def worker() -> bool:
        request(otel, n=6)
        return otel.stats()["traces_analyzed"] == 1

    in_forked_child(worker, held=metrics._lock)


def test_disabled_it_starts_no_reporter_nor_store(make_otel: Callable[..., OTel], tmp_path: Path) -> None:
    """APM_ENABLED=false is a pure pass-through: no webhook thread, no store file or connection."""
    store = tmp_path / "findings.sqlite"
    otel = make_otel(
        enabled=False,
        reporters=("console", "webhook", "metrics"),
        webhook_url="http://127.0.0.1:9/hook",
        store_url=f"sqlite:///{store}",
    )
    request(otel, n=6)
    assert otel.processor.emitters == ()
    assert not store.exists()
    assert len(otel.spans()) == 8
    with pytest.raises(ConfigError, match="APM_WEBHOOK_URL must be set"):
        make_otel(enabled=False, reporters=("webhook",))


def test_odd_attributes_and_huge_sql_are_analyzed_without_error(otel: OTel) -> None:
    odd: list[dict[str, object]] = [
        {"db.system": "postgresql", "db.statement": ["not", "a", "string"]},
        {"db.system": "postgresql", "db.statement": "SELECT '" + "x" * 2_000_000},
        {"db.system": "postgresql", "db.statement": "\x00\xff garbage ((("},
        {"http.method": "GET", "http.status_code": "abc"},
        {"http.request.method": 7, "http.response.status_code": 3.5},
        {"db.system": True},
    ]
    with otel.tracer.start_as_current_span("root", kind=SpanKind.SERVER):
        for attrs in odd:
            with otel.tracer.start_as_current_span("odd", kind=SpanKind.CLIENT, attributes=attrs):  # type: ignore[arg-type]
                pass
    stats = otel.stats()
    assert stats["traces_analyzed"] == 1
    assert {k: v for k, v in stats.items() if k.startswith("errors")} == {
        "errors_intake": 0,
        "errors_analysis": 0,
        "errors_emit": 0,
        "errors_detector": 0,
    }
    assert len(otel.spans()) == 7


def test_threads_each_get_their_own_trace(otel: OTel) -> None:
    def work() -> None:
        for _ in range(25):
            request(otel, n=5)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    findings = otel.events("n_plus_one_query")
    assert len(findings) == 200
    assert {present(f.log_record.attributes)["otel_apm.finding.count"] for f in findings} == {5}
    assert len(otel.spans()) == otel.counter.ended == 200 * 7
    stats = otel.stats()
    assert (stats["spans_late"], stats["traces_in_flight"]) == (0, 0)


def test_asyncio_tasks_each_get_their_own_trace(otel: OTel) -> None:
    async def handler(i: int) -> None:
        with otel.tracer.start_as_current_span(f"GET /t{i}", kind=SpanKind.SERVER):
            for _ in range(5 + i):
                with otel.tracer.start_as_current_span(
                    "SELECT", kind=SpanKind.CLIENT, attributes={"db.system": "sqlite", "db.statement": BOOKS}
                ):
                    await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(handler(i) for i in range(4)))

    asyncio.run(main())
    counts: list[int] = []
    for f in otel.events("n_plus_one_query"):
        count = present(f.log_record.attributes)["otel_apm.finding.count"]
        assert isinstance(count, int)
        counts.append(count)
    assert sorted(counts) == [5, 6, 7, 8]


class Recorder(SpanProcessor):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.calls.append("start")

    def _on_ending(self, span: Span) -> None:
        self.calls.append("ending:" + span.name)

    def on_end(self, span: ReadableSpan) -> None:
        self.calls.append("end:" + span.name)

    def shutdown(self) -> None:
        self.calls.append("shutdown")

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self.calls.append(f"flush:{timeout_millis}")
        return True


def test_lifecycle_propagates_and_shutdown_analyzes_open_traces(otel: OTel) -> None:
    from otel_apm import APMSpanProcessor

    recorder = Recorder()
    processor = APMSpanProcessor(recorder, otel.processor.config, emitters=[])
    otel.tracer_provider.add_span_processor(processor)
    root = otel.tracer.start_span("open", kind=SpanKind.SERVER)
    assert processor.force_flush(1234) is True
    processor.shutdown()
    processor.shutdown()  # idempotent
    assert recorder.calls == ["start", "flush:1234", "shutdown"]
    assert processor.stats()["traces_evicted"] == 1
    root.end()


@pytest.mark.parametrize("enabled", [True, False], ids=["enabled", "disabled"])
def test_every_hook_reaches_the_wrapped_processor(otel: OTel, enabled: bool) -> None:
    """The wrapper skips only hooks whose body does nothing (the batch processor's on_start and
    _on_ending); a processor that does something in them gets every call, turned off or on."""
    from otel_apm import APMSpanProcessor

    recorder = Recorder()
    processor = APMSpanProcessor(recorder, otel.processor.config, emitters=[], enabled=enabled)
    otel.tracer_provider.add_span_processor(processor)
    with (
        otel.tracer.start_as_current_span("job", kind=SpanKind.SERVER),
        otel.tracer.start_as_current_span("child"),
    ):
        pass
    processor.force_flush(1234)  # the root is handed on once analyzed
    assert recorder.calls == [
        "start",
        "start",
        "ending:child",
        "end:child",
        "ending:job",
        "end:job",
        "flush:1234",
    ]


def test_an_analyzed_trace_leaves_nothing_to_the_cycle_collector(make_otel: Callable[..., OTel]) -> None:
    """Every analyzed trace, its views and what analysis derived from it are freed by reference
    count as the trace is done with: garbage in a cycle (a summary referring back to its trace
    did this) would wait for the collector's pass, cost it the walk, and keep memory cold."""
    otel = make_otel()
    request(otel, n=2)  # first-use caches (shapes, series) before the count
    request(otel, n=6)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for n in (2, 6, 6):
            request(otel, n=n, error=n == 2)
        assert otel.stats()["findings"] >= 3
        gc.collect()
        ours = [o for o in gc.garbage if type(o).__module__.startswith("otel_apm")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert ours == []


def test_disabled_is_pure_pass_through(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel(enabled=False)
    request(otel, n=10)
    assert len(otel.spans()) == 12
    assert otel.events() == []
    assert otel.stats()["traces_analyzed"] == 0


def test_otel_sdk_disabled_disables_a_hand_registered_processor(
    make_otel: Callable[..., OTel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the SDK's providers then hand out no-op tracers: no worker, monitor or reporter of ours."""
    before = set(threading.enumerate())
    monkeypatch.setenv("OTEL_SDK_DISABLED", "True")  # read as the SDK reads it: case-insensitively
    otel = make_otel(memory_monitor_enabled=True, console_enabled=True)
    assert otel.processor.config.enabled is False
    assert otel.processor.memory_monitor is None and otel.processor.emitters == ()
    assert [t.name for t in set(threading.enumerate()) - before] == []
    request(otel, n=10)
    assert otel.spans() == () and otel.stats()["traces_analyzed"] == 0


def test_console_prints_a_fingerprint_once_per_interval(
    make_otel: Callable[..., OTel], capsys: pytest.CaptureFixture[str]
) -> None:
    otel = make_otel(console_enabled=True, console_interval_s=3600, slow_query_threshold_ms=60_000)
    for _ in range(3):
        request(otel, n=6)
    request(otel, route="/other", n=6)
    otel.flush()
    # Only the N+1's lines: a stalled host can make another detector (slow request, bottleneck)
    # fire too, and that is not what this test is about.
    lines = [
        line
        for line in capsys.readouterr().err.splitlines()
        if line.startswith("[otel-apm]") and "n_plus_one_query" in line
    ]
    assert len(lines) == 2
    assert "n_plus_one_query" in lines[0] and "'GET /authors'" in lines[0]
    assert "'GET /other'" in lines[1]
    assert "12.3" not in lines[0]  # sanity: the line carries the shape, not values


def test_console_interval_zero_prints_every_occurrence(
    make_otel: Callable[..., OTel], capsys: pytest.CaptureFixture[str]
) -> None:
    otel = make_otel(console_enabled=True, console_interval_s=0, slow_query_threshold_ms=60_000)
    for _ in range(3):
        request(otel, n=6)
    otel.flush()
    assert capsys.readouterr().err.count("[otel-apm] WARNING n_plus_one_query") == 3


def test_finding_severity_becomes_critical_past_the_factor(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel(critical_factor=2)
    request(otel, n=9)
    request(otel, route="/big", n=10)
    severities = {
        present(f.log_record.attributes)["otel_apm.finding.endpoint"]: f.log_record.severity_text
        for f in otel.events()
    }
    assert severities == {"GET /authors": "WARNING", "GET /big": "CRITICAL"}


OLD_DB: Mapping[str, AttributeValue] = {
    "db.system": "postgresql",
    "db.statement": BOOKS,
    "net.peer.name": "db",
}
STABLE_DB: Mapping[str, AttributeValue] = {
    "db.system.name": "postgresql",
    "db.query.text": BOOKS,
    "server.address": "db",
}
OLD_HTTP: Mapping[str, AttributeValue] = {
    "http.method": "GET",
    "http.route": "/authors",
    "http.status_code": 200,
}
STABLE_HTTP: Mapping[str, AttributeValue] = {
    "http.request.method": "GET",
    "http.route": "/authors",
    "http.response.status_code": 200,
}


def finding_with(
    make_otel: Callable[..., OTel], http: Mapping[str, AttributeValue], db: Mapping[str, AttributeValue]
) -> dict[str, object]:
    otel = make_otel()
    with otel.tracer.start_as_current_span("GET /authors", kind=SpanKind.SERVER, attributes=http):
        for _ in range(5):
            with otel.tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT, attributes=db):
                pass
    (event,) = otel.events("n_plus_one_query")
    return dict(event.log_record.attributes or {})


def test_both_semantic_conventions_give_the_same_finding(make_otel: Callable[..., OTel]) -> None:
    old = finding_with(make_otel, OLD_HTTP, OLD_DB)
    stable = finding_with(make_otel, STABLE_HTTP, STABLE_DB)
    assert old["otel_apm.finding.endpoint"] == stable["otel_apm.finding.endpoint"] == "GET /authors"
    assert (
        old["db.query.text"]
        == stable["db.query.text"]
        == ("select books.id, books.title from books where books.author_id = ?")
    )
    assert old["otel_apm.finding.evidence.db.system"] == stable["otel_apm.finding.evidence.db.system"]
    assert old["otel_apm.finding.fingerprint"] == stable["otel_apm.finding.fingerprint"]


def test_own_telemetry_is_exported_as_metrics(otel: OTel) -> None:
    request(otel, n=6)
    root = otel.tracer.start_span("still open", kind=SpanKind.SERVER)

    def points(name: str) -> dict[str, int]:
        return {next(iter((p.attributes or {}).values()), "-"): p.value for p in otel.data_points(name)}

    traces = points("otel_apm.processor.traces")
    assert traces == {"analyzed": 1, "evicted": 0}
    assert points("otel_apm.processor.spans")["analyzed"] == 8
    assert points("otel_apm.processor.errors") == {"intake": 0, "analysis": 0, "emit": 0, "detector": 0}
    assert points("otel_apm.processor.traces_in_flight") == {"-": 1}
    root.end()


@pytest.mark.parametrize("mode", ["passthrough", "tail"])
def test_a_long_trace_is_read_in_batches_and_analyzed_whole(
    make_otel: Callable[..., OTel], mode: str
) -> None:
    """Past 64 spans the processor reads what it holds into views; nothing is lost or doubled."""
    otel = make_otel(export_mode=mode, sample_rate=1.0)
    request(otel, n=300)
    (finding,) = otel.events("n_plus_one_query")
    assert finding.log_record.attributes is not None
    assert finding.log_record.attributes["otel_apm.finding.count"] == 300
    assert otel.stats()["spans_analyzed"] == 302
    assert len(otel.spans()) == 302


def test_the_span_bound_holds_across_batches(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel(max_spans_per_trace=100)
    request(otel, n=300)
    stats = otel.stats()
    assert (stats["spans_analyzed"], stats["spans_truncated"]) == (101, 201)  # 100 children + root
    assert len(otel.spans()) == 302


def test_the_pinned_sdk_gets_the_fast_span_reader(otel: OTel) -> None:
    """The reader proves its field-level path against the public properties on the first span;
    with the SDK version this project pins, the proof must hold (else intake silently slows)."""
    request(otel, n=1)
    assert otel.processor._reader.fast is True
    (finding_free_root,) = roots(otel)
    assert finding_free_root.name == "GET /authors"


def test_findings_about_the_process_reach_every_emitter_without_a_trace(
    make_otel: Callable[..., OTel], capsys: pytest.CaptureFixture[str]
) -> None:
    otel = make_otel(console_enabled=True)
    finding = process_finding(title="Memory grows 5 MB/min", endpoint="process")
    otel.processor.emit_findings([finding])
    (event,) = otel.events("memory_leak_suspected")
    assert event.log_record.trace_id == 0 and event.log_record.span_id == 0
    assert event.log_record.attributes is not None
    assert event.log_record.attributes["otel_apm.finding.span_ids"] == ()
    line = capsys.readouterr().err
    assert "memory_leak_suspected svc 'process'" in line and "trace " not in line
    (point,) = otel.data_points("otel_apm.findings")
    assert point.attributes["otel_apm.finding.type"] == "memory_leak_suspected"
    assert otel.stats()["findings"] == 1


def test_a_findings_span_event_and_log_record_carry_the_same_ranked_attributes(otel: OTel) -> None:
    """Built once per finding and shared, after ranking: both carry the recurrence rate it ranked
    by, which grows as the same problem repeats."""
    request(otel)
    request(otel)
    rates: list[float] = []
    for root, record in zip(roots(otel), otel.events("n_plus_one_query"), strict=True):
        (event,) = [e for e in root.events if e.name == EVENT_NAME]
        assert event.attributes is not None and record.log_record.attributes is not None
        on_span = {k: tuple(v) if isinstance(v, list) else v for k, v in event.attributes.items()}
        assert on_span == dict(record.log_record.attributes)
        rate = on_span["otel_apm.finding.rate_per_min"]
        assert isinstance(rate, (int, float))
        rates.append(rate)
    assert 0 < rates[0] < rates[1]


def test_the_compiled_intake_takes_the_span_hooks_in_pass_through_only(
    make_otel: Callable[..., OTel], native_enabled: bool
) -> None:
    passthrough = make_otel().processor
    tail = make_otel(export_mode="tail").processor
    hooks = {
        type(getattr(passthrough, name).__self__).__name__ for name in ("on_start", "_on_ending", "on_end")
    }
    assert hooks == ({"Intake"} if native_enabled else {"APMSpanProcessor"})
    on_end = tail.on_end
    assert isinstance(on_end, MethodType)  # a bound method, the processor's own
    assert type(on_end.__self__).__name__ == "APMSpanProcessor"


def test_a_span_the_intake_does_not_know_goes_to_the_python_path(make_otel: Callable[..., OTel]) -> None:
    """An object without the SDK's internals (another SDK, a wrapper) is judged by the Python
    methods, through the public API: exported, counted late, nothing raised."""
    otel = make_otel()
    with otel.tracer.start_as_current_span("job") as root:
        pass
    child = otel.tracer.start_span("child", context=trace.set_span_in_context(root))
    child.end()
    (ended,) = [s for s in otel.spans() if s.name == "child"]

    class Wrapped(ReadableSpan):
        def __init__(self, inner: ReadableSpan) -> None:
            super().__init__(
                name=inner.name, context=inner.context, parent=inner.parent, resource=inner.resource
            )
            del self._parent  # the internals the compiled path reads are not there

        @property
        def parent(self) -> Any:
            return ended.parent

    before = otel.stats()["spans_late"]
    otel.processor.on_end(Wrapped(ended))
    assert otel.stats()["spans_late"] == before + 1
    assert otel.spans()[-1].name == "child"


def test_a_failing_code_location_is_contained_and_counted(
    make_otel: Callable[..., OTel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whichever implementation walks the stack, an error in it stays out of the application:
    the span is exported without code.* attributes and the failure is counted."""
    from otel_apm.ingest.callsite import CallSite

    def broken(self: CallSite, filename: str) -> bool:
        raise RuntimeError("cannot classify " + filename)

    monkeypatch.setattr(CallSite, "is_app", broken)
    otel = make_otel()
    request(otel, n=2)
    db = [s for s in otel.spans() if s.kind is SpanKind.CLIENT]
    assert len(db) == 3  # the authors, then the books of each
    assert otel.stats()["errors_intake"] == 3
    assert all("code.file.path" not in (s.attributes or {}) for s in db)


class TraceCapture:
    """An emitter keeping every trace analysis saw."""

    def __init__(self) -> None:
        self.traces: list[Trace] = []

    def emit(self, trace: Trace | None, findings: Sequence[Finding]) -> None:
        if trace is not None:
            self.traces.append(trace)


def varied_request(otel: OTel, children: int) -> None:
    """A root over ``children`` spans of every kind the reader tells apart: statements of a few
    shapes, an HTTP call, an error with its exception event, a nested internal span, an attribute
    value the shape cache does not keep (a float), one span with no attributes."""
    with otel.tracer.start_as_current_span(
        "GET /mix", kind=SpanKind.SERVER, attributes={"http.route": "/mix"}
    ):
        for i in range(children):
            shape = i % 6
            if shape < 3:
                db_span(otel, f"SELECT * FROM t{shape} WHERE id = %s")
            elif shape == 3:
                attrs: dict[str, AttributeValue] = {
                    "http.request.method": "GET",
                    "url.full": "http://svc/x",
                    "http.response.status_code": 500,
                }
                with otel.tracer.start_as_current_span("GET", kind=SpanKind.CLIENT, attributes=attrs) as span:
                    span.record_exception(ValueError("boom"))
                    span.set_status(Status(StatusCode.ERROR))
            elif shape == 4:
                with otel.tracer.start_as_current_span("work"), otel.tracer.start_as_current_span("inner"):
                    pass
            else:
                attrs = {"db.system": "redis", "db.statement": "GET k", "elapsed": 0.5}
                with otel.tracer.start_as_current_span("GET", kind=SpanKind.CLIENT, attributes=attrs):
                    pass
        with otel.tracer.start_as_current_span("bare"):
            pass


def analyzed(trace: Trace) -> list[tuple[Any, ...]]:
    """What analysis reads of each view, in order, but the ids and times (which differ run to
    run): the parent as its place among the views."""
    place = {v.span_id: i for i, v in enumerate(trace.spans)}
    skip = {"trace_id", "span_id", "parent_id", "start_ns", "end_ns"}
    return [
        (place.get(v.parent_id), *(getattr(v, k) for k in type(v).__slots__ if k not in skip))
        for v in trace.spans
    ]


@pytest.mark.parametrize("max_spans", [10_000, 40], ids=["whole", "truncated"])
def test_the_compiled_intake_gives_analysis_the_views_the_python_path_gives(
    make_otel: Callable[..., OTel], max_spans: int
) -> None:
    """The compiled intake reads a child into its view as it ends, where the Python path files
    the span and reads a batch later: the same views, in the same order, the same bound.  150
    children pass several checkpoints (every 64 filed spans)."""
    require_native()
    seen = []
    for native in (True, False):
        capture = TraceCapture()
        otel = make_otel(native_enabled=native, emitters=[capture], max_spans_per_trace=max_spans)
        for children in (150, 3):
            varied_request(otel, children)
        otel.flush()
        seen.append(([analyzed(t) for t in capture.traces], otel.stats()))
    assert seen[0] == seen[1]
    # The longer trace (reported after the shorter when only it has findings); its root past the bound.
    assert max(len(views) for views in seen[0][0]) == min(max_spans, 150 + 150 // 6 + 1) + 1


def test_the_compiled_intake_holds_no_ended_child_while_its_root_is_open(native_enabled: bool) -> None:
    """Pass-through keeps a view of each ended child, not the SDK's span (about 2.8 kB each):
    the compiled intake reads it as it ends, once the first trace has proved the compiled reader;
    the Python path files it and reads a batch at the root's end or a checkpoint, holding the
    span until then."""
    from opentelemetry.sdk.trace import TracerProvider

    from otel_apm import APMSpanProcessor

    ended: list[tuple[str, Any]] = []

    class Weakly(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            ended.append((span.name, weakref.ref(span)))

    processor = APMSpanProcessor(
        Weakly(), native_enabled=native_enabled, emitters=[], memory_monitor_enabled=False
    )
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("tests")
    for _ in range(2):
        ended.clear()
        with tracer.start_as_current_span("GET /authors", kind=SpanKind.SERVER):
            for _ in range(3):
                with tracer.start_as_current_span(
                    "SELECT", kind=SpanKind.CLIENT, attributes={"db.statement": BOOKS}
                ):
                    pass
            gc.collect()
            # The children's: the worker may hand the first trace's root on meanwhile.
            held = [r() is not None for name, r in ended if name == "SELECT"]
    assert held == [not native_enabled] * 3  # the second trace's
    processor.force_flush()
    assert processor.stats()["spans_analyzed"] == 8
    provider.shutdown()
