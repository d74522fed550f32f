"""The standard library's threading HTTP server, run on a thread of its own: the base of the
OTLP/HTTP receiver and of the telemetry endpoint."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from otel_apm.collector.config import parse_endpoint


class BackgroundHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, endpoint: str, handler: type[BaseHTTPRequestHandler], thread_name: str) -> None:
        host, port = parse_endpoint(endpoint)
        # IPv6 for an IPv6 literal, else IPv4 (``localhost`` binds 127.0.0.1).
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._thread_name = thread_name
        self._thread: threading.Thread | None = None
        super().__init__((host, port), handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name=self._thread_name, daemon=True
        )
        self._thread.start()

    def stop_serving(self) -> None:
        """Stop the accept loop and close the listening socket; connections are the caller's."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()
