"""What the collector does with a request: forward it, and analyze the traces it carries.

    receiver -> Pipeline.accept_*(request, payload) -> Forwarder (the payload, unchanged)
                                                    -> views_from_payload -> TraceAssembler
    analysis thread: TraceAssembler.ready() -> Analyzer -> emitters (metrics, console, ...)
                                                        -> FindingEvents -> Forwarder (logs)

A request is taken whole or refused whole: room in the forward queue is reserved first, then the
assembler takes the spans (or refuses, past ``assembly.max_spans_in_flight``), then the payload is
queued.  A refused request goes back to the client as RESOURCE_EXHAUSTED / 429, so the client's
retry neither duplicates nor loses anything.  Spans whose ids are invalid (trace id not 16 bytes
or all zero, span id not 8 bytes or all zero) are rejected as OTLP partial success and are not
forwarded; only then is the request re-encoded.  With analysis on, the ids are checked once:
reading the payload into views checks them, and only a request with a malformed span is walked
again to find and remove its invalid spans.  Nor is such a request parsed by the receiver first
when the compiled check (:meth:`Pipeline.prechecked`) is sure protobuf would parse it: reading
the views is then the only pass that makes objects of it.

Failures of our own (ingest, analysis, emission) are contained: counted, logged once per kind,
and never cost the forwarding of the request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otel_apm.analyze import Analyzer
from otel_apm.assemble.distributed import TraceAssembler
from otel_apm.collector.config import CollectorConfig, DownstreamConfig
from otel_apm.collector.findings import FindingEvents
from otel_apm.collector.forwarder import Forwarder, Signal
from otel_apm.collector.telemetry import Telemetry
from otel_apm.contain import FailureLog
from otel_apm.emit import Emitter, reporters, shutdown_emitters
from otel_apm.emit.webhook import NOTICE_OUTCOMES, WebhookReporter
from otel_apm.ingest.otlp import IngestCounts, checked_request, has_valid_ids, views_from_payload
from otel_apm.model import SpanView, Trace
from otel_apm.stats import statistics_of
from otel_apm.version import __version__

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

_log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.1
RESOURCE_SERVICE_NAME = "otel-apm-collector"


@dataclass(frozen=True)
class Outcome:
    """What to answer the client.  ``accepted`` False: refused whole, retry later (``reason``).
    Accepted with ``rejected`` > 0: partial success with ``message``."""

    accepted: bool
    reason: str = ""
    rejected: int = 0
    message: str = ""


class Pipeline:
    def __init__(
        self,
        config: CollectorConfig,
        telemetry: Telemetry,
        forwarder: Forwarder,
        emitters: Sequence[Emitter] = (),
        poll_interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        self.config = config
        self.telemetry = telemetry
        self.forwarder = forwarder
        self.emitters = tuple(emitters)
        self._batched = [e for e in self.emitters if isinstance(e, FindingEvents)]  # sent per batch
        self.statistics = statistics_of(self.emitters)  # the rolling statistics, as processor.statistics
        self.analyzing = config.analysis.enabled
        self._native_enabled = config.analysis.native_enabled
        self.analyzer = Analyzer(config.analysis)
        assembly = config.assembly
        self.assembler = TraceAssembler(
            idle_timeout_s=assembly.idle_timeout_s,
            max_wait_s=assembly.max_wait_s,
            max_spans=assembly.max_spans_in_flight,
        )
        self._poll_interval_s = poll_interval_s
        self._lock = threading.Lock()  # around the assembler: receivers add, the analysis thread reads
        self._analysis_lock = threading.Lock()  # one trace analyzed at a time, in order
        self._stop = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.failures = FailureLog(_log)
        telemetry.observe("spans_in_flight", lambda: self._assembler_stat("spans_in_flight"))
        telemetry.observe("traces_in_flight", lambda: self._assembler_stat("traces_in_flight"))
        telemetry.observe("late_spans_total", lambda: self._assembler_stat("late_spans"))
        telemetry.observe("analysis_errors_total", lambda: float(self._errors()))
        telemetry.observe("findings_suppressed_total", lambda: float(self.analyzer.suppressed))
        for emitter in self.emitters:
            if isinstance(emitter, WebhookReporter):
                self._observe_webhook(emitter)

    def _observe_webhook(self, webhook: WebhookReporter) -> None:
        def count(key: str) -> Callable[[], float]:
            return lambda: float(webhook.stats()[key])

        for outcome in NOTICE_OUTCOMES:
            self.telemetry.observe("webhook_notices_total", count(outcome), label=outcome)
        self.telemetry.observe("webhook_retries_total", count("retries"))

    # -- intake (receiver threads) -------------------------------------------------------------------

    def prechecked(self, signal: Signal, payload: bytes) -> bool:
        """True when the receiver need not parse ``payload`` to check it: a trace request, with
        analysis on, that the compiled check finds one protobuf would parse (views_from_payload
        reads it itself).  Then ``accept_traces`` gets None for the request."""
        return signal == "traces" and self.analyzing and checked_request(payload, self._native_enabled)

    def accept_traces(self, request: ExportTraceServiceRequest | None, payload: bytes) -> Outcome:
        """``request`` is the parsed ``payload``, or None when it was :meth:`prechecked`."""
        self.telemetry.inc("requests_received_total", label="traces")
        if self._closed:
            return self._refuse("shutting_down")
        views: list[SpanView] = []
        checked: tuple[int, int] | None = None
        if self.analyzing:
            counts = IngestCounts()
            try:
                views = views_from_payload(payload, counts, self._native_enabled, checked=request is None)
            except Exception as exc:
                self.failures.record("ingest", exc)
            else:
                if not counts.malformed_spans:  # every id is valid: no need to look again
                    checked = (counts.views, 0)
        if checked is None:
            if request is None:  # prechecked, but reading its views failed: look at it the long way
                request = ExportTraceServiceRequest.FromString(payload)
            checked = _check_spans(request)
        total, invalid = checked
        if invalid:
            assert request is not None  # invalid spans are only found in a parsed request
            self.telemetry.inc("spans_refused_total", invalid, label="invalid_id")
            payload = request.SerializeToString()
        accepted = total - invalid
        if accepted:
            if not self.forwarder.reserve(len(payload)):
                self.telemetry.inc("spans_refused_total", accepted, label="queue_full")
                return self._refuse("queue_full")
            if views:
                with self._lock:
                    added = self.assembler.add(views)
                if not added:
                    self.forwarder.release(len(payload))
                    self.telemetry.inc("spans_refused_total", accepted, label="spans_in_flight")
                    return self._refuse("spans_in_flight")
            self.telemetry.inc("spans_received_total", accepted)  # before a worker can forward it
            self.forwarder.put_reserved("traces", payload, accepted)
        if invalid:
            return Outcome(
                True,
                rejected=invalid,
                message=f"{invalid} span(s) rejected: trace_id must be 16 bytes and span_id 8 bytes, "
                "not all zero, parent_span_id empty or 8 bytes",
            )
        return Outcome(True)

    def accept_logs(self, request: ExportLogsServiceRequest, payload: bytes) -> Outcome:
        self.telemetry.inc("requests_received_total", label="logs")
        if self._closed:
            return self._refuse("shutting_down")
        records = sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
        return self._forward_whole(
            "logs", payload, records, "log_records_received_total", request.resource_logs
        )

    def accept_metrics(self, request: ExportMetricsServiceRequest, payload: bytes) -> Outcome:
        self.telemetry.inc("requests_received_total", label="metrics")
        if self._closed:
            return self._refuse("shutting_down")
        points = _count_data_points(request)
        return self._forward_whole(
            "metrics", payload, points, "data_points_received_total", request.resource_metrics
        )

    def _forward_whole(
        self, signal: Signal, payload: bytes, items: int, counter: str, content: Any
    ) -> Outcome:
        if not content:
            return Outcome(True)  # nothing in it to forward
        if not self.forwarder.reserve(len(payload)):
            return self._refuse("queue_full")
        self.telemetry.inc(counter, items)
        self.forwarder.put_reserved(signal, payload, items)
        return Outcome(True)

    def _refuse(self, reason: str) -> Outcome:
        self.telemetry.inc("requests_refused_total", label=reason)
        return Outcome(False, reason=reason)

    # -- analysis (one background thread) --------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None and self.analyzing:
            self._thread = threading.Thread(target=self._poll, name="otel-apm-analysis", daemon=True)
            self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_interval_s):
            try:
                with self._lock:
                    traces = self.assembler.ready()
            except Exception as exc:
                self.failures.record("assembly", exc)
                continue
            self._analyze_all(traces)

    def _analyze_all(self, traces: Sequence[Trace], final: bool = False) -> None:
        with self._analysis_lock:
            for trace in traces:
                self._analyze(trace)
            for emitter in self._batched:
                try:
                    emitter.flush(final)
                except Exception as exc:
                    self.failures.record(f"emit {type(emitter).__name__}", exc)

    def _analyze(self, trace: Trace) -> None:
        try:
            findings = self.analyzer.analyze(trace)
        except Exception as exc:
            self.failures.record("analysis", exc)
            return
        self.telemetry.inc("traces_analyzed_total")
        if not trace.complete:
            self.telemetry.inc("incomplete_traces_total")
        for finding in findings:
            self.telemetry.inc("findings_total", label=finding.type)
        for emitter in self.emitters:
            try:
                emitter.emit(trace, findings)
            except Exception as exc:
                self.failures.record(f"emit {type(emitter).__name__}", exc)

    def close(self) -> None:
        """Refuse requests from now on (the receivers have stopped taking new ones)."""
        self._closed = True

    def drain(self, timeout_s: float) -> bool:
        """Stop polling and analyze every trace still in flight, as it is.  True when done in time."""
        self._closed = True
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
            if self._thread.is_alive():
                return False
            self._thread = None
        if not self.analyzing:
            return True
        traces: Sequence[Trace] = ()
        try:
            with self._lock:
                traces = self.assembler.drain()
        except Exception as exc:  # what it held is lost; the events' last summaries are not
            self.failures.record("assembly", exc)
        done = threading.Event()

        def run() -> None:
            self._analyze_all(traces, final=True)
            done.set()

        threading.Thread(target=run, name="otel-apm-drain", daemon=True).start()
        return done.wait(max(0.0, deadline - time.monotonic()))

    # -- introspection -----------------------------------------------------------------------------------

    def _assembler_stat(self, key: str) -> float:
        with self._lock:
            stats: Mapping[str, Any] = self.assembler.stats()
        return float(stats.get(key, 0))

    def _errors(self) -> int:
        return self.failures.total + self.analyzer.failures.total


def _check_spans(request: ExportTraceServiceRequest) -> tuple[int, int]:
    """(spans, invalid spans); invalid spans are removed from ``request`` in place."""
    total = invalid = 0
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            spans = ss.spans
            total += len(spans)
            bad = [i for i, span in enumerate(spans) if not has_valid_ids(span)]
            for i in reversed(bad):
                del spans[i]
            invalid += len(bad)
    return total, invalid


def _count_data_points(request: ExportMetricsServiceRequest) -> int:
    points = 0
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    points += len(getattr(metric, kind).data_points)
    return points


# -- emission: findings downstream as OTLP, events by the forwarder, metrics by an SDK provider ------


class Emission:
    """The emitters of findings: OTLP log records (events, :class:`FindingEvents`, through the
    ``forwarder``) and metrics (an SDK MeterProvider of our own, exporting to the same endpoint,
    protocol and headers), under the resource ``service.name=otel-apm-collector``; none without a
    downstream.  Plus the reporters that ``analysis`` turns on (:func:`otel_apm.emit.reporters`),
    the metrics reporter only with a downstream to send them to."""

    def __init__(self, config: CollectorConfig, forwarder: Forwarder) -> None:
        self.emitters: list[Emitter] = []
        self._shutdowns: list[Callable[[float], None]] = []
        meter_provider: MeterProvider | None = None
        last: Callable[[float], None] | None = None
        downstream = config.downstream
        if downstream.endpoint is not None:
            from opentelemetry.sdk.metrics import MeterProvider as SDKMeterProvider
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
            from opentelemetry.sdk.resources import Resource

            resource = Resource.create(
                {"service.name": RESOURCE_SERVICE_NAME, "service.version": __version__}
            )
            reader = PeriodicExportingMetricReader(_metric_exporter(config))
            meter_provider = sdk_meter_provider = SDKMeterProvider(resource=resource, metric_readers=[reader])
            self.emitters.append(
                FindingEvents(
                    forwarder,
                    resource.attributes,
                    downstream.events_per_request,
                    config.analysis.native_enabled,
                    config.analysis.events_interval_s,
                )
            )

            def shutdown_metrics(timeout_s: float) -> None:
                sdk_meter_provider.shutdown(int(timeout_s * 1000))  # a last collection and export

            last = shutdown_metrics
        configured = reporters(config.analysis, meter_provider, metrics=meter_provider is not None)
        self.emitters += configured
        # The reporters before the meter provider, so that what they count while they finish
        # (webhook notices delivered or given up) is in its last export.  The findings' log
        # records are not here: the forwarder sends them, and flushes them at its shutdown.
        self._shutdowns.append(lambda timeout_s: shutdown_emitters(configured, timeout_s))
        if last is not None:
            self._shutdowns.append(last)

    def shutdown(self, timeout_s: float) -> bool:
        """Flush and stop the providers within ``timeout_s``; True when they finished in time."""
        deadline = time.monotonic() + timeout_s
        for shutdown in self._shutdowns:
            done = threading.Event()

            def run(fn: Callable[[float], None] = shutdown, event: threading.Event = done) -> None:
                try:
                    fn(max(0.05, deadline - time.monotonic()))
                except Exception as exc:
                    _log.warning("otel-apm collector: flushing findings failed: %r", exc)
                finally:
                    event.set()

            threading.Thread(target=run, name="otel-apm-emit-shutdown", daemon=True).start()
            if not done.wait(max(0.0, deadline - time.monotonic())):
                return False
        return True


def _metric_exporter(config: CollectorConfig) -> Any:
    """The OTLP metric exporter towards the downstream."""
    downstream = config.downstream
    assert downstream.endpoint is not None
    headers = dict(downstream.headers)
    if downstream.protocol == "grpc":
        import grpc  # type: ignore[import-untyped, unused-ignore]
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        secure = downstream.endpoint.startswith("https://")
        credentials = None
        if secure:
            ca = None
            if downstream.ca_file is not None:
                with open(downstream.ca_file, "rb") as fh:
                    ca = fh.read()
            credentials = grpc.ssl_channel_credentials(root_certificates=ca)
        compression = (
            grpc.Compression.Gzip if downstream.compression == "gzip" else grpc.Compression.NoCompression
        )
        common: dict[str, Any] = {
            "endpoint": downstream.endpoint,
            "insecure": not secure,
            "credentials": credentials,
            "headers": headers,
            "timeout": downstream.timeout_s,
            "compression": compression,
        }
        return OTLPMetricExporter(**common, **_histograms(downstream))
    from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    http_common: dict[str, Any] = {
        "headers": headers,
        "timeout": downstream.timeout_s,
        "compression": HttpCompression.Gzip
        if downstream.compression == "gzip"
        else HttpCompression.NoCompression,
    }
    if downstream.ca_file is not None:
        http_common["certificate_file"] = downstream.ca_file
    return HttpMetricExporter(
        endpoint=f"{downstream.endpoint}/v1/metrics", **http_common, **_histograms(downstream)
    )


def _histograms(downstream: DownstreamConfig) -> dict[str, Any]:
    """The metric exporter's histogram aggregation, unless left to its environment variable."""
    from opentelemetry.sdk.metrics import Histogram
    from opentelemetry.sdk.metrics.view import (
        ExplicitBucketHistogramAggregation,
        ExponentialBucketHistogramAggregation,
    )

    if downstream.histograms == "env":
        return {}
    aggregation = (
        ExponentialBucketHistogramAggregation()
        if downstream.histograms == "exponential"
        else ExplicitBucketHistogramAggregation()
    )
    return {"preferred_aggregation": {Histogram: aggregation}}
