"""The collector's configuration: YAML files (tests/testdata/collector/), flags, and the error
messages that name the key path; the command exits 2 on each of them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_apm.cli import main
from otel_apm.collector.config import CollectorConfig, ConfigError, load_config
from otel_apm.config import APMConfig, Suppression

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "testdata" / "collector"


def test_an_empty_file_gives_the_documented_defaults() -> None:
    config = load_config(str(DATA / "empty.yaml"), environ={})
    assert config == CollectorConfig()
    assert config.receivers.grpc.endpoint == "localhost:4317"
    assert config.receivers.grpc.max_recv_msg_size == 4 * 1024 * 1024
    assert config.receivers.http.endpoint == "localhost:4318"
    assert config.receivers.http.max_request_body_size == 20 * 1024 * 1024
    assert config.receivers.http.max_decompressed_size == 64 * 1024 * 1024
    assert config.receivers.auth.bearer_token is None
    assert not config.receivers.tls.enabled
    assert config.downstream.endpoint is None
    assert config.downstream.protocol == "grpc"
    assert config.downstream.headers == {}
    assert config.downstream.timeout_s == 10
    assert config.downstream.queue_size == 10000
    assert (config.downstream.retry.initial_interval_s, config.downstream.retry.max_interval_s) == (0.5, 30)
    assert config.downstream.retry.max_elapsed_s == 300
    assert (config.assembly.idle_timeout_s, config.assembly.max_wait_s) == (2, 30)
    assert config.assembly.max_spans_in_flight == 500000
    assert config.assembly.gc_young_threshold == 500000
    assert config.analysis == APMConfig()
    assert config.telemetry.endpoint == "localhost:8888"
    assert config.shutdown.timeout_s == 20


def test_every_key_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(str(DATA / "full.yaml"), environ={"OTEL_APM_TEST_TOKEN": "t0k"})
    rc = config.receivers
    assert (rc.grpc.endpoint, rc.grpc.max_recv_msg_size_mib, rc.grpc.max_workers) == ("0.0.0.0:14317", 8, 32)
    assert (rc.http.endpoint, rc.http.max_request_body_size_mib) == ("[::1]:14318", 10)
    assert rc.http.max_decompressed_size == 32 * 1024 * 1024
    assert rc.auth.bearer_token == "t0k"  # ${env:NAME}
    assert rc.retry_after_s == 2.5
    ds = config.downstream
    assert ds.endpoint == "https://backend.example:4318/otlp"
    assert ds.protocol == "http/protobuf"
    assert ds.headers == {"x-scope-orgid": "tenant-1", "api-key": "k-t0k"}  # ${NAME} too
    assert (ds.timeout_s, ds.compression, ds.queue_size, ds.queue_size_mib, ds.workers) == (
        5,
        "none",
        100,
        64,
        2,
    )
    assert (ds.retry.initial_interval_s, ds.retry.max_interval_s, ds.retry.max_elapsed_s) == (1, 10, 60)
    assert config.assembly.idle_timeout_s == 1.5
    assert config.assembly.max_spans_in_flight == 1000
    assert config.assembly.gc_young_threshold == 2000
    assert config.analysis.slow_query_threshold_ms == 50
    assert config.analysis.n_plus_one_threshold == 3
    assert config.analysis.console_enabled is False
    assert config.telemetry.endpoint is None
    assert config.shutdown.timeout_s == 5
    assert ds.histograms == "exponential"
    assert ds.events_per_request == 100
    assert config.store.url == config.analysis.store_url == "postgresql://apm@db.example/apm?schema=otel_apm"
    store = config.analysis
    assert (store.store_retention_days, store.store_resolve_after_h, store.store_minute_stats_h) == (7, 12, 3)
    assert (store.store_examples, store.store_queue_size) == (2, 500)
    assert config.api.endpoint == "127.0.0.1:18889"


def test_the_full_example_names_every_key() -> None:
    """full.yaml is the one place every key is read from a file: a key added to config.py must
    be added there too (the analysis section is APMConfig's, checked by its own tests)."""

    def keys(cls: type, prefix: str = "") -> set[str]:
        out: set[str] = set()
        for f in dataclasses.fields(cls):
            if "section" in f.metadata:
                out |= keys(f.metadata["section"], f"{prefix}{f.name}.")
            elif "analysis" not in f.metadata:
                out.add(prefix + f.name)
        return out

    def written(data: dict[str, Any], prefix: str = "") -> set[str]:
        out: set[str] = set()
        for key, value in data.items():
            if isinstance(value, dict) and key not in ("analysis", "headers"):
                out |= written(value, f"{prefix}{key}.")
            elif key != "analysis":
                out.add(prefix + key)
        return out

    assert written(yaml.safe_load((DATA / "full.yaml").read_text())) == keys(CollectorConfig)


def test_flags_override_the_file() -> None:
    config = load_config(
        str(DATA / "full.yaml"),
        {
            "downstream.endpoint": "collector:4317",
            "downstream.protocol": "grpc",
            "telemetry.endpoint": "none",
        },
        environ={"OTEL_APM_TEST_TOKEN": "x"},
    )
    assert config.downstream.endpoint == "http://collector:4317"  # a bare host:port is plain http
    assert config.downstream.protocol == "grpc"
    assert config.downstream.queue_size == 100  # from the file
    assert config.telemetry.endpoint is None


def test_the_analysis_section_takes_suppression_rules_and_disabled_detectors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "analysis:\n"
        "  disabled_detectors: [slow_request]\n"
        "  suppressions:\n"
        "    - {type: n_plus_one_query, endpoint: 'GET /batch/*'}\n"
        "    - {code: '*/jobs.py:*'}\n"
    )
    analysis = load_config(str(path), environ={}).analysis
    assert analysis.disabled_detectors == ("slow_request",)
    assert analysis.suppressions == (
        Suppression(type="n_plus_one_query", endpoint="GET /batch/*"),
        Suppression(code="*/jobs.py:*"),
    )


def test_the_analysis_section_starts_from_defaults_not_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APM_N_PLUS_ONE_THRESHOLD", "9")
    assert load_config(str(DATA / "empty.yaml")).analysis.n_plus_one_threshold == 5


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bad_protocol.yaml", "downstream.protocol: expected grpc or http/protobuf, got 'udp'"),
        ("unknown_key.yaml", "receivers.grpc.endpiont: unknown key (expected one of endpoint, "),
        ("bad_analysis.yaml", "analysis.sample_rate: expected a number from 0 to 1, got 2"),
        ("bad_endpoint.yaml", "receivers.http.endpoint: expected host:port"),
        ("tls_without_key.yaml", "receivers.tls.key_file: cert_file and key_file are set together"),
        ("not_a_mapping.yaml", "expected a mapping at the top"),
        ("invalid_yaml.yaml", "is not valid YAML"),
        ("negative_size.yaml", "receivers.http.max_request_body_size_mib: expected a number > 0, got -1"),
        ("missing.yaml", "cannot read config file"),
    ],
)
def test_invalid_files_name_the_key_path_and_the_command_exits_2(
    name: str, message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)  # tls_without_key.yaml names a file relative to the repository
    with pytest.raises(ConfigError) as caught:
        load_config(str(DATA / name), environ={})
    assert message in str(caught.value)
    assert main(["collector", "--config", str(DATA / name)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"downstream.endpoint": "ftp://x:21"}, "downstream.endpoint: expected a URL with a port"),
        ({"downstream.endpoint": "http://nohost"}, "downstream.endpoint: expected a URL with a port"),
        ({"downstream.queue_size": 0}, "downstream.queue_size: expected an integer >= 1, got 0"),
        ({"downstream.workers": 1.5}, "downstream.workers: expected an integer >= 1, got 1.5"),
        ({"downstream.timeout_s": True}, "downstream.timeout_s: expected a number > 0, got True"),
        ({"downstream.headers": ["a"]}, "downstream.headers: expected a mapping"),
        (
            {"downstream.headers": {"bad name": "x"}},
            "downstream.headers: 'bad name' is not a valid header name",
        ),
        ({"downstream.retry.max_interval_s": 0.1}, "downstream.retry.max_interval_s: expected at least"),
        ({"receivers.grpc.endpoint": "localhost:70000"}, "receivers.grpc.endpoint: expected host:port"),
        ({"receivers.auth.bearer_token": ""}, "receivers.auth.bearer_token: expected non-empty text or null"),
        ({"receivers.tls.cert_file": "/no/such.pem"}, "receivers.tls.cert_file: no such file '/no/such.pem'"),
        ({"analysis.export_mode": "x"}, "analysis.export_mode: expected one of passthrough, tail, got 'x'"),
        ({"analysis.nope": 1}, "analysis.nope: unknown key"),
        ({"analysis.disabled_detectors": ["n_plus_one"]}, "analysis.disabled_detectors: APM_DISABLED_DET"),
        ({"analysis.suppressions": [{"kind": "x"}]}, "analysis.suppressions: unknown key(s) ['kind']"),
        ({"analysis.suppressions": "x"}, "analysis.suppressions: expected a list of rules"),
        ({"assembly": 3}, "assembly: expected a mapping, got 3"),
        ({"receivers.auth.bearer_token": "${env:NOT_SET_ANYWHERE}"}, None),
    ],
)
def test_invalid_values_name_the_key_path(overrides: dict[str, object], message: str | None) -> None:
    if message is None:  # ${env:...} is expanded in the file only: a flag is taken as written
        assert (
            load_config(overrides=overrides, environ={}).receivers.auth.bearer_token
            == "${env:NOT_SET_ANYWHERE}"
        )
        return
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=overrides, environ={})
    assert message in str(caught.value)


def test_a_missing_environment_variable_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("receivers:\n  auth:\n    bearer_token: ${env:OTEL_APM_NOT_SET}\n")
    with pytest.raises(
        ConfigError, match=r"receivers\.auth\.bearer_token: environment variable OTEL_APM_NOT_SET"
    ):
        load_config(str(path), environ={})


def test_the_deployed_analyzer_config_is_valid() -> None:
    path = ROOT / "collector_config" / "otel-apm.yaml"
    if not path.exists():
        pytest.skip("collector_config/otel-apm.yaml is not in this checkout")
    config = load_config(str(path), environ={})
    assert config.receivers.grpc.endpoint.endswith(":4317")
    assert config.telemetry.endpoint is not None and config.telemetry.endpoint.endswith(":8888")


def test_a_refused_store_url_is_not_repeated_with_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"store.url": "postgresql://apm:s3cret@db:x/apm"}, environ={})
    assert str(caught.value).startswith("store.url: the port is not a number")
    assert "s3cret" not in str(caught.value)


def test_the_documented_example_is_a_valid_configuration(tmp_path: Path) -> None:
    """docs/collector.md's annotated file: every key it shows is one the collector reads."""
    text = (ROOT / "docs" / "collector.md").read_text()
    section = text[text.index("### The configuration file") :]
    start = section.index("```yaml\n") + len("```yaml\n")
    path = tmp_path / "collector.yaml"
    path.write_text(section[start : section.index("```\n", start)])
    config = load_config(str(path), environ={"OTEL_APM_TOKEN": "t", "APM_WEBHOOK_SECRET": "s"})
    assert config.analysis.reporters == ("metrics", "webhook")
    assert config.store.url is not None and config.api.endpoint == "0.0.0.0:8889"
