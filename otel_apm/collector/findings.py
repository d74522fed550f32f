"""Findings as OTLP log records built straight as protobuf, and sent downstream by the forwarder.

The in-process processor emits findings through the SDK's LoggerProvider
(:mod:`otel_apm.emit.events`); the collector builds the same records itself, because the SDK's
log record, its pure-Python OTLP encoder and its batch thread cost about three times as much
(bench/README.md), and because the collector already has a forwarder that delivers logs to the
same downstream with retries, backoff, a bounded queue, telemetry and a flush at shutdown.

The records of one analysis batch go downstream as one ExportLogsServiceRequest (or more, of
``downstream.events_per_request`` records at most): one ResourceLogs (the collector's resource)
with one ScopeLogs (``otel_apm`` and its version).  Each record is what
the SDK path makes of the same finding: time of the trace's root end, observed time, severity,
body = title, :func:`~otel_apm.emit.attributes.finding_attributes`, event name, and the offending
span's ids with the sampled flag (no ids for a finding about the process).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, SeverityNumber
from opentelemetry.trace import TraceFlags
from opentelemetry.util.types import AttributeValue

from otel_apm.collector.forwarder import Forwarder
from otel_apm.detectors.base import Finding
from otel_apm.emit.attributes import EVENT_NAME, finding_attributes
from otel_apm.emit.events import SCOPE, SEVERITY, offending_span
from otel_apm.model import Trace
from otel_apm.version import __version__

if TYPE_CHECKING:
    from google.protobuf.internal.containers import (  # type: ignore[import-untyped, unused-ignore]
        RepeatedCompositeFieldContainer,
    )

_SEVERITY_NUMBER = {severity: SeverityNumber.ValueType(number.value) for severity, number in SEVERITY.items()}


class FindingEvents:
    """An Emitter that collects the records of the traces it is told of, until ``flush`` hands
    them to the forwarder as one request (the pipeline calls it after each analysis batch), or
    until there are ``per_request`` of them, so a long batch is not held whole in memory.  Not
    thread-safe: the pipeline analyzes, and so emits and flushes, one trace at a time."""

    def __init__(
        self, forwarder: Forwarder, resource: Mapping[str, AttributeValue], per_request: int
    ) -> None:
        self._forwarder = forwarder
        self._per_request = per_request
        self._resource = [_key_value(key, value) for key, value in resource.items()]
        self._request: ExportLogsServiceRequest | None = None
        self._records: RepeatedCompositeFieldContainer[LogRecord] | None = None  # added to in place
        # The string attributes of the request, each built once: findings of one problem share
        # most of theirs (title, fingerprint, statement, ...); its numbers mostly differ.
        self._strings: dict[tuple[str, str], KeyValue] = {}

    def emit(self, trace: Trace | None, findings: Sequence[Finding]) -> None:
        if not findings:
            return
        records = self._records if self._records is not None else self._start_request()
        end_ns = trace.root.end_ns if trace is not None and trace.root is not None else 0
        observed_ns = time.time_ns()
        strings = self._strings
        for finding in findings:
            record = records.add(
                time_unix_nano=end_ns,
                observed_time_unix_nano=observed_ns,
                severity_number=_SEVERITY_NUMBER[finding.severity],
                severity_text=finding.severity.upper(),
                body=AnyValue(string_value=finding.title),
                event_name=EVENT_NAME,
            )
            attributes = []
            for key, value in finding_attributes(finding).items():
                if isinstance(value, str):
                    kv = strings.get((key, value))
                    if kv is None:
                        kv = strings[key, value] = _key_value(key, value)
                else:
                    kv = _key_value(key, value)
                attributes.append(kv)
            record.attributes.extend(attributes)
            span = offending_span(finding)
            if span is not None:
                record.trace_id = span[0].to_bytes(16, "big")
                record.span_id = span[1].to_bytes(8, "big")
                record.flags = TraceFlags.SAMPLED
        if len(records) >= self._per_request:
            self.flush()

    def flush(self) -> None:
        """Queue the records collected so far as one request.  They go past the queue's bound:
        the bound pushes back on clients, and these records come from spans already admitted."""
        request, records = self._request, self._records
        if request is None or not records:
            return
        self._request = self._records = None
        self._strings = {}
        self._forwarder.put_unbounded("logs", request.SerializeToString(), len(records))

    def _start_request(self) -> RepeatedCompositeFieldContainer[LogRecord]:
        request = ExportLogsServiceRequest()
        resource_logs = request.resource_logs.add()
        resource_logs.resource.attributes.extend(self._resource)
        scope_logs = resource_logs.scope_logs.add()
        scope_logs.scope.name = SCOPE
        scope_logs.scope.version = __version__
        self._request, self._records = request, scope_logs.log_records
        return scope_logs.log_records


def _key_value(key: str, value: AttributeValue) -> KeyValue:
    return KeyValue(key=key, value=any_value(value))


def any_value(value: AttributeValue) -> AnyValue:
    """An attribute value as OTLP AnyValue, as the SDK's encoder maps it (bool before int: a bool is one);
    the attributes of findings are str, bool, int, float and lists of str, the likeliest first."""
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if value is None:
        return AnyValue()
    if isinstance(value, Mapping):
        return AnyValue(kvlist_value=KeyValueList(values=[_key_value(str(k), v) for k, v in value.items()]))
    return AnyValue(array_value=ArrayValue(values=[any_value(item) for item in value]))
