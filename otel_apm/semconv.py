"""Attribute keys that analysis reads, stable convention first, then the older one.

Instrumentations in the field emit either generation (and some both), so every reader of
attributes, from SDK spans or from OTLP, goes through this one table.
"""

from __future__ import annotations

import functools
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
CODE_FILE = ("code.file.path", "code.filepath")
CODE_LINE = ("code.line.number", "code.lineno")
CODE_FUNCTION = ("code.function.name", "code.function")
DB_PARAMETERS = ("db.statement.parameters",)  # the DB-API instrumentations' capture_parameters
DB_PARAMETER_PREFIX = "db.query.parameter."  # stable conventions: one attribute per parameter
CACHE_HIT = ("cache.hit",)
ERROR_TYPE = ("error.type",)
HTTP_REQUEST_SIZE = ("http.request.body.size", "http.request_content_length")
HTTP_RESPONSE_SIZE = ("http.response.body.size", "http.response_content_length")
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
    """Set category and the semantic-convention fields; shared by every intake path.

    Runs for every span on the application's thread: the common keys are looked up inline, as a
    call per key costs more than the lookup itself.
    """
    get = attrs.get
    if view.error:  # an exception event, read after this, names the type more precisely
        kind = get("error.type")
        if kind is not None:
            view.exception_type = str(kind)
    db_system = get("db.system.name")
    if db_system is None:
        db_system = get("db.system")
    if db_system is not None:
        view.db_system = system = db_system if type(db_system) is str else str(db_system)
        statement = get("db.query.text")
        if statement is None:
            statement = get("db.statement")
        view.statement = statement if isinstance(statement, str) else None
        operation = get("db.operation.name")
        if operation is None:
            operation = get("db.operation")
        view.db_operation = None if operation is None else str(operation)
        if system in CACHE_SYSTEMS:
            view.category = model.CACHE
        elif statement is None and operation is None and view.name == "connect":
            view.category = model.DB_CONNECTION  # SQLAlchemy's Engine.connect span
        else:
            view.category = model.DB
        # Inline lookups, stable name first: a helper call per key would cost more than the key.
        table = get("db.collection.name")
        if table is None:
            table = get("db.sql.table")
        if table is not None:
            view.db_table = table if type(table) is str else str(table)
        address = get("server.address")
        if address is None:
            address = get("net.peer.name")
        if address is not None:
            view.server_address = address if type(address) is str else str(address)
        if "code.file.path" in attrs or "code.filepath" in attrs:
            view.code = code_location(attrs)
        params = get("db.statement.parameters")
        if params is not None:
            view.db_params = str(params)
        if get("cache.hit") is True:
            view.cached = True
        return
    method = get("http.request.method")
    if method is None:
        method = get("http.method")
    if method is not None:
        view.http_method = str(method)
        status = get("http.response.status_code")
        if status is None:
            status = get("http.status_code")
        view.http_status = status if type(status) is int else _int_or_none(status)
        if view.kind == model.KIND_CLIENT:
            view.category = model.HTTP_CLIENT
            view.url = _str_or_none(_first(attrs, HTTP_URL))
            view.server_address = _str_or_none(_first(attrs, SERVER_ADDRESS))
            if "code.file.path" in attrs or "code.filepath" in attrs:
                view.code = code_location(attrs)
        else:
            view.category = model.HTTP_SERVER
            view.http_route = _str_or_none(get("http.route"))
        view.request_size = _int_or_none(_first(attrs, HTTP_REQUEST_SIZE))
        view.response_size = _int_or_none(_first(attrs, HTTP_RESPONSE_SIZE))
        return
    if _first(attrs, MESSAGING_SYSTEM) is not None:
        view.category = model.MESSAGING
    elif _first(attrs, RPC_SYSTEM) is not None:
        view.category = model.RPC


def filled_slots(
    view: model.SpanView, attrs: Mapping[str, Any], params: list[str] | None = None
) -> tuple[tuple[str, Any], ...]:
    """Fill ``view`` as :func:`fill_attributes` does (and, given the ``db.query.parameter.*``
    values as "name=value" strings, its ``db_params``), and return the slots that now differ
    from a new view's, as (slot, value) pairs.

    The OTLP intake and the compiled SDK intake remember these pairs per span shape (name, kind,
    error and the analyzed attributes): a span of a known shape takes them without its
    attributes being read, so this mapping stays the one place that knows the conventions.
    """
    if attrs:
        fill_attributes(view, attrs)
    if params is not None:
        view.db_params = ",".join(sorted(params))
    return tuple((slot, value) for slot, default in _defaults() if (value := getattr(view, slot)) != default)


@functools.cache
def _defaults() -> tuple[tuple[str, Any], ...]:
    """The slots a view's attributes may set, with the value a new view has in each."""
    given = {"trace_id", "span_id", "parent_id", "name", "kind", "start_ns", "end_ns", "error", "service"}
    blank = model.SpanView(0, 0, 0, "", 0, 0, 0, False, "")
    return tuple((slot, getattr(blank, slot)) for slot in model.SpanView.__slots__ if slot not in given)


def code_location(attrs: Mapping[str, Any]) -> str | None:
    """The call site as "path:line:function" from code.* attributes (stable names first), or None."""
    get = attrs.get  # read for every DB and HTTP client span: lookups inline
    path = get("code.file.path")
    if path is None:
        path = get("code.filepath")
        if path is None:
            return None
    line = get("code.line.number")
    if line is None:
        line = get("code.lineno")
    function = get("code.function.name")
    if function is None:
        function = get("code.function")
    return f"{path}:{'' if line is None else line}:{'' if function is None else function}"


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _int_or_none(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _analyzed_keys() -> frozenset[str]:
    """Every attribute key in the tables above (the upper-case tuples of keys): the only keys
    analysis reads.  A table added above is picked up here without an edit."""
    keys: set[str] = set()
    for name, value in list(globals().items()):
        if name.isupper() and isinstance(value, tuple) and all(isinstance(k, str) for k in value):
            keys.update(value)
    return frozenset(keys)


ANALYZED_KEYS: frozenset[str] = _analyzed_keys()
