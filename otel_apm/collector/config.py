"""The collector's configuration: typed, validated, every default in this file only.

Read from YAML (every key optional), then command-line flags on top.  Each setting is a dataclass
field whose metadata holds its check, so parsing, validation and the error message naming the key
path (``downstream.protocol: expected grpc or http/protobuf, got 'udp'``) are written once.
String values may name environment variables as ``${env:NAME}`` (as in the OpenTelemetry
Collector's configuration), so a token need not be written into the file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from otel_apm.analyze import check_detector_names
from otel_apm.config import APMConfig, ConfigError

__all__ = [
    "ApiConfig",
    "AssemblyConfig",
    "AuthConfig",
    "CollectorConfig",
    "ConfigError",
    "DownstreamConfig",
    "GrpcReceiverConfig",
    "HttpReceiverConfig",
    "ReceiversConfig",
    "RetryConfig",
    "ShutdownConfig",
    "StoreConfig",
    "TLSConfig",
    "TelemetryConfig",
    "load_config",
    "parse_endpoint",
]

Protocol = Literal["grpc", "http/protobuf"]
Compression = Literal["gzip", "none"]
HistogramAggregation = Literal["env", "explicit", "exponential"]
MIB = 1024 * 1024

Check = Callable[[Any, str], Any]


def _m(check: Check, doc: str = "") -> dict[str, Any]:
    """A setting's metadata: its check and its meaning."""
    return {"check": check, "doc": doc}


def _sec(cls: type[Any]) -> dict[str, Any]:
    """A section's metadata: the dataclass its mapping builds."""
    return {"section": cls}


def _describe(value: Any) -> str:
    return "null" if value is None else repr(value)


# -- checks: each returns the (normalized) value or raises ConfigError naming the path -----------


def _number(minimum: float, *, exclusive: bool = False, integer: bool = False) -> Check:
    noun = "an integer" if integer else "a number"
    accepts = f"{noun} {'>' if exclusive else '>='} {minimum:g}"

    def check(value: Any, path: str) -> Any:
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (not integer or isinstance(value, int))
            and math.isfinite(value)
            and (value > minimum if exclusive else value >= minimum)
        )
        if not ok:
            raise ConfigError(f"{path}: expected {accepts}, got {_describe(value)}")
        return value if integer else float(value)

    return check


def _choice(*options: str) -> Check:
    accepts = " or ".join(options) if len(options) == 2 else "one of " + ", ".join(options)

    def check(value: Any, path: str) -> Any:
        if value not in options:
            raise ConfigError(f"{path}: expected {accepts}, got {_describe(value)}")
        return value

    return check


def parse_endpoint(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:4317`` for IPv6) -> (host, port); ValueError when malformed."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(value)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not 0 <= port <= 65535 or not host:
        raise ValueError(value)
    return host, port


def _listen_endpoint(optional: bool) -> Check:
    def check(value: Any, path: str) -> Any:
        if optional and (value is None or (isinstance(value, str) and value.strip().lower() in ("", "none"))):
            return None
        try:
            if not isinstance(value, str):
                raise ValueError(value)
            parse_endpoint(value)
        except ValueError:
            raise ConfigError(
                f"{path}: expected host:port (e.g. localhost:4317 or 0.0.0.0:4317)"
                f"{' or null' if optional else ''}, got {_describe(value)}"
            ) from None
        return value

    return check


def _downstream_endpoint(value: Any, path: str) -> Any:
    """A URL (``http://jaeger:4317``, ``https://backend:4318/otlp``); a bare host:port means http."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
        return None
    if isinstance(value, str):
        text = value.strip()
        if "://" not in text:
            text = "http://" + text
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError:
            parts, port = None, None
        if parts is not None and parts.scheme in ("http", "https") and parts.hostname and port is not None:
            return text.rstrip("/")
    raise ConfigError(
        f"{path}: expected a URL with a port such as http://collector:4317 (https for TLS), or null, "
        f"got {_describe(value)}"
    )


def _optional_text(value: Any, path: str) -> Any:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: expected non-empty text or null, got {_describe(value)}")
    return value


def _optional_file(value: Any, path: str) -> Any:
    value = _optional_text(value, path)
    if value is not None and not os.path.isfile(value):
        raise ConfigError(f"{path}: no such file {value!r}")
    return value


def _headers(value: Any, path: str) -> Any:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a mapping of header names to values, got {_describe(value)}")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", key):
            raise ConfigError(f"{path}: {key!r} is not a valid header name")
        if not isinstance(item, (str, int, float)) or isinstance(item, bool) or "\n" in str(item):
            raise ConfigError(f"{path}.{key}: expected text, got {_describe(item)}")
        out[key.lower()] = str(item)
    return out


# -- the sections ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GrpcReceiverConfig:
    endpoint: str = field(
        default="localhost:4317", metadata=_m(_listen_endpoint(False), "OTLP/gRPC listen address")
    )
    max_recv_msg_size_mib: float = field(
        default=4,
        metadata=_m(_number(0, exclusive=True), "largest request accepted (RESOURCE_EXHAUSTED above)"),
    )
    max_workers: int = field(default=16, metadata=_m(_number(1, integer=True), "threads serving requests"))

    @property
    def max_recv_msg_size(self) -> int:
        return int(self.max_recv_msg_size_mib * MIB)


@dataclass(frozen=True)
class HttpReceiverConfig:
    endpoint: str = field(
        default="localhost:4318", metadata=_m(_listen_endpoint(False), "OTLP/HTTP listen address")
    )
    max_request_body_size_mib: float = field(
        default=20, metadata=_m(_number(0, exclusive=True), "largest request body as sent (413 above)")
    )
    max_decompressed_size_mib: float = field(
        default=64, metadata=_m(_number(0, exclusive=True), "largest body once decompressed (413 above)")
    )

    @property
    def max_request_body_size(self) -> int:
        return int(self.max_request_body_size_mib * MIB)

    @property
    def max_decompressed_size(self) -> int:
        return int(self.max_decompressed_size_mib * MIB)


@dataclass(frozen=True)
class AuthConfig:
    bearer_token: str | None = field(
        default=None,
        metadata=_m(_optional_text, 'when set, both receivers require "authorization: Bearer <token>"'),
    )


@dataclass(frozen=True)
class TLSConfig:
    cert_file: str | None = field(
        default=None, metadata=_m(_optional_file, "PEM certificate (chain) of both receivers")
    )
    key_file: str | None = field(
        default=None, metadata=_m(_optional_file, "PEM private key of both receivers")
    )

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


@dataclass(frozen=True)
class ReceiversConfig:
    grpc: GrpcReceiverConfig = field(default_factory=GrpcReceiverConfig, metadata=_sec(GrpcReceiverConfig))
    http: HttpReceiverConfig = field(default_factory=HttpReceiverConfig, metadata=_sec(HttpReceiverConfig))
    auth: AuthConfig = field(default_factory=AuthConfig, metadata=_sec(AuthConfig))
    tls: TLSConfig = field(default_factory=TLSConfig, metadata=_sec(TLSConfig))
    retry_after_s: float = field(
        default=1.0,
        metadata=_m(
            _number(0, exclusive=True),
            "delay a refused client is told to wait (gRPC RetryInfo, HTTP Retry-After)",
        ),
    )


@dataclass(frozen=True)
class RetryConfig:
    initial_interval_s: float = field(default=0.5, metadata=_m(_number(0, exclusive=True)))
    max_interval_s: float = field(default=30.0, metadata=_m(_number(0, exclusive=True)))
    max_elapsed_s: float = field(
        default=300.0, metadata=_m(_number(0), "give a request up after retrying this long")
    )


@dataclass(frozen=True)
class DownstreamConfig:
    endpoint: str | None = field(
        default=None, metadata=_m(_downstream_endpoint, "where everything is forwarded; null = analyze only")
    )
    protocol: Protocol = field(default="grpc", metadata=_m(_choice("grpc", "http/protobuf")))
    headers: Mapping[str, str] = field(
        default_factory=dict, metadata={"check": _headers, "doc": "sent with every request (gRPC metadata)"}
    )
    timeout_s: float = field(default=10.0, metadata=_m(_number(0, exclusive=True), "per attempt"))
    compression: Compression = field(default="gzip", metadata=_m(_choice("gzip", "none")))
    queue_size: int = field(
        default=10000, metadata=_m(_number(1, integer=True), "requests waiting to be forwarded")
    )
    queue_size_mib: float = field(
        default=512,
        metadata=_m(_number(0, exclusive=True), "bytes waiting to be forwarded, at most (a second bound)"),
    )
    workers: int = field(default=4, metadata=_m(_number(1, integer=True), "requests forwarded concurrently"))
    events_per_request: int = field(
        default=512,
        metadata=_m(
            _number(1, integer=True),
            "finding events sent in one log request at most (the collector's own; an analysis batch "
            "with more sends more requests)",
        ),
    )
    ca_file: str | None = field(
        default=None, metadata=_m(_optional_file, "PEM CA bundle to verify an https downstream")
    )
    retry: RetryConfig = field(default_factory=RetryConfig, metadata=_sec(RetryConfig))
    histograms: HistogramAggregation = field(
        default="env",
        metadata=_m(
            _choice("env", "explicit", "exponential"),
            "aggregation of the findings' duration histograms: exponential (base-2, scale chosen "
            "by the SDK), explicit (the advisory buckets), or env: "
            "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION decides (explicit when unset)",
        ),
    )

    @property
    def queue_max_bytes(self) -> int:
        return int(self.queue_size_mib * MIB)


@dataclass(frozen=True)
class AssemblyConfig:
    idle_timeout_s: float = field(
        default=2.0, metadata=_m(_number(0), "a trace whose root has arrived is analyzed once idle this long")
    )
    max_wait_s: float = field(
        default=30.0, metadata=_m(_number(0, exclusive=True), "a trace is analyzed at this age, root or not")
    )
    max_spans_in_flight: int = field(
        default=500000,
        metadata=_m(_number(1, integer=True), "spans held for assembly; past it requests are refused"),
    )
    gc_young_threshold: int = field(
        default=500000,
        metadata=_m(
            _number(1, integer=True),
            "the collector process's young-generation GC threshold (Python's default: 700)",
        ),
    )


@dataclass(frozen=True)
class TelemetryConfig:
    endpoint: str | None = field(
        default="localhost:8888",
        metadata=_m(_listen_endpoint(True), "Prometheus /metrics (and /healthz); null = off"),
    )


_SECRET_SETTINGS = {f.name: f.metadata["secret"] for f in dataclasses.fields(APMConfig)}


def _apm_default(name: str) -> Any:
    return next(f.default for f in dataclasses.fields(APMConfig) if f.name == name)


def _apm_setting(name: str, *, optional: bool = False) -> Check:
    """The check of APMConfig's ``name`` (bounds, the store URL's syntax), naming the YAML path."""

    def check(value: Any, path: str) -> Any:
        if optional and value is None:
            return None
        _check_analysis_value(name, value, path)
        return value

    return check


@dataclass(frozen=True)
class StoreConfig:
    """The findings store, each key being the analysis setting ``store_<key>`` (APM_STORE_<KEY>):
    its default and its check are APMConfig's; the collector's reporters read them from there."""

    url: str | None = field(
        default=None,
        metadata=_m(
            _apm_setting("store_url", optional=True),
            "sqlite:///file.sqlite or postgresql://user@host/db[?schema=name]; null = no store",
        ),
    )
    retention_days: float = field(
        default=_apm_default("store_retention_days"), metadata=_m(_apm_setting("store_retention_days"))
    )
    resolve_after_h: float = field(
        default=_apm_default("store_resolve_after_h"), metadata=_m(_apm_setting("store_resolve_after_h"))
    )
    minute_stats_h: float = field(
        default=_apm_default("store_minute_stats_h"), metadata=_m(_apm_setting("store_minute_stats_h"))
    )
    examples: int = field(default=_apm_default("store_examples"), metadata=_m(_apm_setting("store_examples")))
    queue_size: int = field(
        default=_apm_default("store_queue_size"), metadata=_m(_apm_setting("store_queue_size"))
    )

    def settings(self) -> dict[str, Any]:
        """As APMConfig fields."""
        settings = {f"store_{f.name}": getattr(self, f.name) for f in dataclasses.fields(self)}
        settings["store_url"] = self.url or ""
        return settings


@dataclass(frozen=True)
class ApiConfig:
    endpoint: str | None = field(
        default="localhost:8889",
        metadata=_m(
            _listen_endpoint(True),
            "JSON API over the findings store (/api/v1/...), served when store.url is set; null = off",
        ),
    )


@dataclass(frozen=True)
class ShutdownConfig:
    timeout_s: float = field(
        default=20.0,
        metadata=_m(_number(0, exclusive=True), "SIGTERM: drain, flush and exit within this long"),
    )


@dataclass(frozen=True)
class CollectorConfig:
    receivers: ReceiversConfig = field(default_factory=ReceiversConfig, metadata=_sec(ReceiversConfig))
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig, metadata=_sec(DownstreamConfig))
    assembly: AssemblyConfig = field(default_factory=AssemblyConfig, metadata=_sec(AssemblyConfig))
    analysis: APMConfig = field(default_factory=APMConfig, metadata={"analysis": True})
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig, metadata=_sec(TelemetryConfig))
    store: StoreConfig = field(default_factory=StoreConfig, metadata=_sec(StoreConfig))
    api: ApiConfig = field(default_factory=ApiConfig, metadata=_sec(ApiConfig))
    shutdown: ShutdownConfig = field(default_factory=ShutdownConfig, metadata=_sec(ShutdownConfig))

    def __post_init__(self) -> None:
        # The reporters of every deployment read the store from the analysis settings.
        object.__setattr__(self, "analysis", dataclasses.replace(self.analysis, **self.store.settings()))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> CollectorConfig:
        """Build from parsed YAML; unknown keys and bad values raise ConfigError naming the path."""
        config: CollectorConfig = _build(cls, {} if data is None else data, "")
        return config


# -- building ----------------------------------------------------------------------------------------

_ENV_REF = re.compile(r"\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(value: Any, path: str, environ: Mapping[str, str]) -> Any:
    """``${env:NAME}`` (or ``${NAME}``) in string values, recursively; a missing variable is an error."""
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in environ:
                raise ConfigError(f"{path}: environment variable {name} is not set")
            return environ[name]

        return _ENV_REF.sub(sub, value)
    if isinstance(value, Mapping):
        return {k: _expand(v, f"{path}.{k}" if path else str(k), environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]", environ) for i, v in enumerate(value)]
    return value


def _build(cls: type[Any], data: Any, path: str) -> Any:
    where = path or "the configuration"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {_describe(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [str(k) for k in data if k not in fields]
    if unknown:
        key = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(f"{key}: unknown key (expected one of {', '.join(fields)})")
    values: dict[str, Any] = {}
    for name, value in data.items():
        f = fields[name]
        key = f"{path}.{name}" if path else name
        if "section" in f.metadata:
            values[name] = _build(f.metadata["section"], value, key)
        elif "analysis" in f.metadata:
            values[name] = _analysis(value, key)
        else:
            values[name] = f.metadata["check"](value, key)
    config = cls(**values)
    _cross_check(config, path)
    return config


def _analysis(data: Any, path: str) -> APMConfig:
    """APMConfig from its field names, starting from its defaults (not the APM_* variables)."""
    if data is None:
        return APMConfig()
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of analysis settings, got {_describe(data)}")
    names = [f.name for f in dataclasses.fields(APMConfig) if not f.name.startswith("store_")]
    for key, value in data.items():
        if key.startswith("store_") and key in StoreConfig().settings():
            raise ConfigError(f"{path}.{key}: the store is configured in its own section, store.{key[6:]}")
        if key not in names:
            raise ConfigError(f"{path}.{key}: unknown key (expected one of {', '.join(names)})")
        _check_analysis_value(key, value, f"{path}.{key}")
    config = APMConfig(**dict(data))
    try:
        check_detector_names(config)
    except ConfigError as exc:
        raise ConfigError(f"{path}.disabled_detectors: {exc}") from None
    try:
        config.check_combination()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config


def _check_analysis_value(name: str, value: Any, path: str) -> None:
    """APMConfig's check of one setting, its message naming the YAML ``path``."""
    try:
        APMConfig(**{name: value})
    except ConfigError as exc:
        _, _, accepts = str(exc).partition(": ")
        if _SECRET_SETTINGS[name] and isinstance(value, str):  # may hold a password or a token
            raise ConfigError(f"{path}: {accepts}") from None
        raise ConfigError(f"{path}: {accepts}, got {_describe(value)}") from None


def _cross_check(config: Any, path: str) -> None:
    if isinstance(config, TLSConfig) and (config.cert_file is None) != (config.key_file is None):
        missing = "key_file" if config.key_file is None else "cert_file"
        raise ConfigError(f"{path}.{missing}: cert_file and key_file are set together")
    if isinstance(config, RetryConfig) and config.max_interval_s < config.initial_interval_s:
        raise ConfigError(
            f"{path}.max_interval_s: expected at least initial_interval_s ({config.initial_interval_s:g}), "
            f"got {config.max_interval_s!r}"
        )


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {} if child is None else dict(child) if isinstance(child, Mapping) else child
            node[key] = child
        if not isinstance(child, dict):
            return  # the file's value is wrong; validation names it
        node = child
    node[keys[-1]] = value


def load_config(
    path: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> CollectorConfig:
    """The YAML file at ``path`` (optional), then ``overrides`` by dotted key path (flags) on top."""
    data: Any = {}
    if path is not None:
        import yaml

        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path!r}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path!r} is not valid YAML: {exc}") from None
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"config file {path!r}: expected a mapping at the top, got {_describe(data)}")
    data = _expand(data, "", os.environ if environ is None else environ)
    data = _plain(data)
    for dotted, value in (overrides or {}).items():
        _set_path(data, dotted, value)
    return CollectorConfig.from_mapping(data)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value
