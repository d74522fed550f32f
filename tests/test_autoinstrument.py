"""End to end under ``opentelemetry-instrument``: the ``otel_apm`` configurator, the real SDK
set-up, the real SQLAlchemy instrumentation, and OTLP/gRPC exporters sending to a real receiver.

The app (tests/apps/nplusone_app.py) runs an N+1 under one request span; the sink must receive
its spans, the finding as an event (log record), the finding as a span event on the request,
and the analyzer's metrics.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import clean_environ
from otlp_sink import OTLPSink, attributes, data_points

from otel_apm.sql import parse_sql

ROOT = Path(__file__).resolve().parent.parent
APP = Path(__file__).resolve().parent / "apps" / "nplusone_app.py"
INSTRUMENT = Path(sys.executable).parent / "opentelemetry-instrument"
FINDING_EVENT = "otel_apm.finding"
N_BOOK_QUERIES = 8


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    report: dict[str, Any]


@pytest.fixture
def sink() -> Iterator[OTLPSink]:
    with OTLPSink() as s:
        yield s


def _run_app(sink: OTLPSink, tmp_path: Path, **extra_env: str) -> Run:
    assert INSTRUMENT.exists(), f"{INSTRUMENT} missing: install the package with its dependencies"
    # Only what the test sets: no OTEL_*/APM_* leaking in from the developer's shell or CI.
    env = clean_environ()
    env.update(
        OTEL_PYTHON_CONFIGURATOR="otel_apm",
        OTEL_EXPORTER_OTLP_ENDPOINT=sink.endpoint,
        OTEL_EXPORTER_OTLP_INSECURE="true",
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_SERVICE_NAME="nplusone-app",
        OTEL_METRIC_EXPORT_INTERVAL="500",
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_BLRP_SCHEDULE_DELAY="100",
        APM_CONSOLE_ENABLED="true",
    )
    env.update(extra_env)
    proc = subprocess.run(
        [str(INSTRUMENT), sys.executable, str(APP), str(tmp_path / "nplusone.db")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    report = json.loads(lines[-1]) if lines else {}
    return Run(proc.returncode, proc.stdout, proc.stderr, report)


def _findings(sink: OTLPSink) -> list[tuple[Any, dict[str, Any]]]:
    """(log record, its attributes) for every finding event the sink received."""
    return [
        (record, attributes(record.attributes))
        for _, record in sink.log_records()
        if record.event_name == FINDING_EVENT
    ]


def _n_plus_one(sink: OTLPSink) -> list[tuple[Any, dict[str, Any]]]:
    return [(r, a) for r, a in _findings(sink) if a.get("otel_apm.finding.type") == "n_plus_one_query"]


def _statement(span: Any) -> str:
    attrs = attributes(span.attributes)
    return str(attrs.get("db.query.text") or attrs.get("db.statement") or "")


def test_nplusone_app_exports_spans_findings_and_metrics(sink: OTLPSink, tmp_path: Path) -> None:
    run = _run_app(sink, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.report.get("provider") == "TracerProvider", (run.stdout, run.stderr)
    printed = set(run.report["span_ids"])
    assert run.report["root_span_id"] in printed
    assert run.report["titles"] == 16

    # Every span the app made reached the receiver, and nothing else did.
    sink.wait_for(lambda: {s.span_id.hex() for _, s in sink.spans()} >= printed, message="spans")
    received = {s.span_id.hex(): (res, s) for res, s in sink.spans()}
    assert set(received) == printed
    assert {res.get("service.name") for res, _ in received.values()} == {"nplusone-app"}

    _, root = received[run.report["root_span_id"]]
    assert root.name == "GET /authors"
    assert root.trace_id.hex() == run.report["trace_id"]
    assert not root.parent_span_id
    children = [s for _, s in received.values() if s.parent_span_id == root.span_id]
    book_queries = [s for s in children if "books" in _statement(s)]
    author_queries = [s for s in children if "FROM authors" in _statement(s)]
    assert len(book_queries) == N_BOOK_QUERIES, [_statement(s) for s in children]
    assert len(author_queries) == 1, [_statement(s) for s in children]

    # The finding as an event: a log record in the request's trace, pointing at the loop's query.
    records = sink.wait_for(lambda: _n_plus_one(sink), message="n_plus_one_query finding event")
    assert len(records) == 1, [a for _, a in records]
    record, attrs = records[0]
    assert attrs["otel_apm.finding.count"] == N_BOOK_QUERIES
    assert record.trace_id.hex() == run.report["trace_id"]
    assert record.span_id.hex() in {s.span_id.hex() for s in book_queries}
    assert attrs["otel_apm.finding.span_ids"] == sorted(
        (s.span_id.hex() for s in book_queries), key=lambda h: received[h][1].start_time_unix_nano
    )
    expected = parse_sql(_statement(book_queries[0]))
    assert attrs["db.query.text"] == expected.normalized
    assert attrs["db.query.text"] != _statement(book_queries[0])  # normalized, not the raw text
    assert attrs["otel_apm.finding.evidence.source.statement"] == (
        parse_sql(_statement(author_queries[0])).normalized
    )
    assert attrs["otel_apm.finding.endpoint"] == "GET /authors"
    assert attrs["otel_apm.finding.service"] == "nplusone-app"

    # The finding as a span event on the request span, as exported.
    events = [e for e in root.events if e.name == FINDING_EVENT]
    assert [attributes(e.attributes)["otel_apm.finding.type"] for e in events] == ["n_plus_one_query"]
    assert (
        attributes(events[0].attributes)["otel_apm.finding.fingerprint"]
        == (attrs["otel_apm.finding.fingerprint"])
    )

    # The analyzer's metrics.
    sink.wait_for(
        lambda: {"otel_apm.findings", "otel_apm.transaction.duration"} <= sink.metric_names(),
        message="otel_apm metrics",
    )
    finding_points = [
        attributes(p.attributes)
        for _, m in sink.metrics()
        if m.name == "otel_apm.findings"
        for p in data_points(m)
        if p.as_int >= 1
    ]
    series = {
        (p["otel_apm.finding.type"], p["otel_apm.service"], p["otel_apm.endpoint"]) for p in finding_points
    }
    assert {s for s in series if s[2] == "GET /authors"} == {
        ("n_plus_one_query", "nplusone-app", "GET /authors")
    }
    # Every other series is a finding reported as an event too: the app's schema set-up on a
    # stalled disk is a real slow query (seen: "CREATE <db path>" over 100 ms on a loaded host).
    sink.wait_for(
        lambda: (
            series
            <= {
                (a["otel_apm.finding.type"], a["otel_apm.finding.service"], a["otel_apm.finding.endpoint"])
                for _, a in _findings(sink)
            }
        ),
        message="a finding event for every otel_apm.findings series",
    )
    durations = [
        p
        for p in sink.data_points("otel_apm.transaction.duration")
        if attributes(p.attributes).get("otel_apm.endpoint") == "GET /authors"
    ]
    assert durations and all(p.count == 1 for p in durations), durations

    # The console line.
    console = [line for line in run.stderr.splitlines() if line.startswith("[otel-apm]")]
    assert any("n_plus_one_query" in line and run.report["trace_id"] in line for line in console), run.stderr


def test_invalid_apm_setting_stops_start_up(sink: OTLPSink, tmp_path: Path) -> None:
    """opentelemetry-instrument swallows configurator exceptions and would run the app with no
    telemetry; otel-apm stops the process instead, naming the variable and what it accepts."""
    run = _run_app(sink, tmp_path, APM_SLOW_QUERY_THRESHOLD_MS="abc")
    assert run.returncode == 2, run.stderr
    assert (
        "otel-apm: invalid configuration, not starting: APM_SLOW_QUERY_THRESHOLD_MS='abc': "
        "expected a number >= 0" in run.stderr
    ), run.stderr
    assert run.report == {}, run.stdout  # the app never ran
    assert not sink.spans()


def test_otel_sdk_disabled_turns_the_analyzer_off_too(sink: OTLPSink, tmp_path: Path) -> None:
    """OTEL_SDK_DISABLED=true makes the SDK's providers no-ops; the analyzer follows: no thread
    of ours, nothing on the console (where the memory monitor or a finding would print), nothing
    exported.  The same app without it runs our threads (the test's own control)."""
    run = _run_app(sink, tmp_path, OTEL_SDK_DISABLED="true")
    assert run.returncode == 0, run.stderr
    assert run.report["span_ids"] == [], run.stdout  # the SDK made no span
    assert not [t for t in run.report["threads"] if t.startswith("otel-apm")], run.report["threads"]
    assert "[otel-apm]" not in run.stderr, run.stderr
    # The process has exited: what its providers export at shutdown has been sent by then.
    assert not sink.trace_requests and not sink.log_records() and not sink.metric_names()

    run = _run_app(sink, tmp_path, OTEL_SDK_DISABLED="false")
    assert run.returncode == 0, run.stderr
    assert {"otel-apm-analysis", "otel-apm-memory"} <= set(run.report["threads"]), run.report["threads"]


def test_traces_exporter_none_still_analyzes(sink: OTLPSink, tmp_path: Path) -> None:
    run = _run_app(sink, tmp_path, OTEL_TRACES_EXPORTER="none")
    assert run.returncode == 0, run.stderr
    assert run.report.get("provider") == "TracerProvider", (run.stdout, run.stderr)
    assert run.report["span_ids"], run.stdout

    records = sink.wait_for(lambda: _n_plus_one(sink), message="n_plus_one_query finding event")
    assert len(records) == 1
    record, attrs = records[0]
    assert attrs["otel_apm.finding.count"] == N_BOOK_QUERIES
    assert record.trace_id.hex() == run.report["trace_id"]
    assert record.span_id.hex() in set(run.report["span_ids"]) - {run.report["root_span_id"]}
    sink.wait_for(lambda: "otel_apm.findings" in sink.metric_names(), message="otel_apm.findings")
    # Analysis only: not one span was exported.
    assert not sink.trace_requests


def test_trace_open_at_exit_is_analyzed_and_its_findings_exported(sink: OTLPSink, tmp_path: Path) -> None:
    """A request still in flight when the process exits: the analyzer's shutdown analyzes it as it
    is, and its findings must leave through OTLP before the logger and meter providers shut down
    (the configurator's atexit ordering), not only on the console."""
    run = _run_app(sink, tmp_path, NPLUSONE_LEAVE_OPEN="1")
    assert run.returncode == 0, run.stderr
    assert run.report.get("root_ended") is False, run.stdout
    printed = set(run.report["span_ids"])
    assert run.report["root_span_id"] not in printed

    records = sink.wait_for(lambda: _n_plus_one(sink), message="n_plus_one_query finding event")
    assert len(records) == 1, [a for _, a in records]
    record, attrs = records[0]
    assert attrs["otel_apm.finding.count"] == N_BOOK_QUERIES
    assert record.trace_id.hex() == run.report["trace_id"]
    points = sink.wait_for(
        lambda: [
            attributes(p.attributes)
            for p in sink.data_points("otel_apm.findings")
            if attributes(p.attributes).get("otel_apm.finding.type") == "n_plus_one_query"
        ],
        message="otel_apm.findings for the open trace",
    )
    assert points
    # The spans that did end were exported (held ones are handed on at shutdown); the root never ended.
    sink.wait_for(lambda: {s.span_id.hex() for _, s in sink.spans()} >= printed, message="spans")
    assert {s.span_id.hex() for _, s in sink.spans()} == printed
