"""OTLP protobuf (and OTLP/JSON) -> SpanView, from real SDK spans encoded by the real OTLP encoder.

Requests are serialized and parsed again before they are read, as they are on the wire.  Every
test runs twice: with the compiled reader (csrc/otlpviews.c) and with the Python one.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import require_native
from google.protobuf import json_format  # type: ignore[import-untyped, unused-ignore]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ProtoResource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags
from opentelemetry.trace import Status as ApiStatus

from otel_apm import model
from otel_apm.collector.findings import key_value
from otel_apm.ingest import otlp
from otel_apm.ingest.otlp import (
    UNKNOWN_SERVICE,
    IngestCounts,
    otlp_json_to_request,
    parse_otlp_json,
    views_from_request,
    views_from_resource_spans,
)
from otel_apm.ingest.sdk import SpanReader
from otel_apm.model import SpanView
from otel_apm.semconv import ANALYZED_KEYS, fill_attributes

TESTDATA = Path(__file__).parent / "testdata" / "otlp"
TRACE_ID_HEX = "5b8efff798038103d269b633813fc60c"

# -- helpers -------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, params=["native", "python"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read with the compiled reader, or with the Python one as when it is not built."""
    if request.param == "native":
        require_native()
    else:
        monkeypatch.setattr(otlp, "native", lambda enabled=True: None)


def record_spans(service: str, body: Callable[[trace.Tracer], None]) -> tuple[ReadableSpan, ...]:
    """Run ``body`` under a real TracerProvider for ``service``; the spans it ended."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    body(provider.get_tracer("tests"))
    provider.shutdown()
    return exporter.get_finished_spans()


def wire(spans: tuple[ReadableSpan, ...]) -> ExportTraceServiceRequest:
    """What a collector receives for these spans from the SDK's OTLP exporter."""
    data = encode_spans(spans).SerializeToString()
    req = ExportTraceServiceRequest()
    req.ParseFromString(data)
    return req


def by_name(views: list[SpanView]) -> dict[str, SpanView]:
    out = {v.name: v for v in views}
    assert len(out) == len(views), "span names are unique in these tests"
    return out


def proto_span(
    name: str = "s",
    *,
    trace_id: bytes = bytes.fromhex(TRACE_ID_HEX),
    span_id: bytes = bytes.fromhex("00000000000000a1"),
    parent: bytes = b"",
    kind: int = Span.SPAN_KIND_INTERNAL,
    start: int = 1_000,
    end: int = 2_000,
    status: int = Status.STATUS_CODE_UNSET,
    attrs: Mapping[str, Any] | None = None,
) -> Span:
    return Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        name=name,
        kind=kind,  # type: ignore[arg-type]  # an int where the stub wants the enum's NewType
        start_time_unix_nano=start,
        end_time_unix_nano=end,
        status=Status(code=status),  # type: ignore[arg-type]
        attributes=[KeyValue.FromString(key_value(k, v)) for k, v in (attrs or {}).items()],
    )


def request(*spans: Span, service: Any = "svc") -> ExportTraceServiceRequest:
    resource = ProtoResource()
    if service is not None:
        resource.attributes.append(KeyValue.FromString(key_value("service.name", service)))
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=list(spans))])]
    )


# -- mapping from SDK spans ----------------------------------------------------------------------


def _web_request(tracer: trace.Tracer) -> None:
    """A Flask-like server span (stable semconv) calling a DB (old semconv) and an HTTP API."""
    with tracer.start_as_current_span(
        "GET /users/{id}",
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": "GET",
            "http.route": "/users/{id}",
            "http.response.status_code": 500,
            "url.path": "/users/7",
        },
    ) as root:
        with tracer.start_as_current_span(
            "SELECT test",
            kind=SpanKind.CLIENT,
            attributes={
                "db.system": "postgresql",
                "db.statement": "SELECT * FROM users WHERE id = %(id)s",
                "db.operation": "SELECT",
                "db.sql.table": "users",
                "net.peer.name": "db.local",
                "db.name": "test",
                "db.statement.parameters": "{'id': 7}",
                "code.filepath": "/srv/app/users.py",
                "code.lineno": 42,
                "code.function": "load_user",
            },
        ):
            pass
        with tracer.start_as_current_span(
            "INSERT shop",
            kind=SpanKind.CLIENT,
            attributes={
                "db.system.name": "mysql",
                "db.query.text": "INSERT INTO audit (x) VALUES (?)",
                "db.operation.name": "INSERT",
                "db.collection.name": "audit",
                "server.address": "mariadb",
                "cache.hit": True,
                "code.file.path": "/srv/app/audit.py",
                "code.line.number": 7,
                "code.function.name": "Audit.write",
            },
        ):
            pass
        with tracer.start_as_current_span(
            "GET",
            kind=SpanKind.CLIENT,
            attributes={
                "http.method": "GET",
                "http.url": "http://inventory/stock",
                "http.status_code": 503,
                "net.peer.name": "inventory",
                "http.response.body.size": 2_000_000,
                "http.request_content_length": 12,
            },
        ) as client:
            client.record_exception(TimeoutError("upstream slow"))
            client.set_status(ApiStatus(StatusCode.ERROR, "upstream down"))
        with tracer.start_as_current_span(
            "GET cache", kind=SpanKind.CLIENT, attributes={"db.system": "redis"}
        ):
            pass
        with tracer.start_as_current_span(
            "publish", kind=SpanKind.PRODUCER, attributes={"messaging.system": "kafka"}
        ):
            pass
        with tracer.start_as_current_span("rpc", kind=SpanKind.CONSUMER, attributes={"rpc.system": "grpc"}):
            pass
        with tracer.start_as_current_span("compute"):
            pass
        root.set_attribute("error.type", "500")
        root.set_status(ApiStatus(StatusCode.ERROR))


def test_views_match_the_sdk_intake_field_for_field() -> None:
    """The collector must see a span exactly as the in-process processor does."""
    spans = record_spans("users-api", _web_request)
    counts = IngestCounts()
    views = views_from_request(wire(spans), counts)
    assert len(views) == len(spans) == 8
    assert counts.snapshot() == {"views": 8, "malformed_spans": 0}
    reader = SpanReader()
    for span, view in zip(spans, views, strict=True):
        expected = reader.read(span, "users-api")
        for field in SpanView.__slots__:
            assert getattr(view, field) == getattr(expected, field), (span.name, field)


def test_fields_for_code_errors_parameters_cache_and_sizes() -> None:
    views = by_name(views_from_request(wire(record_spans("users-api", _web_request))))
    select, insert, client = views["SELECT test"], views["INSERT shop"], views["GET"]
    assert select.code == "/srv/app/users.py:42:load_user"  # the older code.* names
    assert insert.code == "/srv/app/audit.py:7:Audit.write"  # the stable ones
    assert select.db_params == "{'id': 7}" and insert.db_params is None
    assert insert.cached and not select.cached
    assert client.exception_type == "TimeoutError"  # the exception event wins over the status
    assert (client.request_size, client.response_size) == (12, 2_000_000)
    assert views["GET /users/{id}"].exception_type == "500"  # error.type, no exception event
    assert select.scope == "tests"


def test_stable_query_parameters_are_collected_in_order() -> None:
    span = proto_span(
        attrs={
            "db.system.name": "postgresql",
            "db.query.text": "SELECT 1 WHERE a = $1 AND b = $2",
            "db.query.parameter.1": "x",
            "db.query.parameter.0": 5,
        }
    )
    (view,) = views_from_request(request(span))
    assert view.db_params == "0=5,1=x"


def test_fields_mapped() -> None:
    spans = record_spans("users-api", _web_request)
    views = by_name(views_from_request(wire(spans)))
    root = views["GET /users/{id}"]
    sdk_root = next(s for s in spans if s.name == "GET /users/{id}")
    assert root.trace_id == sdk_root.context.trace_id
    assert root.span_id == sdk_root.context.span_id
    assert root.parent_id == 0
    assert (root.start_ns, root.end_ns) == (sdk_root.start_time, sdk_root.end_time)
    assert root.kind == model.KIND_SERVER and root.error is True
    assert root.service == "users-api"
    assert root.category == model.HTTP_SERVER
    assert (root.http_method, root.http_route, root.http_status) == ("GET", "/users/{id}", 500)

    old_db = views["SELECT test"]
    assert old_db.parent_id == root.span_id and old_db.kind == model.KIND_CLIENT and not old_db.error
    assert old_db.category == model.DB
    assert (old_db.db_system, old_db.statement, old_db.db_operation, old_db.db_table) == (
        "postgresql",
        "SELECT * FROM users WHERE id = %(id)s",
        "SELECT",
        "users",
    )
    assert old_db.server_address == "db.local"

    stable_db = views["INSERT shop"]
    assert (stable_db.db_system, stable_db.statement, stable_db.db_operation, stable_db.db_table) == (
        "mysql",
        "INSERT INTO audit (x) VALUES (?)",
        "INSERT",
        "audit",
    )
    assert stable_db.server_address == "mariadb"

    client = views["GET"]
    assert client.category == model.HTTP_CLIENT and client.error is True
    assert (client.url, client.http_status, client.server_address) == (
        "http://inventory/stock",
        503,
        "inventory",
    )

    assert views["GET cache"].category == model.CACHE
    assert views["publish"].category == model.MESSAGING and views["publish"].kind == model.KIND_PRODUCER
    assert views["rpc"].category == model.RPC and views["rpc"].kind == model.KIND_CONSUMER
    assert views["compute"].category == model.INTERNAL and views["compute"].kind == model.KIND_INTERNAL


def test_equal_values_share_one_object_within_a_request() -> None:
    """What keeps a span waiting in the collector's assembler near 300 bytes: one string per
    distinct statement, name and system in a request, one int per parent id."""

    def body(tracer: trace.Tracer) -> None:
        with tracer.start_as_current_span("GET /x", kind=SpanKind.SERVER, attributes={"http.method": "GET"}):
            for _ in range(3):
                with tracer.start_as_current_span(
                    "SELECT shop",
                    kind=SpanKind.CLIENT,
                    attributes={"db.system": "postgresql", "db.statement": "SELECT * FROM t WHERE id = %s"},
                ):
                    pass

    q1, q2, q3, root = views_from_request(wire(record_spans("svc", body)))
    assert q1.statement == "SELECT * FROM t WHERE id = %s"
    assert q1.statement is q2.statement is q3.statement
    assert q1.name is q2.name and q1.db_system is q3.db_system
    assert q1.parent_id == root.span_id and q1.parent_id is q2.parent_id is root.span_id


def test_remote_parent_is_kept() -> None:
    """In-process a remote parent reads as 0 (a local root); across services it is the real parent."""
    remote = SpanContext(
        trace_id=int(TRACE_ID_HEX, 16),
        span_id=0x1234,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )

    def body(tracer: trace.Tracer) -> None:
        ctx = trace.set_span_in_context(NonRecordingSpan(remote))
        with tracer.start_as_current_span("GET /orders", context=ctx, kind=SpanKind.SERVER):
            pass

    spans = record_spans("orders", body)
    (view,) = views_from_request(wire(spans))
    assert view.trace_id == int(TRACE_ID_HEX, 16)
    assert view.parent_id == 0x1234
    assert SpanReader().read(spans[0], "orders").parent_id == 0


def test_service_name_per_resource_and_fallback() -> None:
    a = request(proto_span("a"), service="alpha").resource_spans[0]
    b = request(proto_span("b", span_id=b"\x00" * 7 + b"\x02"), service=None).resource_spans[0]
    c = request(proto_span("c", span_id=b"\x00" * 7 + b"\x03"), service=42).resource_spans[0]
    d = request(proto_span("d", span_id=b"\x00" * 7 + b"\x04"), service="").resource_spans[0]
    views = views_from_resource_spans([a, b, c, d])
    assert [(v.name, v.service) for v in views] == [
        ("a", "alpha"),
        ("b", UNKNOWN_SERVICE),
        ("c", "42"),
        ("d", UNKNOWN_SERVICE),
    ]


@pytest.mark.parametrize(
    ("otlp_kind", "kind"),
    [
        (Span.SPAN_KIND_UNSPECIFIED, model.KIND_INTERNAL),
        (Span.SPAN_KIND_INTERNAL, model.KIND_INTERNAL),
        (Span.SPAN_KIND_SERVER, model.KIND_SERVER),
        (Span.SPAN_KIND_CLIENT, model.KIND_CLIENT),
        (Span.SPAN_KIND_PRODUCER, model.KIND_PRODUCER),
        (Span.SPAN_KIND_CONSUMER, model.KIND_CONSUMER),
        (17, model.KIND_INTERNAL),  # proto3 enums are open: an unknown value survives parsing
    ],
)
def test_kinds(otlp_kind: int, kind: int) -> None:
    req = ExportTraceServiceRequest()
    req.ParseFromString(request(proto_span(kind=otlp_kind)).SerializeToString())
    (view,) = views_from_request(req)
    assert view.kind == kind


@pytest.mark.parametrize(
    ("code", "error"),
    [(Status.STATUS_CODE_UNSET, False), (Status.STATUS_CODE_OK, False), (Status.STATUS_CODE_ERROR, True)],
)
def test_status(code: int, error: bool) -> None:
    (view,) = views_from_request(request(proto_span(status=code)))
    assert view.error is error


def test_end_before_start_reads_as_zero_duration() -> None:
    (view,) = views_from_request(request(proto_span(start=5_000, end=4_000)))
    assert (view.start_ns, view.end_ns, view.duration_ms) == (5_000, 5_000, 0.0)


def test_attribute_value_types() -> None:
    """Only scalar values count; a value of another type reads as absent; strings are parsed
    where analysis needs a number."""
    views = views_from_request(
        request(
            proto_span(
                "q1",
                span_id=bytes.fromhex("0000000000000001"),
                kind=Span.SPAN_KIND_CLIENT,
                attrs={"db.system": "postgresql", "db.statement": ["SELECT 1"], "db.operation": 7},
            ),
            proto_span(
                "h1",
                span_id=bytes.fromhex("0000000000000002"),
                kind=Span.SPAN_KIND_SERVER,
                attrs={"http.method": "GET", "http.status_code": "404", "http.route": b"/x"},
            ),
            proto_span(
                "h2",
                span_id=bytes.fromhex("0000000000000003"),
                kind=Span.SPAN_KIND_SERVER,
                attrs={"http.request.method": "POST", "http.response.status_code": 201.0, "http.route": ""},
            ),
            proto_span(
                "flag",
                span_id=bytes.fromhex("0000000000000004"),
                attrs={"db.system.name": True, "db.query.text": "SELECT 2", "db.operation.name": ""},
            ),
        )
    )
    q1, h1, h2, flag = views
    assert (q1.category, q1.db_system, q1.statement, q1.db_operation) == (model.DB, "postgresql", None, "7")
    assert (h1.category, h1.http_status, h1.http_route) == (model.HTTP_SERVER, 404, None)
    assert (h2.http_method, h2.http_status, h2.http_route) == ("POST", 201, "")
    assert (flag.db_system, flag.statement, flag.db_operation) == ("True", "SELECT 2", "")


# Spans that share their attributes but not their kind, status or name: the collector fills a
# span from the last one of the same shape, so each of these must still read as its own.
HTTP_ATTRS = {"http.request.method": "GET", "url.full": "http://a/x", "error.type": "timeout"}
DB_ATTRS = {"db.system": "postgresql"}
PARAM_ATTRS = {"db.system.name": "mysql", "db.query.text": "SELECT ?", "db.query.parameter.0": 3}
SHAPES: list[tuple[str, int, int, dict[str, Any]]] = [
    ("GET", Span.SPAN_KIND_CLIENT, Status.STATUS_CODE_UNSET, HTTP_ATTRS),
    ("GET", Span.SPAN_KIND_SERVER, Status.STATUS_CODE_UNSET, HTTP_ATTRS),
    ("GET", Span.SPAN_KIND_CLIENT, Status.STATUS_CODE_ERROR, HTTP_ATTRS),
    ("GET", Span.SPAN_KIND_CLIENT, Status.STATUS_CODE_UNSET, HTTP_ATTRS),  # a repeat of the first
    ("connect", Span.SPAN_KIND_CLIENT, Status.STATUS_CODE_UNSET, DB_ATTRS),
    ("query", Span.SPAN_KIND_CLIENT, Status.STATUS_CODE_UNSET, DB_ATTRS),
    ("SELECT", Span.SPAN_KIND_CLIENT, Status.STATUS_CODE_UNSET, PARAM_ATTRS),
    ("SELECT", Span.SPAN_KIND_CLIENT, Status.STATUS_CODE_UNSET, {**PARAM_ATTRS, "db.query.parameter.0": 4}),
    ("SELECT", Span.SPAN_KIND_CLIENT, Status.STATUS_CODE_UNSET, PARAM_ATTRS),
]


def shapes_request() -> ExportTraceServiceRequest:
    return request(
        *(
            proto_span(name, span_id=(i + 1).to_bytes(8, "big"), kind=kind, status=status, attrs=attrs)
            for i, (name, kind, status, attrs) in enumerate(SHAPES)
        )
    )


def expected_view(i: int) -> SpanView:
    """What fill_attributes makes of span ``i`` of SHAPES on its own, as the SDK intake does."""
    name, kind, status, attrs = SHAPES[i]
    error = status == Status.STATUS_CODE_ERROR
    view = SpanView(int(TRACE_ID_HEX, 16), i + 1, 0, name, kind - 1, 1_000, 2_000, error, "svc")
    fill_attributes(view, {k: v for k, v in attrs.items() if k in ANALYZED_KEYS})
    params = sorted(
        f"{k.rpartition('.')[2]}={v}" for k, v in attrs.items() if k.startswith("db.query.parameter.")
    )
    view.db_params = ",".join(params) if params else None
    return view


def assert_views_as_expected(views: list[SpanView]) -> None:
    assert len(views) == len(SHAPES)
    for i, view in enumerate(views):
        expected = expected_view(i)
        for field in SpanView.__slots__:
            assert getattr(view, field) == getattr(expected, field), (i, field)


def test_spans_of_one_shape_read_alike_and_kind_status_name_are_part_of_the_shape() -> None:
    first = views_from_request(shapes_request())
    assert_views_as_expected(first)
    assert [v.category for v in first[:2]] == [model.HTTP_CLIENT, model.HTTP_SERVER]
    assert (first[0].exception_type, first[2].exception_type) == (None, "timeout")
    assert [v.category for v in first[4:6]] == [model.DB_CONNECTION, model.DB]
    assert [v.db_params for v in first[6:]] == ["0=3", "0=4", "0=3"]
    assert_views_as_expected(views_from_request(shapes_request()))  # read again, from the fills


def test_the_fills_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otlp, "FILLS_MAX", 2)
    monkeypatch.setattr(otlp, "PAIRS_MAX", 3)
    monkeypatch.setattr(otlp, "_FILLS", {})
    monkeypatch.setattr(otlp, "_PAIRS", {})
    for _ in range(2):
        assert_views_as_expected(views_from_request(shapes_request()))
        assert len(otlp._FILLS) <= 2 and len(otlp._PAIRS) <= 3


class RecordingMapping(Mapping[str, Any]):
    """A real mapping that remembers every key read from it."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return self.data.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


@pytest.mark.parametrize(
    ("kind", "attrs"),
    [
        (model.KIND_CLIENT, {}),
        (model.KIND_CLIENT, {"db.system": "postgresql"}),
        (model.KIND_CLIENT, {"db.system": "redis"}),
        (model.KIND_CLIENT, {"http.method": "GET"}),
        (model.KIND_SERVER, {"http.method": "GET"}),
        (model.KIND_INTERNAL, {"messaging.system": "kafka"}),
    ],
)
def test_analyzed_keys_cover_every_key_fill_attributes_reads(kind: int, attrs: dict[str, Any]) -> None:
    """The collector converts only ANALYZED_KEYS: a key fill_attributes reads outside them would
    be silently missing from every OTLP span."""
    mapping = RecordingMapping(attrs)
    fill_attributes(SpanView(1, 2, 0, "connect", kind, 0, 1, False, "s"), mapping)
    assert mapping.read, "fill_attributes read nothing: the recording is broken"
    assert mapping.read <= ANALYZED_KEYS, mapping.read - ANALYZED_KEYS


def test_analyzed_keys_are_only_semconv_keys() -> None:
    assert {"db.system", "db.system.name", "db.query.text", "http.route", "rpc.system"} <= ANALYZED_KEYS
    assert "service.name" not in ANALYZED_KEYS and "url.path" not in ANALYZED_KEYS
    assert "redis" not in ANALYZED_KEYS  # CACHE_SYSTEMS holds values, not keys


# -- malformed input -----------------------------------------------------------------------------

GOOD_TRACE = bytes.fromhex(TRACE_ID_HEX)


@pytest.mark.parametrize(
    "bad",
    [
        {"trace_id": b""},
        {"trace_id": GOOD_TRACE[:15]},
        {"trace_id": GOOD_TRACE + b"\x01"},
        {"trace_id": bytes(16)},
        {"span_id": b""},
        {"span_id": b"\x01" * 7},
        {"span_id": b"\x01" * 9},
        {"span_id": bytes(8)},
        {"parent": b"\x01" * 4},
        {"parent": b"\x01" * 16},
    ],
    ids=lambda bad: f"{next(iter(bad))}={next(iter(bad.values())).hex() or 'empty'}",
)
@pytest.mark.parametrize("position", ["first", "middle", "last"])
def test_malformed_span_skipped_and_counted(bad: dict[str, bytes], position: str) -> None:
    good = [proto_span(f"ok{i}", span_id=bytes([0] * 7 + [i + 1])) for i in range(3)]
    index = {"first": 0, "middle": 2, "last": 3}[position]
    spans = [*good[:index], proto_span("bad", **bad), *good[index:]]  # type: ignore[arg-type]
    counts = IngestCounts()
    views = views_from_request(request(*spans), counts)
    assert [v.name for v in views] == ["ok0", "ok1", "ok2"]
    assert all(v.trace_id == int(TRACE_ID_HEX, 16) for v in views)
    assert counts.snapshot() == {"views": 3, "malformed_spans": 1}


def test_all_zero_parent_means_no_parent() -> None:
    (view,) = views_from_request(request(proto_span(parent=bytes(8))))
    assert view.parent_id == 0


def test_counts_default_to_the_module_counter() -> None:
    before = otlp.COUNTS.snapshot()
    views_from_request(request(proto_span(), proto_span(span_id=b"")))
    after = otlp.COUNTS.snapshot()
    assert after["views"] - before["views"] == 1
    assert after["malformed_spans"] - before["malformed_spans"] == 1


def _valid_request_bytes() -> bytes:
    data: bytes = wire(record_spans("fuzz", _web_request)).SerializeToString()
    return data


VALID = _valid_request_bytes()


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_random_bytes(data: bytes) -> None:
    req = ExportTraceServiceRequest()
    try:
        req.ParseFromString(data)
    except Exception:
        return  # the receiver refuses what does not parse
    counts = IngestCounts()
    views = views_from_request(req, counts)
    snap = counts.snapshot()
    assert snap["views"] == len(views)
    assert snap["views"] + snap["malformed_spans"] == sum(
        len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans
    )


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(VALID) - 1), st.integers(0, 255), st.sampled_from(["set", "insert", "cut"])
        ),
        min_size=1,
        max_size=8,
    )
)
def test_fuzz_mutated_valid_request(edits: list[tuple[int, int, str]]) -> None:
    """Random bytes rarely parse; a real request with a few bytes changed often does, into odd
    lengths, kinds and value types."""
    data = bytearray(VALID)
    for pos, byte, how in edits:
        pos %= len(data) or 1
        if how == "set" and data:
            data[pos] = byte
        elif how == "insert":
            data.insert(pos, byte)
        elif data:
            del data[pos : pos + byte % 8 + 1]
    req = ExportTraceServiceRequest()
    try:
        req.ParseFromString(bytes(data))
    except Exception:
        return
    counts = IngestCounts()
    views = views_from_request(req, counts)
    for v in views:
        assert 0 < v.trace_id < 1 << 128 and 0 < v.span_id < 1 << 64 and 0 <= v.parent_id < 1 << 64
        assert 0 <= v.kind <= 4 and v.end_ns >= v.start_ns
    snap = counts.snapshot()
    assert snap["views"] + snap["malformed_spans"] == sum(
        len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans
    )


INT32 = st.integers(-(2**31), 2**31 - 1)
ANY_VALUES: st.SearchStrategy[AnyValue] = st.one_of(
    st.text(max_size=30).map(lambda v: AnyValue(string_value=v)),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: AnyValue(int_value=v)),
    st.floats().map(lambda v: AnyValue(double_value=v)),
    st.booleans().map(lambda v: AnyValue(bool_value=v)),
    st.binary(max_size=8).map(lambda v: AnyValue(bytes_value=v)),
    st.lists(st.text(max_size=5), max_size=3).map(
        lambda vs: AnyValue(array_value=ArrayValue(values=[AnyValue(string_value=v) for v in vs]))
    ),
    st.just(AnyValue()),  # no value set at all
)
ATTRIBUTES = st.lists(
    st.builds(KeyValue, key=st.sampled_from(sorted(ANALYZED_KEYS)) | st.text(max_size=12), value=ANY_VALUES),
    max_size=8,
)
SPANS = st.builds(
    Span,
    trace_id=st.binary(max_size=20) | st.just(GOOD_TRACE),
    span_id=st.binary(max_size=10) | st.binary(min_size=8, max_size=8),
    parent_span_id=st.binary(max_size=10) | st.binary(min_size=8, max_size=8),
    name=st.text(max_size=20),
    kind=INT32,
    start_time_unix_nano=st.integers(0, 2**64 - 1),
    end_time_unix_nano=st.integers(0, 2**64 - 1),
    status=st.builds(Status, code=INT32),
    attributes=ATTRIBUTES,
)
RESOURCE_SPANS = st.builds(
    ResourceSpans,
    resource=st.builds(
        ProtoResource,
        attributes=st.lists(
            st.builds(KeyValue, key=st.sampled_from(["service.name", "host.name"]), value=ANY_VALUES),
            max_size=3,
        ),
    ),
    scope_spans=st.lists(st.builds(ScopeSpans, spans=st.lists(SPANS, max_size=5)), max_size=3),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(RESOURCE_SPANS, max_size=3))
def test_fuzz_structured_requests(resource_spans: list[ResourceSpans]) -> None:
    """Well-framed requests with arbitrary field values: odd id lengths, open-enum kinds and
    status codes, any value type under any analyzed key."""
    req = ExportTraceServiceRequest()
    req.ParseFromString(ExportTraceServiceRequest(resource_spans=resource_spans).SerializeToString())
    counts = IngestCounts()
    views = views_from_request(req, counts)
    spans = [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    valid = [
        s
        for s in spans
        if len(s.trace_id) == 16
        and any(s.trace_id)
        and len(s.span_id) == 8
        and any(s.span_id)
        and len(s.parent_span_id) in (0, 8)
    ]
    assert len(views) == len(valid)
    assert counts.snapshot() == {"views": len(valid), "malformed_spans": len(spans) - len(valid)}
    for v, s in zip(views, valid, strict=True):
        assert v.span_id == int.from_bytes(s.span_id, "big") and 0 <= v.kind <= 4
        assert v.end_ns >= v.start_ns and v.service


# -- OTLP/JSON -----------------------------------------------------------------------------------


def cross_service_json() -> bytes:
    return (TESTDATA / "cross_service.json").read_bytes()


def test_json_format_alone_misreads_hex_ids() -> None:
    """Why otlp_json_to_request exists: OTLP/JSON ids are hex, json_format reads bytes as base64,
    and a hex id is valid base64 of the wrong length, so nothing fails and every id is wrong."""
    req = json_format.Parse(cross_service_json(), ExportTraceServiceRequest(), ignore_unknown_fields=True)
    span = req.resource_spans[0].scope_spans[0].spans[0]
    assert (len(span.trace_id), len(span.span_id)) == (24, 12)
    counts = IngestCounts()
    assert views_from_request(req, counts) == []
    assert counts.malformed_spans == 10


def test_json_hex_ids() -> None:
    req = otlp_json_to_request(cross_service_json())
    counts = IngestCounts()
    views = views_from_request(req, counts)
    assert counts.snapshot() == {"views": 10, "malformed_spans": 0}
    assert {v.trace_id for v in views} == {int(TRACE_ID_HEX, 16)}
    spans = {v.span_id: v for v in views}
    root = spans[0xEEE19B7EC3C1B174]
    client = spans[0xEEE19B7EC3C1B175]
    server = spans[0xBBBB000000000001]
    assert root.parent_id == 0 and root.service == "frontend" and root.kind == model.KIND_SERVER
    assert (root.http_status, root.http_route) == (200, "/checkout/{cart}")
    assert client.parent_id == root.span_id and client.category == model.HTTP_CLIENT
    assert server.parent_id == client.span_id and server.service == "orders"
    assert server.start_ns == 1_700_000_000_008_000_000 and server.end_ns == 1_700_000_000_105_000_000
    db = [v for v in views if v.category == model.DB]
    assert len(db) == 7 and all(v.parent_id == server.span_id for v in db)
    assert {v.db_system for v in db} == {"postgresql"}


def test_json_matches_protobuf_path() -> None:
    """The same spans sent as OTLP/JSON (hex ids) and as protobuf read the same."""
    spans = record_spans("users-api", _web_request)
    proto_req = wire(spans)
    doc = json_format.MessageToDict(proto_req)
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:  # MessageToDict writes base64; OTLP/JSON senders write hex
                        span[key] = base64.b64decode(span[key]).hex()
    json_views = views_from_request(otlp_json_to_request(json.dumps(doc).encode()))
    proto_views = views_from_request(proto_req)
    assert len(json_views) == len(proto_views) == len(spans)
    for a, b in zip(json_views, proto_views, strict=True):
        for field in SpanView.__slots__:
            assert getattr(a, field) == getattr(b, field), field


def test_json_uppercase_hex_and_base64_ids() -> None:
    upper = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {"traceId": TRACE_ID_HEX.upper(), "spanId": "00000000000000A1", "name": "hex"},
                            {
                                "traceId": base64.b64encode(bytes.fromhex(TRACE_ID_HEX)).decode(),
                                "spanId": base64.b64encode(bytes.fromhex("00000000000000a2")).decode(),
                                "parentSpanId": base64.b64encode(bytes.fromhex("00000000000000a1")).decode(),
                                "name": "b64",
                            },
                        ]
                    }
                ]
            }
        ]
    }
    hex_view, b64_view = views_from_request(otlp_json_to_request(json.dumps(upper)))
    assert (hex_view.trace_id, hex_view.span_id) == (int(TRACE_ID_HEX, 16), 0xA1)
    assert (b64_view.trace_id, b64_view.span_id, b64_view.parent_id) == (int(TRACE_ID_HEX, 16), 0xA2, 0xA1)
    assert hex_view.service == UNKNOWN_SERVICE


def test_json_links_ids_are_hex_too() -> None:
    body = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": TRACE_ID_HEX,
                                "spanId": "00000000000000a1",
                                "links": [
                                    {
                                        "traceId": "0af7651916cd43dd8448eb211c80319c",
                                        "spanId": "b7ad6b7169203331",
                                    }
                                ],
                            }
                        ]
                    }
                ]
            }
        ]
    }
    link = otlp_json_to_request(json.dumps(body)).resource_spans[0].scope_spans[0].spans[0].links[0]
    assert (
        link.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c" and link.span_id.hex() == "b7ad6b7169203331"
    )


def test_parse_otlp_json_logs() -> None:
    """The same rule for the other signals: log records carry hex trace and span ids."""
    body = {
        "resourceLogs": [
            {
                "scopeLogs": [
                    {
                        "logRecords": [
                            {
                                "timeUnixNano": "1700000000000000000",
                                "traceId": TRACE_ID_HEX,
                                "spanId": "eee19b7ec3c1b174",
                                "body": {"stringValue": "traceId: 00"},
                                "attributes": [{"key": "spanId", "value": {"stringValue": "abcd"}}],
                            }
                        ]
                    }
                ]
            }
        ]
    }
    req = parse_otlp_json(json.dumps(body).encode(), ExportLogsServiceRequest())
    record = req.resource_logs[0].scope_logs[0].log_records[0]
    assert record.trace_id.hex() == TRACE_ID_HEX and record.span_id.hex() == "eee19b7ec3c1b174"
    assert record.attributes[0].value.string_value == "abcd"


def test_parse_otlp_json_metric_exemplars() -> None:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    exemplar = {"asDouble": 1.5, "traceId": TRACE_ID_HEX, "spanId": "eee19b7ec3c1b174"}
    body = {
        "resourceMetrics": [
            {
                "scopeMetrics": [
                    {
                        "metrics": [
                            {"name": "m", "sum": {"dataPoints": [{"asInt": "3", "exemplars": [exemplar]}]}},
                            {
                                "name": "h",
                                "histogram": {"dataPoints": [{"count": "1", "exemplars": [exemplar]}]},
                            },
                        ]
                    }
                ]
            }
        ]
    }
    req = parse_otlp_json(json.dumps(body), ExportMetricsServiceRequest())
    metrics = req.resource_metrics[0].scope_metrics[0].metrics
    for ex in (metrics[0].sum.data_points[0].exemplars[0], metrics[1].histogram.data_points[0].exemplars[0]):
        assert ex.trace_id.hex() == TRACE_ID_HEX and ex.span_id.hex() == "eee19b7ec3c1b174"


def test_json_unknown_fields_ignored() -> None:
    body = {
        "resourceSpans": [{"futureField": 1, "scopeSpans": [{"spans": [{"traceId": TRACE_ID_HEX, "x": []}]}]}]
    }
    req = otlp_json_to_request(json.dumps(body))
    assert req.resource_spans[0].scope_spans[0].spans[0].trace_id.hex() == TRACE_ID_HEX


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"\xff\xfe\x00",
        b"[]",
        b'"x"',
        b'{"resourceSpans": 3}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 12}]}]}]}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"resourceSpans": [{"resource": {"attributes": [{"key": "k", "value": '
        + b'{"kvlistValue": {"values": [{"key": "k", "value": ' * 200
        + b"{}"
        + b"}]}}" * 200
        + b"}]}}]}",
    ],
    ids=[
        "empty",
        "truncated",
        "not-utf8",
        "list",
        "string",
        "wrong-type",
        "int-id",
        "bad-int",
        "deep-list",
        "deep-kvlist",
    ],
)
def test_json_invalid_raises_parse_error(body: bytes) -> None:
    with pytest.raises(json_format.ParseError):
        otlp_json_to_request(body)


def test_json_odd_id_and_enum_reach_ingest_as_malformed_or_default() -> None:
    """Not errors for json_format: an id that is neither hex nor base64 decodes leniently to
    bytes of the wrong length (the span is then skipped and counted), and an unknown enum name is
    ignored like an unknown field (the kind reads as internal)."""
    body = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {"traceId": "zz", "spanId": "00000000000000a1", "name": "bad-id"},
                            {
                                "traceId": TRACE_ID_HEX,
                                "spanId": "00000000000000a2",
                                "kind": "SIDEWAYS",
                                "name": "k",
                            },
                        ]
                    }
                ]
            }
        ]
    }
    counts = IngestCounts()
    (view,) = views_from_request(otlp_json_to_request(json.dumps(body)), counts)
    assert (view.name, view.kind) == ("k", model.KIND_INTERNAL)
    assert counts.malformed_spans == 1


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "resourceSpans",
                    "scopeSpans",
                    "spans",
                    "traceId",
                    "spanId",
                    "parentSpanId",
                    "kind",
                    "name",
                    "attributes",
                    "key",
                    "value",
                    "stringValue",
                    "intValue",
                    "status",
                    "code",
                    "links",
                ]
            )
            | st.text(max_size=8),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(JSON_VALUES)
def test_fuzz_json_only_parse_error(doc: Any) -> None:
    try:
        body = json.dumps(doc).encode()
    except ValueError:
        return
    try:
        req = otlp_json_to_request(body)
    except json_format.ParseError:
        return
    views_from_request(req, IngestCounts())
