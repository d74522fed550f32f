"""A real OTLP/gRPC receiver for tests: traces, logs and metrics over a real socket.

    with OTLPSink() as sink:
        run_something(endpoint=sink.endpoint)      # "http://127.0.0.1:<port>"
        sink.wait_for(lambda: len(sink.spans()) >= 3)

It stores every request it accepts (thread-safe) and flattens them on demand: ``spans()``,
``log_records()`` and ``metrics()`` give ``(resource attributes, proto message)`` pairs, and
``attributes()`` / ``any_value()`` turn OTLP key-values into plain Python values.  ``reject()``
makes the next requests fail with a gRPC status, for tests of retries and of a downstream that
is down.  Nothing here knows about otel_apm: the collector tests reuse it as their downstream.

As a pytest fixture::

    @pytest.fixture
    def sink() -> Iterator[OTLPSink]:
        with OTLPSink() as s:
            yield s
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from types import TracebackType
from typing import Any, TypeVar

import grpc  # type: ignore[import-untyped]
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span

T = TypeVar("T")

Attributes = dict[str, Any]

__all__ = ["OTLPSink", "any_value", "attributes", "data_points", "span_ids"]


def any_value(value: AnyValue) -> Any:
    """An OTLP AnyValue as a Python value (lists for arrays, dicts for key-value lists)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


def attributes(kvs: Iterable[KeyValue]) -> Attributes:
    """OTLP key-values (span, resource, log record, data point attributes) as a dict."""
    return {kv.key: any_value(kv.value) for kv in kvs}


def data_points(metric: Metric) -> list[Any]:
    """The data points of a metric whatever its type (sum, gauge, histogram, ...)."""
    kind = metric.WhichOneof("data")
    if kind is None:
        return []
    return list(getattr(metric, kind).data_points)


class _Rejection:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.remaining: int | None = None

    def take(self) -> grpc.StatusCode | None:
        """The status to fail this request with, if any; counts down a limited rejection."""
        if self.code is None:
            return None
        code = self.code
        if self.remaining is not None:
            self.remaining -= 1
            if self.remaining <= 0:
                self.code = None
                self.remaining = None
        return code


class OTLPSink(
    trace_service_pb2_grpc.TraceServiceServicer,
    logs_service_pb2_grpc.LogsServiceServicer,
    metrics_service_pb2_grpc.MetricsServiceServicer,
):
    """OTLP/gRPC receiver on ``host`` at an ephemeral port (or ``port``), for tests."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, max_workers: int = 4) -> None:
        self.host = host
        self._requested_port = port
        self._max_workers = max_workers
        self._server: grpc.Server | None = None
        self.port = 0
        self._cond = threading.Condition()
        self._traces: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self._logs: list[logs_service_pb2.ExportLogsServiceRequest] = []
        self._metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self._rejection = _Rejection()
        self.rejected = 0

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> OTLPSink:
        if self._server is not None:
            return self
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._max_workers))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, server)  # type: ignore[no-untyped-call]
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(self, server)  # type: ignore[no-untyped-call]
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port(f"{self.host}:{self._requested_port}")
        if port == 0:
            raise RuntimeError(f"OTLPSink: cannot bind {self.host}:{self._requested_port}")
        server.start()
        self.port = port
        self._server = server
        return self

    def stop(self, grace: float | None = None) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace).wait()

    def __enter__(self) -> OTLPSink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """``host:port``, for gRPC clients."""
        return f"{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        """``http://host:port``, for OTEL_EXPORTER_OTLP_ENDPOINT and the exporters' ``endpoint``."""
        return f"http://{self.host}:{self.port}"

    # -- the three services --------------------------------------------------------------------

    def _accept(self, store: list[Any], request: Any, context: grpc.ServicerContext) -> bool:
        with self._cond:
            code = self._rejection.take()
            if code is not None:
                self.rejected += 1
            else:
                store.append(request)
                self._cond.notify_all()
        if code is not None:
            context.abort(code, "rejected by OTLPSink.reject()")
            return False
        return True

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        """One method name for three services: dispatch on the request type."""
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            self._accept(self._traces, request, context)
            return trace_service_pb2.ExportTraceServiceResponse()
        if isinstance(request, logs_service_pb2.ExportLogsServiceRequest):
            self._accept(self._logs, request, context)
            return logs_service_pb2.ExportLogsServiceResponse()
        if isinstance(request, metrics_service_pb2.ExportMetricsServiceRequest):
            self._accept(self._metrics, request, context)
            return metrics_service_pb2.ExportMetricsServiceResponse()
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"unexpected request {type(request).__name__}")
        return None  # pragma: no cover - abort raises

    # -- control -------------------------------------------------------------------------------

    def reject(
        self, code: grpc.StatusCode | None = grpc.StatusCode.UNAVAILABLE, times: int | None = None
    ) -> None:
        """Fail the next ``times`` requests (all, if None) with ``code``; ``reject(None)`` stops."""
        with self._cond:
            self._rejection.code = code
            self._rejection.remaining = times if code is not None else None

    def clear(self) -> None:
        with self._cond:
            self._traces.clear()
            self._logs.clear()
            self._metrics.clear()
            self.rejected = 0

    # -- what arrived ----------------------------------------------------------------------------

    @property
    def trace_requests(self) -> list[trace_service_pb2.ExportTraceServiceRequest]:
        with self._cond:
            return list(self._traces)

    @property
    def log_requests(self) -> list[logs_service_pb2.ExportLogsServiceRequest]:
        with self._cond:
            return list(self._logs)

    @property
    def metric_requests(self) -> list[metrics_service_pb2.ExportMetricsServiceRequest]:
        with self._cond:
            return list(self._metrics)

    def spans(self) -> list[tuple[Attributes, Span]]:
        """Every span received, with its resource's attributes, in arrival order."""
        return [
            (attributes(rs.resource.attributes), span)
            for request in self.trace_requests
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]

    def log_records(self) -> list[tuple[Attributes, LogRecord]]:
        """Every log record received, with its resource's attributes, in arrival order."""
        return [
            (attributes(rl.resource.attributes), record)
            for request in self.log_requests
            for rl in request.resource_logs
            for sl in rl.scope_logs
            for record in sl.log_records
        ]

    def metrics(self) -> list[tuple[Attributes, Metric]]:
        """Every metric message received (one per export per instrument), with resource attributes."""
        return [
            (attributes(rm.resource.attributes), metric)
            for request in self.metric_requests
            for rm in request.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
        ]

    def metric_names(self) -> set[str]:
        return {metric.name for _, metric in self.metrics()}

    def data_points(self, name: str) -> list[Any]:
        """All data points received for the metric ``name``, over every export."""
        return [point for _, metric in self.metrics() if metric.name == name for point in data_points(metric)]

    def wait_for(
        self,
        predicate: Callable[[], T],
        timeout: float = 10.0,
        interval: float = 0.05,
        message: str | Callable[[], str] = "",
    ) -> T:
        """Poll ``predicate`` until it returns something truthy, and return that.

        Wakes early whenever a request arrives.  On timeout raises AssertionError with
        ``message`` (or a summary of what did arrive), so a test reads
        ``records = sink.wait_for(lambda: findings(sink))``.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                text = message() if callable(message) else message
                raise AssertionError(f"{text or 'condition not met'} within {timeout}s; {self.summary()}")
            with self._cond:
                self._cond.wait(min(interval, remaining))

    def summary(self) -> str:
        return (
            f"OTLPSink received {len(self.spans())} spans, {len(self.log_records())} log records, "
            f"metrics {sorted(self.metric_names())}, rejected {self.rejected} requests"
        )


def span_ids(spans: Sequence[tuple[Attributes, Span]]) -> set[str]:
    """Hex span ids of ``(resource, span)`` pairs as ``spans()`` returns them."""
    return {span.span_id.hex() for _, span in spans}
