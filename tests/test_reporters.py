"""Reporters chosen by APM_REPORTERS: the console and the webhook (announce a new problem once,
then summarize it), the metrics toggle; through APMSpanProcessor with real SDK spans, the
collector over OTLP, and a real HTTP receiver that fails and recovers (webhook_sink.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import OTel, in_forked_child, wait_until
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from otlp_sink import OTLPSink, attributes
from test_autoinstrument import _run_app
from test_cli import run
from test_collector import Collector, n_plus_one_trace, sink, start_collector, tracer_provider
from test_processor import db_span, process_finding, request, roots
from webhook_sink import WebhookSink

from otel_apm import APMConfig, ConfigError
from otel_apm.collector.config import load_config
from otel_apm.emit import reporters
from otel_apm.emit.attributes import EVENT_NAME, OCCURRENCES
from otel_apm.emit.metrics import MetricsEmitter
from otel_apm.emit.webhook import SLACK_MAX_NOTICES, WebhookReporter, verify

__all__ = ["sink", "start_collector"]  # fixtures used here, defined with the collector's tests

FAST: dict[str, Any] = {"webhook_backoff_s": 0.01, "webhook_backoff_max_s": 0.05, "webhook_timeout_s": 2.0}
# A POST the sink holds ("block") must not time out while a loaded machine runs the test's requests.
HELD_S = 30.0


@pytest.fixture
def hook() -> Iterator[WebhookSink]:
    with WebhookSink() as s:
        yield s


def webhook_otel(make_otel: Callable[..., OTel], url: str, **settings: Any) -> OTel:
    return make_otel(reporters=("webhook",), webhook_url=url, **{**FAST, **settings})


def webhook_of(otel: OTel) -> WebhookReporter:
    (reporter,) = [e for e in otel.processor.emitters if isinstance(e, WebhookReporter)]
    return reporter


def console_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("[otel-apm]")]


# -- configuration -------------------------------------------------------------------------------------


def test_reporter_names_are_validated() -> None:
    assert APMConfig.from_env({}).reporters == ("console", "metrics")
    assert APMConfig.from_env({"APM_REPORTERS": " console , metrics "}).reporters == ("console", "metrics")
    with pytest.raises(ConfigError) as exc:
        APMConfig.from_env({"APM_REPORTERS": "console,email"})
    assert str(exc.value) == (
        "APM_REPORTERS=('console', 'email'): expected a comma-separated list of console, webhook, metrics"
    )
    with pytest.raises(ConfigError, match="APM_WEBHOOK_FORMAT='teams': expected one of json, slack"):
        APMConfig.from_env({"APM_WEBHOOK_FORMAT": "teams"})


def test_webhook_needs_an_http_url() -> None:
    with pytest.raises(ConfigError, match="APM_REPORTERS names webhook: APM_WEBHOOK_URL must be set"):
        APMConfig.from_env({"APM_REPORTERS": "webhook"})
    for bad in ("ftp://x/token", "http:///token", "http://h:port/token"):
        with pytest.raises(ConfigError) as exc:
            APMConfig.from_env({"APM_REPORTERS": "webhook", "APM_WEBHOOK_URL": bad})
        assert str(exc.value) == (
            "APM_WEBHOOK_URL: expected an http:// or https:// URL with a host (and a numeric port)"
        )  # the URL itself is not repeated: it may hold a token


def test_a_webhook_url_without_the_webhook_reporter_is_pointed_out(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="otel_apm.emit"):
        assert not any(isinstance(r, WebhookReporter) for r in reporters(APMConfig(webhook_url="http://h/x")))
    assert "APM_WEBHOOK_URL is set but APM_REPORTERS does not name webhook" in caplog.text


def test_the_secret_and_the_url_are_never_shown() -> None:
    config = APMConfig.from_env({"APM_WEBHOOK_SECRET": "hunter2", "APM_WEBHOOK_URL": "https://h/T0/token9"})
    assert config.webhook_secret == "hunter2"
    assert "hunter2" not in repr(config) and "token9" not in repr(config)
    shown = {variable: value for variable, value, _ in config.describe()}
    assert shown["APM_WEBHOOK_SECRET"] == shown["APM_WEBHOOK_URL"] == "(set)"
    assert shown["APM_REPORTERS"] == "console,metrics"


def test_otel_apm_config_shows_the_reporters_and_hides_the_secret() -> None:
    result = run(
        "config", APM_REPORTERS="webhook", APM_WEBHOOK_URL="http://h:1/x", APM_WEBHOOK_SECRET="hunter2"
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^APM_REPORTERS +webhook ", result.stdout, re.M)
    assert re.search(r"^APM_WEBHOOK_SECRET +\(set\) ", result.stdout, re.M)
    assert "hunter2" not in result.stdout
    result = run("config", APM_REPORTERS="console,webhook")
    assert result.returncode == 2
    assert "APM_REPORTERS names webhook: APM_WEBHOOK_URL must be set" in result.stderr


def test_console_enabled_false_turns_the_console_off_whatever_reporters_says(
    make_otel: Callable[..., OTel], capsys: pytest.CaptureFixture[str]
) -> None:
    otel = make_otel(reporters=("console", "metrics"), console_enabled=False)
    request(otel)
    assert console_lines(capsys.readouterr().err) == []
    otel = make_otel(reporters=("metrics",), console_enabled=True)
    request(otel)
    assert console_lines(capsys.readouterr().err) == []


def test_the_collectors_analysis_section_takes_reporters() -> None:
    config = load_config(
        overrides={"analysis.reporters": ["console", "webhook"], "analysis.webhook_url": "http://h:1/x"},
        environ={},
    )
    assert config.analysis.reporters == ("console", "webhook")
    with pytest.raises(ConfigError) as exc:
        load_config(overrides={"analysis.reporters": ["webhook"]}, environ={})
    assert str(exc.value) == "analysis: APM_REPORTERS names webhook: APM_WEBHOOK_URL must be set"
    with pytest.raises(ConfigError, match=r"analysis.reporters: expected a comma-separated list of console"):
        load_config(overrides={"analysis.reporters": ["pager"]}, environ={})


# -- metrics ---------------------------------------------------------------------------------------------


def test_metrics_follow_apm_reporters_in_the_processor(make_otel: Callable[..., OTel]) -> None:
    on = make_otel()
    request(on)
    assert on.data_points("otel_apm.findings")
    off = make_otel(reporters=("console",))
    request(off)
    assert off.data_points("otel_apm.findings") == []
    assert off.data_points("otel_apm.processor.traces")  # the processor's own health stays


def test_metrics_follow_apm_reporters_in_the_collector(
    start_collector: Callable[..., Collector], sink: OTLPSink
) -> None:
    def metrics_emitters(c: Collector) -> int:
        assert c.service.emission is not None
        return sum(isinstance(e, MetricsEmitter) for e in c.service.emission.emitters)

    assert metrics_emitters(start_collector(sink.endpoint)) == 1
    assert metrics_emitters(start_collector(sink.endpoint, analysis__reporters=["console"])) == 0
    assert metrics_emitters(start_collector(None)) == 0  # nowhere to send them


# -- console ---------------------------------------------------------------------------------------------


def test_console_announces_in_full_once_then_summarizes_at_shutdown(
    make_otel: Callable[..., OTel], capsys: pytest.CaptureFixture[str]
) -> None:
    otel = make_otel(console_enabled=True, console_interval_s=3600, slow_query_threshold_ms=60_000)
    trace_id = request(otel, n=6)
    for _ in range(3):
        request(otel, n=8)
    otel.flush()
    err = capsys.readouterr().err
    headline, *details = err.splitlines()
    assert headline.startswith("[otel-apm] WARNING n_plus_one_query test-svc 'GET /authors': N+1 queries")
    assert f"trace {trace_id:032x}" in headline
    span_at = db_span.__code__.co_firstlineno + 2  # its start_as_current_span line
    assert details[0].endswith(f"tests/test_processor.py:{span_at}:db_span")
    assert details[0].startswith("    where: ")
    assert details[1].startswith("    statement: ")
    assert details[2].startswith("    evidence: 6 span(s)")
    assert details[3].startswith("    fix: ")
    assert len(console_lines(err)) == 1  # the three repeats are not printed per request
    otel.shutdown()
    (summary,) = console_lines(capsys.readouterr().err)
    assert re.match(
        r"\[otel-apm\] n_plus_one_query test-svc 'GET /authors': 3 more in the last \d+ s, "
        r"impact p95 [\d.]+ ms, max [\d.]+ ms \(fingerprint \w+, e\.g\. trace \w{32}\)$",
        summary,
    ), summary


def test_console_summarizes_once_per_interval(
    make_otel: Callable[..., OTel], capsys: pytest.CaptureFixture[str]
) -> None:
    interval = 0.5  # long enough for the requests before the sleep to fall in one window
    otel = make_otel(console_enabled=True, console_interval_s=interval, slow_query_threshold_ms=60_000)
    for _ in range(4):
        request(otel)
    otel.flush()
    time.sleep(interval)  # let the window close; what is checked below does not depend on speed
    request(otel)
    otel.flush()
    lines = console_lines(capsys.readouterr().err)
    assert len(lines) == 2
    assert lines[0].startswith("[otel-apm] WARNING n_plus_one_query")
    assert "n_plus_one_query test-svc 'GET /authors': 4 more in the last" in lines[1]


def test_console_is_rate_limited_and_says_how_much_it_held_back(
    make_otel: Callable[..., OTel], capsys: pytest.CaptureFixture[str]
) -> None:
    interval = 0.5  # long enough for the requests before the sleep to fall in one window
    otel = make_otel(
        console_enabled=True,
        console_interval_s=interval,
        console_max_per_interval=2,
        slow_query_threshold_ms=60_000,
    )
    for i in range(5):
        request(otel, route=f"/r{i}")
    otel.flush()
    lines = console_lines(capsys.readouterr().err)
    assert [line.split("'")[1] for line in lines] == ["GET /r0", "GET /r1"]
    time.sleep(interval)
    request(otel, route="/r4")  # held back before: announced now, in full
    otel.flush()
    lines = console_lines(capsys.readouterr().err)
    assert lines[0].startswith("[otel-apm] 3 more suppressed in the last")
    assert "APM_CONSOLE_MAX_PER_INTERVAL" in lines[0]
    assert lines[1].startswith("[otel-apm] WARNING n_plus_one_query test-svc 'GET /r4'")


# -- OTel events (APM_EVENTS_INTERVAL_S) ------------------------------------------------------------------


def finding_points(otel: OTel) -> int:
    return sum(p.value for p in otel.data_points("otel_apm.findings"))


def test_by_default_every_finding_is_an_event(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel(slow_query_threshold_ms=60_000)
    traces = [request(otel) for _ in range(3)]
    events = otel.events("n_plus_one_query")
    assert [e.log_record.trace_id for e in events] == traces
    assert all(OCCURRENCES not in (e.log_record.attributes or {}) for e in events)
    otel.shutdown()
    assert len(otel.events("n_plus_one_query")) == 3  # nothing held for the shutdown


def test_events_announce_a_problem_once_then_summarize_its_repeats_at_shutdown(
    make_otel: Callable[..., OTel],
) -> None:
    otel = make_otel(events_interval_s=3600, slow_query_threshold_ms=60_000)
    first = request(otel, n=6)
    later = [request(otel, n=8) for _ in range(3)]
    (new,) = otel.events("n_plus_one_query")
    announced = new.log_record
    assert announced.trace_id == first and announced.attributes is not None
    assert announced.attributes[OCCURRENCES] == 1
    assert str(announced.body).startswith("N+1 queries: 6 x SELECT on books")
    # The repeats are still findings everywhere else: on their root spans and in the metrics.
    assert [len(r.events) for r in roots(otel)] == [1, 1, 1, 1]
    assert finding_points(otel) == 4
    otel.shutdown()
    again, summary = otel.events("n_plus_one_query")
    assert again.log_record.trace_id == first
    record = summary.log_record
    attrs = record.attributes
    assert attrs is not None
    assert attrs[OCCURRENCES] == 3
    assert attrs["otel_apm.finding.fingerprint"] == announced.attributes["otel_apm.finding.fingerprint"]
    assert record.trace_id == later[-1]  # the latest occurrence: an example trace to open
    assert f"{record.span_id:016x}" == attrs["otel_apm.finding.span_ids"][0]  # type: ignore[index]
    assert 0 <= attrs["otel_apm.finding.window_s"] < 3600  # type: ignore[operator]
    assert 0 <= attrs["otel_apm.finding.impact_p95_ms"] <= attrs["otel_apm.finding.impact_max_ms"]  # type: ignore[operator]
    assert record.timestamp is not None and record.timestamp >= announced.timestamp  # type: ignore[operator]
    assert re.match(r"n_plus_one_query test-svc 'GET /authors': 3 more in the last \d+ s", str(record.body))


def test_events_summarize_once_per_interval(make_otel: Callable[..., OTel]) -> None:
    interval = 0.5  # long enough for the requests before the sleep to fall in one window
    otel = make_otel(events_interval_s=interval, slow_query_threshold_ms=60_000)
    for _ in range(4):
        request(otel)
    otel.flush()
    time.sleep(interval)  # let the window close; what is checked below does not depend on speed
    last = request(otel)
    new, summary = otel.events("n_plus_one_query")
    assert [e.log_record.attributes[OCCURRENCES] for e in (new, summary)] == [1, 4]  # type: ignore[index]
    assert summary.log_record.trace_id == last
    otel.shutdown()
    assert len(otel.events("n_plus_one_query")) == 2  # the last window was summarized already


def test_the_collector_summarizes_events_too(
    start_collector: Callable[..., Collector], sink: OTLPSink
) -> None:
    collector = start_collector(sink.endpoint, analysis__events_interval_s=3600)
    provider, _ = tracer_provider(OTLPSpanExporter(endpoint=collector.grpc_endpoint, insecure=True))
    for _ in range(3):
        n_plus_one_trace(provider)
    provider.shutdown()
    wait_until(lambda: collector.value('findings_total{type="n_plus_one_query"}') == 3)

    def occurrences() -> list[Any]:
        return [
            attributes(record.attributes).get(OCCURRENCES)
            for _, record in sink.log_records()
            if record.event_name == EVENT_NAME
        ]

    wait_until(lambda: occurrences() == [1])
    assert collector.shutdown()
    assert occurrences() == [1, 2]


# -- webhook: delivery -------------------------------------------------------------------------------------


def test_webhook_sends_each_new_problem_once_then_a_summary(
    make_otel: Callable[..., OTel], hook: WebhookSink
) -> None:
    otel = webhook_otel(make_otel, hook.url)
    traces = [request(otel) for _ in range(3)]
    request(otel, route="/other")
    wait_until(lambda: len(hook.notices()) == 2)
    otel.shutdown()
    new = hook.notices("new")
    assert [(n["type"], n["endpoint"]) for n in new] == [
        ("n_plus_one_query", "GET /authors"),
        ("n_plus_one_query", "GET /other"),
    ]
    assert new[0]["trace_id"] == format(traces[0], "032x")
    assert new[0]["count"] == 6 and new[0]["recommendation"]
    (summary,) = hook.notices("summary")
    assert summary["fingerprint"] == new[0]["fingerprint"]
    assert summary["occurrences"] == 2
    assert summary["example_trace_id"] == format(traces[2], "032x")
    received = next(iter(hook.deliveries().values()))
    assert received.headers["content-type"] == "application/json"
    assert received.headers["idempotency-key"] == received.delivery_id == received.document()["delivery_id"]
    assert webhook_of(otel).stats()["delivered"] == 3
    counts = {p.attributes["outcome"]: p.value for p in otel.data_points("otel_apm.webhook.notices")}
    assert (counts["queued"], counts["delivered"], counts["failed"]) == (3, 3, 0)


def test_webhook_retries_failures_and_delivers_each_notice_exactly_once(
    make_otel: Callable[..., OTel],
) -> None:
    with WebhookSink(hang_s=1.0) as hook:
        # 500s, a 429, an answer lost after the receiver stored the POST, a slow answer.
        hook.plan("500", "500", "429", "hang", "503", "slow")
        otel = webhook_otel(make_otel, hook.url, webhook_timeout_s=0.3, webhook_max_attempts=10)
        for i in range(3):
            request(otel, route=f"/r{i}")
        wait_until(lambda: webhook_of(otel).stats()["delivered"] == 3)
        stats = webhook_of(otel).stats()
        assert stats["failed"] == stats["dropped"] == 0 and stats["retries"] >= 4
        assert len(hook.accepted) > len(hook.deliveries())  # the lost answer made a repeat
        endpoints = [n["endpoint"] for n in hook.notices("new")]
        assert sorted(endpoints) == ["GET /r0", "GET /r1", "GET /r2"]


def test_webhook_gives_up_after_the_last_attempt_and_counts(
    make_otel: Callable[..., OTel], hook: WebhookSink, caplog: pytest.LogCaptureFixture
) -> None:
    hook.plan(*["500"] * 3)
    otel = webhook_otel(make_otel, hook.url + "?token=tok3n", webhook_max_attempts=3)
    with caplog.at_level(logging.WARNING, logger="otel_apm.emit.webhook"):
        request(otel)
        wait_until(lambda: webhook_of(otel).stats()["failed"] == 1)
    assert hook.requests == 3 and hook.accepted == []
    assert f"webhook http://127.0.0.1:{hook.port} failed 3 times; the batch is given up" in caplog.text
    assert "tok3n" not in caplog.text  # logs name the receiver's origin, not its token
    request(otel, route="/next")  # the receiver is back: later notices still go
    wait_until(lambda: webhook_of(otel).stats()["delivered"] == 1)


@pytest.mark.parametrize("status", ["400", "302"])
def test_webhook_does_not_retry_a_refusal_nor_follow_a_redirect(
    make_otel: Callable[..., OTel], hook: WebhookSink, status: str
) -> None:
    hook.plan(status)
    otel = webhook_otel(make_otel, hook.url)
    request(otel)
    wait_until(lambda: webhook_of(otel).stats()["rejected"] == 1)
    assert hook.requests == 1


def test_webhook_waits_out_a_refused_connection(make_otel: Callable[..., OTel]) -> None:
    with socket.socket() as probe:  # a port nothing listens on, until the sink takes it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    otel = webhook_otel(
        make_otel, f"http://127.0.0.1:{port}/hook", webhook_max_attempts=1000, webhook_backoff_max_s=0.02
    )
    request(otel)
    reporter = webhook_of(otel)
    wait_until(lambda: reporter.stats()["retries"] >= 2)
    with WebhookSink(port=port) as hook:
        wait_until(lambda: reporter.stats()["delivered"] == 1)
        assert [n["endpoint"] for n in hook.notices()] == ["GET /authors"]


def test_a_summary_gives_the_repeats_p95_and_max_impact(
    make_otel: Callable[..., OTel], hook: WebhookSink
) -> None:
    otel = webhook_otel(make_otel, hook.url)
    for impact in range(1, 51):
        otel.processor.emit_findings([process_finding(float(impact))])
    otel.shutdown()
    (new,) = hook.notices("new")
    assert (new["impact_ms"], new["trace_id"], new["span_ids"]) == (1.0, None, [])
    (summary,) = hook.notices("summary")
    # The 49 repeats (2..50 ms): nearest-rank p95 is the 47th, 48 ms.
    assert (summary["occurrences"], summary["impact_p95_ms"], summary["impact_max_ms"]) == (49, 48.0, 50.0)
    assert summary["example_trace_id"] is None


def test_a_batch_that_cannot_be_encoded_costs_only_itself(
    make_otel: Callable[..., OTel], hook: WebhookSink
) -> None:
    otel = webhook_otel(make_otel, hook.url)
    broken = process_finding(1.0, evidence={"bad": {1, 2}})  # not JSON: a bug of a detector's
    otel.processor.emit_findings([broken])
    wait_until(lambda: webhook_of(otel).stats()["failed"] == 1)
    request(otel)
    wait_until(lambda: webhook_of(otel).stats()["delivered"] == 1)
    assert [n["type"] for n in hook.notices()] == ["n_plus_one_query"]


# -- webhook: never in the application's way --------------------------------------------------------------


def test_webhook_never_makes_the_request_path_wait(make_otel: Callable[..., OTel], hook: WebhookSink) -> None:
    hook.plan("block")
    otel = webhook_otel(make_otel, hook.url, webhook_timeout_s=HELD_S)
    request(otel, route="/r0")
    hook.blocked.wait(15)
    assert hook.blocked.is_set()
    for i in range(1, 4):
        request(otel, route=f"/r{i}")  # returns while the receiver holds the first POST
    assert otel.stats()["traces_analyzed"] == 4
    assert hook.accepted == []
    hook.release()
    wait_until(lambda: len(hook.notices()) == 4)


def test_a_full_webhook_queue_drops_the_oldest_and_says_so_once(
    make_otel: Callable[..., OTel], hook: WebhookSink, caplog: pytest.LogCaptureFixture
) -> None:
    hook.plan("block")
    otel = webhook_otel(make_otel, hook.url, webhook_queue_size=2, webhook_timeout_s=HELD_S)
    request(otel, route="/r0")
    otel.flush()
    hook.blocked.wait(15)
    with caplog.at_level(logging.WARNING, logger="otel_apm.emit.webhook"):
        for i in range(1, 6):
            request(otel, route=f"/r{i}")
        otel.flush()
    assert caplog.text.count("webhook queue full (APM_WEBHOOK_QUEUE_SIZE=2)") == 1
    hook.release()
    wait_until(lambda: len(hook.notices()) == 3)
    assert [n["endpoint"] for n in hook.notices()] == ["GET /r0", "GET /r4", "GET /r5"]
    assert webhook_of(otel).stats()["dropped"] == 3


def test_webhook_shutdown_is_bounded_and_counts_what_it_could_not_send(
    make_otel: Callable[..., OTel], hook: WebhookSink, caplog: pytest.LogCaptureFixture
) -> None:
    hook.plan(*["block"] * 3)
    otel = webhook_otel(make_otel, hook.url, webhook_timeout_s=0.2, webhook_batch_size=1)
    for i in range(3):
        request(otel, route=f"/r{i}")
    hook.blocked.wait(15)
    reporter = webhook_of(otel)
    with caplog.at_level(logging.WARNING, logger="otel_apm.emit.webhook"):
        reporter.shutdown(0.3)  # returns though the receiver still holds the POST
    assert re.search(r"webhook shut down with \d notice\(s\) undelivered to http://127.0.0.1", caplog.text)
    assert reporter.stats()["in_queue"] == 0
    wait_until(lambda: reporter.stats()["undelivered"] == 3)  # the POST under way, once it timed out
    assert reporter.stats()["delivered"] == 0


def test_a_forked_worker_delivers_with_a_sender_of_its_own(hook: WebhookSink) -> None:
    """gunicorn --preload builds the reporter in the master: a worker has no sender thread, and
    one of the parent's locks may be held at the fork (as the sender holds the digest's while
    it looks for due summaries)."""
    reporter = WebhookReporter(APMConfig(reporters=("webhook",), webhook_url=hook.url, **FAST))
    reporter.emit(None, [process_finding(1.0, fingerprint="parent")])
    wait_until(lambda: reporter.stats()["delivered"] == 1)

    def worker() -> bool:
        reporter.emit(None, [process_finding(1.0, fingerprint="worker")])
        reporter.shutdown(10.0)
        return reporter.stats()["delivered"] == 1

    in_forked_child(worker, held=reporter._digest._lock)
    reporter.shutdown(5.0)
    assert [n["fingerprint"] for n in hook.notices("new")] == ["parent", "worker"]


# -- webhook: signature and Slack ---------------------------------------------------------------------------


def test_signatures_verify_with_the_documented_procedure(
    make_otel: Callable[..., OTel], hook: WebhookSink
) -> None:
    secret = "s3cret"
    hook.plan("500")  # a retry is signed afresh
    otel = webhook_otel(make_otel, hook.url, webhook_secret=secret)
    request(otel)
    wait_until(lambda: len(hook.notices()) == 1)
    (received,) = hook.deliveries().values()
    timestamp, signature = received.headers["x-otelapm-timestamp"], received.headers["x-otelapm-signature"]
    # The README's procedure, written out here rather than imported.
    expected = (
        "sha256="
        + hmac.new(secret.encode(), f"{timestamp}.".encode() + received.body, hashlib.sha256).hexdigest()
    )
    assert hmac.compare_digest(expected, signature)
    assert abs(time.time() - int(timestamp)) <= 300
    assert verify(secret, timestamp, received.body, signature)
    assert not verify(secret, timestamp, received.body + b" ", signature)  # tampered body
    assert not verify("other", timestamp, received.body, signature)
    assert not verify(secret, timestamp, received.body, signature, now=int(timestamp) + 301)  # replayed


def test_slack_format_is_an_incoming_webhook_message(
    make_otel: Callable[..., OTel], hook: WebhookSink
) -> None:
    hook.plan("block")
    otel = webhook_otel(
        make_otel, hook.url, webhook_format="slack", webhook_batch_size=500, webhook_timeout_s=HELD_S
    )
    request(otel, route="/first")
    otel.flush()
    hook.blocked.wait(15)
    for i in range(SLACK_MAX_NOTICES + 5):
        request(otel, route=f"/a<b>&{i}")  # queued while the first POST is held: one big batch
    otel.flush()  # every notice queued before the release, not still waiting for its analysis
    hook.release()
    wait_until(lambda: len(hook.deliveries()) == 3)
    bodies = [json.loads(r.body) for r in hook.deliveries().values()]
    assert all(set(body) == {"text", "blocks"} for body in bodies)
    assert [len(body["blocks"]) - 1 for body in bodies][:2] == [1, SLACK_MAX_NOTICES]
    # Each N+1 announced once, over the two later messages; on a loaded machine a stalled query
    # or the process may add a finding of another type, which shifts where the split falls.
    routes = [
        text.split("`GET ", 1)[1].split("`", 1)[0]
        for body in bodies[1:]
        for block in body["blocks"][1:]
        if "`n_plus_one_query`" in (text := block["text"]["text"])
    ]
    assert sorted(routes) == sorted(f"/a&lt;b&gt;&amp;{i}" for i in range(SLACK_MAX_NOTICES + 5))
    header, section = bodies[1]["blocks"][:2]
    assert header["type"] == "header"
    assert bodies[1]["text"] == f"otel-apm: {SLACK_MAX_NOTICES} new performance problem(s), 0 summary(ies)"
    assert section["type"] == "section" and section["text"]["type"] == "mrkdwn"
    text = section["text"]["text"]
    assert text.startswith("*WARNING* `n_plus_one_query` in *test-svc* `GET /a&lt;b&gt;&amp;0`\nN+1 queries")
    assert "\n*Fix:* " in text and "<" not in text


# -- the collector -------------------------------------------------------------------------------------------


def test_the_collector_reports_to_a_webhook(
    start_collector: Callable[..., Collector], hook: WebhookSink, sink: OTLPSink
) -> None:
    hook.plan("500")
    collector = start_collector(
        sink.endpoint,
        analysis__reporters=["webhook"],
        analysis__webhook_url=hook.url,
        analysis__webhook_backoff_s=0.01,
    )
    provider, _ = tracer_provider(OTLPSpanExporter(endpoint=collector.grpc_endpoint, insecure=True))
    for _ in range(3):
        n_plus_one_trace(provider)
    provider.shutdown()
    delivered = 'otel_apm_collector_webhook_notices_total{outcome="delivered"}'
    wait_until(lambda: collector.telemetry()[delivered] == 1)
    assert collector.telemetry()["otel_apm_collector_webhook_retries_total"] == 1
    assert collector.shutdown()
    (new,) = hook.notices("new")
    assert (new["type"], new["service"], new["endpoint"]) == ("n_plus_one_query", "shop", "GET /authors")
    assert sum(n["occurrences"] for n in hook.notices("summary")) == 2
    # The reporters shut down before the meter provider: its last export counts the summary
    # the webhook sent on its way out.
    points = sink.data_points("otel_apm.webhook.notices")
    exported = [p.as_int for p in points if attributes(p.attributes)["outcome"] == "delivered"]
    assert max(exported) == 2


# -- opentelemetry-instrument ------------------------------------------------------------------------


def test_an_instrumented_app_delivers_to_the_webhook_before_it_exits(
    sink: OTLPSink, hook: WebhookSink, tmp_path: Path
) -> None:
    """The app ends right after its request: the notice still goes out, as the configurator shuts
    the processor (and so the reporters) down at exit."""
    run = _run_app(
        sink,
        tmp_path,
        APM_REPORTERS="webhook",
        APM_WEBHOOK_URL=hook.url,
        APM_WEBHOOK_SECRET="s3cret",
    )
    assert run.returncode == 0, run.stderr
    (new,) = hook.notices("new")
    assert (new["type"], new["service"], new["endpoint"]) == (
        "n_plus_one_query",
        "nplusone-app",
        "GET /authors",
    )
    assert new["trace_id"] == run.report["trace_id"]
    (received,) = hook.deliveries().values()
    headers = received.headers
    assert verify("s3cret", headers["x-otelapm-timestamp"], received.body, headers["x-otelapm-signature"])
    assert (
        "[otel-apm]" not in run.stderr
    )  # APM_REPORTERS without console: APM_CONSOLE_ENABLED alone adds none
