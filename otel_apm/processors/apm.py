"""APMSpanProcessor: analysis in the application's process, in front of the export processor.

    provider.add_span_processor(APMSpanProcessor(BatchSpanProcessor(OTLPSpanExporter())))

Pass-through mode (default): every span goes on to the wrapped processor as it ends, unchanged,
except the local root, which goes on after analysis carrying the findings as span events.
Tail mode: a local trace's spans are held until its root ends and its batch is analyzed, then
exported whole when the trace has a finding, an error or overflowed our bounds, and otherwise
with probability ``sample_rate``; a span ending after its root goes with its trace's decision.
Either way every trace is analyzed.

Nothing raised inside analysis or emission reaches the application: it is caught, logged once
per kind and counted (``stats()`` and the ``otel_apm.processor.*`` metrics).
"""

from __future__ import annotations

import dataclasses
import dis
import logging
import os
import random
import threading
from collections.abc import Callable, Iterable, Sequence
from types import MethodType
from typing import TYPE_CHECKING, Any

from opentelemetry._logs import LoggerProvider
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind

from otel_apm.analyze import Analyzer
from otel_apm.assemble.local import LocalAssembler, LocalTrace
from otel_apm.config import APMConfig
from otel_apm.contain import FailureLog
from otel_apm.detectors import DEFAULT_DETECTORS
from otel_apm.detectors.base import Detector, Finding
from otel_apm.emit import Emitter, reporters, shutdown_emitters
from otel_apm.emit.events import EventEmitter
from otel_apm.emit.span_events import with_finding_events
from otel_apm.ingest.callsite import CallSite, Site, recorder
from otel_apm.ingest.sdk import SpanReader, add_on_ending
from otel_apm.model import SpanView, Trace, endpoint_of
from otel_apm.native import native
from otel_apm.processors.batch import BatchAnalysis
from otel_apm.profiling.memory import MemoryMonitor
from otel_apm.semconv import SERVICE_NAME
from otel_apm.stats import Statistics, statistics_of
from otel_apm.version import __version__

if TYPE_CHECKING:
    from otel_apm.profiling.cpu import CpuProfiler

_log = logging.getLogger(__name__)

_NONE: tuple[ReadableSpan, ...] = ()
# A closed local trace: its spans, its root's view and the root (both None when it was evicted or
# drained before its root ended).
_Closed = tuple[LocalTrace[ReadableSpan], SpanView | None, ReadableSpan | None]
_CLIENT = SpanKind.CLIENT
_MAX_DROPPED_REMEMBERED = 4096
_EMITTER_SHUTDOWN_S = 5.0


def _does_nothing(method: Callable[..., Any]) -> bool:
    """Whether a method's body only returns None (the batch and simple span processors'
    ``on_start`` and ``_on_ending`` are ``pass``): a call the wrapper need not pass on, which on
    a span's path is worth skipping (a Python call there costs about 1 % of the span)."""
    code = getattr(getattr(method, "__func__", method), "__code__", None)
    if code is None:
        return False
    ops = [(i.opname, i.argval) for i in dis.get_instructions(code)]
    return any(op.startswith("RETURN") for op, _ in ops) and all(
        op in ("RESUME", "NOP", "RETURN_VALUE", "RETURN_CONST", "CACHE")
        or (op == "LOAD_CONST" and arg is None)
        for op, arg in ops
    )


def _sdk_disabled() -> bool:
    """OTEL_SDK_DISABLED=true, read as the SDK's providers read it."""
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


class APMSpanProcessor(SpanProcessor):
    """Wraps the export processor (or none, to analyze only).

    ``config`` defaults to :meth:`APMConfig.from_env`; keyword settings override it, e.g.
    ``APMSpanProcessor(BatchSpanProcessor(exporter), slow_query_threshold_ms=50)``.
    Emitters default to OTel events (through the global provider unless given) and the
    reporters the config turns on (:func:`otel_apm.emit.reporters`: console, webhook, metrics
    through ``meter_provider``), which ``shutdown()`` lets finish their work; ``detectors`` to
    the built-in ones (a custom Detector subclass can be added).

    With ``APM_MEMORY_MONITOR_ENABLED`` (the default) it also starts a :class:`MemoryMonitor`
    (``memory_monitor``), whose findings about the process go out through the same emitters,
    and stops it on ``shutdown()``.
    """

    def __init__(
        self,
        span_processor: SpanProcessor | None = None,
        config: APMConfig | None = None,
        *,
        emitters: Sequence[Emitter] | None = None,
        detectors: Sequence[type[Detector]] = DEFAULT_DETECTORS,
        logger_provider: LoggerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        **settings: Any,
    ) -> None:
        if config is None:
            config = APMConfig.from_env(**settings)
        elif settings:
            config = dataclasses.replace(config, **settings)
        if config.enabled and _sdk_disabled():
            # The SDK's providers are no-ops then; so are we: no worker, no monitor, no reporter
            # of our own printing or posting findings about a process that asked for no telemetry.
            config = dataclasses.replace(config, enabled=False)
        self.config = config
        self._enabled = config.enabled
        self._next = span_processor
        # The wrapped processor's start and ending hooks, None where they do nothing.
        self._next_on_start = None
        self._next_on_ending = None
        if span_processor is not None:
            if not _does_nothing(span_processor.on_start):
                self._next_on_start = span_processor.on_start
            if not _does_nothing(span_processor._on_ending):
                self._next_on_ending = span_processor._on_ending
        self._analyzer = Analyzer(config, detectors)
        self._tail = config.export_mode == "tail"
        self._assembler: LocalAssembler[ReadableSpan] = LocalAssembler(
            config.max_traces_in_flight, config.max_spans_per_trace, self._tail, self._read_spans
        )
        if emitters is None and not config.enabled:
            config.check_combination()  # a mistake is said now, not when analysis is turned on
            emitters = []  # pure pass-through: no reporter thread, no store connection
        elif emitters is None:
            emitters = [
                EventEmitter(logger_provider, config.events_interval_s),
                *reporters(config, meter_provider),
            ]
        self._emitters = tuple(emitters)
        self._native = native(config.native_enabled)
        self._reader = SpanReader(self._native)
        self._compiled_intake: Any = None  # the compiled Intake, when it takes the span hooks
        self._intake_resource: Resource | None = None  # whose spans it reads as they end
        # The application line of each DB or HTTP call (CallSite.record), by span id until the
        # span is read; slow calls also get it as code.* attributes as they end.
        self._record_callsite: Callable[[Span], None] | None = None
        self._code_pending: dict[int, Site] | None = None
        self._code_min_ns = int(config.code_attributes_min_ms * 1e6)
        if config.code_location_enabled:
            callsite = CallSite(callers=(APMSpanProcessor.on_start.__code__,))
            self._record_callsite = recorder(callsite, self._native)
            self._code_pending = callsite.pending
        self._resource: Resource | None = None
        self._service = config.service_name or "unknown_service"
        self._counts = dict.fromkeys(
            (
                "traces_analyzed",
                "traces_evicted",
                "spans_analyzed",
                "spans_late",
                "spans_truncated",
                "spans_sampled_out",
                "findings",
            ),
            0,
        )
        self._failures = FailureLog(_log)
        self._dropped: dict[int, None] = {}  # tail mode: recently dropped trace ids, oldest first
        # Tail mode: closed traces waiting for their batch's decision, by id; a late span of one
        # joins its held spans and goes out, or not, with them.
        self._awaiting: dict[int, LocalTrace[ReadableSpan]] = {}
        self._shutdown = False
        self._lock = threading.Lock()
        # Closed traces are analyzed in batches on a worker (in tail mode, their export decided
        # there too); APM_ANALYSIS_DELAY_MS=0 analyzes each as its root ends.
        self._batch: BatchAnalysis[_Closed] | None = None
        if config.enabled and config.analysis_delay_ms > 0:
            self._batch = BatchAnalysis(
                self._finish_batch,
                lambda exc: self._failed("analysis", exc),
                batch_size=config.analysis_batch_size,
                delay_s=config.analysis_delay_ms / 1000,
                max_queue=config.analysis_max_queue,
            )
        if config.sample_rate < 1 and not self._tail:
            _log.warning(
                "otel-apm: APM_SAMPLE_RATE=%s applies in tail mode only (APM_EXPORT_MODE=tail); "
                "every span is exported",
                config.sample_rate,
            )
        self._register_own_metrics(meter_provider)
        self._profiler: CpuProfiler | None = None
        if config.enabled and config.profiling_enabled:
            self._start_profiler()
        self.memory_monitor: MemoryMonitor | None = None
        if config.enabled and config.memory_monitor_enabled:
            self.memory_monitor = MemoryMonitor(
                config, self.emit_findings, self._service_name, meter_provider
            )
            self.memory_monitor.start()
        self._install_native_intake()
        if not config.enabled and span_processor is not None:
            # Turned off: the wrapped processor takes the SDK's calls itself, at no cost of ours.
            vars(self).update(
                on_start=span_processor.on_start,
                _on_ending=span_processor._on_ending,
                on_end=span_processor.on_end,
            )

    # -- SpanProcessor -------------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if self._next_on_start is not None:
            self._next_on_start(span, parent_context=parent_context)
        if not self._enabled:
            return
        if self._record_callsite is not None and span.kind is _CLIENT:
            try:
                self._record_callsite(span)
            except Exception as exc:
                self._failed("intake", exc)
        parent = span.parent
        if parent is not None and not parent.is_remote:
            return  # not a local root: filed by trace id when it ends
        self._on_root_start(span)

    def _on_root_start(self, span: Span) -> None:
        """A local root starts: its trace is opened (and the profiler told its thread's root)."""
        try:
            ctx = span.context
            if self._profiler is not None:
                self._profiler.threads.started(ctx.span_id, span.name)
            evicted = self._assembler.open_root(ctx.trace_id, ctx.span_id)
            if evicted is not None:
                self._count("traces_evicted")
                self._forward(self._finish([(self._assembler.finish(evicted), None, None)]))
        except Exception as exc:
            self._failed("intake", exc)

    def _on_ending(self, span: Span) -> None:
        """The SDK's hook as a span ends, before any processor is handed it: passed on, and the
        moment a slow call gets its code.* attributes."""
        if self._next_on_ending is not None:
            self._next_on_ending(span)
        if self._code_pending:
            self._add_code_attributes(span)

    def _add_code_attributes(self, span: Span) -> None:
        """A client span of at least APM_CODE_ATTRIBUTES_MIN_MS is exported with its call
        site's code.* attributes, which a trace UI shows beside the slow call.  Its site stays
        pending: the view reads the attributes, and the read lets the site go.  Called by the
        compiled intake too, for the spans it found due: a failure is contained here.  The
        duration is asked first, as the intake asks it: most calls are faster."""
        try:
            start, end, pending = span.start_time, span.end_time, self._code_pending
            if start is None or end is None or end - start < self._code_min_ns or pending is None:
                return
            site = pending.get(span.context.span_id)
            if site is not None:
                add_on_ending(span, site[0])
        except Exception as exc:
            self._failed("intake", exc)

    def _install_native_intake(self) -> None:
        """In pass-through mode, let the compiled :class:`otel_apm._native.Intake` take the SDK's
        calls: it handles the spans that need no decision (a child starting; a child ending into
        an open trace with room) and hands every other to the methods above, so these stay the
        one place decisions are made.  Bound to the instance, its methods shadow the class's."""
        if self._native is None or self._tail or not self._enabled:
            return
        nxt = self._next
        intake = self._native.Intake(
            next_on_start=self._next_on_start,
            next_on_ending=self._next_on_ending,
            next_on_end=None if nxt is None else nxt.on_end,
            open=self._assembler.open_traces,
            assembler=self._assembler,
            client_kind=_CLIENT,
            record_callsite=self._record_callsite,
            callsite_failed=lambda exc: self._failed("intake", exc),
            slow_on_start=self._on_root_start,
            slow_on_end=MethodType(APMSpanProcessor.on_end, self),  # the class's, not shadowed
            read_setup=self._reader.setup,
            code_pending=self._code_pending,
            code_min_ns=self._code_min_ns,
            add_code_attributes=self._add_code_attributes,
        )
        self._compiled_intake = intake
        vars(self).update(on_start=intake.on_start, _on_ending=intake._on_ending, on_end=intake.on_end)

    def on_end(self, span: ReadableSpan) -> None:
        out: Sequence[ReadableSpan] | None = None
        if self._enabled:
            try:
                out = self._intake(span)
            except Exception as exc:
                self._failed("intake", exc)
        if out is None:
            if self._next is not None:
                self._next.on_end(span)
        else:
            self._forward(out)

    def shutdown(self) -> None:
        """Analyze what waits and what is still open (as it is), hand on what was held, then
        shut the next down."""
        if self._shutdown:
            return
        self._shutdown = True
        if self.memory_monitor is not None:
            self.memory_monitor.stop()
        if self._batch is not None and not self._batch.shutdown(_EMITTER_SHUTDOWN_S):
            _log.warning(
                "otel-apm: the analysis worker's batch did not end within %s s at shutdown; "
                "the traces still waiting were not analyzed",
                _EMITTER_SHUTDOWN_S,
            )
        for lt in self._assembler.drain():
            self._count("traces_evicted")
            self._forward(self._finish([(lt, None, None)]))
        if self._profiler is not None:
            self._profiler.stop(_EMITTER_SHUTDOWN_S)  # its last period's findings still go out
        shutdown_emitters(self._emitters, _EMITTER_SHUTDOWN_S, lambda exc: self._failed("emit", exc))
        if self._next is not None:
            self._next.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Analyze the closed traces waiting and hand their roots on, then flush the next."""
        analyzed = self._batch is None or self._batch.flush(timeout_millis / 1000)
        flushed = self._next.force_flush(timeout_millis) if self._next is not None else True
        return analyzed and flushed

    # -- public introspection ------------------------------------------------------------------

    @property
    def emitters(self) -> tuple[Emitter, ...]:
        """Where findings go, e.g. to read a reporter's own counters (``WebhookReporter.stats``)."""
        return self._emitters

    def stats(self) -> dict[str, int]:
        """Counters of this processor's own work, for tests, the CLI and its metrics:
        ``traces_waiting`` closed traces wait for their batch's analysis, ``analysis_queue_full``
        were analyzed by the thread ending their root (the queue full, or shut down)."""
        batch = self._batch
        return {
            **self._counters(),
            "traces_in_flight": len(self._assembler),
            "traces_waiting": 0 if batch is None else len(batch),
            "analysis_queue_full": 0 if batch is None else batch.analyzed_inline,
        }

    def _counters(self) -> dict[str, int]:
        errors = self._failures.counts
        return {
            **self._counts,
            **{f"errors_{stage}": errors.get(stage, 0) for stage in ("intake", "analysis", "emit")},
            "errors_detector": self._analyzer.failures.total,
            "findings_suppressed": self._analyzer.suppressed,
        }

    @property
    def statistics(self) -> Statistics | None:
        """The rolling statistics per endpoint and statement (``snapshot(window)``,
        ``closed_minutes()``), or None when APM_STATS_ENABLED is off or emitters were given
        without them."""
        return statistics_of(self._emitters)

    # -- internals -----------------------------------------------------------------------------

    def _intake(self, span: ReadableSpan) -> Sequence[ReadableSpan] | None:
        """What to export now: None for the span itself, the common case, sparing a tuple."""
        parent = span.parent
        if parent is not None and not parent.is_remote:
            trace_id = span.context.trace_id
            outcome = self._assembler.add(trace_id, span)
            if outcome == "added":
                return None
            if outcome == "held":
                return _NONE
            return self._late_or_truncated(outcome, trace_id, span)
        ctx = span.context
        lt = self._assembler.close_root(ctx.trace_id, ctx.span_id)
        if lt is None:
            return self._late_or_truncated("late", ctx.trace_id, span)
        (root_view,) = self._read_spans([span])
        if self._profiler is not None:
            self._profiler.threads.ended(ctx.span_id, root_view.service, endpoint_of(root_view))
        lt.views.append(root_view)
        if self._batch is not None:
            if self._tail:
                with self._lock:
                    self._awaiting[lt.trace_id] = lt
            self._batch.put((lt, root_view, span))
            return _NONE
        return self._finish([(lt, root_view, span)])

    def _read_spans(self, spans: list[ReadableSpan]) -> list[SpanView]:
        """Views of a batch of ended spans, all from this processor's provider (one resource)."""
        resource = spans[0].resource
        if resource is not self._resource:
            self._resource = resource
            self._service = self.config.service_name or str(
                resource.attributes.get(SERVICE_NAME) or "unknown_service"
            )
        views = self._reader.read_all(spans, self._service)
        pending = self._code_pending
        if pending:
            for view in views:
                site = pending.pop(view.span_id, None)
                if site is not None and view.code is None:
                    view.code = site[1]
        intake = self._compiled_intake
        if intake is not None and resource is not self._intake_resource and self._reader.compiled:
            # The compiled reader agreed with the Python one: the intake may read this resource's
            # spans as they end, not here in a batch, and the trace holds no SDK span meanwhile.
            self._intake_resource = resource
            intake.read_from(resource, self._service)
        return views

    def _service_name(self) -> str:
        """The service named in findings: the configured one, else the spans' resource's."""
        return self._service

    def _late_or_truncated(self, outcome: str, trace_id: int, span: ReadableSpan) -> Sequence[ReadableSpan]:
        self._count("spans_" + outcome)
        if self._code_pending:  # never read: its site is let go here
            self._code_pending.pop(span.context.span_id, None)
        if outcome != "late" or not self._tail:
            return (span,)
        with self._lock:
            waiting = self._awaiting.get(trace_id)
            if waiting is not None:
                waiting.spans.append(span)  # held with its trace, whose export is not decided yet
                return _NONE
            dropped = trace_id in self._dropped
        if dropped:
            self._count("spans_sampled_out")
            return _NONE
        return (span,)

    def _finish_batch(self, closed: list[_Closed]) -> None:
        """The analysis worker's batch: analyzed, then every root handed on."""
        self._forward(self._finish(closed))

    def _finish(self, closed: list[_Closed]) -> list[ReadableSpan]:
        """Analyze closed local traces and return the spans to export, each trace's root last.

        A trace without findings is analyzed, reported and let go before the next is analyzed:
        kept for the whole batch, each trace's index, summary and filings would live through
        the young collections its successors' allocations trigger, and be walked again by the
        older ones (bench_processor.py, clean traces: 1.12-1.15 of the baseline when every
        trace waited for the batch's end, 1.11-1.12 so).  The traces with findings wait for one
        pass of each emitter over all of them: the findings' own emission (log records, span
        events) runs warm that way (an N+1 in every trace: 1.25-1.28, against 1.29-1.31 when
        they too were reported one by one)."""
        out: list[ReadableSpan] = []
        found: list[tuple[Trace, list[Finding], LocalTrace[ReadableSpan], ReadableSpan | None]] = []
        traces = spans = findings = 0
        for lt, root_view, root in closed:
            trace = Trace(lt.trace_id, lt.views, root_view, complete=root is not None and not lt.truncated)
            result = self._analyze(trace)
            if result is None:  # the analysis failed, contained: the spans go on
                out.extend(self._export(lt, root, []))
                continue
            traces += 1
            spans += len(trace.spans)
            if result:
                findings += len(result)
                found.append((trace, result, lt, root))
                continue
            self._emit(((trace, result),))
            out.extend(self._export(lt, root, result))
        if found:
            self._emit([(trace, result) for trace, result, _, _ in found])
            for _, result, lt, root in found:
                out.extend(self._export(lt, root, result))
        with self._lock:
            counts = self._counts
            counts["traces_analyzed"] += traces
            counts["spans_analyzed"] += spans
            counts["findings"] += findings
        return out

    def _export(
        self, lt: LocalTrace[ReadableSpan], root: ReadableSpan | None, findings: list[Finding]
    ) -> Sequence[ReadableSpan]:
        """The spans of an analyzed trace to export: the root with its findings as span events;
        in tail mode the held spans too, when the trace is kept."""
        if root is not None and findings and self.config.span_events_enabled:
            try:
                root = with_finding_events(root, findings)
            except Exception as exc:
                self._failed("emit", exc)
        if not self._tail:
            lt.spans = []
            return [] if root is None else [root]
        keep = (
            root is None
            or findings
            or lt.truncated
            or any(v.error for v in lt.views)
            or random.random() < self.config.sample_rate
        )
        # One step under the lock: a late span of the trace either joined the held spans taken
        # here (the trace was still awaiting) or finds the trace among the dropped.
        with self._lock:
            self._awaiting.pop(lt.trace_id, None)
            out, lt.spans = lt.spans, []
            if not keep:  # remembered, so the trace's later spans follow it out, not orphaned
                self._dropped[lt.trace_id] = None
                if len(self._dropped) > _MAX_DROPPED_REMEMBERED:
                    del self._dropped[next(iter(self._dropped))]
        if root is not None:
            out.append(root)
        if keep:
            return out
        self._count("spans_sampled_out", len(out))
        return _NONE

    def _analyze(self, trace: Trace) -> list[Finding] | None:
        """The trace's findings, or None when analysis failed (contained and counted)."""
        try:
            return self._analyzer.analyze(trace)
        except Exception as exc:
            self._failed("analysis", exc)
            return None

    def emit_findings(self, findings: Sequence[Finding]) -> None:
        """Report findings about the process rather than one trace (memory growth, CPU hot
        spots) through the same emitters as the traces' findings, and the same suppression
        rules (a hot spot in a batch endpoint may be intended)."""
        kept = self._analyzer.unsuppressed(list(findings))
        self._count("findings", len(kept))
        if kept:
            self._emit([(None, kept)])

    def _start_profiler(self) -> None:
        """The CPU profiler (APM_PROFILING_ENABLED): told which local root each thread runs by
        on_start and _intake, it reports its hot spots through :meth:`emit_findings`."""
        from otel_apm.profiling.reporting import start_cpu_profiler  # loaded only when profiling

        self._profiler = start_cpu_profiler(self.config, self.emit_findings)

    def _emit(self, analyzed: Sequence[tuple[Trace | None, Sequence[Finding]]]) -> None:
        """Each emitter over every trace in turn, a failure contained to its trace."""
        for emitter in self._emitters:
            for trace, findings in analyzed:
                try:
                    emitter.emit(trace, findings)
                except Exception as exc:
                    self._failed("emit", exc)

    def _forward(self, spans: Iterable[ReadableSpan]) -> None:
        if self._next is not None:
            for s in spans:
                self._next.on_end(s)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def _failed(self, stage: str, exc: Exception) -> None:
        self._failures.record(stage, exc)

    def _register_own_metrics(self, meter_provider: MeterProvider | None) -> None:
        meter = get_meter("otel_apm.processor", __version__, meter_provider=meter_provider)

        def counts(prefix: str, attr: str) -> Any:
            def callback(_: CallbackOptions) -> Iterable[Observation]:
                counters = self._counters()
                return [
                    Observation(v, {attr: k[len(prefix) :]})
                    for k, v in counters.items()
                    if k.startswith(prefix)
                ]

            return callback

        for name, prefix, attr, unit, description in (
            ("otel_apm.processor.spans", "spans_", "outcome", "{span}", "Spans seen by the APM processor"),
            ("otel_apm.processor.traces", "traces_", "outcome", "{trace}", "Local traces closed"),
            ("otel_apm.processor.errors", "errors_", "stage", "{error}", "Failures contained"),
        ):
            meter.create_observable_counter(name, [counts(prefix, attr)], unit=unit, description=description)
        meter.create_observable_up_down_counter(
            "otel_apm.processor.traces_in_flight",
            [lambda _: [Observation(len(self._assembler))]],
            unit="{trace}",
            description="Local traces waiting for their root to end",
        )
        meter.create_observable_up_down_counter(
            "otel_apm.processor.traces_waiting",
            [lambda _: [Observation(0 if self._batch is None else len(self._batch))]],
            unit="{trace}",
            description="Closed local traces waiting for their batch's analysis",
        )
