"""The collector's lifecycle: start every part, and on SIGTERM/SIGINT stop within the deadline.

    service = CollectorService(load_config("collector.yaml")).start()
    ...
    service.shutdown()            # or run(config), which waits for a signal

Shutdown, all within ``shutdown.timeout_s``: stop accepting (gRPC refuses new calls, the HTTP
listener closes, idle connections are closed, requests in progress finish), analyze every trace
still being assembled (their findings' events join the forward queue), then flush the
findings' metrics and the forward queue together.  What could not be delivered by the deadline
is counted and logged.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import TypeVar

from otel_apm.collector.api import ApiServer
from otel_apm.collector.config import CollectorConfig
from otel_apm.collector.forwarder import Forwarder
from otel_apm.collector.httpserver import BackgroundHTTPServer
from otel_apm.collector.pipeline import Emission, Pipeline
from otel_apm.collector.receivers import GrpcReceiver, HttpReceiver
from otel_apm.collector.telemetry import Telemetry, TelemetryServer
from otel_apm.store.db import FindingsStore
from otel_apm.store.emitter import StoreEmitter
from otel_apm.store.url import parse_store_url

_log = logging.getLogger("otel_apm.collector")

# Shares of the shutdown budget: receivers finishing requests in progress, then analysis of what
# is in flight; the flushes get whatever is left.
_RECEIVER_SHARE = 0.25
_DRAIN_SHARE = 0.25
_EXIT_MARGIN_S = 0.5


class CollectorService:
    """Receivers, pipeline, forwarder and telemetry wired from one CollectorConfig.

    Ports given as 0 are chosen by the system; ``grpc_port``, ``http_port`` and ``metrics_port``
    tell which after ``start()``.
    """

    def __init__(self, config: CollectorConfig) -> None:
        self.config = config
        self.telemetry = Telemetry()
        self.forwarder = Forwarder(config.downstream, self.telemetry)
        self.emission: Emission | None = None
        self.pipeline: Pipeline | None = None
        self._grpc: GrpcReceiver | None = None
        self._http: HttpReceiver | None = None
        self._metrics: TelemetryServer | None = None
        self._api: ApiServer | None = None
        self._started = False
        self._stopping = False
        self._stopped = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> CollectorService:
        if self._started:
            return self
        config = self.config
        self.emission = Emission(config, self.forwarder)
        self.pipeline = Pipeline(config, self.telemetry, self.forwarder, self.emission.emitters)
        store = next((e for e in self.emission.emitters if isinstance(e, StoreEmitter)), None)
        if store is not None:
            self.telemetry.observe("store_findings_written_total", lambda: store.stats()["written"])
            self.telemetry.observe("store_findings_dropped_total", lambda: store.stats()["dropped"])
        try:
            self._grpc = GrpcReceiver(config, self.pipeline)
            self._http = HttpReceiver(config, self.pipeline, self.telemetry)
            if config.telemetry.endpoint is not None:
                self._metrics = _listen(
                    "telemetry",
                    config.telemetry.endpoint,
                    lambda endpoint: TelemetryServer(endpoint, self.telemetry, lambda: not self._stopping),
                )
            if config.store.url is not None and config.api.endpoint is not None:
                self._api = _listen(
                    "api", config.api.endpoint, lambda endpoint: _api_server(endpoint, config)
                )
        except BaseException:
            self._close_listeners()
            self.emission.shutdown(1.0)
            raise
        self.forwarder.start()
        self.pipeline.start()
        self._grpc.start()
        self._http.start()
        for server in (self._metrics, self._api):
            if server is not None:
                server.start()
        self._started = True
        _log.info(
            "otel-apm collector listening: OTLP/gRPC %s, OTLP/HTTP %s%s; downstream %s; /metrics %s "
            "(findings store %s, JSON API %s)",
            _address(config.receivers.grpc.endpoint, self.grpc_port),
            _address(config.receivers.http.endpoint, self.http_port),
            " (TLS)" if config.receivers.tls.enabled else "",
            f"{config.downstream.endpoint} ({config.downstream.protocol})"
            if config.downstream.endpoint
            else "none (analyze only)",
            _address(config.telemetry.endpoint, self.metrics_port) if config.telemetry.endpoint else "off",
            parse_store_url(config.store.url) if config.store.url else "none",
            _address(config.api.endpoint, self.api_port) if self._api and config.api.endpoint else "off",
        )
        return self

    def shutdown(self, timeout_s: float | None = None) -> bool:
        """Stop within ``timeout_s`` (default ``shutdown.timeout_s``).  True when everything in
        flight was analyzed and delivered in time; False when something was cut short (logged)."""
        if not self._started:
            return True
        if self._stopping:  # stopping already, on another thread: wait for it
            return self._stopped.wait(timeout_s)
        self._stopping = True
        budget = self.config.shutdown.timeout_s if timeout_s is None else timeout_s
        started = time.monotonic()
        deadline = started + max(0.1, budget - _EXIT_MARGIN_S)

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        assert self.pipeline is not None and self.emission is not None
        clean = True
        # 1. stop accepting; requests in progress finish
        grace = left() * _RECEIVER_SHARE
        results: dict[str, bool] = {}
        stoppers = [
            _in_thread("grpc", lambda: self._grpc.stop(grace) if self._grpc else True, results),
            _in_thread("http", lambda: self._http.stop(grace) if self._http else True, results),
        ]
        for t in stoppers:
            t.join(grace + 1.5)
        if not all(results.get(k, False) for k in ("grpc", "http")):
            _log.warning("otel-apm collector: requests still in progress when the receivers stopped")
            clean = False
        self.pipeline.close()
        # 2. analyze what is in flight
        if not self.pipeline.drain(left() * _DRAIN_SHARE / (1 - _RECEIVER_SHARE)):
            _log.warning("otel-apm collector: traces still being analyzed at the shutdown deadline")
            clean = False
        # 3. flush the findings' metrics and the forward queue (spans, logs, finding events) together
        flushers = [
            _in_thread(
                "emission", lambda: self.emission.shutdown(left()) if self.emission else True, results
            ),
            _in_thread("forwarder", lambda: self.forwarder.shutdown(left()), results),
        ]
        for t in flushers:
            t.join(left() + 0.2)
        for name in ("emission", "forwarder"):
            if not results.get(name, False):
                _log.warning("otel-apm collector: %s not flushed completely by the shutdown deadline", name)
                clean = False
        if self._metrics is not None:
            self._metrics.stop()
            self._metrics = None
        if self._api is not None:
            self._api.stop()
            self._api = None
        snapshot = self.telemetry.snapshot()
        _log.info(
            "otel-apm collector stopped in %.2fs: %d spans received, %d traces analyzed, %d findings, "
            "%d requests forwarded, %d dropped",
            time.monotonic() - started,
            snapshot.get("spans_received_total", 0),
            snapshot.get("traces_analyzed_total", 0),
            sum(v for k, v in snapshot.items() if k.startswith("findings_total")),
            sum(v for k, v in snapshot.items() if k.startswith("requests_forwarded_total")),
            sum(v for k, v in snapshot.items() if k.startswith("requests_dropped_total")),
        )
        self._stopped.set()
        return clean

    def _close_listeners(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(0)
        if self._http is not None:
            self._http.server_close()
        for server in (self._metrics, self._api):
            if server is not None:
                server.server_close()

    def __enter__(self) -> CollectorService:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()

    @property
    def running(self) -> bool:
        """Started and not yet told to stop."""
        return self._started and not self._stopping

    # -- where it listens ----------------------------------------------------------------------------

    @property
    def grpc_port(self) -> int:
        return self._grpc.port if self._grpc is not None else 0

    @property
    def http_port(self) -> int:
        return self._http.port if self._http is not None else 0

    @property
    def metrics_port(self) -> int:
        return self._metrics.port if self._metrics is not None else 0

    @property
    def api_port(self) -> int:
        return self._api.port if self._api is not None else 0


_Server = TypeVar("_Server", bound=BackgroundHTTPServer)


def _listen(name: str, endpoint: str, make: Callable[[str], _Server]) -> _Server:
    """``make(endpoint)``, its OSError (a port in use) naming which endpoint could not listen."""
    try:
        return make(endpoint)
    except OSError as exc:
        raise OSError(f"{name} endpoint cannot listen on {endpoint}: {exc}") from None


def _api_server(endpoint: str, config: CollectorConfig) -> ApiServer:
    return ApiServer(endpoint, FindingsStore.from_config(config.analysis))


def _address(endpoint: str, port: int) -> str:
    host = endpoint.rpartition(":")[0]
    return f"{host}:{port}"


def _in_thread(name: str, fn: Callable[[], bool], results: dict[str, bool]) -> threading.Thread:
    def run() -> None:
        try:
            results[name] = bool(fn())
        except Exception:
            _log.exception("otel-apm collector: stopping %s failed", name)
            results[name] = False

    t = threading.Thread(target=run, name=f"otel-apm-stop-{name}", daemon=True)
    t.start()
    return t


def run(config: CollectorConfig) -> int:
    """The ``otel-apm collector`` command: serve until SIGTERM/SIGINT, then stop in time.

    Exit status 0 after an orderly stop within ``shutdown.timeout_s`` (what could not be delivered
    by then is counted and logged as an error), 1 when the collector could not start (a port in
    use) or the stop overran the deadline.  A second signal exits at once, with 1.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            _log.error("otel-apm collector: second signal, exiting without finishing the shutdown")
            os._exit(1)
        _log.info("otel-apm collector: %s received, shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    # The process is the collector's own: its garbage is mostly acyclic views, freed by reference
    # counting, so the young generation is collected less often than Python's every 700
    # allocations (8% of the analysis path's CPU, bench/README.md).  A collection finds almost
    # nothing to free, yet visits every span held in flight that arrived since the last one (about
    # 0.6 us a span, a pause bounded by the spans in flight); the higher the threshold, the more
    # spans are analyzed and freed before any collection sees them (at 50,000 collections were
    # still 8% of a saturated collector's CPU, at 500,000 under 1%: bench/README.md).
    gc_before = gc.get_threshold()
    gc.set_threshold(config.assembly.gc_young_threshold, *gc_before[1:])
    _log.info("otel-apm collector: young-generation GC threshold %d", gc.get_threshold()[0])
    try:
        service = CollectorService(config)
        try:
            service.start()
        except OSError as exc:
            _log.error("otel-apm collector cannot start: %s", exc)
            return 1
        while not stop.wait(1.0):
            pass
        timeout_s = config.shutdown.timeout_s
        watchdog = threading.Timer(timeout_s + 1.0, _overdue, args=(timeout_s,))
        watchdog.daemon = True
        watchdog.start()
        service.shutdown(timeout_s)
        watchdog.cancel()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        gc.set_threshold(*gc_before)


def _overdue(timeout_s: float) -> None:
    _log.error("otel-apm collector: shutdown took longer than %ss; exiting now", timeout_s)
    logging.shutdown()
    os._exit(1)
