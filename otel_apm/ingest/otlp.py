"""OTLP protobuf → SpanView: the collector's hot path, run for every span any service exports.

Only what analysis reads is touched: ids, parent, name, kind, status, times, the resource's
``service.name`` (once per ResourceSpans), exception events and the attributes whose keys
otel_apm.semconv reads.  The request is parsed with a schema that declares nothing else
(:data:`_VIEW_MESSAGES`), so links, trace state and the like never become Python objects, and
a span whose shape (kind, status, name, attribute bytes) was seen before takes its analyzed
fields from a cache rather than converting its attributes (:func:`views_from_payload`).  Equal
strings and ids are shared between views (an ORM's statement repeats in every query span): a
span waiting in the assembler costs about 370 bytes rather than 800
(bench/bench_collector_engine.py).  The compiled twin (csrc/otlpviews.c, ``native_enabled``)
reads the wire format itself, under the same rules, with the same cache and helpers.

In the collector a trace spans services, so ``parent_id`` is the span's real parent even when
that parent ran in another process: the caller's client span and the callee's server span end
up in one Trace, under the entry service's root.

Odd input never raises: a span whose trace id is not 16 bytes or span id not 8 bytes (or either
is all zeros), or whose parent id is neither empty nor 8 bytes, is skipped and counted in
:class:`IngestCounts`; attribute values of other types than string, int, double and bool are
ignored; an unknown kind is read as internal; an end before the start is read as a zero
duration.

OTLP/JSON: :func:`otlp_json_to_request` (and :func:`parse_otlp_json` for any signal) turn a JSON
body into the protobuf request.  ``json_format`` alone is not enough: OTLP/JSON writes trace and
span ids as hex, protobuf's JSON mapping reads ``bytes`` as base64, and a 32-character hex trace
id is also valid base64 (of 24 bytes), so ``json_format.Parse`` accepts it without an error and
yields wrong ids.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import threading
from collections.abc import Iterable
from typing import Any, TypeVar

# protobuf ships no type information (types-protobuf is not a dependency); "unused-ignore" keeps
# strict mypy quiet should the stubs be installed one day.
from google.protobuf import (  # type: ignore[import-untyped, unused-ignore]
    descriptor_pb2,
    descriptor_pool,
    json_format,
    message_factory,
)
from google.protobuf.message import DecodeError, Message  # type: ignore[import-untyped, unused-ignore]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span

from otel_apm import semconv
from otel_apm.model import SpanView
from otel_apm.native import native
from otel_apm.semconv import ANALYZED_KEYS, filled_slots

M = TypeVar("M", bound=Message)


UNKNOWN_SERVICE = "unknown_service"  # the SDK's own default when service.name is not set

# AnyValue's oneof fields that hold a scalar: the only values analysis can use.
_SCALAR_VALUES = frozenset({"string_value", "int_value", "double_value", "bool_value"})
# OTLP SpanKind (UNSPECIFIED=0, INTERNAL..CONSUMER=1..5) to the API's (INTERNAL..CONSUMER=0..4).
_KIND = {0: 0, 1: 0, 2: 1, 3: 2, 4: 3, 5: 4}
_STATUS_ERROR = 2  # Status.StatusCode.STATUS_CODE_ERROR
_ZERO_SPAN_ID = bytes(8)
_ZERO_TRACE_ID = bytes(16)


def has_valid_ids(span: Span) -> bool:
    """The id rules every span must meet to be read (views_from_resource_spans inlines them)."""
    tid, sid = span.trace_id, span.span_id
    return (
        len(tid) == 16
        and tid != _ZERO_TRACE_ID
        and len(sid) == 8
        and sid != _ZERO_SPAN_ID
        and len(span.parent_span_id) in (0, 8)
    )


class IngestCounts:
    """Spans read and spans skipped as malformed, across calls and threads.

    Each call adds its totals once, under a lock, so the per-span loop counts in locals.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.views = 0
        self.malformed_spans = 0

    def add(self, views: int, malformed: int) -> None:
        with self._lock:
            self.views += views
            self.malformed_spans += malformed

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"views": self.views, "malformed_spans": self.malformed_spans}


COUNTS = IngestCounts()
"""Process-wide counts, used when a call passes none of its own."""


def views_from_request(
    req: ExportTraceServiceRequest, counts: IngestCounts | None = None, native_enabled: bool = True
) -> list[SpanView]:
    """The spans of one Export request, as views; malformed spans are skipped and counted."""
    return views_from_payload(req.SerializeToString(), counts, native_enabled)


def views_from_resource_spans(
    resource_spans: Iterable[ResourceSpans], counts: IngestCounts | None = None
) -> list[SpanView]:
    """Views of every well-formed span, in the order they appear; never raises on odd content."""
    return views_from_request(ExportTraceServiceRequest(resource_spans=resource_spans), counts)


def views_from_payload(
    payload: bytes, counts: IngestCounts | None = None, native_enabled: bool = True, checked: bool = False
) -> list[SpanView]:
    """Views of the spans of a serialized ExportTraceServiceRequest: what the collector received.

    Read by the compiled twin (csrc/otlpviews.c, which reads the wire format itself) when it is
    built and ``native_enabled`` (the config's), else by :func:`python_views`; both give the
    same views, counts and errors.  Raises ``DecodeError`` only for bytes that are not a
    request, which the receivers have refused already.  ``checked``: :func:`checked_request`
    found the payload valid, so the compiled reader skips its own check of the bytes.
    """
    compiled = native(native_enabled)
    if compiled is None:
        views, malformed = python_views(payload)
    else:
        views, malformed = compiled.otlp_views(
            payload, _FILLS, _fill, _service_name, _exception_type, DecodeError, checked
        )
    (COUNTS if counts is None else counts).add(len(views), malformed)
    return views


def checked_request(payload: bytes, native_enabled: bool = True) -> bool:
    """True when ``payload`` is sure to be an ExportTraceServiceRequest that protobuf would parse:
    the receiver then need not parse it to check it, as :func:`views_from_payload` reads it.

    Checked by the compiled ``otlp_check`` (csrc/otlpviews.c) against :func:`_check_schema`,
    without making any object.  False when the extension is not built or ``native_enabled`` is
    off, and whenever the check is not sure (an unknown field, say): the payload is then parsed
    by protobuf, whose answer stands.  With analysis on the full parse cost more than reading
    the views (bench/README.md).
    """
    compiled = native(native_enabled)
    schema = _check_schema()
    return compiled is not None and schema is not None and bool(compiled.otlp_check(payload, schema))


# otlp_check's kind of a field by its type: its wire type (0 varint, 1 fixed64, 5 fixed32), 2 for
# bytes, 3 for a string (UTF-8 checked); a message's is 16 + its index in the schema.
_F = descriptor_pb2.FieldDescriptorProto
_CHECK_KINDS = {
    **dict.fromkeys((_F.TYPE_INT32, _F.TYPE_INT64, _F.TYPE_UINT32, _F.TYPE_UINT64, _F.TYPE_BOOL), 0),
    **dict.fromkeys((_F.TYPE_SINT32, _F.TYPE_SINT64, _F.TYPE_ENUM), 0),
    **dict.fromkeys((_F.TYPE_FIXED64, _F.TYPE_SFIXED64, _F.TYPE_DOUBLE), 1),
    **dict.fromkeys((_F.TYPE_FIXED32, _F.TYPE_SFIXED32, _F.TYPE_FLOAT), 5),
    _F.TYPE_BYTES: 2,
    _F.TYPE_STRING: 3,
}


@functools.cache
def _check_schema() -> tuple[tuple[int, ...], ...] | None:
    """ExportTraceServiceRequest and the messages in it as otlp_check reads them: per message
    (the request first), the kind of each field number, -1 for a number not declared.  Made from
    the installed generated code, so a newer OTLP version's fields are known.  None when the
    schema has what the check does not handle (a group, a repeated number that could be packed,
    a field number past 31): then no payload is checked that way."""
    order: list[Any] = []
    pending = [ExportTraceServiceRequest.DESCRIPTOR]
    while pending:
        message = pending.pop()
        if message not in order:
            order.append(message)
            pending.extend(f.message_type for f in message.fields if f.message_type is not None)
    messages = []
    for message in order:
        kinds = [-1] * (max((f.number for f in message.fields), default=0) + 1)
        for f in message.fields:
            kind = _CHECK_KINDS.get(f.type)
            if f.type == _F.TYPE_MESSAGE:
                kind = 16 + order.index(f.message_type)
            elif kind is None or (f.is_repeated and kind not in (2, 3)):
                return None
            kinds[f.number] = kind
        if len(kinds) > 32:
            return None
        messages.append(tuple(kinds))
    return tuple(messages)


def python_views(payload: bytes) -> tuple[list[SpanView], int]:
    """The views of a payload's well-formed spans and the number of malformed spans skipped:
    the reference of the compiled ``otlp_views``.

    The payload is parsed again with :data:`_VIEW_MESSAGES`, a copy of the OTLP trace messages
    that declares only what analysis reads, so protobuf's C parser skips the rest and nothing
    unread becomes a Python object.  A span's attributes come as their serialized KeyValues;
    spans that repeat one shape (kind, status, name and the same attribute bytes: an ORM's
    statement in every query) are filled from :data:`_FILLS`, so a span costs a dictionary
    lookup instead of converting its attributes.
    """
    request = _view_schema().FromString(payload)
    views: list[SpanView] = []
    append = views.append
    malformed = 0
    kinds = _KIND
    fills = _FILLS
    # Within a request, equal names and scopes and equal ids (a parent and its children) become
    # one object: spans held for assembly cost a third of the memory.  Attribute values are
    # shared through the fills.
    strings: dict[str, str] = {}
    share = strings.setdefault
    ids: dict[bytes, int] = {}
    get_id = ids.get
    # Consecutive spans mostly share a trace: its int is made once per run.
    last_trace_bytes: bytes | None = None
    trace_id = 0
    for rs in request.resource_spans:
        service = _service_name(rs.resource.attributes)
        for ss in rs.scope_spans:
            scope = share(ss.scope.name, ss.scope.name)
            for span in ss.spans:
                try:
                    tb = span.trace_id
                    if tb != last_trace_bytes:
                        if len(tb) != 16 or tb == _ZERO_TRACE_ID:
                            malformed += 1
                            continue
                        last_trace_bytes = tb
                        trace_id = int.from_bytes(tb, "big")
                    sb = span.span_id
                    if len(sb) != 8 or sb == _ZERO_SPAN_ID:
                        malformed += 1
                        continue
                    pb = span.parent_span_id
                    if pb:
                        if len(pb) != 8:
                            malformed += 1
                            continue
                        parent_id = get_id(pb)
                        if parent_id is None:
                            parent_id = ids[pb] = int.from_bytes(pb, "big")
                    else:
                        parent_id = 0
                    span_id = get_id(sb)
                    if span_id is None:
                        span_id = ids[sb] = int.from_bytes(sb, "big")
                    name = span.name
                    name = share(name, name)
                    kind = kinds.get(span.kind, 0)
                    error = span.status.code == _STATUS_ERROR
                    start = span.start_time_unix_nano
                    end = span.end_time_unix_nano
                    view = SpanView(
                        trace_id,
                        span_id,
                        parent_id,
                        name,
                        kind,
                        start,
                        end if end >= start else start,
                        error,
                        service,
                    )
                    shape = (kind, error, name, *span.attributes)
                    fill = fills.get(shape)
                    if fill is None:
                        fill = _fill(view, shape)
                    else:
                        for slot, value in fill:
                            setattr(view, slot, value)
                    view.scope = scope
                    if span.events:
                        _read_exception(view, span.events)
                except Exception:  # free in 3.11 when nothing raises; input must never crash intake
                    malformed += 1
                    continue
                append(view)
    return views, malformed


# Fills by span shape (kind, error, name, serialized attributes...), across requests and
# threads: each is the (slot, value) pairs that fill_attributes and the query parameters set.
# Bounded: emptied when full, so a stream of spans with unique attributes costs a few MiB at most.
_FILLS: dict[tuple[Any, ...], tuple[tuple[str, Any], ...]] = {}
FILLS_MAX = 4096
# Serialized KeyValue -> (key, scalar value or None): common keys and values repeat across shapes.
_PAIRS: dict[bytes, tuple[str, Any]] = {}
PAIRS_MAX = 16384


def _fill(view: SpanView, shape: tuple[Any, ...]) -> tuple[tuple[str, Any], ...]:
    """Fill ``view`` from the serialized attributes in ``shape[3:]`` and remember how, for the
    next span of that shape: the slots that now differ from a new view's defaults."""
    keys = ANALYZED_KEYS
    param_prefix = semconv.DB_PARAMETER_PREFIX
    attrs: dict[str, Any] = {}
    params: list[str] | None = None
    for raw in shape[3:]:
        pair = _PAIRS.get(raw)
        if pair is None:
            if len(_PAIRS) >= PAIRS_MAX:
                _PAIRS.clear()
            kv = KeyValue.FromString(raw)
            pair = _PAIRS[raw] = (kv.key, _scalar(kv.value))
        key, value = pair
        if key in keys:
            if value is not None:  # a value of another type reads as absent
                attrs[key] = value
        elif key.startswith(param_prefix):
            params = params or []
            params.append(f"{key[len(param_prefix) :]}={value}")
    fill = filled_slots(view, attrs, params)
    if len(_FILLS) >= FILLS_MAX:
        _FILLS.clear()
    _FILLS[shape] = fill
    return fill


def _scalar(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    return getattr(value, which) if which in _SCALAR_VALUES else None


def _read_exception(view: SpanView, events: Iterable[Any]) -> None:
    """The type of the last recorded exception event: what the error detector groups by."""
    for event in events:
        if event.name == "exception":
            _exception_type(view, event.attributes)


def _exception_type(view: SpanView, attributes: Iterable[bytes]) -> None:
    """Set the view's exception type from one exception event's serialized attributes."""
    for raw in attributes:
        kv = KeyValue.FromString(raw)
        if kv.key == "exception.type" and kv.value.string_value:
            view.exception_type = kv.value.string_value


def _service_name(attributes: Iterable[bytes]) -> str:
    for raw in attributes:
        kv = KeyValue.FromString(raw)
        if kv.key == semconv.SERVICE_NAME:
            value = kv.value
            which = value.WhichOneof("value")
            if which in _SCALAR_VALUES:
                name = str(getattr(value, which))
                if name:
                    return name
            break
    return UNKNOWN_SERVICE


# The OTLP trace messages as analysis reads them, in .proto field syntax: field numbers and wire
# types are those of opentelemetry/proto/trace/v1/trace.proto.  What is not declared (trace
# state, links, dropped counts, flags, scope version, schema URLs) is skipped by the parser.
# Enums are read as int32, as proto3's open enums are on the wire.  Attributes are ``bytes``: a
# KeyValue is a length-delimited field either way, so each comes as its serialized bytes, parsed
# with the real KeyValue only when a new span shape needs it.
_VIEW_MESSAGES = {
    "Status": "int32 code = 3",
    "Event": "string name = 2; repeated bytes attributes = 3",
    "Span": "bytes trace_id = 1; bytes span_id = 2; bytes parent_span_id = 4; string name = 5; "
    "int32 kind = 6; fixed64 start_time_unix_nano = 7; fixed64 end_time_unix_nano = 8; "
    "repeated bytes attributes = 9; repeated Event events = 11; Status status = 15",
    "Scope": "string name = 1",
    "ScopeSpans": "Scope scope = 1; repeated Span spans = 2",
    "Resource": "repeated bytes attributes = 1",
    "ResourceSpans": "Resource resource = 1; repeated ScopeSpans scope_spans = 2",
    "Request": "repeated ResourceSpans resource_spans = 1",
}


@functools.cache
def _view_schema() -> Any:
    """The message class of an ExportTraceServiceRequest as :data:`_VIEW_MESSAGES` declares it."""
    F = descriptor_pb2.FieldDescriptorProto
    scalars = {
        "bytes": F.TYPE_BYTES,
        "string": F.TYPE_STRING,
        "int32": F.TYPE_INT32,
        "fixed64": F.TYPE_FIXED64,
    }
    file = descriptor_pb2.FileDescriptorProto(
        name="otel_apm/ingest/view.proto", package="otel_apm.view", syntax="proto3"
    )
    for name, fields in _VIEW_MESSAGES.items():
        message = file.message_type.add(name=name)
        for declaration in fields.split(";"):
            *label, kind, field_name, _, number = declaration.split()
            field = message.field.add(name=field_name, number=int(number))
            field.label = F.LABEL_REPEATED if label == ["repeated"] else F.LABEL_OPTIONAL
            if kind in scalars:
                field.type = scalars[kind]
            else:
                field.type = F.TYPE_MESSAGE
                field.type_name = f".otel_apm.view.{kind}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("otel_apm.view.Request"))


# -- OTLP/JSON -----------------------------------------------------------------------------------

# Fields that OTLP/JSON writes as hex rather than base64 (protobuf's JSON names and the proto
# names json_format also accepts): Span, Span.Link, LogRecord and Exemplar ids.
_HEX_ID_FIELDS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})
# Subtrees with no id fields, skipped by the walk: most of a request's nodes are attributes.
_NO_ID_FIELDS = frozenset({"attributes", "resource", "scope", "body", "status", "events"})
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")


def otlp_json_to_request(body: bytes | str) -> ExportTraceServiceRequest:
    """An OTLP/JSON traces body (``application/json``, already decompressed) as the protobuf
    request, with its hex trace and span ids read as hex.

    Raises ``google.protobuf.json_format.ParseError`` for anything that is not a valid
    ExportTraceServiceRequest (invalid UTF-8 or JSON, wrong types); unknown fields are ignored,
    as the OTLP specification requires of receivers.
    """
    return parse_otlp_json(body, ExportTraceServiceRequest())


def parse_otlp_json(body: bytes | str, message: M) -> M:
    """Fill ``message`` (any Export*ServiceRequest) from an OTLP/JSON body and return it.

    Ids that are hex strings (the OTLP/JSON encoding) are decoded as hex; any other string in an
    id field is left to protobuf's base64 reading, so a sender that base64-encodes ids, as
    protobuf's own JSON mapping does, is understood too.  Only ``json_format.ParseError`` is
    raised.
    """
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise json_format.ParseError(f"Failed to load JSON: {exc}") from exc
    if not isinstance(doc, dict):  # json_format would take a list for an empty message
        raise json_format.ParseError(f"OTLP/JSON body must be an object, got {type(doc).__name__}")
    _hex_ids_to_base64(doc)
    try:
        json_format.ParseDict(doc, message, ignore_unknown_fields=True)
    except json_format.ParseError:
        raise
    except Exception as exc:  # json_format lets a few TypeErrors/ValueErrors through on odd shapes
        raise json_format.ParseError(f"Invalid OTLP/JSON: {type(exc).__name__}: {exc}") from exc
    return message


def _hex_ids_to_base64(doc: Any) -> None:
    """Rewrite, in place, hex id strings as the base64 ``json_format`` reads for bytes fields.

    Iterative, so a deeply nested body cannot exhaust the stack here.
    """
    stack = [doc]
    pop = stack.pop
    push = stack.append
    while stack:
        node = pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _HEX_ID_FIELDS:
                    if isinstance(value, str) and _HEX.fullmatch(value):
                        node[key] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
                elif key not in _NO_ID_FIELDS and isinstance(value, (dict, list)):
                    push(value)
        elif isinstance(node, list):
            for item in node:
                if isinstance(item, (dict, list)):
                    push(item)
