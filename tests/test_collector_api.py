"""The collector's findings store and JSON API, over real sockets: OTLP in, findings stored,
read back over HTTP; the store survives a restart of the collector; the config's store and api
sections are validated."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from test_collector import collector_config, n_plus_one_trace, tracer_provider
from test_store import store_url  # noqa: F401 - the store fixture, SQLite and PostgreSQL

from otel_apm.collector.config import ConfigError, load_config
from otel_apm.collector.service import CollectorService

N1_STATEMENT = "select id, title from books where author_id = ?"


class Api:
    """A started collector with a store, and GETs on its JSON API."""

    def __init__(self, service: CollectorService) -> None:
        self.service = service
        self.base = f"http://127.0.0.1:{service.api_port}/api/v1/"

    def get(self, path: str, status: int = 200, **params: Any) -> Any:
        response = requests.get(self.base + path, params=params, timeout=10)
        assert response.status_code == status, response.text
        assert response.headers["Content-Type"] == "application/json"
        return response.json()

    def send_n_plus_one(self, traces: int, route: str = "/authors") -> None:
        provider, _ = tracer_provider(
            OTLPSpanExporter(endpoint=f"http://127.0.0.1:{self.service.grpc_port}", insecure=True)
        )
        for _ in range(traces):
            n_plus_one_trace(provider, route=route)
        provider.shutdown()

    def wait_for_occurrences(self, fingerprint_count: int, occurrences: int) -> list[dict[str, Any]]:
        """Wait (bounded) for the analysis thread and the store's writer to catch up."""
        deadline = time.monotonic() + 15
        while True:
            found = self.get("findings", window="1h")["findings"]
            if len(found) == fingerprint_count and sum(f["occurrences"] for f in found) == occurrences:
                return list(found)
            assert time.monotonic() < deadline, found
            time.sleep(0.05)


@pytest.fixture
def start_api() -> Iterator[Callable[..., Api]]:
    started: list[CollectorService] = []

    def start(url: str, **overrides: Any) -> Api:
        settings = {"store__url": url, "api__endpoint": "127.0.0.1:0", "assembly__idle_timeout_s": 0.05}
        service = CollectorService(collector_config(**{**settings, **overrides})).start()
        started.append(service)
        return Api(service)

    yield start
    for service in started:
        service.shutdown(5)


def test_findings_over_the_json_api_survive_a_restart(
    store_url: str,  # noqa: F811 - the fixture imported above
    start_api: Callable[..., Api],
) -> None:
    api = start_api(store_url)
    api.send_n_plus_one(3)
    (stored,) = api.wait_for_occurrences(1, 3)
    assert (stored["type"], stored["service"], stored["endpoint"]) == (
        "n_plus_one_query",
        "shop",
        "GET /authors",
    )
    assert (stored["statement"], stored["state"], stored["window_occurrences"]) == (N1_STATEMENT, "open", 3)
    assert len(stored["example_trace_ids"]) == 3 and all(len(t) == 32 for t in stored["example_trace_ids"])

    assert api.service.telemetry.value("store_findings_written_total") == 3
    assert api.service.telemetry.value("store_findings_dropped_total") == 0
    one = api.get(f"findings/{stored['fingerprint']}")
    assert one["window"] == "all" and one["finding"]["occurrences"] == 3

    summary = api.get("summary", window="1h")
    assert summary["window"] == "1h" and summary["since"] < summary["generated_at"]
    assert summary["summary"]["by_type"] == {"n_plus_one_query": 1}
    assert summary["summary"]["occurrences"] == 3
    # no minute of statistics has closed yet: the problems alone
    (endpoint,) = api.get("endpoints")["endpoints"]
    assert (endpoint["service"], endpoint["endpoint"], endpoint["stats"]) == ("shop", "GET /authors", None)
    assert endpoint["problems"]["occurrences"] == 3
    (statement,) = api.get("statements", window="all")["statements"]
    assert (statement["statement"], statement["problems"]["fingerprints"]) == (
        N1_STATEMENT,
        [stored["fingerprint"]],
    )
    report = api.get("report", window="24h")
    assert [f["fingerprint"] for f in report["n_plus_one"]] == [stored["fingerprint"]]
    assert report["slow_queries"] == [] and report["summary"]["findings"] == 1
    assert api.get("findings", type="slow_query")["findings"] == []
    assert (
        api.get("findings", service="shop")["total"] == 1 and api.get("findings", service="x")["total"] == 0
    )
    other = api.get("report", service="another-service")
    assert (other["service"], other["summary"]["findings"], other["n_plus_one"]) == ("another-service", 0, [])
    assert api.get("findings", state="resolved")["total"] == 0

    assert api.service.shutdown()
    again = start_api(store_url)  # a new collector process on the same store
    assert again.get("findings")["findings"][0]["occurrences"] == 3
    # the statistics too: the minute in progress was stored when the first collector stopped
    transactions = again.get("summary", window="1h")["summary"]["transactions"]
    assert (transactions["count"], transactions["queries_per_request"]) == (3, 7)
    assert again.get("summary", window="1h", service="shop")["summary"]["transactions"]["count"] == 3
    assert again.get("summary", window="1h", service="x")["summary"]["transactions"] is None
    (endpoint,) = again.get("endpoints", window="1h")["endpoints"]
    assert (endpoint["stats"]["count"], endpoint["problems"]["occurrences"]) == (3, 3)
    again.send_n_plus_one(1)
    (after,) = again.wait_for_occurrences(1, 4)
    assert after["first_seen"] == stored["first_seen"] and after["last_seen"] >= stored["last_seen"]


def test_bad_requests_get_a_json_error(tmp_path: Any, start_api: Callable[..., Api]) -> None:
    api = start_api(f"sqlite:///{tmp_path / 'api.sqlite'}")
    assert "expected how far back" in api.get("summary", 400, window="3w")["error"]
    assert "state='closed'" in api.get("findings", 400, state="closed")["error"]
    assert "limit='0'" in api.get("findings", 400, limit="0")["error"]
    assert "no finding" in api.get("findings/0123456789abcdef", 404)["error"]
    assert "the API serves summary" in api.get("nothing", 404)["error"]
    assert "the API serves summary" in api.get("summary/extra", 404)["error"]
    response = requests.get(f"http://127.0.0.1:{api.service.api_port}/metrics", timeout=10)
    assert response.status_code == 404 and "not found" in response.json()["error"]
    assert api.get("report")["summary"]["findings"] == 0  # an empty store answers, empty


def test_a_failing_store_answers_503_and_the_collector_keeps_going(
    tmp_path: Any, start_api: Callable[..., Api], caplog: pytest.LogCaptureFixture
) -> None:
    api = start_api(f"sqlite:///{tmp_path}")  # a directory: SQLite cannot open it
    for _ in range(2):
        assert "the store is unavailable" in api.get("findings", 503)["error"]
    api.send_n_plus_one(1)
    # The store's writer drops the findings on its own thread, after the trace was counted as
    # analyzed: wait for the drop itself (on a loaded machine it came after the count).
    telemetry = api.service.telemetry
    deadline = time.monotonic() + 15
    while telemetry.value("store_findings_dropped_total") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert api.service.running
    assert telemetry.value("traces_analyzed_total") == 1
    # Every finding of that trace, the N+1 (a stalled host may add a slow one), none stored.
    found = sum(v for k, v in telemetry.snapshot().items() if k.startswith("findings_total"))
    assert found >= 1
    assert telemetry.value("store_findings_dropped_total") == found
    assert caplog.text.count("otel-apm: api failed") == 1


def test_no_api_without_a_store() -> None:
    service = CollectorService(collector_config(api__endpoint="127.0.0.1:0")).start()
    try:
        assert service.api_port == 0
    finally:
        service.shutdown(5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"store.url": "mysql://x/y"}, "store.url: unknown scheme 'mysql'; expected sqlite:///"),
        ({"store.url": 7}, "store.url: expected text, got 7"),
        ({"store.retention_days": 0}, "store.retention_days: expected a number >= 0.01, got 0"),
        ({"store.examples": 0}, "store.examples: expected an integer >= 1, got 0"),
        ({"store.nope": 1}, "store.nope: unknown key"),
        (
            {"analysis.store_url": "sqlite:///x"},
            "analysis.store_url: the store is configured in its own section",
        ),
        ({"api.endpoint": "8889"}, "api.endpoint: expected host:port"),
    ],
)
def test_store_and_api_settings_are_validated(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=overrides, environ={})
    assert str(caught.value).startswith(message)


def test_collector_flags_set_the_store_and_the_api(capsys: pytest.CaptureFixture[str]) -> None:
    from otel_apm import cli

    assert cli.main(["collector", "--store", "mysql://x/y", "--api-endpoint", "127.0.0.1:0"]) == 2
    assert "store.url: unknown scheme 'mysql'" in capsys.readouterr().err
    assert cli.main(["collector", "--store", "sqlite:///x.sqlite", "--api-endpoint", "8889"]) == 2
    assert "api.endpoint: expected host:port" in capsys.readouterr().err


def test_the_store_section_becomes_the_analysis_settings(tmp_path: Any) -> None:
    default = load_config(environ={})
    assert (default.store.url, default.analysis.store_url, default.api.endpoint) == (
        None,
        "",
        "localhost:8889",
    )
    assert default.analysis.store_retention_days == default.store.retention_days == 30
    url = f"sqlite:///{tmp_path / 'x.sqlite'}"
    config = load_config(
        overrides={"store.url": url, "store.retention_days": 2, "store.examples": 3}, environ={}
    )
    analysis = config.analysis
    assert (analysis.store_url, analysis.store_retention_days, analysis.store_examples) == (url, 2, 3)
