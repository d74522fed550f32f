"""The receivers against bad input, over real sockets: every refusal is the one the OTLP
specification (or HTTP) names, carries a message, and leaves the collector serving."""

from __future__ import annotations

import gzip
import json
import socket
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
import requests
from google.rpc import status_pb2  # type: ignore[import-untyped, unused-ignore]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from otlp_sink import OTLPSink, span_ids
from test_collector import (
    LOGS,
    METRICS,
    TRACES,
    Collector,
    collector_config,
    raw_grpc,
    spans_request,
    start_collector,
)

from otel_apm.collector.forwarder import Signal
from otel_apm.collector.receivers import KINDS
from otel_apm.collector.service import CollectorService

__all__ = ["start_collector"]  # the fixture, imported for these tests

PROTOBUF = {"Content-Type": "application/x-protobuf"}
VALID = spans_request((b"\x01" * 16, b"\x02" * 8, b"")).SerializeToString()


@pytest.fixture
def col(start_collector: Callable[..., Collector]) -> Collector:
    """A collector with small limits: 64 KiB bodies over HTTP, 64 KiB messages over gRPC,
    256 KiB once decompressed; no downstream."""
    return start_collector(
        None,
        receivers__http__max_request_body_size_mib=1 / 16,
        receivers__http__max_decompressed_size_mib=1 / 4,
        receivers__grpc__max_recv_msg_size_mib=1 / 16,
    )


def post(col: Collector, path: str, body: bytes, **headers: str) -> requests.Response:
    return requests.post(col.http_url + path, data=body, headers={**PROTOBUF, **headers}, timeout=10)


def status_of(response: requests.Response) -> status_pb2.Status:
    """The google.rpc.Status an OTLP/HTTP error body carries, in the request's content type."""
    if response.headers["Content-Type"] == "application/json":
        doc = response.json()
        return status_pb2.Status(code=doc.get("code", 0), message=doc.get("message", ""))
    return status_pb2.Status.FromString(response.content)


def still_serving(col: Collector) -> None:
    assert post(col, "/v1/traces", VALID).status_code == 200
    code, error, _ = raw_grpc(col.grpc_address, TRACES, VALID)
    assert code == grpc.StatusCode.OK, error


# -- HTTP ---------------------------------------------------------------------------------------------


def test_unknown_path_is_404_and_other_methods_405(col: Collector) -> None:
    r = post(col, "/v1/spans", VALID)
    assert r.status_code == 404
    assert "POST to /v1/traces, /v1/logs, /v1/metrics" in r.text
    r = requests.get(col.http_url + "/v1/traces", timeout=10)
    assert r.status_code == 405
    assert r.headers["Allow"] == "POST"
    assert requests.put(col.http_url + "/v1/logs", data=b"", timeout=10).status_code == 405
    assert requests.get(col.http_url + "/", timeout=10).status_code == 404
    still_serving(col)


def test_wrong_content_type_or_encoding_is_415(col: Collector) -> None:
    r = post(col, "/v1/traces", VALID, **{"Content-Type": "text/plain"})
    assert r.status_code == 415
    assert "application/x-protobuf or application/json" in r.text
    r = post(col, "/v1/traces", VALID, **{"Content-Encoding": "br"})
    assert r.status_code == 415
    assert "Content-Encoding 'br'" in status_of(r).message
    still_serving(col)


def test_malformed_protobuf_is_400_with_a_status_in_protobuf(col: Collector) -> None:
    r = post(col, "/v1/traces", b"\x0a\xff\xff\xff\xff\x0f garbage")
    assert r.status_code == 400
    assert r.headers["Content-Type"] == "application/x-protobuf"
    status = status_of(r)
    assert status.code == 3  # INVALID_ARGUMENT
    assert "cannot decode the traces request as protobuf" in status.message
    assert col.value('requests_refused_total{reason="invalid"}') == 1


def test_truncated_protobuf_is_400(col: Collector) -> None:
    request = spans_request((b"\x01" * 16, b"\x02" * 8, b""), service="a-service-name-long-enough-to-cut")
    body = request.SerializeToString()
    r = post(col, "/v1/traces", body[: len(body) // 2])
    assert r.status_code == 400
    assert "protobuf" in status_of(r).message


def test_malformed_json_is_400_answered_in_json(col: Collector) -> None:
    for body in (
        b"{not json",
        b"[1, 2]",
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 5}]}]}]}',
    ):
        r = requests.post(
            col.http_url + "/v1/traces", data=body, headers={"Content-Type": "application/json"}, timeout=10
        )
        assert r.status_code == 400, body
        assert r.headers["Content-Type"] == "application/json"
        doc = r.json()
        assert doc["code"] == 3
        assert "OTLP/JSON" in doc["message"]
    still_serving(col)


def test_body_cut_short_by_the_client_gets_no_answer_and_harms_nothing(col: Collector) -> None:
    with socket.create_connection(("127.0.0.1", col.service.http_port), timeout=10) as s:
        s.sendall(
            b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            b"Content-Length: 1000\r\n\r\n" + VALID
        )
        s.shutdown(socket.SHUT_WR)
        assert s.recv(1024) == b""  # closed without a response: there is no whole request to answer
    still_serving(col)
    assert col.value("spans_received_total") == 2  # only still_serving's two spans


def test_oversized_body_is_413(col: Collector) -> None:
    big = spans_request(
        *[(b"\x01" * 16, i.to_bytes(8, "big"), b"") for i in range(1, 3000)]
    ).SerializeToString()
    assert len(big) > 64 * 1024
    r = post(col, "/v1/traces", big)
    assert r.status_code == 413
    assert f"exceeds {64 * 1024} bytes" in status_of(r).message
    assert col.value('requests_refused_total{reason="too_large"}') == 1
    still_serving(col)


def test_gzip_bomb_is_413_without_inflating_it(col: Collector) -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))  # 64 MiB of zeros in about 64 KiB
    assert len(bomb) < 64 * 1024
    r = post(col, "/v1/traces", bomb, **{"Content-Encoding": "gzip"})
    assert r.status_code == 413
    assert f"decompressed body exceeds {256 * 1024} bytes" in status_of(r).message
    deflate_bomb = zlib.compress(b"\0" * (8 * 1024 * 1024))
    r = post(col, "/v1/logs", deflate_bomb, **{"Content-Encoding": "deflate"})
    assert r.status_code == 413
    still_serving(col)


def test_corrupt_or_truncated_gzip_is_400(col: Collector) -> None:
    r = post(col, "/v1/traces", b"plain text, not gzip", **{"Content-Encoding": "gzip"})
    assert r.status_code == 400
    assert "not valid gzip" in status_of(r).message
    damaged = bytearray(gzip.compress(VALID))
    damaged[-6] ^= 0xFF  # the CRC no longer matches
    r = post(col, "/v1/traces", bytes(damaged), **{"Content-Encoding": "gzip"})
    assert r.status_code == 400
    whole = gzip.compress(VALID)
    r = post(col, "/v1/traces", whole[: len(whole) - 12], **{"Content-Encoding": "gzip"})
    assert r.status_code == 400
    assert "truncated" in status_of(r).message


def test_gzip_and_chunked_bodies_are_accepted(col: Collector) -> None:
    two_members = gzip.compress(VALID[:10]) + gzip.compress(VALID[10:])
    assert post(col, "/v1/traces", two_members, **{"Content-Encoding": "gzip"}).status_code == 200

    def chunks() -> Iterator[bytes]:
        yield VALID[:7]
        yield VALID[7:]

    r = requests.post(col.http_url + "/v1/traces", data=chunks(), headers=PROTOBUF, timeout=10)
    assert r.status_code == 200
    assert r.request.headers["Transfer-Encoding"] == "chunked"
    assert col.value("spans_received_total") == 2


# -- gRPC ---------------------------------------------------------------------------------------------


def test_grpc_malformed_request_is_invalid_argument(col: Collector) -> None:
    for method in (TRACES, LOGS, METRICS):
        code, error, _ = raw_grpc(col.grpc_address, method, b"\x0a\xff\xff\xff\xff\x0f garbage")
        assert code == grpc.StatusCode.INVALID_ARGUMENT, method
        assert "cannot decode" in error.details()
    still_serving(col)


def test_grpc_oversized_message_is_resource_exhausted(col: Collector) -> None:
    big = spans_request(
        *[(b"\x01" * 16, i.to_bytes(8, "big"), b"") for i in range(1, 3000)]
    ).SerializeToString()
    code, error, _ = raw_grpc(col.grpc_address, TRACES, big)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in error.details()
    # compressed to a few kB on the wire, it is still too large once decompressed
    code, _, _ = raw_grpc(col.grpc_address, TRACES, big, compression=grpc.Compression.Gzip)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    still_serving(col)


def test_grpc_unknown_method_is_unimplemented(col: Collector) -> None:
    code, _, _ = raw_grpc(
        col.grpc_address, "/opentelemetry.proto.collector.profiles.v1.ProfilesService/Export", b""
    )
    assert code == grpc.StatusCode.UNIMPLEMENTED


# -- security -----------------------------------------------------------------------------------------


def test_bearer_token_is_required_on_both_receivers(start_collector: Callable[..., Collector]) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from test_collector import _finished_batches

    with OTLPSink() as sink:
        col = start_collector(sink.endpoint, receivers__auth__bearer_token="s3cret")
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
            r = post(col, "/v1/traces", VALID, **headers)
            assert r.status_code == 401
            assert r.headers["WWW-Authenticate"] == "Bearer"
        code, error, _ = raw_grpc(col.grpc_address, TRACES, VALID)
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert error.details() == "missing or invalid bearer token"
        code, _, _ = raw_grpc(col.grpc_address, TRACES, VALID, metadata=(("authorization", "Bearer nope"),))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert col.value('requests_refused_total{reason="unauthenticated"}') == 5
        assert not sink.spans()

        # a refused body is read and dropped, so the client gets the 401, not a reset, and can
        # go on with the same connection
        with requests.Session() as session:
            body = b"\0" * (60 * 1024)
            r = session.post(col.http_url + "/v1/traces", data=body, headers=PROTOBUF, timeout=10)
            assert r.status_code == 401
            assert r.headers.get("Connection") != "close"
            r = session.post(
                col.http_url + "/v1/traces",
                data=VALID,
                headers={**PROTOBUF, "Authorization": "Bearer s3cret"},
            )
            assert r.status_code == 200
        sink.wait_for(lambda: sink.spans())
        sink.clear()

        (batch,) = _finished_batches(1)
        grpc_exporter = OTLPSpanExporter(
            endpoint=col.grpc_endpoint, insecure=True, headers={"authorization": "Bearer s3cret"}
        )
        http_exporter: SpanExporter = HttpSpanExporter(
            endpoint=col.http_url + "/v1/traces", headers={"Authorization": "Bearer s3cret"}
        )
        assert grpc_exporter.export(batch[:4]) == SpanExportResult.SUCCESS
        assert http_exporter.export(batch[4:]) == SpanExportResult.SUCCESS
        sink.wait_for(lambda: span_ids(sink.spans()) == {format(s.context.span_id, "016x") for s in batch})
        grpc_exporter.shutdown()
        http_exporter.shutdown()
        assert col.shutdown()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for localhost and 127.0.0.1, made by the openssl command."""
    import shutil
    import subprocess

    from conftest import in_ci

    openssl = shutil.which("openssl")
    if openssl is None:
        reason = "the openssl command is needed to make a test certificate"
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("tls")
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_on_both_receivers(
    start_collector: Callable[..., Collector], certificate: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from test_collector import _finished_batches

    cert, key = certificate
    # requests lets these variables override a session's own CA file (the HTTP exporter's)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with OTLPSink() as sink:
        col = start_collector(sink.endpoint, receivers__tls__cert_file=cert, receivers__tls__key_file=key)
        https = f"https://localhost:{col.service.http_port}"
        (batch,) = _finished_batches(1)
        with open(cert, "rb") as fh:
            credentials = grpc.ssl_channel_credentials(root_certificates=fh.read())
        grpc_exporter = OTLPSpanExporter(
            endpoint=f"https://localhost:{col.service.grpc_port}", credentials=credentials
        )
        http_exporter: SpanExporter = HttpSpanExporter(endpoint=f"{https}/v1/traces", certificate_file=cert)
        assert grpc_exporter.export(batch[:4]) == SpanExportResult.SUCCESS
        assert http_exporter.export(batch[4:]) == SpanExportResult.SUCCESS
        sink.wait_for(lambda: span_ids(sink.spans()) == {format(s.context.span_id, "016x") for s in batch})
        grpc_exporter.shutdown()
        http_exporter.shutdown()

        # plaintext against the TLS ports fails; a client that does not trust the certificate too
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.post(
                f"http://localhost:{col.service.http_port}/v1/traces", data=VALID, headers=PROTOBUF, timeout=5
            )
        with pytest.raises(requests.exceptions.SSLError):
            requests.post(f"{https}/v1/traces", data=VALID, headers=PROTOBUF, timeout=5)
        code, _, _ = raw_grpc(f"localhost:{col.service.grpc_port}", TRACES, VALID)
        assert code == grpc.StatusCode.UNAVAILABLE
        r = requests.post(f"{https}/v1/traces", data=VALID, headers=PROTOBUF, timeout=5, verify=cert)
        assert r.status_code == 200
        assert col.shutdown()


# -- fuzzing ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_target() -> Iterator[Collector]:
    """One collector for every example (no downstream: what matters is the answer)."""
    service = CollectorService(collector_config(None)).start()
    yield Collector(service)
    service.shutdown(5)


_VALID_FUZZ = spans_request(
    (b"\x01" * 16, b"\x02" * 8, b""),
    (b"\x01" * 16, b"\x03" * 8, b"\x02" * 8),
    service="fuzz",
).SerializeToString()


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    """A valid request with a few bytes changed, cut short, and a random tail."""
    body = bytearray(_VALID_FUZZ)
    for _ in range(draw(st.integers(0, 4))):
        body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(body)))
    return bytes(body[:cut]) + draw(st.binary(max_size=16))


def _mutations() -> st.SearchStrategy[bytes]:
    """Random bytes, and valid requests damaged."""
    return st.one_of(st.binary(max_size=300), _mutated())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_mutations(), signal=st.sampled_from(["traces", "logs", "metrics"]))
def test_fuzzed_http_protobuf_bodies_get_200_or_400(
    fuzz_target: Collector, body: bytes, signal: Signal
) -> None:
    """The answer is 400 exactly when the body is not a valid request (protobuf's own parser
    decides), else 200; never a 5xx, never a dropped connection."""
    r = post(fuzz_target, f"/v1/{signal}", body)
    if _parses(signal, body):
        assert r.status_code == 200, r.content
        KINDS[signal].response.FromString(r.content)
    else:
        assert r.status_code == 400, r.content
        assert status_of(r).message


def _parses(signal: Signal, body: bytes) -> bool:
    try:
        KINDS[signal].request.FromString(body)
    except Exception:
        return False
    return True


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    doc=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=40),
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["resourceSpans", "scopeSpans", "spans", "traceId", "spanId", "parentSpanId", "name", "kind",
                 "attributes", "key", "value", "stringValue", "startTimeUnixNano", "resource", "x"]
            ),
            children,
            max_size=5,
        ),
        max_leaves=20,
    )
)  # fmt: skip
def test_fuzzed_otlp_json_gets_200_or_400(fuzz_target: Collector, doc: Any) -> None:
    r = requests.post(
        fuzz_target.http_url + "/v1/traces",
        data=json.dumps(doc),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code in (200, 400), r.text
    assert r.headers["Content-Type"] == "application/json"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_mutations(), method=st.sampled_from([TRACES, LOGS, METRICS]))
def test_fuzzed_grpc_requests_get_ok_or_invalid_argument(
    fuzz_target: Collector, body: bytes, method: str
) -> None:
    code, error, _ = raw_grpc(fuzz_target.grpc_address, method, body)
    signals: dict[str, Signal] = {TRACES: "traces", LOGS: "logs", METRICS: "metrics"}
    signal = signals[method]
    expected = grpc.StatusCode.OK if _parses(signal, body) else grpc.StatusCode.INVALID_ARGUMENT
    assert code == expected, error


def test_after_fuzzing_nothing_of_ours_failed(fuzz_target: Collector) -> None:
    """Runs after the fuzz tests (file order): ingest and analysis never raised on what was accepted."""
    still_serving(fuzz_target)
    assert fuzz_target.value("analysis_errors_total") == 0
