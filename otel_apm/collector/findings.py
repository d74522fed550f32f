"""Findings as OTLP log records encoded straight to protobuf bytes, and sent downstream by the forwarder.

The in-process processor emits findings through the SDK's LoggerProvider
(:mod:`otel_apm.emit.events`); the collector encodes the same records itself, because the SDK's
log record, its pure-Python OTLP encoder and its batch thread cost about three times as much
(bench/README.md), and because the collector already has a forwarder that delivers logs to the
same downstream with retries, backoff, a bounded queue, telemetry and a flush at shutdown.

The records are written in the protobuf wire format directly (:func:`any_value`,
:func:`key_value`), not built as protobuf messages: a message object per attribute, value and
record, each copied again into its parent, cost the collector more than the N+1 detector that
found them (bench/README.md).  The bytes are what protobuf's own encoder makes of the same
messages, field for field and in the same order (tests/test_collector_findings.py).  A record is
written by the compiled twin of :meth:`FindingEvents._record` (csrc/otlpviews.c ``log_record``)
when it is built and ``native_enabled``: in Python, encoding the attributes that differ per
finding (title, durations, span ids) was still the collector's largest cost after the detectors
(196,000 instructions a finding of the benchmark's N+1, 31,000 with the compiled writer).

The records of one analysis batch go downstream as one ExportLogsServiceRequest (or more, of
``downstream.events_per_request`` records at most): one ResourceLogs (the collector's resource)
with one ScopeLogs (``otel_apm`` and its version).  Each record is what
the SDK path makes of the same finding: time of the trace's root end, observed time, severity,
body = title, :func:`~otel_apm.emit.attributes.finding_attributes`, event name, and the offending
span's ids with the sampled flag (no ids for a finding about the process).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Mapping, Sequence

from opentelemetry.trace import TraceFlags
from opentelemetry.util.types import AttributeValue

from otel_apm.collector.forwarder import Forwarder
from otel_apm.detectors.base import Finding
from otel_apm.emit.attributes import EVENT_NAME
from otel_apm.emit.events import SCOPE, SEVERITY, Event, event_digest, events_of, offending_span
from otel_apm.model import Trace
from otel_apm.native import native
from otel_apm.version import __version__

# -- the protobuf wire format, for the few messages written here ---------------------------------------
#
# A field is its tag, (field number << 3) | wire type, as a varint, then its value: a varint (0), 8
# little-endian bytes (1), a length-delimited payload (2) or 4 little-endian bytes (5).  Every tag
# used here is below 128, one byte.  Proto3 leaves a scalar at its default out; a oneof member
# (AnyValue's) and a sub-message are written whenever set, even empty.

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_UINT64_MASK = (1 << 64) - 1
_SMALL_VARINTS = [bytes((n,)) for n in range(128)]
_FIXED64 = struct.Struct("<Q").pack
_DOUBLE = struct.Struct("<d").pack
_FIXED32 = struct.Struct("<I").pack

# AnyValue: string_value 1, bool_value 2, int_value 3, double_value 4, array_value 5,
# kvlist_value 6, bytes_value 7.  ArrayValue and KeyValueList: values 1.  KeyValue: key 1, value 2.
_ANY_STRING = b"\x0a"
_ANY_BOOL = b"\x10"
_ANY_INT = b"\x18"
_ANY_DOUBLE = b"\x21"
_ANY_ARRAY = b"\x2a"
_ANY_KVLIST = b"\x32"
_ANY_BYTES = b"\x3a"
_VALUES = _KEY = b"\x0a"
_VALUE = b"\x12"
# ExportLogsServiceRequest: resource_logs 1.  ResourceLogs: resource 1, scope_logs 2.  Resource:
# attributes 1.  ScopeLogs: scope 1, log_records 2.  InstrumentationScope: name 1, version 2.
_RESOURCE_LOGS = _RESOURCE = _SCOPE = _ATTRIBUTE = _NAME = b"\x0a"
_SCOPE_LOGS = _LOG_RECORDS = _VERSION = b"\x12"
# LogRecord, in field-number order (protobuf's encoder writes them so).
_TIME = b"\x09"  # time_unix_nano 1, fixed64
_SEVERITY_NUMBER = b"\x10"  # 2
_SEVERITY_TEXT = b"\x1a"  # 3
_BODY = b"\x2a"  # 5
_RECORD_ATTRIBUTE = b"\x32"  # attributes 6
_FLAGS = b"\x45"  # 8, fixed32
_TRACE_ID = b"\x4a"  # 9
_SPAN_ID = b"\x52"  # 10
_OBSERVED_TIME = b"\x59"  # observed_time_unix_nano 11, fixed64
_EVENT_NAME = b"\x62"  # 12


def _varint(n: int) -> bytes:
    """An unsigned varint: 7 bits a byte, least significant first, the high bit set on all but
    the last."""
    if n < 128:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n > 127:
        out.append((n & 127) | 128)
        n >>= 7
    out.append(n)
    return bytes(out)


def _delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def any_value(value: AttributeValue | Mapping[str, AttributeValue] | None) -> bytes:
    """An attribute value as a serialized OTLP AnyValue, as the SDK's encoder maps it (bool before
    int: a bool is one); the attributes of findings are str, bool, int, float and lists of str, the
    likeliest first.  Raises ValueError for an int outside int64, as protobuf does."""
    if isinstance(value, str):
        return _delimited(_ANY_STRING, value.encode())
    if isinstance(value, bool):
        return _ANY_BOOL + _SMALL_VARINTS[value]
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"Value out of range: {value}")
        return _ANY_INT + _varint(value & _UINT64_MASK)  # a negative int64 is its two's complement
    if isinstance(value, float):
        return _ANY_DOUBLE + _DOUBLE(value)
    if isinstance(value, bytes):
        return _delimited(_ANY_BYTES, value)
    if value is None:
        return b""
    if isinstance(value, Mapping):
        pairs = b"".join(_delimited(_VALUES, key_value(str(k), v)) for k, v in value.items())
        return _delimited(_ANY_KVLIST, pairs)
    return _delimited(_ANY_ARRAY, b"".join(_delimited(_VALUES, any_value(item)) for item in value))


def key_value(key: str, value: AttributeValue | Mapping[str, AttributeValue] | None) -> bytes:
    """A serialized OTLP KeyValue."""
    return _key_field(key) + _delimited(_VALUE, any_value(value))


def _key_field(key: str) -> bytes:
    return _delimited(_KEY, key.encode()) if key else b""  # proto3: an empty key is left out


# -- the records ---------------------------------------------------------------------------------------

# Per severity, the record's severity_number and severity_text fields, as the SDK path sets them.
_SEVERITY_FIELDS = {
    severity: _SEVERITY_NUMBER + _varint(number.value) + _delimited(_SEVERITY_TEXT, severity.upper().encode())
    for severity, number in SEVERITY.items()
}
_EVENT_NAME_FIELD = _delimited(_EVENT_NAME, EVENT_NAME.encode())
_SAMPLED = _FLAGS + _FIXED32(TraceFlags.SAMPLED)
_SCOPE_FIELD = _delimited(
    _SCOPE, _delimited(_NAME, SCOPE.encode()) + _delimited(_VERSION, __version__.encode())
)


class FindingEvents:
    """An Emitter that collects the records of the traces it is told of, until ``flush`` hands
    them to the forwarder as one request (the pipeline calls it after each analysis batch), or
    until there are ``per_request`` of them, so a long batch is not held whole in memory.  Not
    thread-safe: the pipeline analyzes, and so emits and flushes, one trace at a time."""

    def __init__(
        self,
        forwarder: Forwarder,
        resource: Mapping[str, AttributeValue],
        per_request: int,
        native_enabled: bool = True,
        interval_s: float = 0.0,
    ) -> None:
        self._forwarder = forwarder
        self._digest = event_digest(interval_s)
        self._per_request = per_request
        compiled = native(native_enabled)
        self._compiled = None if compiled is None else compiled.log_record
        attributes = b"".join(_delimited(_ATTRIBUTE, key_value(k, v)) for k, v in resource.items())
        self._resource_field = _delimited(_RESOURCE, attributes)
        self._records: list[bytes] = []  # each a log_records field of the ScopeLogs
        # The string attributes of the request, each encoded once: findings of one problem share
        # most of theirs (title, fingerprint, statement, ...); its numbers mostly differ.
        self._strings: dict[tuple[str, str], bytes] = {}
        self._keys: dict[str, bytes] = {}  # the key fields of the other attributes

    def emit(self, trace: Trace | None, findings: Sequence[Finding]) -> None:
        if not findings and self._digest is None:
            return
        end_ns = trace.root.end_ns if trace is not None and trace.root is not None else 0
        self._write(events_of(self._digest, findings), end_ns)
        if len(self._records) >= self._per_request:
            self.flush()

    def _write(self, events: Sequence[Event], end_ns: int) -> None:
        # The same record prefix and suffix for every finding of the trace.
        head = _TIME + _FIXED64(end_ns) if end_ns else b""
        tail = _OBSERVED_TIME + _FIXED64(time.time_ns()) + _EVENT_NAME_FIELD
        records = self._records
        compiled = self._compiled
        for finding, body, attributes, timestamp in events:
            severity = _SEVERITY_FIELDS[finding.severity]
            span = offending_span(finding)
            link = b""
            if span is not None:
                trace_id, span_id = span[0].to_bytes(16, "big"), span[1].to_bytes(8, "big")
                link = _SAMPLED + _TRACE_ID + b"\x10" + trace_id + _SPAN_ID + b"\x08" + span_id
            start = head if timestamp is None else _TIME + _FIXED64(timestamp)
            record = None
            if compiled is not None:
                record = compiled(start, severity, body, attributes, link, tail)
            if record is None:
                record = self._record(start, severity, body, attributes, link, tail)
            records.append(record)

    def _record(
        self,
        head: bytes,
        severity: bytes,
        body: AttributeValue,
        attributes: Mapping[str, AttributeValue],
        link: bytes,
        tail: bytes,
    ) -> bytes:
        """One record as the log_records field of the ScopeLogs: the reference of the compiled
        ``log_record`` (csrc/otlpviews.c), which writes the same bytes straight into one bytes
        object, and declines values of other types than it knows, for this to write."""
        strings = self._strings
        keys = self._keys
        parts = [head, severity, _delimited(_BODY, any_value(body))]
        for key, value in attributes.items():
            if isinstance(value, str):
                field = strings.get((key, value))
                if field is None:
                    field = strings[key, value] = _delimited(_RECORD_ATTRIBUTE, key_value(key, value))
            else:
                key_field = keys.get(key)
                if key_field is None:
                    key_field = keys[key] = _key_field(key)
                field = _delimited(_RECORD_ATTRIBUTE, key_field + _delimited(_VALUE, any_value(value)))
            parts.append(field)
        parts.append(link)
        parts.append(tail)
        return _delimited(_LOG_RECORDS, b"".join(parts))

    def flush(self, final: bool = False) -> None:
        """Queue the records collected so far as one request.  They go past the queue's bound:
        the bound pushes back on clients, and these records come from spans already admitted.
        ``final`` (the last batch before shutdown) adds the summaries of the repeats not yet
        summarized (APM_EVENTS_INTERVAL_S)."""
        if final and self._digest is not None:
            self._write(events_of(self._digest, (), everything=True), 0)
        records = self._records
        if not records:
            return
        self._records = []
        self._strings = {}
        self._keys = {}
        scope_logs = _delimited(_SCOPE_LOGS, _SCOPE_FIELD + b"".join(records))
        request = _delimited(_RESOURCE_LOGS, self._resource_field + scope_logs)
        self._forwarder.put_unbounded("logs", request, len(records))
