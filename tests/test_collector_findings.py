"""The collector's finding events, built as protobuf and sent by its forwarder, against the SDK path.

The in-process processor emits findings through an SDK LoggerProvider and the OTLP exporter; the
collector builds the OTLP log records itself.  Both are sent to a real OTLPSink over gRPC here and
the decoded requests compared field by field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from conftest import require_native
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common._internal import _encode_value  # the SDK exporters' mapping
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from otlp_sink import OTLPSink
from test_collector import (
    Collector,
    collector_config,
    finding_events,
    n_plus_one_trace,
    sink,
    start_collector,
    tracer_provider,
)
from test_detectors import shop_request
from test_processor import process_finding

from otel_apm.analyze import Analyzer
from otel_apm.collector.findings import FindingEvents, any_value, key_value
from otel_apm.collector.forwarder import Forwarder
from otel_apm.collector.pipeline import RESOURCE_SERVICE_NAME, Emission
from otel_apm.collector.telemetry import Telemetry
from otel_apm.config import APMConfig
from otel_apm.emit.events import EventEmitter
from otel_apm.model import Trace
from otel_apm.version import __version__

__all__ = ["sink", "start_collector"]  # the fixtures, imported for these tests


def _without_observed_time(resource_logs: ResourceLogs) -> list[tuple[bytes, bytes, LogRecord]]:
    """(resource, scope, record) of each record, the observed time (the moment of emission, which
    differs between the two paths) checked to be set and then cleared."""
    out = []
    for scope_logs in resource_logs.scope_logs:
        for record in scope_logs.log_records:
            assert record.observed_time_unix_nano > 0
            record.observed_time_unix_nano = 0
            out.append(
                (resource_logs.resource.SerializeToString(), scope_logs.scope.SerializeToString(), record)
            )
    return out


def test_events_built_as_protobuf_match_the_sdk_path_field_for_field() -> None:
    """A real N+1 finding (every attribute type: strings, ints, floats, bools, string lists, code
    location) in a trace, and a finding about the process (no span, no trace): the collector's
    records equal those of the SDK LoggerProvider + OTLP exporter, resource and scope included."""
    spans = shop_request(10, 0)
    trace = Trace(7, spans, spans[0])
    (n_plus_one,) = Analyzer(APMConfig()).analyze(trace)
    n_plus_one = dataclasses.replace(
        n_plus_one,
        code_location="shop/books.py:42:load_books",
        evidence={**n_plus_one.evidence, "flag": True, "ratio": 0.25, "names": ("a", "b")},
    )
    process = process_finding(0.0, severity="critical", service="shop")

    with OTLPSink() as ours_sink, OTLPSink() as sdk_sink:
        config = collector_config(ours_sink.endpoint)
        forwarder = Forwarder(config.downstream, Telemetry())
        emission = Emission(config, forwarder)
        (events,) = [e for e in emission.emitters if isinstance(e, FindingEvents)]
        forwarder.start()
        events.emit(trace, [n_plus_one])
        events.emit(None, [process])
        events.flush()
        assert forwarder.shutdown(10)
        emission.shutdown(5)

        resource = Resource.create({"service.name": RESOURCE_SERVICE_NAME, "service.version": __version__})
        provider = LoggerProvider(resource=resource)
        provider.add_log_record_processor(
            SimpleLogRecordProcessor(OTLPLogExporter(endpoint=sdk_sink.endpoint, insecure=True))
        )
        sdk = EventEmitter(provider)
        sdk.emit(trace, [n_plus_one])
        sdk.emit(None, [process])
        provider.shutdown()

        assert len(ours_sink.log_requests) == 1  # one request for the batch
        ours = [
            r
            for req in ours_sink.log_requests
            for rl in req.resource_logs
            for r in _without_observed_time(rl)
        ]
        theirs = [
            r for req in sdk_sink.log_requests for rl in req.resource_logs for r in _without_observed_time(rl)
        ]
    assert len(ours) == 2
    assert ours == theirs
    linked, unlinked = (record for _, _, record in ours)
    assert linked.trace_id == (7).to_bytes(16, "big") and linked.flags == 1
    assert linked.time_unix_nano == spans[0].end_ns
    assert (unlinked.trace_id, unlinked.span_id, unlinked.flags, unlinked.time_unix_nano) == (b"", b"", 0, 0)


def test_a_finding_made_while_the_downstream_is_down_arrives_once_it_is_back(
    sink: OTLPSink, start_collector: Callable[..., Collector]
) -> None:
    """The events go through the forwarder's retries, like the spans they were found in."""
    col = start_collector(sink.endpoint)
    sink.reject(grpc.StatusCode.UNAVAILABLE)
    provider, _ = tracer_provider(OTLPSpanExporter(endpoint=col.grpc_endpoint, insecure=True))
    n_plus_one_trace(provider)
    sink.wait_for(lambda: col.value('findings_total{type="n_plus_one_query"}') == 1, timeout=20)
    sink.wait_for(lambda: sink.rejected >= 10)  # the workers keep retrying
    assert not sink.log_records()
    sink.reject(None)
    (event,) = sink.wait_for(lambda: finding_events(sink, "n_plus_one_query"), timeout=20)
    assert event["_resource_service"] == RESOURCE_SERVICE_NAME
    assert col.value('requests_dropped_total{signal="logs"}') == 0
    provider.shutdown()


def test_events_go_in_requests_of_at_most_events_per_request(
    sink: OTLPSink, start_collector: Callable[..., Collector]
) -> None:
    """Three traces analyzed in one batch (at shutdown: they were still idle-waiting) with
    ``downstream.events_per_request: 2``: two log requests, of 2 and 1 events, sent before the
    forwarder stopped."""
    col = start_collector(sink.endpoint, assembly__idle_timeout_s=600, downstream__events_per_request=2)
    provider, _ = tracer_provider(OTLPSpanExporter(endpoint=col.grpc_endpoint, insecure=True))
    for route in ("/authors", "/books", "/reviews"):
        n_plus_one_trace(provider, route=route)
    provider.shutdown()
    sink.wait_for(lambda: col.value("spans_received_total") == 24)
    assert col.value("traces_analyzed_total") == 0
    assert col.service.shutdown(10)
    sizes = [
        len(sl.log_records) for req in sink.log_requests for rl in req.resource_logs for sl in rl.scope_logs
    ]
    assert sorted(sizes) == [1, 2]  # delivered by concurrent workers, in either order
    assert len(finding_events(sink, "n_plus_one_query")) == 3


SCALARS = (
    st.text(max_size=20)
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.integers(-300, 300)
    | st.floats()
    | st.binary(max_size=8)
    | st.none()
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text(max_size=12), VALUES)
def test_values_are_encoded_byte_for_byte_as_protobuf_encodes_them(key: str, value: Any) -> None:
    """Every kind of attribute value (nested lists and mappings, negative and extreme ints, NaN,
    empty strings, no value): the same bytes as the SDK's exporters make of it with protobuf's
    messages, for the value and its KeyValue."""
    expected = _encode_value(value)
    assert any_value(value) == expected.SerializeToString()
    assert key_value(key, value) == KeyValue(key=key, value=expected).SerializeToString()


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, [1, 2**64]])
def test_an_int_outside_int64_is_refused_as_protobuf_refuses_it(value: Any) -> None:
    with pytest.raises(ValueError, match="out of range"):
        _encode_value(value)
    with pytest.raises(ValueError, match="out of range"):
        any_value(value)


class _Capture(Forwarder):
    """A forwarder that keeps what it is given to send."""

    def __init__(self) -> None:
        super().__init__(collector_config(None).downstream, Telemetry())
        self.sent: list[tuple[str, bytes, int]] = []

    def put_unbounded(self, signal: Any, payload: bytes, items: int = 0) -> None:
        self.sent.append((signal, payload, items))


def test_a_request_is_the_bytes_protobuf_makes_of_it() -> None:
    """The request of a batch (a finding in a trace, one about the process) decodes, and encodes
    back to the very same bytes: fields in protobuf's order, nothing left over or doubled."""
    spans = shop_request(10, 0)
    trace = Trace(7, spans, spans[0])
    (n_plus_one,) = Analyzer(APMConfig()).analyze(trace)
    forwarder = _Capture()
    events = FindingEvents(forwarder, {"service.name": "c", "n": 3}, per_request=10)
    events.emit(trace, [n_plus_one])
    events.emit(None, [process_finding(0.0, severity="critical", service="shop")])
    events.flush()
    events.flush()  # nothing left: nothing sent
    ((signal, payload, items),) = forwarder.sent
    assert (signal, items) == ("logs", 2)
    request = ExportLogsServiceRequest.FromString(payload)
    assert request.SerializeToString() == payload
    (resource_logs,) = request.resource_logs
    assert {kv.key for kv in resource_logs.resource.attributes} == {"service.name", "n"}
    assert [r.severity_text for sl in resource_logs.scope_logs for r in sl.log_records] == [
        "WARNING",
        "CRITICAL",
    ]


class _Text(str):
    """A str subclass: its methods could differ from str's, so the compiled writer leaves it alone."""


RECORD_VALUES = st.recursive(
    SCALARS
    | st.builds(_Text, st.text(max_size=5))
    | st.integers(2**63, 2**64)
    | st.sampled_from(["\ud800", "a\udfff"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def _python_record(events: FindingEvents, *args: Any) -> bytes | type[Exception]:
    try:
        return events._record(*args)
    except Exception as exc:
        return type(exc)


def _declined(value: Any) -> bool:
    """A value the compiled writer leaves to Python: a str subclass, anywhere."""
    if isinstance(value, dict):
        return any(_declined(k) or _declined(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(map(_declined, value))
    return isinstance(value, str) and type(value) is not str


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.binary(max_size=9),
    st.sampled_from([b"\x10\x0d\x1a\x07WARNING", b"\x10\x11\x1a\x08CRITICAL"]),
    RECORD_VALUES,
    st.dictionaries(st.text(max_size=12), RECORD_VALUES, max_size=6),
    st.binary(max_size=40),
    st.binary(max_size=20),
)
def test_the_compiled_record_writer_makes_the_python_versions_bytes_or_declines(
    head: bytes, severity: bytes, body: Any, attributes: dict[str, Any], link: bytes, tail: bytes
) -> None:
    """csrc/otlpviews.c log_record against FindingEvents._record, its reference, on every kind of
    value: the same bytes (the Python version's per-request caches cold, then warm), or None
    where the Python version must write the record (a str subclass) or refuse it (an int outside
    int64, a lone surrogate)."""
    compiled = require_native().log_record
    events = FindingEvents(_Capture(), {}, per_request=10, native_enabled=False)
    args = (head, severity, body, attributes, link, tail)
    expected = _python_record(events, *args)
    assert _python_record(events, *args) == expected
    ours = compiled(*args)
    if isinstance(expected, bytes) and not _declined((body, attributes)):
        assert ours == expected
    else:
        assert ours is None


def _records(payload: bytes) -> bytes:
    """A log request with its records' observed times (the moment of emission) cleared."""
    request = ExportLogsServiceRequest.FromString(payload)
    for resource_logs in request.resource_logs:
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                record.observed_time_unix_nano = 0
    return bytes(request.SerializeToString())


def test_findings_make_the_same_request_with_and_without_the_compiled_writer() -> None:
    """A real N+1 finding, one the compiled writer declines (a str subclass in its evidence) and
    one about the process: the same request either way."""
    require_native()
    spans = shop_request(10, 0)
    trace = Trace(7, spans, spans[0])
    (n_plus_one,) = Analyzer(APMConfig()).analyze(trace)
    odd = dataclasses.replace(n_plus_one, evidence={**n_plus_one.evidence, "odd": _Text("x")})
    process = process_finding(0.0, severity="critical", service="shop")
    requests = []
    for native_enabled in (True, False):
        forwarder = _Capture()
        events = FindingEvents(forwarder, {"service.name": "c"}, 10, native_enabled)
        events.emit(trace, [n_plus_one, odd])
        events.emit(None, [process])
        events.flush()
        ((_, payload, items),) = forwarder.sent
        assert items == 3
        requests.append(_records(payload))
    assert requests[0] == requests[1]
