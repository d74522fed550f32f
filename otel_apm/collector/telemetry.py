"""The collector's own telemetry: counters and gauges, exposed as Prometheus text on GET /metrics.

A small thread-safe registry rather than an SDK MeterProvider: these numbers describe the
collector itself and are scraped where it runs (``telemetry.endpoint``, default localhost:8888),
whatever happens to the downstream the findings go to.  Every metric is declared once in
``METRICS`` with its help text; a counter's series exist from the start for the labels listed.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal

from otel_apm.collector.httpserver import BackgroundHTTPServer
from otel_apm.detectors import DEFAULT_DETECTORS
from otel_apm.emit.webhook import NOTICE_OUTCOMES

_log = logging.getLogger(__name__)

PREFIX = "otel_apm_collector_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Kind = Literal["counter", "gauge"]
SIGNALS = ("traces", "logs", "metrics")

# name (without prefix) -> (kind, help, label name, label values known up front)
METRICS: dict[str, tuple[Kind, str, str | None, tuple[str, ...]]] = {
    "requests_received_total": ("counter", "Export requests received, by signal", "signal", SIGNALS),
    "requests_refused_total": (
        "counter",
        "Export requests refused (the client was told to retry or that the request is invalid), by reason",
        "reason",
        ("queue_full", "spans_in_flight", "invalid", "too_large", "unauthenticated", "shutting_down"),
    ),
    "spans_received_total": ("counter", "Spans in accepted trace requests", None, ()),
    "spans_refused_total": (
        "counter",
        "Spans refused, by reason (invalid_id spans are reported to the client as partial success)",
        "reason",
        ("queue_full", "spans_in_flight", "invalid_id"),
    ),
    "log_records_received_total": ("counter", "Log records in accepted log requests", None, ()),
    "data_points_received_total": ("counter", "Metric data points in accepted metric requests", None, ()),
    "requests_forwarded_total": ("counter", "Requests delivered downstream, by signal", "signal", SIGNALS),
    "requests_dropped_total": (
        "counter",
        "Requests that could not be delivered downstream and were given up, by signal",
        "signal",
        SIGNALS,
    ),
    "items_dropped_total": (
        "counter",
        "Spans, log records or data points given up or rejected downstream, by signal",
        "signal",
        SIGNALS,
    ),
    "forward_retries_total": ("counter", "Delivery attempts that failed and were retried", "signal", SIGNALS),
    "forward_queue_depth": ("gauge", "Requests waiting to be forwarded", None, ()),
    "forward_queue_bytes": ("gauge", "Bytes waiting to be forwarded", None, ()),
    "traces_in_flight": ("gauge", "Traces being assembled", None, ()),
    "spans_in_flight": ("gauge", "Spans held for assembly", None, ()),
    "late_spans_total": ("counter", "Spans that arrived after their trace was analyzed", None, ()),
    "traces_analyzed_total": ("counter", "Traces analyzed", None, ()),
    "incomplete_traces_total": ("counter", "Traces analyzed without their root span", None, ()),
    "findings_total": (
        "counter",
        "Findings reported, by type",
        "type",
        tuple(d.type for d in DEFAULT_DETECTORS),
    ),
    "findings_suppressed_total": ("counter", "Findings silenced by a suppression rule", None, ()),
    "store_findings_written_total": ("counter", "Findings written to the findings store", None, ()),
    "store_findings_dropped_total": (
        "counter",
        "Findings not stored: the store's queue was full or writing failed (logged once)",
        None,
        (),
    ),
    "webhook_notices_total": (
        "counter",
        "Webhook reporter notices by outcome: queued, delivered, dropped (queue full), rejected (4xx), "
        "failed (attempts exhausted), undelivered (at shutdown)",
        "outcome",
        NOTICE_OUTCOMES,
    ),
    "webhook_retries_total": ("counter", "Webhook POSTs that failed and were retried", None, ()),
    "analysis_errors_total": (
        "counter",
        "Failures of our own (receivers, ingest, analysis, emission), contained and logged once per kind",
        None,
        (),
    ),
}


class Telemetry:
    """Thread-safe counters (``inc``) and gauges (``gauge`` callbacks or ``set``), by name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, str | None], float] = {}
        self._callbacks: dict[tuple[str, str | None], Callable[[], float]] = {}
        for name, (_, _, label, known) in METRICS.items():
            if label is None:
                self._values[(name, None)] = 0.0
            for value in known:
                self._values[(name, value)] = 0.0

    def inc(self, name: str, amount: float = 1, label: str | None = None) -> None:
        if name not in METRICS:
            raise KeyError(name)
        key = (name, label)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def set(self, name: str, value: float) -> None:
        if name not in METRICS:
            raise KeyError(name)
        with self._lock:
            self._values[(name, None)] = value

    def observe(self, name: str, callback: Callable[[], float], label: str | None = None) -> None:
        """``callback()`` gives the value of the series at each read (a gauge, or a counter kept
        elsewhere)."""
        if name not in METRICS:
            raise KeyError(name)
        with self._lock:
            self._callbacks[(name, label)] = callback

    def value(self, name: str, label: str | None = None) -> float:
        """The current value of one series (a callback's if it has one)."""
        callback = self._callbacks.get((name, label))
        if callback is not None:
            return _call(name, callback)
        with self._lock:
            return self._values.get((name, label), 0.0)

    def snapshot(self) -> dict[str, float]:
        """Every series as /metrics names it, less the prefix: ``{'findings_total{type="x"}': 2.0}``."""
        return {_series_name(name, label): value for name, label, value in self._series()}

    def _series(self) -> list[tuple[str, str | None, float]]:
        with self._lock:
            values = dict(self._values)
            callbacks = dict(self._callbacks)
        for (name, label), callback in callbacks.items():
            values[(name, label)] = _call(name, callback)
        order = {name: i for i, name in enumerate(METRICS)}
        return sorted(((n, lb, v) for (n, lb), v in values.items()), key=lambda s: (order[s[0]], s[1] or ""))

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        lines: list[str] = []
        current = None
        for name, label, value in self._series():
            kind, help_text, _, _ = METRICS[name]
            full = PREFIX + name
            if name != current:
                current = name
                lines.append(f"# HELP {full} {_escape_help(help_text)}")
                lines.append(f"# TYPE {full} {kind}")
            lines.append(f"{PREFIX}{_series_name(name, label)} {_number(value)}")
        return "\n".join(lines) + "\n"


def _series_name(name: str, label: str | None) -> str:
    if label is None:
        return name
    return f'{name}{{{METRICS[name][2]}="{_escape_label(label)}"}}'


def _call(name: str, callback: Callable[[], float]) -> float:
    try:
        return float(callback())
    except Exception as exc:  # a gauge must never break the scrape
        _log.debug("otel-apm collector: telemetry callback %s failed: %r", name, exc)
        return math.nan


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value == int(value) and abs(value) < 2**53 else repr(value)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def parse_prometheus(text: str) -> dict[str, float]:
    """``{"name": v, 'name{label="x"}': v}`` from exposition text (for tests and tooling)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        out[series] = float(value)
    return out


# -- the /metrics server ------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: TelemetryServer
    protocol_version = "HTTP/1.1"
    timeout = 30

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, self.server.telemetry.render(), CONTENT_TYPE)
        elif path in ("/healthz", "/"):
            healthy = self.server.healthy()
            self._send(200 if healthy else 503, "ok\n" if healthy else "shutting down\n", "text/plain")
        else:
            self._send(404, "not found: GET /metrics or /healthz\n", "text/plain")

    def _send(self, status: int, text: str, content_type: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("telemetry %s " + format, self.address_string(), *args)


class TelemetryServer(BackgroundHTTPServer):
    """GET /metrics (Prometheus) and /healthz (200, or 503 once shutdown began)."""

    def __init__(self, endpoint: str, telemetry: Telemetry, healthy: Callable[[], bool]) -> None:
        self.telemetry = telemetry
        self.healthy = healthy
        super().__init__(endpoint, _Handler, "otel-apm-telemetry")

    def stop(self) -> None:
        self.stop_serving()
