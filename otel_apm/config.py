"""One typed configuration for every deployment, with every default in one place.

Values come from, in rising priority: the defaults below, the seed's ``APM_*`` environment
variables (the names its users already know), and keyword arguments.  Each field carries its
environment variable and its bounds in metadata, so parsing, validation and the error message
naming the variable are written once, not per field.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

ExportMode = Literal["passthrough", "tail"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class ConfigError(ValueError):
    """An invalid setting; the message names the variable and what it accepts."""


def _setting(
    default: Any,
    env: str | None,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    doc: str = "",
) -> Any:
    return field(default=default, metadata={"env": env, "min": minimum, "max": maximum, "doc": doc})


@dataclass(frozen=True)
class APMConfig:
    """Settings of the analyzer.  Build it with :meth:`from_env`; the constructor does no I/O."""

    enabled: bool = _setting(True, "APM_ENABLED", doc="analyze spans at all")
    service_name: str = _setting(
        "",
        "APM_SERVICE_NAME",
        doc="service named in findings; falls back to OTEL_SERVICE_NAME, then the resource",
    )
    environment: str = _setting("development", "APM_ENVIRONMENT", doc="deployment.environment.name")
    sample_rate: float = _setting(
        1.0,
        "APM_SAMPLE_RATE",
        minimum=0.0,
        maximum=1.0,
        doc="tail mode: share of unremarkable traces that are exported",
    )
    export_mode: ExportMode = _setting(
        "passthrough",
        "APM_EXPORT_MODE",
        doc="passthrough: export every span at once; tail: hold a local trace and keep it whole "
        "when it has a finding, an error or is slow, else with probability sample_rate",
    )
    slow_query_threshold_ms: float = _setting(100.0, "APM_SLOW_QUERY_THRESHOLD_MS", minimum=0.0)
    slow_request_threshold_ms: float = _setting(1000.0, "APM_SLOW_REQUEST_THRESHOLD_MS", minimum=0.0)
    memory_threshold_mb: float = _setting(512.0, "APM_MEMORY_THRESHOLD_MB", minimum=0.0)
    n_plus_one_threshold: int = _setting(5, "APM_N_PLUS_ONE_THRESHOLD", minimum=2)
    n_plus_one_api_threshold: int = _setting(
        5,
        "APM_N_PLUS_ONE_API_THRESHOLD",
        minimum=2,
        doc="HTTP client calls with one method and URL template under one parent that make an N+1",
    )
    critical_factor: float = _setting(
        5.0,
        "APM_CRITICAL_FACTOR",
        minimum=1.0,
        doc="a finding is critical once its measure reaches this multiple of its threshold",
    )
    profiling_enabled: bool = _setting(False, "APM_PROFILING_ENABLED")
    profiling_interval_ms: int = _setting(60000, "APM_PROFILING_INTERVAL", minimum=1)
    max_traces_in_flight: int = _setting(
        2048,
        "APM_MAX_TRACES_IN_FLIGHT",
        minimum=1,
        doc="open local traces held; past it the oldest is analyzed as it is",
    )
    max_spans_per_trace: int = _setting(
        2000,
        "APM_MAX_SPANS_PER_TRACE",
        minimum=1,
        doc="spans kept for analysis per local trace; later ones are exported and counted",
    )
    console_enabled: bool = _setting(True, "APM_CONSOLE_ENABLED", doc="one line per finding on stderr")
    console_interval_s: float = _setting(
        60.0, "APM_CONSOLE_INTERVAL_S", minimum=0.0, doc="a fingerprint is printed at most once per interval"
    )
    span_events_enabled: bool = _setting(
        True, "APM_SPAN_EVENTS_ENABLED", doc="attach findings to the local root as span events"
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _validate(f, getattr(self, f.name))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> APMConfig:
        """Read the ``APM_*`` variables; keyword arguments win over them."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            raw = env.get(name) if name else None
            if raw is not None and raw.strip() != "":
                values[f.name] = _parse(f, raw.strip(), name)
        if not values.get("service_name") and env.get("OTEL_SERVICE_NAME"):
            values["service_name"] = env["OTEL_SERVICE_NAME"].strip()
        values.update(overrides)
        return cls(**values)

    def describe(self) -> list[tuple[str, str, str]]:
        """(variable, current value, meaning) rows, for ``otel-apm config`` and the README."""
        return [
            (f.metadata["env"], str(getattr(self, f.name)), f.metadata["doc"])
            for f in dataclasses.fields(self)
        ]


_TYPES: dict[str, Any] = {"bool": bool, "str": str, "float": float, "int": int, "ExportMode": ExportMode}


def _field_type(f: dataclasses.Field[Any]) -> Any:
    return _TYPES[str(f.type)]


def _accepts(f: dataclasses.Field[Any]) -> str:
    kind = _field_type(f)
    if kind is bool:
        return "true or false"
    if kind in (int, float):
        noun = "an integer" if kind is int else "a number"
        lo, hi = f.metadata["min"], f.metadata["max"]
        if lo is not None and hi is not None:
            return f"{noun} from {lo:g} to {hi:g}"
        return f"{noun} >= {lo:g}" if lo is not None else noun
    if kind is str:
        return "text"
    return "one of " + ", ".join(get_args(ExportMode))


def _parse(f: dataclasses.Field[Any], raw: str, source: str) -> Any:
    kind = _field_type(f)
    try:
        if kind is bool:
            low = raw.lower()
            if low in _TRUE or low in _FALSE:
                return low in _TRUE
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        return raw if kind is str else raw.lower()
    except ValueError:
        raise ConfigError(f"{source}={raw!r}: expected {_accepts(f)}") from None


def _validate(f: dataclasses.Field[Any], value: Any) -> None:
    kind = _field_type(f)
    where = f.metadata["env"] or f.name
    ok: bool
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind in (int, float):
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (kind is float or isinstance(value, int))
            and math.isfinite(value)
            and (f.metadata["min"] is None or value >= f.metadata["min"])
            and (f.metadata["max"] is None or value <= f.metadata["max"])
        )
    elif kind is str:
        ok = isinstance(value, str)
    else:
        ok = value in get_args(kind)
    if not ok:
        raise ConfigError(f"{where}={value!r}: expected {_accepts(f)}")
