"""The ``otel-apm`` command, run as a user runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clean_environ

OTEL_APM = Path(sys.executable).parent / "otel-apm"


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = clean_environ()
    return subprocess.run(
        [str(OTEL_APM), *args], capture_output=True, text=True, timeout=300, env={**clean, **env}
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    return run("demo", "--db", str(tmp_path_factory.mktemp("demo") / "shop.sqlite"))


def test_demo_reports_the_n_plus_one_and_the_slow_query(demo: subprocess.CompletedProcess[str]) -> None:
    assert demo.returncode == 0, demo.stderr
    out = demo.stdout
    assert "n_plus_one_query   GET /authors             x3  N+1 queries: 12 x SELECT on books" in out
    assert "slow_query         GET /reports/ratings     x1  Slow SELECT on reviews" in out
    findings, _, endpoints = out.partition("\nEndpoints, last minute")
    assert "GET /authors/eager" not in findings  # the eager-loading route is clean
    assert "late 0, errors 0" in out
    # the rolling statistics of the last minute: /authors ran three times, 13 queries each
    assert re.search(r"^  GET /authors +x3 +p95 +[0-9.]+ ms +DB +[0-9]+% +13\.0 queries$", endpoints, re.M), (
        out
    )
    assert re.search(r"^  GET /authors/eager +x1 .* 2\.0 queries$", endpoints, re.M), out
    # the console reporter printed each problem once, though /authors ran three times
    assert demo.stderr.count("[otel-apm] WARNING n_plus_one_query") == 1


def test_demo_exports_over_otlp(tmp_path: Path) -> None:
    from otlp_sink import OTLPSink

    with OTLPSink() as sink:
        result = run("demo", "--db", str(tmp_path / "shop.sqlite"), "--otlp-endpoint", sink.endpoint)
        assert result.returncode == 0, result.stderr
        sink.wait_for(lambda: sink.log_records(), message="finding events")
        types = {
            a.value.string_value
            for _, record in sink.log_records()
            for a in record.attributes
            if a.key == "otel_apm.finding.type"
        }
        # The slow report query takes the request past 1 s too when the machine is loaded.
        expected = {"n_plus_one_query", "slow_query"}
        assert expected <= types <= expected | {"slow_request"}
        assert sink.spans()


def test_config_lists_every_variable_with_its_value() -> None:
    result = run("config", APM_SLOW_QUERY_THRESHOLD_MS="250")
    assert result.returncode == 0
    line = next(x for x in result.stdout.splitlines() if x.startswith("APM_SLOW_QUERY_THRESHOLD_MS"))
    assert "250.0" in line


def test_invalid_configuration_exits_2_naming_the_variable() -> None:
    result = run("config", APM_SAMPLE_RATE="2")
    assert result.returncode == 2
    assert "APM_SAMPLE_RATE=2.0: expected a number from 0 to 1" in result.stderr


def test_every_command_is_documented_in_the_readme() -> None:
    listed = run("--help").stdout
    commands = re.search(r"\{([a-z,]+)\}", listed)
    assert commands is not None, listed
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    undocumented = [c for c in commands.group(1).split(",") if f"otel-apm {c}" not in readme]
    assert undocumented == []
