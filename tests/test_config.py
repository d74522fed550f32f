"""APMConfig: the seed's variables, keyword arguments, validation that names the variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from otel_apm import APMConfig, ConfigError

README = Path(__file__).resolve().parent.parent / "README.md"


def test_defaults_are_the_seeds() -> None:
    c = APMConfig.from_env({})
    assert (c.enabled, c.environment, c.sample_rate) == (True, "development", 1.0)
    assert (c.slow_query_threshold_ms, c.slow_request_threshold_ms) == (100, 1000)
    assert (c.memory_threshold_mb, c.n_plus_one_threshold) == (512, 5)
    assert (c.profiling_enabled, c.profiling_interval_ms) == (False, 60000)
    assert c.export_mode == "passthrough"


def test_every_seed_variable_is_read() -> None:
    env = {
        "APM_ENABLED": "false",
        "APM_SERVICE_NAME": "my-service",
        "APM_ENVIRONMENT": "production",
        "APM_SAMPLE_RATE": "0.1",
        "APM_SLOW_QUERY_THRESHOLD_MS": "250",
        "APM_SLOW_REQUEST_THRESHOLD_MS": "2000",
        "APM_MEMORY_THRESHOLD_MB": "1024",
        "APM_N_PLUS_ONE_THRESHOLD": "8",
        "APM_PROFILING_ENABLED": "true",
        "APM_PROFILING_INTERVAL": "30000",
    }
    c = APMConfig.from_env(env)
    assert (c.enabled, c.service_name, c.environment, c.sample_rate) == (
        False,
        "my-service",
        "production",
        0.1,
    )
    assert (c.slow_query_threshold_ms, c.slow_request_threshold_ms, c.memory_threshold_mb) == (
        250,
        2000,
        1024,
    )
    assert (c.n_plus_one_threshold, c.profiling_enabled, c.profiling_interval_ms) == (8, True, 30000)


def test_service_name_falls_back_to_otel_service_name() -> None:
    assert APMConfig.from_env({"OTEL_SERVICE_NAME": "svc"}).service_name == "svc"
    both = {"OTEL_SERVICE_NAME": "svc", "APM_SERVICE_NAME": "apm"}
    assert APMConfig.from_env(both).service_name == "apm"


def test_keyword_arguments_win_over_the_environment() -> None:
    c = APMConfig.from_env({"APM_N_PLUS_ONE_THRESHOLD": "8"}, n_plus_one_threshold=3)
    assert c.n_plus_one_threshold == 3


def test_blank_values_mean_unset() -> None:
    assert APMConfig.from_env({"APM_SLOW_QUERY_THRESHOLD_MS": "  "}).slow_query_threshold_ms == 100


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"APM_SLOW_QUERY_THRESHOLD_MS": "abc"}, "APM_SLOW_QUERY_THRESHOLD_MS='abc': expected a number >= 0"),
        ({"APM_SLOW_QUERY_THRESHOLD_MS": "-5"}, "APM_SLOW_QUERY_THRESHOLD_MS=-5.0: expected a number >= 0"),
        ({"APM_SAMPLE_RATE": "1.5"}, "APM_SAMPLE_RATE=1.5: expected a number from 0 to 1"),
        ({"APM_SAMPLE_RATE": "nan"}, "APM_SAMPLE_RATE=nan: expected a number from 0 to 1"),
        ({"APM_ENABLED": "maybe"}, "APM_ENABLED='maybe': expected true or false"),
        ({"APM_N_PLUS_ONE_THRESHOLD": "2.5"}, "APM_N_PLUS_ONE_THRESHOLD='2.5': expected an integer >= 2"),
        ({"APM_N_PLUS_ONE_THRESHOLD": "1"}, "APM_N_PLUS_ONE_THRESHOLD=1: expected an integer >= 2"),
        ({"APM_EXPORT_MODE": "head"}, "APM_EXPORT_MODE='head': expected one of passthrough, tail"),
    ],
)
def test_invalid_values_name_the_variable_and_what_it_accepts(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        APMConfig.from_env(env)
    assert str(exc.value) == message


def test_keyword_values_are_validated_too() -> None:
    with pytest.raises(ConfigError, match=r"APM_MAX_TRACES_IN_FLIGHT=0: expected an integer >= 1"):
        APMConfig(max_traces_in_flight=0)
    with pytest.raises(ConfigError, match="APM_CONSOLE_ENABLED='yes'"):
        APMConfig(console_enabled="yes")  # type: ignore[arg-type]


def test_booleans_accept_the_usual_spellings() -> None:
    for raw, value in [("1", True), ("on", True), ("YES", True), ("0", False), ("Off", False)]:
        assert APMConfig.from_env({"APM_ENABLED": raw}).enabled is value


def test_the_readme_settings_table_gives_every_variable_and_its_default() -> None:
    """The table in README's Configuration section, row by row against APMConfig's defaults."""
    rows = dict(re.findall(r"^\| `(APM_[A-Z0-9_]+)` \| (.+?) \| .+ \|$", README.read_text(), re.MULTILINE))

    def same(documented: str, default: str) -> bool:
        if default == "":
            return documented == "(none)"
        documented = documented.strip("`")
        try:
            return float(documented) == float(default)
        except ValueError:
            return documented.lower() == default.lower()

    for variable, default, _ in APMConfig().describe():
        assert variable in rows, f"{variable}: no row in README's settings table"
        if variable != "APM_SERVICE_NAME":  # empty: OTEL_SERVICE_NAME, then the resource's
            assert same(rows[variable], default), (
                f"{variable}: README says {rows[variable]}, the code {default!r}"
            )
