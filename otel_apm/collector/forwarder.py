"""Forwarding downstream: every request as it was received, bounded, retried, never silently lost.

Requests wait in one bounded queue (by count and by bytes); worker threads send them over OTLP/gRPC
(the raw bytes through a generic unary call, so nothing is re-encoded) or OTLP/HTTP (POST
application/x-protobuf to ``{endpoint}/v1/{signal}``).  A retryable failure (gRPC UNAVAILABLE,
DEADLINE_EXCEEDED, ..., RESOURCE_EXHAUSTED with RetryInfo; HTTP 429/502/503/504; a connection
error) is retried with exponential backoff and jitter, honouring the server's RetryInfo or
Retry-After, for at most ``retry.max_elapsed_s``.  What is finally given up is counted
(``requests_dropped_total`` / ``items_dropped_total`` by signal) and logged.

When the queue is full, ``submit`` returns False and the receivers refuse the client's request
with RESOURCE_EXHAUSTED / 429, so a slow downstream pushes back to the senders instead of being
dropped here.
"""

from __future__ import annotations

import http.client
import logging
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import grpc  # type: ignore[import-untyped, unused-ignore]
from google.protobuf.message import DecodeError  # type: ignore[import-untyped, unused-ignore]
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from otel_apm.collector.config import DownstreamConfig
from otel_apm.collector.telemetry import Telemetry

_log = logging.getLogger(__name__)

Signal = Literal["traces", "logs", "metrics"]

GRPC_METHODS: dict[Signal, str] = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
}
RESPONSES: dict[Signal, Any] = {
    "traces": trace_service_pb2.ExportTraceServiceResponse,
    "logs": logs_service_pb2.ExportLogsServiceResponse,
    "metrics": metrics_service_pb2.ExportMetricsServiceResponse,
}
_REJECTED_FIELD: dict[Signal, str] = {
    "traces": "rejected_spans",
    "logs": "rejected_log_records",
    "metrics": "rejected_data_points",
}

# The OTLP specification's retryable gRPC codes; RESOURCE_EXHAUSTED only with RetryInfo.
_RETRYABLE_GRPC = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
_MULTIPLIER = 1.5
_RANDOMIZATION = 0.5
_MAX_RESPONSE_BYTES = 1 << 20


@dataclass
class Attempt:
    """The outcome of one delivery attempt."""

    ok: bool
    retryable: bool = False
    retry_after_s: float | None = None
    error: str = ""
    rejected_items: int = 0


@dataclass
class _Item:
    signal: Signal
    payload: bytes
    items: int


class Forwarder:
    """``submit`` queues; ``start`` runs the workers; ``shutdown`` flushes within a deadline.

    With no downstream endpoint ``submit`` accepts and discards (analyze-only), counting nothing
    as dropped because nothing was configured to receive it.
    """

    def __init__(self, config: DownstreamConfig, telemetry: Telemetry) -> None:
        self.config = config
        self.telemetry = telemetry
        self.enabled = config.endpoint is not None
        self._queue: deque[_Item] = deque()
        self._count = 0  # queued and reserved requests
        self._bytes = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._deadline: float | None = None
        self._abort = threading.Event()  # set once the shutdown deadline passed: give up now
        self._busy = 0
        self._dropped_while_stopping = 0
        self._closed = False  # shutdown took what was left in the queue
        self._workers: list[threading.Thread] = []
        self._sender: _Sender | None = None
        telemetry.observe("forward_queue_depth", lambda: float(len(self._queue)))
        telemetry.observe("forward_queue_bytes", lambda: float(self._bytes))

    # -- intake ----------------------------------------------------------------------------------

    def submit(self, signal: Signal, payload: bytes, items: int = 0) -> bool:
        """Queue ``payload`` (a serialized Export*ServiceRequest); False when the queue is full."""
        if not self.reserve(len(payload)):
            return False
        self.put_reserved(signal, payload, items)
        return True

    def reserve(self, size: int) -> bool:
        """Hold room for one request of ``size`` bytes, so that a caller can check other bounds
        before committing; then ``put_reserved`` or ``release`` it."""
        if not self.enabled:
            return True
        with self._cond:
            if self._stopping:
                return False
            full = self._count >= self.config.queue_size or (
                self._count > 0 and self._bytes + size > self.config.queue_max_bytes
            )
            if full:
                return False
            self._count += 1
            self._bytes += size
            return True

    def release(self, size: int) -> None:
        if not self.enabled:
            return
        with self._cond:
            self._count -= 1
            self._bytes -= size

    def put_reserved(self, signal: Signal, payload: bytes, items: int = 0) -> None:
        self._put(_Item(signal, payload, items), reserved=True)

    def put_unbounded(self, signal: Signal, payload: bytes, items: int = 0) -> None:
        """Queue past the bounds, for what the collector makes itself (the findings' events): the
        bounds push back on clients, and no client can be asked to retry this.  It is bounded all
        the same, by the spans in flight it was made from, which the bounds did admit."""
        self._put(_Item(signal, payload, items), reserved=False)

    def _put(self, item: _Item, reserved: bool) -> None:
        if not self.enabled:
            return
        with self._cond:
            closed = self._closed
            if not closed:
                if not reserved:
                    self._count += 1
                    self._bytes += len(item.payload)
                self._queue.append(item)
                self._cond.notify()
        if closed:  # reserved before shutdown, put after it emptied the queue: too late to send
            self._drop(item, "it arrived after the forwarder had stopped")

    @property
    def depth(self) -> int:
        return len(self._queue)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if not self.enabled or self._workers:
            return
        self._sender = _make_sender(self.config)
        for i in range(self.config.workers):
            t = threading.Thread(target=self._work, name=f"otel-apm-forward-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def shutdown(self, timeout_s: float) -> bool:
        """Deliver what is queued within ``timeout_s``; what is left then is counted as dropped.

        True when everything queued was delivered in time (nothing given up while stopping).
        """
        if not self.enabled:
            return True
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._stopping = True
            self._deadline = deadline
            self._cond.notify_all()
        clean = True
        for t in self._workers:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._workers):
            clean = False
            self._abort.set()  # workers in a backoff wait or a slow call give up their item
            for t in self._workers:
                t.join(self.config.timeout_s + 1)
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
            self._count = self._bytes = 0
            self._closed = True
        for item in left:
            clean = False
            self._drop(item, "the shutdown deadline passed before it could be sent")
        if self._sender is not None:
            self._sender.close()
        self._workers = []
        return clean and not self._dropped_while_stopping

    # -- workers ---------------------------------------------------------------------------------

    def _next(self) -> _Item | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            if self._abort.is_set():
                return None
            item = self._queue.popleft()
            self._count -= 1
            self._bytes -= len(item.payload)
            self._busy += 1
            return item

    def _work(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            try:
                self._deliver(item)
            except Exception as exc:  # a bug of ours must not kill the worker: count, log, go on
                self._drop(item, f"unexpected error {exc!r}")
                _log.exception("otel-apm collector: forwarding failed unexpectedly")
            finally:
                with self._cond:
                    self._busy -= 1

    def _deliver(self, item: _Item) -> None:
        assert self._sender is not None
        retry = self.config.retry
        started = time.monotonic()
        interval = retry.initial_interval_s
        while True:
            attempt = self._sender.send(item.signal, item.payload, self._attempt_timeout())
            if attempt.ok:
                self.telemetry.inc("requests_forwarded_total", label=item.signal)
                if attempt.rejected_items:
                    self.telemetry.inc("items_dropped_total", attempt.rejected_items, label=item.signal)
                    _log.warning(
                        "otel-apm collector: downstream rejected %d of the %s in a request: %s",
                        attempt.rejected_items,
                        _ITEM_NOUN[item.signal],
                        attempt.error or "no reason given",
                    )
                return
            if not attempt.retryable:
                self._drop(item, f"downstream refused it: {attempt.error}")
                return
            if attempt.retry_after_s is not None:
                delay = min(max(attempt.retry_after_s, 0.0), retry.max_interval_s)
            else:
                delay = interval * random.uniform(1 - _RANDOMIZATION, 1 + _RANDOMIZATION)
            interval = min(interval * _MULTIPLIER, retry.max_interval_s)
            now = time.monotonic()
            if now + delay - started > retry.max_elapsed_s:
                self._drop(item, f"still failing after {now - started:.1f}s: {attempt.error}")
                return
            deadline = self._deadline
            if deadline is not None and now + delay > deadline:
                self._drop(item, f"the shutdown deadline leaves no time to retry: {attempt.error}")
                return
            self.telemetry.inc("forward_retries_total", label=item.signal)
            _log.info(
                "otel-apm collector: forwarding %s failed (%s); retrying in %.2fs",
                item.signal,
                attempt.error,
                delay,
            )
            if self._abort.wait(delay):
                self._drop(item, f"the shutdown deadline passed while retrying: {attempt.error}")
                return

    def _attempt_timeout(self) -> float:
        timeout = self.config.timeout_s
        deadline = self._deadline
        if deadline is not None:
            timeout = max(0.05, min(timeout, deadline - time.monotonic()))
        return timeout

    def _drop(self, item: _Item, reason: str) -> None:
        if self._stopping:
            with self._cond:
                self._dropped_while_stopping += 1
        self.telemetry.inc("requests_dropped_total", label=item.signal)
        self.telemetry.inc("items_dropped_total", item.items, label=item.signal)
        _log.error(
            "otel-apm collector: dropped a %s request (%d %s, %d bytes) for %s: %s",
            item.signal,
            item.items,
            _ITEM_NOUN[item.signal],
            len(item.payload),
            self.config.endpoint,
            reason,
        )


_ITEM_NOUN: dict[Signal, str] = {"traces": "spans", "logs": "log records", "metrics": "data points"}


# -- senders -------------------------------------------------------------------------------------------


class _Sender:
    def send(self, signal: Signal, payload: bytes, timeout_s: float) -> Attempt:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _make_sender(config: DownstreamConfig) -> _Sender:
    if config.protocol == "grpc":
        return _GrpcSender(config)
    return _HttpSender(config)


def _read_ca(config: DownstreamConfig) -> bytes | None:
    if config.ca_file is None:
        return None
    with open(config.ca_file, "rb") as fh:
        return fh.read()


def _partial_success(signal: Signal, body: bytes) -> tuple[int, str]:
    """(rejected items, message) from an Export*ServiceResponse; (0, "") when unreadable."""
    try:
        response = RESPONSES[signal].FromString(body)
    except DecodeError:
        return 0, ""
    partial = response.partial_success
    return int(getattr(partial, _REJECTED_FIELD[signal])), str(partial.error_message)


class _GrpcSender(_Sender):
    def __init__(self, config: DownstreamConfig) -> None:
        assert config.endpoint is not None
        url = urlsplit(config.endpoint)
        target = url.netloc
        # Reconnect as often as we retry: gRPC's own reconnect backoff grows to 120 s by default,
        # and calls fail at once while the channel waits, however soon the downstream is back.
        backoff_ms = max(100, int(config.retry.max_interval_s * 1000))
        options = [
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
            (
                "grpc.initial_reconnect_backoff_ms",
                min(backoff_ms, max(100, int(config.retry.initial_interval_s * 1000))),
            ),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", backoff_ms),
        ]
        if url.scheme == "https":
            credentials = grpc.ssl_channel_credentials(root_certificates=_read_ca(config))
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._compression = grpc.Compression.Gzip if config.compression == "gzip" else None
        self._metadata = tuple(config.headers.items())
        self._methods: dict[Signal, Callable[..., bytes]] = {
            signal: self._channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            for signal, path in GRPC_METHODS.items()
        }

    def send(self, signal: Signal, payload: bytes, timeout_s: float) -> Attempt:
        try:
            body = self._methods[signal](
                payload, timeout=timeout_s, metadata=self._metadata, compression=self._compression
            )
        except grpc.RpcError as error:
            code = error.code()
            delay = _grpc_retry_delay(error)
            retryable = code in _RETRYABLE_GRPC or (
                code == grpc.StatusCode.RESOURCE_EXHAUSTED and delay is not None
            )
            return Attempt(
                False, retryable, delay, f"gRPC {code.name if code else '?'}: {error.details() or ''}".strip()
            )
        rejected, message = _partial_success(signal, body or b"")
        return Attempt(True, rejected_items=rejected, error=message)

    def close(self) -> None:
        self._channel.close()


def _grpc_retry_delay(error: Any) -> float | None:
    """The RetryInfo delay of a failed call: in grpc-status-details-bin (the standard place) or
    in google.rpc.retryinfo-bin (where OpenTelemetry's Python exporter looks)."""
    try:
        trailing = dict(error.trailing_metadata() or ())
    except Exception:
        return None
    info = error_details_pb2.RetryInfo()
    raw = trailing.get("google.rpc.retryinfo-bin")
    try:
        if raw is not None:
            info.ParseFromString(raw)
            return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
        details = trailing.get("grpc-status-details-bin")
        if details is not None:
            status = status_pb2.Status.FromString(details)
            for detail in status.details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    detail.Unpack(info)
                    return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    except DecodeError:
        return None
    return None


class _HttpSender(_Sender):
    """One keep-alive connection per worker thread."""

    def __init__(self, config: DownstreamConfig) -> None:
        assert config.endpoint is not None
        url = urlsplit(config.endpoint)
        self._https = url.scheme == "https"
        self._host = url.hostname or "localhost"
        self._port = url.port or (443 if self._https else 80)
        self._base = url.path.rstrip("/")
        self._gzip = config.compression == "gzip"
        self._headers = {
            **config.headers,
            "content-type": "application/x-protobuf",
            **({"content-encoding": "gzip"} if self._gzip else {}),
        }
        self._context: ssl.SSLContext | None = None
        if self._https:
            self._context = ssl.create_default_context(cafile=config.ca_file)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[http.client.HTTPConnection] = []

    def _connection(self, timeout_s: float) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout_s, context=self._context
                )
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout_s)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        conn.timeout = timeout_s
        if conn.sock is not None:
            conn.sock.settimeout(timeout_s)
        return conn

    def _reset(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            with self._lock:
                if conn in self._connections:
                    self._connections.remove(conn)

    def send(self, signal: Signal, payload: bytes, timeout_s: float) -> Attempt:
        import gzip

        body = gzip.compress(payload, compresslevel=6) if self._gzip else payload
        try:
            conn = self._connection(timeout_s)
            conn.request("POST", f"{self._base}/v1/{signal}", body=body, headers=self._headers)
            response = conn.getresponse()
            data = response.read(_MAX_RESPONSE_BYTES)
            if response.will_close or len(data) == _MAX_RESPONSE_BYTES:
                self._reset()
        except (OSError, http.client.HTTPException) as exc:
            self._reset()
            return Attempt(False, True, None, f"HTTP connection error: {exc!r}")
        status = response.status
        if 200 <= status < 300:
            content_type = response.getheader("content-type", "")
            rejected, message = _partial_success(signal, data) if "protobuf" in content_type else (0, "")
            return Attempt(True, rejected_items=rejected, error=message)
        retryable = status in _RETRYABLE_HTTP
        delay = _retry_after(response.getheader("retry-after")) if retryable else None
        return Attempt(False, retryable, delay, f"HTTP {status}: {_status_message(data)}")

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def _status_message(data: bytes) -> str:
    """The message of a google.rpc.Status body, else the start of the body as text."""
    try:
        status = status_pb2.Status.FromString(data)
        if status.message:
            return str(status.message)
    except DecodeError:
        pass
    return data[:200].decode("utf-8", "replace").strip() or "(no body)"
