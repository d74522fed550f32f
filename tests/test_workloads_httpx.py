"""Real HTTP client workloads: requests and httpx (sync, and async where it is cheap), both
instrumented, calling a local service (tests/apps/items_service.py) served by a real server.

The client code lives in tests/apps/http_client.py, so a finding must name its line.  Each test
wraps the calls in a request span of the calling service ("GET /dashboard"), as a web framework
would; the service itself is not instrumented, so the only spans are the client's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import requests
from apps import http_client, items_service
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from test_workloads import assert_points_at, findings_of_trace, hex_id, only, spans_of_trace

if TYPE_CHECKING:
    from conftest import OTel

F = "otel_apm.finding."
ENDPOINT = "GET /dashboard"
ITEMS = [items_service.item(i) for i in range(1, http_client.ITEMS + 1)]


@dataclass
class Client:
    """One instrumented HTTP client library, pointed at the local service."""

    otel: OTel
    library: str  # "requests" or "httpx"
    base: str
    session: Any  # requests.Session or httpx.Client

    def run(self, workload: Callable[..., Any]) -> tuple[Any, ReadableSpan, list[ReadableSpan]]:
        """``workload(session, base)`` inside the dashboard's request span: (its result, the
        request span, the HTTP client spans under it in start order)."""
        with self.otel.tracer.start_as_current_span(
            ENDPOINT,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "GET", "http.route": "/dashboard"},
        ) as root:
            result = workload(self.session, self.base)
        trace_id = root.get_span_context().trace_id
        spans = spans_of_trace(self.otel, trace_id)
        exported = only([s for s in spans if s.context.span_id == root.get_span_context().span_id])
        return result, exported, [s for s in spans if s.kind is SpanKind.CLIENT]

    def findings(self, root: ReadableSpan, finding_type: str) -> list[dict[str, Any]]:
        return findings_of_trace(self.otel, root.context.trace_id, finding_type)

    def workload(self, name: str) -> Callable[..., Any]:
        """The workload ``name`` written with this client library."""
        function: Callable[..., Any] = getattr(
            http_client, name if self.library == "requests" else "httpx_" + name
        )
        return function


StartClient = Callable[["OTel"], Client]


@pytest.fixture(params=["requests", "httpx"])
def start(
    request: pytest.FixtureRequest, instrument: Callable[..., None], serve_wsgi: Callable[[Any], str]
) -> Iterator[StartClient]:
    """``start(otel)``: the service served, the client library instrumented into ``otel``."""
    library: str = request.param
    sessions: list[Any] = []

    def run(otel: OTel) -> Client:
        base = serve_wsgi(items_service.app)
        if library == "requests":
            from opentelemetry.instrumentation.requests import RequestsInstrumentor

            instrument(
                RequestsInstrumentor(),
                tracer_provider=otel.tracer_provider,
                response_hook=http_client.requests_body_size,
            )
            session: Any = requests.Session()
        else:
            from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

            instrument(
                HTTPXClientInstrumentor(),
                tracer_provider=otel.tracer_provider,
                response_hook=http_client.httpx_body_size,
            )
            session = httpx.Client(timeout=10)
        sessions.append(session)
        return Client(otel, library, base, session)

    yield run
    for session in sessions:
        session.close()


# -- N+1 API calls -----------------------------------------------------------------------------------


def test_n_plus_one_api_calls(otel: OTel, start: StartClient) -> None:
    client = start(otel)
    workload = client.workload("items_one_by_one")
    found, root, calls = client.run(workload)
    assert found == ITEMS
    assert len(calls) == http_client.ITEMS

    attrs = only(client.findings(root, "n_plus_one_api_call"))
    assert attrs[F + "count"] == http_client.ITEMS
    assert attrs[F + "span_ids"] == [hex_id(s) for s in calls]
    assert attrs[F + "endpoint"] == ENDPOINT
    assert attrs[F + "evidence.http.method"] == "GET"
    assert attrs[F + "evidence.url.template"] == client.base + "/items/{id}"
    assert_points_at(attrs, workload, "# N+1 API call")
    # A loop of one URL template is the N+1's, not also a run of consecutive calls.
    assert client.findings(root, "consecutive_http_calls") == []


def test_a_batch_call_is_no_n_plus_one(otel: OTel, start: StartClient) -> None:
    client = start(otel)
    found, _, calls = client.run(client.workload("items_in_one_batch"))
    assert found == ITEMS
    assert len(calls) == 1
    assert otel.events("n_plus_one_api_call") == []


def test_n_plus_one_api_calls_with_the_async_httpx_client(
    otel: OTel, instrument: Callable[..., None], serve_wsgi: Callable[[Any], str]
) -> None:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    base = serve_wsgi(items_service.app)
    instrument(HTTPXClientInstrumentor(), tracer_provider=otel.tracer_provider)

    async def dashboard() -> tuple[list[Any], int]:
        with otel.tracer.start_as_current_span(ENDPOINT, kind=SpanKind.SERVER) as root:
            async with httpx.AsyncClient(timeout=10) as session:
                found = await http_client.httpx_async_items_one_by_one(session, base)
        return found, root.get_span_context().trace_id

    found, trace_id = asyncio.run(dashboard())
    assert found == ITEMS
    calls = [s for s in spans_of_trace(otel, trace_id) if s.kind is SpanKind.CLIENT]
    assert len(calls) == http_client.ITEMS
    attrs = only(findings_of_trace(otel, trace_id, "n_plus_one_api_call"))
    assert attrs[F + "count"] == http_client.ITEMS
    assert attrs[F + "span_ids"] == [hex_id(s) for s in calls]
    assert attrs[F + "evidence.url.template"] == base + "/items/{id}"
    assert_points_at(attrs, http_client.httpx_async_items_one_by_one, "# N+1 API call")


# -- consecutive calls -------------------------------------------------------------------------------


def test_consecutive_http_calls(otel: OTel, start: StartClient) -> None:
    client = start(otel)
    workload = client.workload("profile_then_orders")
    found, root, calls = client.run(workload)
    assert found == [{"name": "profile"}, {"name": "orders"}]
    assert len(calls) == 2
    assert (calls[1].start_time or 0) >= (calls[0].end_time or 0)  # one after the other

    attrs = only(client.findings(root, "consecutive_http_calls"))
    assert attrs[F + "count"] == 2
    assert attrs[F + "span_ids"] == [hex_id(s) for s in calls]
    assert attrs[F + "endpoint"] == ENDPOINT
    assert_points_at(attrs, workload, "# first sequential call")


def test_concurrent_http_calls_are_not_consecutive(otel: OTel, start: StartClient) -> None:
    client = start(otel)
    found, root, calls = client.run(http_client.profile_and_orders_at_once)  # either client
    assert found == [{"name": "profile"}, {"name": "orders"}]
    assert len(calls) == 2
    assert {s.parent.span_id for s in calls if s.parent} == {root.context.span_id}
    assert otel.events("consecutive_http_calls") == []


def test_concurrent_async_httpx_calls_are_not_consecutive(
    otel: OTel, instrument: Callable[..., None], serve_wsgi: Callable[[Any], str]
) -> None:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    base = serve_wsgi(items_service.app)
    instrument(HTTPXClientInstrumentor(), tracer_provider=otel.tracer_provider)

    async def dashboard() -> tuple[list[Any], int, int]:
        with otel.tracer.start_as_current_span(ENDPOINT, kind=SpanKind.SERVER) as root:
            async with httpx.AsyncClient(timeout=10) as session:
                found = await http_client.httpx_async_profile_and_orders_at_once(session, base)
        ctx = root.get_span_context()
        return found, ctx.trace_id, ctx.span_id

    found, trace_id, root_id = asyncio.run(dashboard())
    assert found == [{"name": "profile"}, {"name": "orders"}]
    calls = [s for s in spans_of_trace(otel, trace_id) if s.kind is SpanKind.CLIENT]
    assert len(calls) == 2
    assert {s.parent.span_id for s in calls if s.parent} == {root_id}
    assert otel.events("consecutive_http_calls") == []


# -- large payloads -----------------------------------------------------------------------------------


def test_large_response_body(otel: OTel, start: StartClient) -> None:
    client = start(otel)
    workload = client.workload("export")
    size, root, calls = client.run(workload)
    assert size == items_service.EXPORT_BYTES
    call = only(calls)
    # Set by the application's response hook: neither instrumentation records body sizes.
    assert (call.attributes or {})[http_client.RESPONSE_BODY_SIZE] == items_service.EXPORT_BYTES

    attrs = only(client.findings(root, "large_payload"))
    assert attrs[F + "count"] == 1
    assert attrs[F + "span_ids"] == [hex_id(call)]
    assert attrs[F + "endpoint"] == ENDPOINT
    assert_points_at(attrs, workload, "# large download")


def test_small_responses_are_not_large(otel: OTel, start: StartClient) -> None:
    client = start(otel)
    _, _, calls = client.run(client.workload("items_in_one_batch"))
    assert (only(calls).attributes or {})[http_client.RESPONSE_BODY_SIZE] < 1000
    assert otel.events("large_payload") == []
