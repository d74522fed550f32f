"""The compiled OTLP reader (csrc/otlpviews.c) against its Python twin (otlp.python_views).

Both read the same payloads: real SDK spans through the real OTLP encoder, the labelled corpus,
the OTLP/JSON test data, and random or mutated bytes (hypothesis).  Each must give the same
views (every slot, with its type), the same counts, and refuse the same payloads.  The
compiled otlp_check may call a payload valid only when protobuf parses it.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import require_native
from google.protobuf.message import DecodeError  # type: ignore[import-untyped, unused-ignore]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, StatusCode

from otel_apm.collector.findings import key_value
from otel_apm.ingest import otlp
from otel_apm.ingest.otlp import IngestCounts, checked_request, otlp_json_to_request, views_from_payload
from otel_apm.model import SpanView

TESTS = Path(__file__).parent
JSON_PAYLOADS = sorted((TESTS / "corpus").glob("*.json")) + sorted(
    (TESTS / "testdata" / "otlp").glob("*.json")
)


@pytest.fixture(autouse=True)
def compiled() -> None:
    require_native()


def slots(view: SpanView) -> tuple[tuple[str, str, Any], ...]:
    """Every slot of a view with its value's type: True and 1 are equal, but not the same read."""
    return tuple(
        (slot, type(value).__name__, value) for slot in SpanView.__slots__ for value in [getattr(view, slot)]
    )


def outcome(payload: bytes, native_enabled: bool) -> Any:
    """What one reader makes of a payload: the views' slots and the counts, or the error raised."""
    counts = IngestCounts()
    try:
        views = views_from_payload(payload, counts, native_enabled)
    except Exception as exc:
        return type(exc)
    return [slots(v) for v in views], counts.snapshot()


def assert_same(payload: bytes) -> Any:
    """Both readers agree on the payload; what they made of it."""
    native = outcome(payload, True)
    assert native == outcome(payload, False)
    return native


# -- real payloads ---------------------------------------------------------------------------------


def sdk_payload(body: Callable[[trace.Tracer], None], service: str = "users-api") -> bytes:
    """The bytes the SDK's OTLP exporter sends for the spans ``body`` ends."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service, "host.name": "h"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    body(provider.get_tracer("tests", "1.0"))
    provider.shutdown()
    return bytes(encode_spans(exporter.get_finished_spans()).SerializeToString())


def web_request(tracer: trace.Tracer) -> None:
    """A server span, an N+1 of queries (old and new semconv), HTTP calls, an exception, a
    link, events, a cache hit and attributes analysis does not read."""
    with tracer.start_as_current_span(
        "GET /users/{id}",
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "GET", "http.route": "/users/{id}", "url.path": "/users/7"},
    ) as root:
        for i in range(6):
            with tracer.start_as_current_span(
                "SELECT users",
                kind=SpanKind.CLIENT,
                attributes={
                    "db.system": "postgresql",
                    "db.statement": "SELECT * FROM users WHERE id = %s",
                    "db.query.parameter.0": str(i),
                    "net.peer.name": "db",
                    "code.function": "load",
                    "thread.id": i,
                },
            ):
                pass
        with tracer.start_as_current_span(
            "GET",
            kind=SpanKind.CLIENT,
            attributes={"http.method": "GET", "http.url": "http://x/y", "http.status_code": 503},
        ) as call:
            call.set_status(StatusCode.ERROR)
            call.record_exception(TimeoutError("slow"))
        with tracer.start_as_current_span(
            "cache", attributes={"db.system": "redis", "cache.hit": True, "ratio": 0.5}
        ):
            pass
        with tracer.start_as_current_span("render", links=[Link(root.get_span_context())]) as render:
            render.add_event("exception", {"exception.type": "First"})
            render.add_event("note", {"exception.type": "NotAnException"})
            render.add_event("exception", {"exception.type": "Second", "exception.message": "m"})
        with tracer.start_as_current_span(
            "ünïcode ✓", kind=SpanKind.CONSUMER, attributes={"tags": ["a", "b"]}
        ):
            pass


def test_sdk_payloads_read_alike() -> None:
    payload = sdk_payload(web_request)
    views, counts = assert_same(payload)
    assert counts == {"views": 11, "malformed_spans": 0}
    assert assert_same(payload) == (views, counts)  # again, from the fills


@pytest.mark.parametrize("path", JSON_PAYLOADS, ids=lambda p: p.name)
def test_corpus_and_test_data_read_alike(path: Path) -> None:
    views, _ = assert_same(otlp_json_to_request(path.read_bytes()).SerializeToString())
    assert views


def test_compiled_views_are_left_out_of_the_cycle_collectors_walks() -> None:
    """A view holds only atomic values, so it is in no cycle: the collector's traces wait
    seconds for their root, and every collection meanwhile would walk their views."""
    views = views_from_payload(sdk_payload(web_request), IngestCounts(), True)
    assert views and not any(gc.is_tracked(v) for v in views)
    assert all(gc.is_tracked(v) for v in views_from_payload(sdk_payload(web_request), IngestCounts(), False))


def test_equal_names_and_ids_are_one_object_within_a_request() -> None:
    payload = sdk_payload(web_request)
    for native_enabled in (True, False):
        views = views_from_payload(payload, IngestCounts(), native_enabled)
        by_id = {v.span_id: v for v in views}
        queries = [v for v in views if v.name == "SELECT users"]
        assert len(queries) == 6 and all(q.name is queries[0].name for q in queries)
        assert all(q.statement is queries[0].statement for q in queries)  # through the fills
        children = [v for v in views if v.parent_id in by_id]
        assert len(children) == 10
        assert all(v.parent_id is by_id[v.parent_id].span_id for v in children)


def test_malformed_spans_are_counted_alike() -> None:
    request = otlp_json_to_request((TESTS / "testdata" / "otlp" / "cross_service.json").read_bytes())
    spans = [span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]
    spans[0].trace_id = b"short"
    spans[3].span_id = bytes(8)
    spans[-1].parent_span_id = b"123"
    _, counts = assert_same(request.SerializeToString())
    assert counts["malformed_spans"] == 3 and counts["views"] == len(spans) - 3


def view_request(**span: Any) -> Any:
    """A request as otlp.py's reduced schema builds it, where attributes are any bytes."""
    message = otlp._view_schema()()
    scope_spans = message.resource_spans.add().scope_spans.add()
    scope_spans.spans.add(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)), name="ok")
    scope_spans.spans.add(trace_id=bytes(range(1, 17)), span_id=bytes(range(2, 10)), **span)
    return message


def test_attributes_that_are_no_key_value_skip_their_span_alike() -> None:
    bad_attribute = view_request(name="bad", attributes=[b"\xff"])
    assert assert_same(bad_attribute.SerializeToString())[1] == {"views": 1, "malformed_spans": 1}
    bad_event = view_request(name="bad", events=[{"name": "exception", "attributes": [b"\xff"]}])
    assert assert_same(bad_event.SerializeToString())[1] == {"views": 1, "malformed_spans": 1}
    bad_resource = view_request()
    bad_resource.resource_spans[0].resource.attributes.append(b"\xff")
    assert assert_same(bad_resource.SerializeToString()) is DecodeError  # read outside the spans


def test_not_a_request_raises_decode_error_in_both() -> None:
    for payload in (b"\x0a\x05ab", b"\x00", b"\x0a\x04\x12\x02\x12\x00\x0f"):
        assert assert_same(payload) is DecodeError


# -- fuzz ------------------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def tagged(number: int, wire: int, body: bytes) -> bytes:
    return varint(number << 3 | wire) + body


# Field contents worth trying at any place: ids of the right and wrong sizes, names (one not
# UTF-8), the attributes analysis reads, an exception's type, a service name.
key_values = st.builds(
    key_value,
    st.sampled_from(
        [
            "service.name",
            "db.system",
            "db.statement",
            "http.method",
            "exception.type",
            "db.query.parameter.x",
            "other",
        ]
    ),
    st.one_of(st.text(max_size=8), st.integers(-5, 5), st.booleans(), st.floats(allow_nan=False)),
)
interesting_bytes = st.one_of(
    st.binary(max_size=20),
    st.sampled_from(
        [
            bytes(16),
            bytes(range(1, 17)),
            bytes(range(1, 9)),
            bytes(8),
            b"exception",
            b"\xff\xfe",
            "é".encode(),
        ]
    ),
    key_values,
)
field_numbers = st.one_of(st.integers(1, 16), st.integers(0, 2**29 - 1))
scalar_field = st.one_of(
    st.builds(lambda n, v: tagged(n, 0, varint(v)), field_numbers, st.integers(0, 2**64 - 1)),
    st.builds(lambda n, v: tagged(n, 1, v), field_numbers, st.binary(min_size=8, max_size=8)),
    st.builds(lambda n, v: tagged(n, 5, v), field_numbers, st.binary(min_size=4, max_size=4)),
    st.builds(lambda n, v: tagged(n, 2, varint(len(v)) + v), field_numbers, interesting_bytes),
    st.builds(lambda n: tagged(n, 3, b"") + tagged(n, 4, b""), field_numbers),
)
messages = st.recursive(
    st.lists(scalar_field, max_size=6).map(b"".join),
    lambda inner: st.lists(
        st.one_of(
            scalar_field, st.builds(lambda n, m: tagged(n, 2, varint(len(m)) + m), st.integers(1, 16), inner)
        ),
        max_size=6,
    ).map(b"".join),
    max_leaves=40,
)


def delimited(number: int, parts: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return parts.map(lambda body: tagged(number, 2, varint(len(body)) + body))


def message(*fields: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A message of these fields (each any number of times, in any order) and odd ones."""
    return st.lists(st.one_of(*fields, scalar_field), max_size=8).map(b"".join)


# Requests shaped as OTLP's messages: the fields a span needs first (so most spans are read), then
# any fields, expected or odd, in any order and number (a field seen twice, a message merged).
names = st.sampled_from([b"exception", b"exception", b"q", b"q", b"r", b"s", "é".encode(), b"", b"", b"\xff"])
status = message(
    st.builds(lambda v: tagged(3, 0, varint(v)), st.sampled_from([0, 1, 2, 2**32 + 2, 2**64 - 1]))
)
event = message(delimited(2, names), delimited(3, interesting_bytes))
trace_ids = delimited(
    1, st.sampled_from([bytes(range(1, 17)), bytes(range(2, 18)), bytes(16), b"", b"\x01" * 15])
)
span_ids = delimited(
    2, st.sampled_from([bytes(range(1, 9)), bytes(range(2, 10)), bytes(range(3, 11)), bytes(8), b"\x01"])
)
span_fields = message(
    trace_ids,
    span_ids,
    delimited(4, st.sampled_from([b"", bytes(range(1, 9)), bytes(8), b"\x02" * 7])),
    delimited(5, names),
    st.builds(lambda v: tagged(6, 0, varint(v)), st.integers(0, 7) | st.integers(0, 2**64 - 1)),
    st.builds(
        lambda n, v: tagged(n, 1, v.to_bytes(8, "little")), st.sampled_from([7, 8]), st.integers(0, 2**64 - 1)
    ),
    delimited(9, interesting_bytes),
    delimited(11, event),
    delimited(15, status),
)
span = st.builds(lambda *parts: b"".join(parts), trace_ids, span_ids, span_fields)
scope_spans = st.builds(
    lambda spans, rest: spans + rest,
    st.lists(delimited(2, span), min_size=1, max_size=4).map(b"".join),
    message(delimited(1, message(delimited(1, names))), delimited(2, span)),
)
resource_spans = st.builds(
    lambda scopes, rest: scopes + rest,
    delimited(2, scope_spans),
    message(delimited(1, message(delimited(1, key_values))), delimited(2, scope_spans)),
)
requests = st.lists(delimited(1, resource_spans), min_size=1, max_size=3).map(b"".join)

SEED_PAYLOADS = [
    sdk_payload(web_request),
    otlp_json_to_request(
        (TESTS / "testdata" / "otlp" / "cross_service.json").read_bytes()
    ).SerializeToString(),
]


def mutate(payload: bytes, seed: int, edits: int) -> bytes:
    """``payload`` with a few random edits: bytes changed, inserted or cut, or the end cut."""
    rng = random.Random(seed)
    data = bytearray(payload)
    for _ in range(edits):
        at = rng.randrange(len(data) + 1)
        action = rng.randrange(4)
        if action == 0 and at < len(data):
            data[at] = rng.randrange(256)
        elif action == 1:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
        elif action == 2:
            del data[at : at + rng.randrange(1, 8)]
        else:
            del data[at:]
    return bytes(data)


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_read_alike(payload: bytes) -> None:
    assert_same(payload)
    assert_check_sure(payload)


@FUZZ
@given(messages)
def test_random_messages_read_alike(payload: bytes) -> None:
    assert_same(payload)


@FUZZ
@given(requests)
def test_random_requests_read_alike(payload: bytes) -> None:
    assert_same(payload)
    assert_check_sure(payload)


@FUZZ
@given(st.sampled_from(SEED_PAYLOADS), st.integers(0, 2**32), st.integers(1, 4))
def test_mutated_payloads_read_alike(payload: bytes, seed: int, edits: int) -> None:
    mutated = mutate(payload, seed, edits)
    assert_same(mutated)
    assert_check_sure(mutated)


def test_groups_nest_to_protobufs_limit_in_both() -> None:
    for depth in (99, 100, 101):
        assert_same(b"\x13" * depth + b"\x14" * depth)
    assert assert_same(b"\x13" * 101 + b"\x14" * 101) is DecodeError


def test_both_fill_the_same_shape_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    fills: list[dict[Any, Any]] = []
    for native_enabled in (True, False):
        monkeypatch.setattr(otlp, "_FILLS", {})
        views_from_payload(sdk_payload(web_request), IngestCounts(), native_enabled)
        fills.append(otlp._FILLS)
    assert fills[0] == fills[1] and len(fills[0]) == 11


def test_shapes_seen_before_still_go_through_the_fills(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled reader remembers recent shape tuples, but _FILLS stays the cache: emptied,
    every shape goes to _fill again."""
    payload = sdk_payload(web_request)
    expected = assert_same(payload)
    monkeypatch.setattr(otlp, "_FILLS", {})
    calls: list[tuple[Any, ...]] = []
    fill = otlp._fill

    def counted(view: SpanView, shape: tuple[Any, ...]) -> tuple[tuple[str, Any], ...]:
        calls.append(shape)
        return fill(view, shape)

    monkeypatch.setattr(otlp, "_fill", counted)
    assert outcome(payload, True) == expected
    assert len(calls) == len(otlp._FILLS) == 11


def test_a_payload_of_many_empty_spans_is_read_alike() -> None:
    """Tiny spans, all malformed: the compiled reader's tables grow with what it keeps, not with
    what the payload claims."""
    spans = b"\x12\x00" * 50_000
    scope_spans = tagged(2, 2, varint(len(spans)) + spans)
    payload = tagged(1, 2, varint(len(scope_spans)) + scope_spans)
    assert assert_same(payload) == ([], {"views": 0, "malformed_spans": 50_000})


# -- otlp_check: the receiver's check of a trace request without parsing it --------------------------


def assert_check_sure(payload: bytes) -> bool:
    """The compiled check may say a payload is valid only when protobuf parses it; it may say
    False of a valid one (then the receiver parses it).  Its answer."""
    sure = checked_request(payload)
    if sure:
        ExportTraceServiceRequest.FromString(payload)  # must not raise
    return sure


def test_real_requests_are_checked_without_parsing() -> None:
    """SDK spans with every field the SDK writes (links, trace state, events, flags, scope
    version, schema URLs) and the corpus converted from OTLP/JSON: all sure, so none is parsed
    twice in the collector."""

    def linked(tracer: trace.Tracer) -> None:
        web_request(tracer)
        context = trace.SpanContext(7, 9, is_remote=True, trace_state=trace.TraceState([("k", "v")]))
        with tracer.start_as_current_span("linked", links=[Link(context, {"a": [1, 2]})]) as span:
            span.add_event("e", {"x": {"nested": "é"}.get("nested", "")})

    payloads = [sdk_payload(linked)]
    payloads += [otlp_json_to_request(path.read_bytes()).SerializeToString() for path in JSON_PAYLOADS]
    for payload in payloads:
        assert assert_check_sure(payload)
        # read without the reader's own check of the bytes: the same views
        counts = IngestCounts()
        views = views_from_payload(payload, counts, checked=True)
        assert ([slots(v) for v in views], counts.snapshot()) == outcome(payload, False)


def test_the_check_is_not_sure_of_what_protobuf_refuses_or_it_does_not_know() -> None:
    """Bad UTF-8 in an attribute key (a field analysis never reads), a truncated payload: not
    sure, and protobuf refuses them.  An unknown field or a nesting past the check's depth: not
    sure either, though protobuf takes them."""
    bad_key = tagged(1, 2, b"\xff")  # KeyValue.key
    resource = tagged(1, 2, varint(len(bad_key)) + bad_key)  # Resource.attributes
    bad = tagged(1, 2, varint(len(resource) + 2) + tagged(1, 2, varint(len(resource)) + resource))
    payload = sdk_payload(web_request)
    for refused in (bad, payload[:-3]):
        assert not assert_check_sure(refused)
        with pytest.raises(DecodeError):
            ExportTraceServiceRequest.FromString(refused)
    value = b""
    for _ in range(40):  # AnyValue.array_value > ArrayValue.values > AnyValue ...
        array = tagged(1, 2, varint(len(value)) + value)
        value = tagged(5, 2, varint(len(array)) + array)
    deep = tagged(2, 2, varint(len(value)) + value)  # KeyValue.value
    for _ in range(3):  # in Resource.attributes, ResourceSpans.resource, the request's resource_spans
        deep = tagged(1, 2, varint(len(deep)) + deep)
    for taken in (payload + tagged(99, 0, b"\x01"), deep):
        ExportTraceServiceRequest.FromString(taken)
        assert not checked_request(taken)
