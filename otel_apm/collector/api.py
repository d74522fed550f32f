"""The collector's JSON API over the findings store, for dashboards and scripts (docs/store.md).

    GET /api/v1/summary      ?window=24h&service=shop
    GET /api/v1/endpoints    ?window=24h&service=shop
    GET /api/v1/statements   ?window=24h&service=shop
    GET /api/v1/findings     ?window=24h&service=shop&type=slow_query&state=open&limit=100
    GET /api/v1/findings/<fingerprint>?window=all
    GET /api/v1/report       ?window=24h&service=shop&limit=10

Every answer is the same data ``otel-apm report`` prints, built by :mod:`otel_apm.store.report`.
Read only: muting stays with the ``otel-apm mute`` command, as the API has no authentication.
A failing store answers 503 and is logged once per kind; it never stops the collector.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from otel_apm.collector.httpserver import BackgroundHTTPServer
from otel_apm.contain import FailureLog
from otel_apm.stats import Snapshot
from otel_apm.store.db import STATES, FindingsStore, StoredFinding
from otel_apm.store.report import (
    build_report,
    endpoints,
    parse_window,
    read_statistics,
    read_window,
    statements,
    summary,
)

_log = logging.getLogger(__name__)

PREFIX = "/api/v1/"
DEFAULT_WINDOW = "24h"
DEFAULT_LIMIT = 100


Route = Callable[[FindingsStore, dict[str, list[str]]], dict[str, Any]]


class BadRequest(ValueError):
    """A parameter the API does not accept; the message goes back to the client as is."""


def _one(query: dict[str, list[str]], name: str, default: str) -> str:
    values = query.get(name)
    return values[-1] if values else default


def _window(query: dict[str, list[str]], default: str) -> str:
    text = _one(query, "window", default)
    try:
        parse_window(text)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return text


def _optional(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _limit(query: dict[str, list[str]], default: int) -> int:
    text = _one(query, "limit", str(default))
    if not text.isdigit() or int(text) < 1:
        raise BadRequest(f"limit={text!r}: expected a whole number >= 1")
    return int(text)


def _listing(key: str, rows: Callable[[list[StoredFinding], Snapshot], Any]) -> Route:
    """A route answering ``rows(findings, statistics)`` of the window under ``key``."""

    def answer(store: FindingsStore, query: dict[str, list[str]]) -> dict[str, Any]:
        head, found = read_window(store, _window(query, DEFAULT_WINDOW), service=_optional(query, "service"))
        return {**head, key: rows(found, read_statistics(store, head))}

    return answer


def _findings(store: FindingsStore, query: dict[str, list[str]]) -> dict[str, Any]:
    state = _optional(query, "state")
    if state is not None and state not in STATES:
        raise BadRequest(f"state={state!r}: expected one of {', '.join(STATES)}")
    limit = _limit(query, DEFAULT_LIMIT)
    head, found = read_window(
        store,
        _window(query, DEFAULT_WINDOW),
        types=query.get("type", []),
        state=state,
        service=_optional(query, "service"),
    )
    return {**head, "total": len(found), "findings": [f.to_dict() for f in found[:limit]]}


def _report(store: FindingsStore, query: dict[str, list[str]]) -> dict[str, Any]:
    return build_report(
        store, _window(query, DEFAULT_WINDOW), limit=_limit(query, 10), service=_optional(query, "service")
    )


ROUTES: dict[str, Route] = {
    "summary": _listing("summary", summary),
    "endpoints": _listing("endpoints", endpoints),
    "statements": _listing("statements", statements),
    "findings": _findings,
    "report": _report,
}


class _Handler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.1"
    timeout = 30

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        path = parts.path
        if not path.startswith(PREFIX):
            self._send(404, {"error": f"not found: GET {PREFIX}{{{', '.join(ROUTES)}}}"})
            return
        resource, _, fingerprint = path[len(PREFIX) :].partition("/")
        route = ROUTES.get(resource)
        if route is None or (fingerprint and resource != "findings"):
            self._send(404, {"error": f"not found: {path}; the API serves {', '.join(ROUTES)}"})
            return
        try:
            if fingerprint:
                head, found = read_window(
                    self.server.store, _window(query, "all"), fingerprint=unquote(fingerprint)
                )
                if not found:
                    self._send(404, {"error": f"no finding {fingerprint!r} in this window"})
                    return
                self._send(200, {**head, "finding": found[0].to_dict()})
                return
            self._send(200, route(self.server.store, query))
        except BadRequest as exc:
            self._send(400, {"error": str(exc)})
        except Exception as exc:
            self.server.failures.record("api", exc)
            self._send(503, {"error": f"the store is unavailable: {type(exc).__name__}"})

    def _send(self, status: int, data: dict[str, Any]) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("api %s " + format, self.address_string(), *args)


class ApiServer(BackgroundHTTPServer):
    """The JSON API on its own listener (``api.endpoint``), reading the store through a
    connection of its own, so reads never queue behind the writer's batches."""

    def __init__(self, endpoint: str, store: FindingsStore) -> None:
        self.store = store
        self.failures = FailureLog(_log)
        super().__init__(endpoint, _Handler, "otel-apm-api")

    def stop(self) -> None:
        self.stop_serving()
        self.store.close()
