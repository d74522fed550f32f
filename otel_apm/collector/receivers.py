"""OTLP receivers as the OTLP specification describes them: gRPC (4317) and HTTP (4318).

Both decode the request (refusing what is malformed with INVALID_ARGUMENT / 400 and a message),
hand it to the pipeline together with the protobuf bytes to forward (as received over gRPC and
HTTP/protobuf; JSON is converted to protobuf once), and answer with the Export*ServiceResponse,
carrying partial_success when spans were rejected.  A request the collector cannot take now
(forward queue full, too many spans in flight) is refused with RESOURCE_EXHAUSTED and a
google.rpc.RetryInfo in the status details / HTTP 429 and Retry-After, so the client retries.

Limits: gRPC's own max receive message size (RESOURCE_EXHAUSTED from grpc), the HTTP body size
(413) and the decompressed size (413; gzip and deflate are inflated incrementally, never past
the limit).  Optional bearer token (UNAUTHENTICATED / 401) and TLS on both.

A trace request that the pipeline reads into views itself (analysis on) is not decoded when the
compiled check finds it valid (``Pipeline.prechecked``): it is checked, not parsed.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import socket
import ssl
import threading
import time
import zlib
from collections import namedtuple
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import grpc  # type: ignore[import-untyped, unused-ignore]
from google.protobuf import json_format  # type: ignore[import-untyped, unused-ignore]
from google.protobuf.message import DecodeError, Message  # type: ignore[import-untyped, unused-ignore]
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from otel_apm.collector.config import CollectorConfig
from otel_apm.collector.forwarder import Signal
from otel_apm.collector.httpserver import BackgroundHTTPServer
from otel_apm.collector.pipeline import Outcome, Pipeline
from otel_apm.collector.telemetry import Telemetry
from otel_apm.ingest.otlp import parse_otlp_json

_log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_PROTOBUF_TYPES = frozenset({PROTOBUF, "application/protobuf"})
PATHS: dict[str, Signal] = {"/v1/traces": "traces", "/v1/logs": "logs", "/v1/metrics": "metrics"}


@dataclass(frozen=True)
class _Kind:
    request: Any
    response: Any
    partial_field: str  # rejected_spans / rejected_log_records / rejected_data_points


KINDS: dict[Signal, _Kind] = {
    "traces": _Kind(
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse,
        "rejected_spans",
    ),
    "logs": _Kind(
        logs_service_pb2.ExportLogsServiceRequest,
        logs_service_pb2.ExportLogsServiceResponse,
        "rejected_log_records",
    ),
    "metrics": _Kind(
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
        "rejected_data_points",
    ),
}

_REASONS = {
    "queue_full": "the forward queue is full",
    "spans_in_flight": "too many spans are waiting for their traces to complete",
    "shutting_down": "the collector is shutting down",
}


class InvalidRequest(ValueError):
    """A payload that is not a valid Export*ServiceRequest; the message goes back to the client."""


# -- decoding (shared by both receivers) -------------------------------------------------------------


def decode_protobuf(signal: Signal, body: bytes) -> Any:
    try:
        return KINDS[signal].request.FromString(body)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise InvalidRequest(f"cannot decode the {signal} request as protobuf: {exc}") from None


def decode_json(signal: Signal, body: bytes) -> Any:
    """OTLP/JSON (hex ids, enum integers, lowerCamelCase keys; unknown fields ignored)."""
    try:
        return parse_otlp_json(body, KINDS[signal].request())
    except Exception as exc:  # ParseError, and whatever odd shapes make json_format raise
        raise InvalidRequest(f"cannot decode the {signal} request as OTLP/JSON: {exc}") from None


def response_for(signal: Signal, outcome: Outcome) -> Any:
    response = KINDS[signal].response()
    if outcome.rejected:
        setattr(response.partial_success, KINDS[signal].partial_field, outcome.rejected)
        response.partial_success.error_message = outcome.message
    return response


def refusal_message(outcome: Outcome, retry_after_s: float) -> str:
    why = _REASONS.get(outcome.reason, outcome.reason)
    return f"otel-apm collector: {why}; retry in {retry_after_s:g}s"


def _retry_info(retry_after_s: float) -> error_details_pb2.RetryInfo:
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromNanoseconds(int(retry_after_s * 1e9))
    return info


def _status(code: int, message: str, details: Iterable[Message] = ()) -> status_pb2.Status:
    status = status_pb2.Status(code=code, message=message)
    for detail in details:
        status.details.add().Pack(detail)
    return status


def bearer_ok(token: str | None, header: str | None) -> bool:
    if token is None:
        return True
    if header is None:
        return False
    scheme, _, value = header.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


# -- gRPC --------------------------------------------------------------------------------------------


class _GrpcStatus(namedtuple("_GrpcStatus", ("code", "details", "trailing_metadata")), grpc.Status):  # type: ignore[misc]
    pass


class _ExportServicer:
    """Export(raw request bytes) for one signal; registered with no request deserializer, so the
    bytes the client sent are the bytes forwarded."""

    signal: Signal

    def __init__(self, pipeline: Pipeline, token: str | None, retry_after_s: float) -> None:
        self._pipeline = pipeline
        self._token = token
        self._retry_after_s = retry_after_s
        self._accept: Callable[[Any, bytes], Outcome] = getattr(pipeline, f"accept_{self.signal}")

    def Export(self, request: bytes, context: grpc.ServicerContext) -> Any:
        try:
            result = self._handle(request, context)
        except Exception as exc:  # a bug of ours: the client is told, the collector goes on
            self._pipeline.failures.record(f"grpc {self.signal} receiver", exc)
            result = _GrpcStatus(grpc.StatusCode.INTERNAL, f"otel-apm collector: internal error {exc!r}", ())
        if isinstance(result, _GrpcStatus):
            context.abort_with_status(result)
        return result

    def _handle(self, request: bytes, context: grpc.ServicerContext) -> Any:
        """The response, or the _GrpcStatus to fail the call with."""
        telemetry = self._pipeline.telemetry
        if self._token is not None:
            header = next((v for k, v in context.invocation_metadata() if k == "authorization"), None)
            if not bearer_ok(self._token, header if isinstance(header, str) else None):
                telemetry.inc("requests_refused_total", label="unauthenticated")
                return _GrpcStatus(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token", ())
        try:
            message = (
                None
                if self._pipeline.prechecked(self.signal, request)
                else decode_protobuf(self.signal, request)
            )
        except InvalidRequest as exc:
            telemetry.inc("requests_refused_total", label="invalid")
            return _GrpcStatus(grpc.StatusCode.INVALID_ARGUMENT, str(exc), ())
        outcome = self._accept(message, request)
        if outcome.accepted:
            return response_for(self.signal, outcome)
        text = refusal_message(outcome, self._retry_after_s)
        code = (
            grpc.StatusCode.UNAVAILABLE
            if outcome.reason == "shutting_down"
            else grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        info = _retry_info(self._retry_after_s)
        status = _status(code.value[0], text, [info])
        return _GrpcStatus(
            code,
            text,
            (
                ("grpc-status-details-bin", status.SerializeToString()),
                # where OpenTelemetry's Python exporter reads the delay from
                ("google.rpc.retryinfo-bin", info.SerializeToString()),
            ),
        )


class TraceServicer(_ExportServicer, trace_service_pb2_grpc.TraceServiceServicer):
    signal = "traces"


class LogsServicer(_ExportServicer, logs_service_pb2_grpc.LogsServiceServicer):
    signal = "logs"


class MetricsServicer(_ExportServicer, metrics_service_pb2_grpc.MetricsServiceServicer):
    signal = "metrics"


_SERVICES: list[tuple[type[_ExportServicer], Any, str]] = [
    (TraceServicer, trace_service_pb2, "TraceService"),
    (LogsServicer, logs_service_pb2, "LogsService"),
    (MetricsServicer, metrics_service_pb2, "MetricsService"),
]


def _serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())


class GrpcReceiver:
    """grpc.server on a thread pool with the three OTLP services."""

    def __init__(self, config: CollectorConfig, pipeline: Pipeline) -> None:
        rc = config.receivers
        handlers = []
        for cls, module, name in _SERVICES:
            servicer = cls(pipeline, rc.auth.bearer_token, rc.retry_after_s)
            handler = grpc.unary_unary_rpc_method_handler(
                servicer.Export, request_deserializer=None, response_serializer=_serialize
            )
            full_name = module.DESCRIPTOR.services_by_name[name].full_name
            handlers.append(grpc.method_handlers_generic_handler(full_name, {"Export": handler}))
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=rc.grpc.max_workers, thread_name_prefix="otel-apm-grpc"),
            handlers=handlers,
            options=[
                ("grpc.max_receive_message_length", rc.grpc.max_recv_msg_size),
                ("grpc.so_reuseport", 0),  # a port in use is an error, not a silently shared port
            ],
        )
        endpoint = rc.grpc.endpoint
        try:
            if rc.tls.enabled:
                assert rc.tls.cert_file is not None and rc.tls.key_file is not None
                with open(rc.tls.key_file, "rb") as kf, open(rc.tls.cert_file, "rb") as cf:
                    credentials = grpc.ssl_server_credentials([(kf.read(), cf.read())])
                port = self._server.add_secure_port(endpoint, credentials)
            else:
                port = self._server.add_insecure_port(endpoint)
        except RuntimeError as exc:
            raise OSError(f"OTLP/gRPC receiver cannot listen on {endpoint}: {exc}") from None
        if not port:
            raise OSError(f"OTLP/gRPC receiver cannot listen on {endpoint}")
        self.port: int = port

    def start(self) -> None:
        self._server.start()

    def stop(self, grace_s: float) -> bool:
        """Refuse new calls at once, let calls in progress finish within ``grace_s``."""
        return bool(self._server.stop(grace_s).wait(grace_s + 1))


# -- HTTP --------------------------------------------------------------------------------------------


class _Reject(Exception):
    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close


_RPC_CODES = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    404: code_pb2.NOT_FOUND,
    405: code_pb2.UNIMPLEMENTED,
    411: code_pb2.INVALID_ARGUMENT,
    413: code_pb2.RESOURCE_EXHAUSTED,
    415: code_pb2.INVALID_ARGUMENT,
    429: code_pb2.RESOURCE_EXHAUSTED,
    500: code_pb2.INTERNAL,
    503: code_pb2.UNAVAILABLE,
}


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """Decompress gzip (several members allowed) or deflate, never producing more than ``limit``
    bytes: raises _Reject 413 past it, 400 for a corrupt or truncated stream."""
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    out: list[bytes] = []
    total = 0
    data = body
    d = zlib.decompressobj(wbits)
    try:
        while True:
            chunk = d.decompress(data, limit - total + 1)
            total += len(chunk)
            if total > limit:
                raise _Reject(413, f"the decompressed body exceeds {limit} bytes")
            out.append(chunk)
            data = d.unconsumed_tail
            if d.eof:
                rest = d.unused_data
                if encoding == "gzip" and rest.strip(b"\0"):
                    d = zlib.decompressobj(wbits)
                    data = rest
                    continue
                break
            if not data and not chunk:
                raise _Reject(400, f"the {encoding} body is truncated")
    except zlib.error as exc:
        raise _Reject(400, f"the body is not valid {encoding}: {exc}") from None
    return b"".join(out)


class _OTLPHandler(BaseHTTPRequestHandler):
    server: HttpReceiver
    protocol_version = "HTTP/1.1"
    server_version = "otel-apm-collector"
    sys_version = ""
    timeout = 60  # seconds a connection may sit idle or stall mid-request

    # -- dispatch ------------------------------------------------------------------------------

    def do_POST(self) -> None:
        self.server.begin(self.connection)
        try:
            self._post()
        except Exception as exc:  # a bug of ours: answer 500 if still possible, go on serving
            self.server.pipeline.failures.record("http receiver", exc)
            self.close_connection = True
            with contextlib.suppress(Exception):
                self._send_error(None, _Reject(500, f"otel-apm collector: internal error {exc!r}"))
        finally:
            self.server.end(self.connection)

    def _not_post(self) -> None:
        path = self.path.split("?", 1)[0]
        self.close_connection = True
        if path in PATHS:
            self._send_error(
                None, _Reject(405, f"{self.command} is not allowed on {path}: use POST"), allow="POST"
            )
        else:
            self._send_error(None, _Reject(404, f"no such path {path}: POST to {', '.join(PATHS)}"))

    do_GET = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_post

    def do_HEAD(self) -> None:
        self.close_connection = True
        path = self.path.split("?", 1)[0]
        self.send_response(405 if path in PATHS else 404)
        if path in PATHS:
            self.send_header("Allow", "POST")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def handle_expect_100(self) -> bool:
        """Refuse an oversized body before the client sends it."""
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.server.max_body:
            self.close_connection = True
            self._send_error(None, _Reject(413, f"the body exceeds {self.server.max_body} bytes", close=True))
            return False
        return super().handle_expect_100()

    # -- the export request --------------------------------------------------------------------

    def _post(self) -> None:
        path = self.path.split("?", 1)[0]
        signal = PATHS.get(path)
        fmt: str | None = None
        try:
            if signal is None:
                raise _Reject(404, f"no such path {path}: POST to {', '.join(PATHS)}", close=True)
            if not bearer_ok(self.server.token, self.headers.get("Authorization")):
                self.server.telemetry.inc("requests_refused_total", label="unauthenticated")
                raise _Reject(401, "missing or invalid bearer token", close=True)
            media = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
            if media in _PROTOBUF_TYPES:
                fmt = PROTOBUF
            elif media == JSON:
                fmt = JSON
            else:
                raise _Reject(
                    415,
                    f"unsupported Content-Type {media or '(none)'!r}: use {PROTOBUF} or {JSON}",
                    close=True,
                )
            encoding = self.headers.get("Content-Encoding", "identity").strip().lower() or "identity"
            if encoding not in ("identity", "gzip", "deflate"):
                raise _Reject(415, f"unsupported Content-Encoding {encoding!r}: use gzip or none", close=True)
            body = self._read_body()
            if body is None:
                return  # the client went away mid-body: nothing to answer
            if encoding != "identity":
                body = inflate(body, encoding, self.server.max_decompressed)
            elif len(body) > self.server.max_decompressed:
                raise _Reject(413, f"the body exceeds {self.server.max_decompressed} bytes")
            pipeline = self.server.pipeline
            try:
                if fmt == JSON:
                    message = decode_json(signal, body)
                else:
                    message = None if pipeline.prechecked(signal, body) else decode_protobuf(signal, body)
            except InvalidRequest as exc:
                raise _Reject(400, str(exc)) from None
            payload = body if fmt == PROTOBUF else message.SerializeToString()
            outcome: Outcome = getattr(pipeline, f"accept_{signal}")(message, payload)
            if not outcome.accepted:
                retry_after = self.server.retry_after_s
                status = 503 if outcome.reason == "shutting_down" else 429
                raise _Reject(status, refusal_message(outcome, retry_after), close=status == 503)
            self._send_message(200, fmt, response_for(signal, outcome))
        except _Reject as reject:
            if reject.status in (400, 413):
                reason = "too_large" if reject.status == 413 else "invalid"
                self.server.telemetry.inc("requests_refused_total", label=reason)
            if reject.close and reject.status in (401, 404, 415) and self._discard_body():
                reject.close = False  # the unread body is consumed: the connection stays usable
            if reject.close:
                self.close_connection = True
            self._send_error(fmt, reject)

    def _discard_body(self) -> bool:
        """Read and drop a body refused before it was read (within the size limit), so that the
        client reads the answer rather than a reset and may reuse the connection."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return False
        length_text = self.headers.get("Content-Length", "0").strip()
        if not length_text.isdigit() or int(length_text) > self.server.max_body:
            return False
        left = int(length_text)
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                return False
            left -= len(chunk)
        return True

    def _read_body(self) -> bytes | None:
        limit = self.server.max_body
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        if not length_text.strip().isdigit():
            raise _Reject(400, f"invalid Content-Length {length_text!r}", close=True)
        length = int(length_text)
        if length > limit:
            raise _Reject(413, f"the body exceeds {limit} bytes", close=True)
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            return None
        return body

    def _read_chunked(self, limit: int) -> bytes | None:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            if not line:
                self.close_connection = True
                return None
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _Reject(400, "invalid chunked encoding", close=True) from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > limit:
                raise _Reject(413, f"the body exceeds {limit} bytes", close=True)
            chunk = self.rfile.read(size)
            self.rfile.readline(3)
            if len(chunk) < size:
                self.close_connection = True
                return None
            parts.append(chunk)

    # -- responses ------------------------------------------------------------------------------

    def _send_message(
        self, status: int, fmt: str, message: Any, headers: dict[str, str] | None = None
    ) -> None:
        if fmt == JSON:
            body = json.dumps(json_format.MessageToDict(message), separators=(",", ":")).encode()
        else:
            body = message.SerializeToString()
        self.send_response(status)
        self.send_header("Content-Type", fmt)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection or self.server.closing:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, fmt: str | None, reject: _Reject, allow: str | None = None) -> None:
        headers: dict[str, str] = {}
        details: list[Message] = []
        if reject.status in (429, 503):
            retry_after = self.server.retry_after_s
            headers["Retry-After"] = str(max(1, round(retry_after)))
            details.append(_retry_info(retry_after))
        if reject.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if allow is not None:
            headers["Allow"] = allow
        status = _status(_RPC_CODES.get(reject.status, code_pb2.UNKNOWN), reject.message, details)
        if fmt is None:  # no content type to answer in: plain text
            body = (reject.message + "\n").encode()
            self.send_response(reject.status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            for key, value in headers.items():
                self.send_header(key, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            return
        self._send_message(reject.status, fmt, status, headers)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("otlp/http %s " + format, self.address_string(), *args)


class HttpReceiver(BackgroundHTTPServer):
    """ThreadingHTTPServer for POST /v1/traces, /v1/logs, /v1/metrics (HTTP/1.1, keep-alive)."""

    request_queue_size = 128

    def __init__(self, config: CollectorConfig, pipeline: Pipeline, telemetry: Telemetry) -> None:
        rc = config.receivers
        self.pipeline = pipeline
        self.telemetry = telemetry
        self.token = rc.auth.bearer_token
        self.retry_after_s = rc.retry_after_s
        self.max_body = rc.http.max_request_body_size
        self.max_decompressed = rc.http.max_decompressed_size
        self.ssl_context: ssl.SSLContext | None = None
        if rc.tls.enabled:
            assert rc.tls.cert_file is not None and rc.tls.key_file is not None
            self.ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ssl_context.load_cert_chain(rc.tls.cert_file, rc.tls.key_file)
        self.closing = False
        self._cond = threading.Condition()
        self._connections: dict[socket.socket, bool] = {}  # connection -> busy with a request
        try:
            super().__init__(rc.http.endpoint, _OTLPHandler, "otel-apm-http")
        except OSError as exc:
            raise OSError(f"OTLP/HTTP receiver cannot listen on {rc.http.endpoint}: {exc}") from None

    # each connection runs on its own thread: the TLS handshake happens there, not on the accept loop
    def finish_request(self, request: Any, client_address: Any) -> None:
        conn = request
        if self.ssl_context is not None:
            try:
                request.settimeout(10)
                conn = self.ssl_context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                _log.debug("otlp/http TLS handshake with %s failed: %r", client_address, exc)
                return
        with self._cond:
            self._connections[conn] = False
        try:
            self.RequestHandlerClass(conn, client_address, self)  # type: ignore[arg-type]
        finally:
            with self._cond:
                self._connections.pop(conn, None)
                self._cond.notify_all()
            if conn is not request:
                conn.close()

    def begin(self, conn: socket.socket) -> None:
        with self._cond:
            self._connections[conn] = True

    def end(self, conn: socket.socket) -> None:
        with self._cond:
            if conn in self._connections:
                self._connections[conn] = False
            self._cond.notify_all()

    def stop(self, grace_s: float) -> bool:
        """Stop accepting, close idle connections, let requests in progress finish within ``grace_s``."""
        deadline = time.monotonic() + grace_s
        self.closing = True
        self.stop_serving()
        with self._cond:
            while True:
                for conn, busy in list(self._connections.items()):
                    if not busy:
                        _shutdown_socket(conn)
                if not any(self._connections.values()):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.1))


def _shutdown_socket(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
