"""Closed traces analyzed in batches on a worker thread: when a root goes out without anyone
flushing, the bound on waiting traces, flush and shutdown, fork, tail mode's decisions with the
late spans of a waiting trace, and analysis as each root ends (APM_ANALYSIS_DELAY_MS=0)."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Sequence

from conftest import OTel, in_forked_child, wait_until
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import NumberDataPoint
from opentelemetry.trace import SpanKind
from test_processor import AUTHORS, BOOKS, db_span, request, roots

from otel_apm.detectors import Finding
from otel_apm.model import Trace

WORKER = "otel-apm-analysis"


def exported_roots(otel: OTel) -> int:
    return sum(1 for s in otel.span_exporter.get_finished_spans() if s.parent is None)


def workers() -> int:
    return sum(1 for t in threading.enumerate() if t.name == WORKER and t.is_alive())


def test_a_closed_trace_waits_for_the_delay_then_goes_out_analyzed(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel(analysis_delay_ms=2000, analysis_batch_size=100)
    trace_id = request(otel, n=6)
    assert otel.processor.stats()["traces_waiting"] == 1
    assert exported_roots(otel) == 0  # the children went out at once, the root waits
    assert len(otel.span_exporter.get_finished_spans()) == 7
    metrics = otel.metric_reader.get_metrics_data()  # read as an exporter would, with no flush
    assert metrics is not None
    (waiting,) = [
        m.data.data_points[0]
        for rm in metrics.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "otel_apm.processor.traces_waiting"
    ]
    assert isinstance(waiting, NumberDataPoint)  # a gauge's point, not a histogram's
    assert waiting.value == 1
    wait_until(lambda: exported_roots(otel) == 1)  # no flush: the worker on its own
    (root,) = [s for s in otel.span_exporter.get_finished_spans() if s.parent is None]
    assert [e.name for e in root.events] == ["otel_apm.finding"]
    assert [r.log_record.trace_id for r in otel.log_exporter.get_finished_logs()] == [trace_id]
    assert otel.processor.stats()["traces_waiting"] == 0


def test_a_full_batch_wakes_the_worker_before_the_delay(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel(analysis_delay_ms=600_000, analysis_batch_size=3)
    for _ in range(2):
        request(otel, n=6)
    time.sleep(0.2)
    assert exported_roots(otel) == 0  # two waiting, the delay ten minutes away
    request(otel, n=6)
    wait_until(lambda: exported_roots(otel) == 3)
    assert otel.processor.stats()["traces_analyzed"] == 3


def test_past_the_queue_bound_the_thread_ending_a_root_analyzes_its_trace(
    make_otel: Callable[..., OTel],
) -> None:
    """Nothing is dropped and memory stays bounded when the worker falls behind: the
    application's thread does the work itself, as the analysis did before batches."""
    otel = make_otel(analysis_delay_ms=600_000, analysis_batch_size=100, analysis_max_queue=2)
    for _ in range(5):
        request(otel, n=6)
    stats = otel.processor.stats()
    assert (stats["traces_waiting"], stats["analysis_queue_full"], stats["traces_analyzed"]) == (2, 3, 3)
    assert exported_roots(otel) == 3
    assert len(otel.events("n_plus_one_query")) == 5  # events() flushes the two waiting
    assert len(roots(otel)) == 5


def test_shutdown_analyzes_what_waits_and_stops_the_worker(make_otel: Callable[..., OTel]) -> None:
    before = workers()
    otel = make_otel(analysis_delay_ms=600_000)
    assert workers() == before + 1
    trace_id = request(otel, n=6)
    otel.shutdown()
    assert exported_roots(otel) == 1
    assert [r.log_record.trace_id for r in otel.log_exporter.get_finished_logs()] == [trace_id]
    wait_until(lambda: workers() == before)
    request(otel, n=6)  # a root ending after shutdown is analyzed by its own thread
    assert otel.processor.stats()["traces_analyzed"] == 2


def test_a_forked_child_gets_a_worker_of_its_own(make_otel: Callable[..., OTel]) -> None:
    """gunicorn --preload forks workers from a process that built the pipeline: the child has
    none of the parent's threads, and the parent's worker may hold its batch lock at the fork."""
    otel = make_otel(analysis_delay_ms=50)
    batch = otel.processor._batch
    assert batch is not None

    def child() -> bool:
        request(otel, n=6)
        wait_until(lambda: exported_roots(otel) == 1, timeout_s=5)  # raising fails the child
        return True

    in_forked_child(child, held=batch._running)


def test_delay_zero_analyzes_each_trace_as_its_root_ends(make_otel: Callable[..., OTel]) -> None:
    before = workers()
    otel = make_otel(analysis_delay_ms=0)
    assert workers() == before
    request(otel, n=6)
    assert exported_roots(otel) == 1
    assert otel.processor.stats()["traces_analyzed"] == 1


def test_tail_mode_without_a_delay_decides_each_trace_as_its_root_ends(
    make_otel: Callable[..., OTel],
) -> None:
    before = workers()
    otel = make_otel(export_mode="tail", sample_rate=0.0, analysis_delay_ms=0)
    assert workers() == before
    request(otel, n=6)
    request(otel, n=2)
    assert exported_roots(otel) == 1  # the N+1 trace kept, the clean one dropped
    assert otel.processor.stats()["spans_sampled_out"] == 4


def test_force_flush_gives_up_after_its_timeout_when_an_emitter_hangs(
    make_otel: Callable[..., OTel],
) -> None:
    """An emitter stuck (on the network, say) holds the worker's batch: a flush with a timeout
    says False when it is up, as the SDK's processors do, and the trace goes out once freed."""
    entered, release = threading.Event(), threading.Event()

    class Stuck:
        def emit(self, trace: object, findings: object) -> None:
            entered.set()
            release.wait(30)

    otel = make_otel(emitters=[Stuck()], analysis_delay_ms=10)
    request(otel, n=6)
    assert entered.wait(10)  # the worker is inside the batch
    started = time.monotonic()
    assert otel.processor.force_flush(200) is False
    assert time.monotonic() - started < 5
    release.set()
    assert otel.processor.force_flush(10_000) is True
    assert exported_roots(otel) == 1


class _Lifetimes:
    """An emitter noting, as each trace is reported, which traces reported before it are
    still alive (weakly referenced, so noting them keeps none alive)."""

    def __init__(self) -> None:
        self.reported: list[tuple[int, bool]] = []  # (trace id, had findings)
        self.alive_before: list[int] = []  # traces reported earlier, alive at each report
        self._refs: list[weakref.ref[Trace]] = []

    def emit(self, trace: Trace | None, findings: Sequence[Finding]) -> None:
        if trace is None:
            return
        self.alive_before.append(sum(1 for ref in self._refs if ref() is not None))
        self._refs.append(weakref.ref(trace))
        self.reported.append((trace.trace_id, bool(findings)))


def test_a_batch_lets_each_trace_without_findings_go_before_the_next_is_analyzed(
    make_otel: Callable[..., OTel],
) -> None:
    """In a batch, a trace without findings is reported and freed before the next trace is
    analyzed (its index and filings do not live through its successors' collections); the
    traces with findings are reported after, together."""
    lifetimes = _Lifetimes()
    otel = make_otel(analysis_delay_ms=600_000, analysis_batch_size=100, emitters=[lifetimes])
    ids = [request(otel, n=n) for n in (6, 2, 6, 2, 2)]  # an N+1 of 6 in the first and third
    assert otel.processor.stats()["traces_waiting"] == 5
    otel.flush()
    clean, found = [(i, False) for i in (ids[1], ids[3], ids[4])], [(i, True) for i in (ids[0], ids[2])]
    assert lifetimes.reported == clean + found
    assert lifetimes.alive_before[:3] == [0, 0, 0]  # each clean trace reported with none before it alive
    assert exported_roots(otel) == 5
    assert otel.processor.stats()["traces_analyzed"] == 5


def request_ending_before_a_child(otel: OTel, n: int) -> int:
    """``request`` with one more child, which ends after the root: a late span.  Its trace id."""
    root = otel.tracer.start_span("GET /authors", kind=SpanKind.SERVER, attributes={"http.route": "/authors"})
    with trace.use_span(root, end_on_exit=True):
        db_span(otel, AUTHORS)
        for _ in range(n):
            db_span(otel, BOOKS)
        late = otel.tracer.start_span("render")
    late.end()
    return root.get_span_context().trace_id


def test_tail_mode_decides_on_the_worker_with_the_late_spans_of_a_waiting_trace(
    make_otel: Callable[..., OTel],
) -> None:
    """Tail mode analyzes in batches too (at half the cost a trace) and decides each trace's
    export there: a span that ends after its root while the trace waits for its batch is held
    with it, and goes out or is dropped with it, never orphaned."""
    before = workers()
    otel = make_otel(export_mode="tail", sample_rate=0.0, analysis_delay_ms=600_000, analysis_batch_size=100)
    assert workers() == before + 1
    kept = request_ending_before_a_child(otel, n=6)  # an N+1: kept
    request_ending_before_a_child(otel, n=2)  # clean: dropped at rate 0
    assert len(otel.span_exporter.get_finished_spans()) == 0  # both wait for their batch
    assert otel.processor.stats()["traces_waiting"] == 2
    spans = otel.spans()  # flushed: the batch runs
    assert {s.context.trace_id for s in spans} == {kept}
    assert len(spans) == 9  # the root, 7 queries and the late child
    stats = otel.stats()
    assert (stats["spans_late"], stats["spans_sampled_out"]) == (2, 5)
