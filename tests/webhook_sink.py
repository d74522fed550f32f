"""A real HTTP receiver for webhook tests, which can be told to fail and then recover.

    with WebhookSink() as sink:
        sink.plan("500", "500", "hang")       # the next three requests fail, then all succeed
        run_something(url=sink.url)
        wait_until(lambda: len(sink.notices()) == 3)

Each planned answer takes one request: a status code (``"500"``, ``"429"`` with Retry-After 0,
``"400"``), ``"hang"`` (the request is accepted and stored, but the answer comes only after
``hang_s``, past the client's timeout: the answer is lost, as on a network cut), ``"slow"`` (a
late answer within the timeout) or ``"block"`` (waits for ``release()``, then succeeds).  The
sink stores every request it accepted, and ``notices()`` drops repeated delivery ids, as a
receiver following the README does.  ``WebhookSink(port=p)`` listens on a given port, to test a
client that started while nothing listened there.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def delivery_id(self) -> str:
        return self.headers["x-otelapm-delivery"]

    def document(self) -> Any:
        return json.loads(self.body)


class WebhookSink:
    def __init__(self, port: int = 0, hang_s: float = 1.0) -> None:
        self.hang_s = hang_s
        self._plan: list[str] = []
        self._lock = threading.Lock()
        self.accepted: list[Received] = []  # every request stored, repeats included
        self.requests = 0
        self.blocked = threading.Event()  # a "block" request is waiting
        self._release = threading.Event()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with sink._lock:
                    sink.requests += 1
                    action = sink._plan.pop(0) if sink._plan else "200"
                received = Received({k.lower(): v for k, v in self.headers.items()}, body)
                if action == "block":
                    sink.blocked.set()
                    sink._release.wait(30)
                    action = "200"
                if action in ("hang", "slow"):
                    sink._store(received)
                    time.sleep(sink.hang_s if action == "hang" else 0.05)
                    action = "accepted"
                elif action == "200":
                    sink._store(received)
                try:
                    self.send_response(200 if action == "accepted" else int(action))
                    if action == "429":
                        self.send_header("Retry-After", "0")
                    if action.startswith("3"):
                        self.send_header("Location", "/elsewhere")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # "hang": the client has given up and closed the connection

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _store(self, received: Received) -> None:
        with self._lock:
            self.accepted.append(received)

    def plan(self, *answers: str) -> None:
        with self._lock:
            self._plan += answers

    def release(self) -> None:
        self._release.set()

    def deliveries(self) -> dict[str, Received]:
        """Accepted requests by delivery id, the first of each."""
        with self._lock:
            out: dict[str, Received] = {}
            for received in self.accepted:
                out.setdefault(received.delivery_id, received)
            return out

    def notices(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The notices of every distinct delivery, in arrival order."""
        return [
            notice
            for received in self.deliveries().values()
            for notice in received.document()["notices"]
            if kind is None or notice["kind"] == kind
        ]

    def __enter__(self) -> WebhookSink:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
