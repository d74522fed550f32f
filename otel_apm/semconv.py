"""Attribute keys that analysis reads, stable convention first, then the older one.

Instrumentations in the field emit either generation (and some both), so every reader of
attributes, from SDK spans or from OTLP, goes through this one table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from otel_apm import model

DB_SYSTEM = ("db.system.name", "db.system")
DB_STATEMENT = ("db.query.text", "db.statement")
DB_OPERATION = ("db.operation.name", "db.operation")
DB_TABLE = ("db.collection.name", "db.sql.table")
HTTP_METHOD = ("http.request.method", "http.method")
HTTP_URL = ("url.full", "http.url")
HTTP_ROUTE = ("http.route",)
HTTP_STATUS = ("http.response.status_code", "http.status_code")
SERVER_ADDRESS = ("server.address", "net.peer.name")
MESSAGING_SYSTEM = ("messaging.system",)
RPC_SYSTEM = ("rpc.system",)
SERVICE_NAME = "service.name"

# Key/value stores that instrumentations report as databases; their spans are cache work.
CACHE_SYSTEMS = frozenset({"redis", "memcached", "valkey"})


def _first(attrs: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = attrs.get(key)
        if value is not None:
            return value
    return None


def fill_attributes(view: model.SpanView, attrs: Mapping[str, Any]) -> None:
    """Set category and the semantic-convention fields; shared by every intake path."""
    db_system = _first(attrs, DB_SYSTEM)
    if db_system is not None:
        view.db_system = str(db_system)
        statement = _first(attrs, DB_STATEMENT)
        view.statement = statement if isinstance(statement, str) else None
        view.db_operation = _str_or_none(_first(attrs, DB_OPERATION))
        if view.db_system in CACHE_SYSTEMS:
            view.category = model.CACHE
        elif view.statement is None and view.db_operation is None and view.name == "connect":
            view.category = model.DB_CONNECTION  # SQLAlchemy's Engine.connect span
        else:
            view.category = model.DB
        view.db_table = _str_or_none(_first(attrs, DB_TABLE))
        view.server_address = _str_or_none(_first(attrs, SERVER_ADDRESS))
        return
    method = _first(attrs, HTTP_METHOD)
    if method is not None:
        view.http_method = str(method)
        status = _first(attrs, HTTP_STATUS)
        view.http_status = status if isinstance(status, int) else _int_or_none(status)
        if view.kind == model.KIND_CLIENT:
            view.category = model.HTTP_CLIENT
            view.url = _str_or_none(_first(attrs, HTTP_URL))
            view.server_address = _str_or_none(_first(attrs, SERVER_ADDRESS))
        else:
            view.category = model.HTTP_SERVER
            view.http_route = _str_or_none(_first(attrs, HTTP_ROUTE))
        return
    if _first(attrs, MESSAGING_SYSTEM) is not None:
        view.category = model.MESSAGING
    elif _first(attrs, RPC_SYSTEM) is not None:
        view.category = model.RPC


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
