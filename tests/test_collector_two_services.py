"""The collector between two real services in their own processes (tests/apps/two_services.py).

    test -> storefront (A, OTLP/gRPC)  --requests x CALLS-->  shop (B, OTLP/HTTP protobuf)
                  \\                                         /   N+1 queries on PostgreSQL
                   `--------> collector (in-process) <-------'
                                   |  spans, unchanged; findings as events
                                   v
                               OTLPSink (downstream)

Each service configures its SDK by hand, with the real OTLP exporter and no APM processor: what
is found, the collector finds, by putting the trace together across both services.  The test
drives ``GET /catalog`` on the storefront REQUESTS times; each request calls the shop's
``GET /authors`` CALLS times, and each of those loads AUTHORS authors and then the books of
each, one query per author.

The whole run (services, collector, sink) happens once per module in the ``run`` fixture; it
ends with the collector's shutdown, which analyzes what is still in flight and flushes the
findings downstream, so the tests read final results.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
from conftest import clean_environ
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from otlp_sink import OTLPSink, attributes
from test_collector import Collector, collector_config, finding_events

from otel_apm.collector.service import CollectorService

ROOT = Path(__file__).resolve().parent.parent
APP = Path(__file__).resolve().parent / "apps" / "two_services.py"

AUTHORS = 7  # the N+1 in the shop: 1 query for the authors, then 1 per author
BOOKS_PER_AUTHOR = 2
CALLS = 6  # the storefront's calls to the shop in one request: the N+1 of API calls
REQUESTS = 2  # requests the test sends the storefront, one trace each
STARTUP_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
WAIT_S = 30  # bound on each wait for the collector or the sink


# -- the services as processes ---------------------------------------------------------------------


def _pump(stream: IO[str], lines: list[str], out: queue.Queue[str] | None) -> None:
    for line in stream:
        lines.append(line)
        if out is not None:
            out.put(line)


@dataclass
class Service:
    """One ``two_services.py`` process: started, ready on a port, stopped by closing its stdin."""

    name: str
    proc: subprocess.Popen[str]
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    port: int = 0
    spans: list[dict[str, Any]] = field(default_factory=list)
    _lines: queue.Queue[str] = field(default_factory=queue.Queue)
    _readers: list[threading.Thread] = field(default_factory=list)

    @classmethod
    def start(cls, name: str, *args: str) -> Service:
        env = clean_environ()
        env.update(OTEL_BSP_SCHEDULE_DELAY="100", PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            [sys.executable, str(APP), name, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        service = cls(name, proc)
        assert proc.stdout is not None and proc.stderr is not None
        for stream, lines, out in (
            (proc.stdout, service.stdout, service._lines),
            (proc.stderr, service.stderr, None),
        ):
            reader = threading.Thread(target=_pump, args=(stream, lines, out), daemon=True)
            reader.start()
            service._readers.append(reader)
        return service

    def output(self) -> str:
        out, err = "".join(self.stdout), "".join(self.stderr)
        return f"{self.name} exit {self.proc.poll()}; stdout:\n{out}\nstderr:\n{err}"

    def wait_ready(self) -> Service:
        try:
            line = self._lines.get(timeout=STARTUP_TIMEOUT_S)
        except queue.Empty:
            raise AssertionError(
                f"{self.name} not ready within {STARTUP_TIMEOUT_S} s; {self.output()}"
            ) from None
        report = json.loads(line)
        assert report.get("ready") is True, self.output()
        self.port = int(report["port"])
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Close stdin: the service stops serving, exports what is left, prints its spans, exits."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            code = self.proc.wait(STOP_TIMEOUT_S)
        finally:
            self.kill()
        assert code == 0, self.output()
        reports = [json.loads(line) for line in self.stdout if line.startswith("{")]
        assert reports and "spans" in reports[-1], self.output()
        self.spans = reports[-1]["spans"]

    def kill(self) -> None:
        """Whatever happened, the process is gone after this (idempotent)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(STOP_TIMEOUT_S)
        for reader in self._readers:
            reader.join(5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()

    def span_ids(self) -> set[str]:
        return {s["span_id"] for s in self.spans}


# -- the database --------------------------------------------------------------------------------


def _schema(stack: ExitStack, postgres_url: str) -> str:
    """A fresh schema with AUTHORS authors of BOOKS_PER_AUTHOR books, dropped when ``stack`` closes."""
    from sqlalchemy import create_engine, text

    from otel_apm.demo.app import add_authors

    schema = f"otel_apm_two_services_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url)
    stack.callback(admin.dispose)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))

    stack.callback(drop)
    engine = create_engine(postgres_url, connect_args={"options": f"-csearch_path={schema}"})
    try:
        add_authors(engine, AUTHORS, BOOKS_PER_AUTHOR)
    finally:
        engine.dispose()
    return schema


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Run:
    sink: OTLPSink
    collector: Collector
    storefront: Service
    shop: Service
    responses: list[dict[str, Any]]
    collector_stopped: bool

    def trace_ids(self) -> set[str]:
        return {r["trace_id"] for r in self.responses}


@pytest.fixture(scope="module")
def run(postgres_url: str) -> Iterator[Run]:
    with ExitStack() as stack:
        schema = _schema(stack, postgres_url)
        sink = stack.enter_context(OTLPSink())
        service = CollectorService(
            collector_config(
                sink.endpoint,
                assembly__idle_timeout_s=1,
                assembly__max_wait_s=60,
                # only the N+1s are under test: no slow-request or slow-query findings on a slow machine
                analysis__slow_request_threshold_ms=600_000,
                analysis__slow_query_threshold_ms=600_000,
            )
        ).start()
        stack.callback(service.shutdown, 5)  # a no-op once stopped below
        collector = Collector(service)

        shop = Service.start(
            "shop",
            "--endpoint",
            collector.http_url,
            "--protocol",
            "http/protobuf",
            "--db-url",
            postgres_url,
            "--schema",
            schema,
        )
        stack.callback(shop.kill)
        shop.wait_ready()
        storefront = Service.start(
            "storefront",
            "--endpoint",
            collector.grpc_endpoint,
            "--protocol",
            "grpc",
            "--shop-url",
            shop.url,
            "--calls",
            str(CALLS),
        )
        stack.callback(storefront.kill)
        storefront.wait_ready()

        responses = []
        for _ in range(REQUESTS):  # a plain, uninstrumented client: each request starts a trace
            with urllib.request.urlopen(f"{storefront.url}/catalog", timeout=60) as response:
                assert response.status == 200
                responses.append(json.loads(response.read()))
        storefront.stop()
        shop.stop()

        produced = storefront.span_ids() | shop.span_ids()
        sink.wait_for(
            lambda: {s.span_id.hex() for _, s in sink.spans()} >= produced,
            timeout=WAIT_S,
            message="every span of both services forwarded",
        )
        sink.wait_for(
            lambda: collector.value("traces_analyzed_total") >= REQUESTS,
            timeout=WAIT_S,
            message=f"{REQUESTS} traces analyzed",
        )
        stopped = service.shutdown(20)  # analyzes what is left, flushes the findings downstream
        yield Run(sink, collector, storefront, shop, responses, stopped)


# -- the tests ---------------------------------------------------------------------------------------


def _statement(span: Span) -> str:
    attrs = attributes(span.attributes)
    return " ".join(str(attrs.get("db.query.text") or attrs.get("db.statement") or "").split())


def _by_id(run: Run) -> dict[str, dict[str, Any]]:
    return {s["span_id"]: s for s in run.storefront.spans + run.shop.spans}


def test_every_span_of_both_services_is_forwarded_in_one_trace_per_request(run: Run) -> None:
    assert [(r["calls"], r["authors"]) for r in run.responses] == [(CALLS, AUTHORS)] * REQUESTS
    assert len(run.trace_ids()) == REQUESTS

    received = {span.span_id.hex(): (resource, span) for resource, span in run.sink.spans()}
    produced = _by_id(run)
    assert set(received) == set(produced)  # nothing lost, nothing invented
    assert len(run.sink.spans()) == len(produced)  # nor forwarded twice
    for ids, service in ((run.storefront.span_ids(), "storefront"), (run.shop.span_ids(), "shop")):
        assert {received[i][0].get("service.name") for i in ids} == {service}
    assert {s.trace_id.hex() for _, s in received.values()} == run.trace_ids()

    # what each service made: the storefront a SERVER span and CALLS CLIENT spans a request; the
    # shop, for each call, a SERVER span over 1 query for the authors and AUTHORS for their books
    # (and the instrumentation's span for taking a connection from the pool, "connect")
    storefront_kinds = sorted(s["kind"] for s in run.storefront.spans)
    assert storefront_kinds == sorted(["SERVER"] * REQUESTS + ["CLIENT"] * REQUESTS * CALLS)
    shop_servers = [s for s in run.shop.spans if s["kind"] == "SERVER"]
    assert len(shop_servers) == REQUESTS * CALLS
    assert {s["name"] for s in shop_servers} == {"GET /authors"}
    for server in shop_servers:
        children = [s for _, s in received.values() if s.parent_span_id.hex() == server["span_id"]]
        statements = [_statement(s) for s in children if s.name != "connect"]
        assert len(children) - len(statements) <= 1
        assert sum("FROM authors" in text for text in statements) == 1, statements
        assert sum("FROM books" in text for text in statements) == AUTHORS, statements
        assert len(statements) == 1 + AUTHORS, statements

    # the context crossed the process boundary: the shop's requests are children of the
    # storefront's calls, in the storefront request's trace
    for server in shop_servers:
        parent = produced[server["parent_id"]]
        assert (parent["kind"], parent["trace_id"]) == ("CLIENT", server["trace_id"])
        assert parent["span_id"] in run.storefront.span_ids()
    roots = [s for s in produced.values() if s["parent_id"] is None]
    assert sorted(s["name"] for s in roots) == ["GET /catalog"] * REQUESTS
    assert {s["trace_id"] for s in roots} == run.trace_ids()


def test_the_collector_reports_the_shops_n_plus_one_in_the_storefronts_trace(run: Run) -> None:
    assert run.collector_stopped, "the collector did not stop within its deadline"
    events = finding_events(run.sink, "n_plus_one_query")
    assert len(events) == REQUESTS * CALLS, events  # one per call to the shop
    produced = _by_id(run)
    for event in events:
        assert event["_resource_service"] == "otel-apm-collector"
        assert event["otel_apm.finding.service"] == "shop"
        assert event["otel_apm.finding.endpoint"] == "GET /authors"
        assert event["otel_apm.finding.count"] == AUTHORS
        assert set(event["otel_apm.finding.services"]) >= {"storefront", "shop"}
        assert "books" in event["db.query.text"].lower()
        # the repeated queries: the shop's, all under one of its requests, in the event's trace
        spans = [produced[i] for i in event["otel_apm.finding.span_ids"]]
        assert len(spans) == AUTHORS
        assert {s["span_id"] for s in spans} <= run.shop.span_ids()
        assert {s["trace_id"] for s in spans} == {event["_trace_id"]}
        (parent,) = {s["parent_id"] for s in spans}
        assert produced[parent]["kind"] == "SERVER"
        assert produced[parent]["span_id"] in run.shop.span_ids()
    # each event is linked to the trace of the storefront request it happened in, CALLS each
    per_trace = sorted(e["_trace_id"] for e in events)
    assert per_trace == sorted(list(run.trace_ids()) * CALLS)
    # distinct occurrences of one problem: one fingerprint, no span reported twice
    assert len({e["otel_apm.finding.fingerprint"] for e in events}) == 1
    reported = [i for e in events for i in e["otel_apm.finding.span_ids"]]
    assert len(reported) == len(set(reported))

    col = run.collector
    assert col.value('findings_total{type="n_plus_one_query"}') == REQUESTS * CALLS
    assert col.value("traces_analyzed_total") == REQUESTS
    assert col.value("incomplete_traces_total") == 0
    assert col.value("late_spans_total") == 0
    assert col.value("analysis_errors_total") == 0
    records = run.sink.log_records()
    assert {r.trace_id.hex() for _, r in records if r.event_name == "otel_apm.finding"} == run.trace_ids()


def test_the_collector_reports_the_storefronts_n_plus_one_api_calls(run: Run) -> None:
    """The storefront's CALLS sequential ``GET {shop}/authors?shelf=N``: one finding a request."""
    events = finding_events(run.sink, "n_plus_one_api_call")
    assert len(events) == REQUESTS, events  # one per storefront request
    assert {e["_trace_id"] for e in events} == run.trace_ids()
    produced = _by_id(run)
    template = f"{run.shop.url}/authors?shelf=?"  # the shelf numbers are gone
    for event in events:
        assert event["_resource_service"] == "otel-apm-collector"
        assert event["otel_apm.finding.service"] == "storefront"
        assert event["otel_apm.finding.endpoint"] == "GET /catalog"
        assert event["otel_apm.finding.count"] == CALLS
        assert set(event["otel_apm.finding.services"]) >= {"storefront", "shop"}
        assert event["otel_apm.finding.evidence.http.method"] == "GET"
        assert event["otel_apm.finding.evidence.url.template"] == template
        assert event["otel_apm.finding.evidence.server.address"] == "127.0.0.1"
        assert event["otel_apm.finding.evidence.threshold"] == 5
        assert template in event["otel_apm.finding.title"]
        assert "batch endpoint" in event["otel_apm.finding.recommendation"]
        assert "db.query.text" not in event
        # no literal query value anywhere in the event
        assert not any("shelf=0" in str(v) or "shelf=1" in str(v) for v in event.values()), event
        # the repeated calls: the storefront's CLIENT spans, all under its one request span
        spans = [produced[i] for i in event["otel_apm.finding.span_ids"]]
        assert len(spans) == CALLS
        assert {s["span_id"] for s in spans} <= run.storefront.span_ids()
        assert {s["kind"] for s in spans} == {"CLIENT"}
        assert {s["trace_id"] for s in spans} == {event["_trace_id"]}
        (parent,) = {s["parent_id"] for s in spans}
        assert (produced[parent]["kind"], produced[parent]["name"]) == ("SERVER", "GET /catalog")
    assert len({e["otel_apm.finding.fingerprint"] for e in events}) == 1
    assert run.collector.value('findings_total{type="n_plus_one_api_call"}') == REQUESTS
