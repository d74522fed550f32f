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
from fnmatch import fnmatchcase
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import yaml

ExportMode = Literal["passthrough", "tail"]
WebhookFormat = Literal["json", "slack"]
REPORTER_NAMES = ("console", "webhook", "metrics")
# The flame graph files otel_apm.profiling.flamegraph writes, by APM_PROFILING_FORMATS name.
PROFILE_FORMATS = ("folded", "speedscope", "svg")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class ConfigError(ValueError):
    """An invalid setting; the message names the variable and what it accepts."""


@dataclass(frozen=True)
class Suppression:
    """A rule that silences an intentional finding: it matches when every key it gives matches.

    ``type`` is exact; ``endpoint``, ``statement`` and ``code`` are shell-style globs over the
    finding's endpoint, normalized statement (lower case, so the glob is matched lower-cased) and
    code location ("path:line:function").  A rule with no key would silence everything: refused.
    """

    type: str | None = None
    endpoint: str | None = None
    statement: str | None = None
    code: str | None = None

    def __post_init__(self) -> None:
        values = dataclasses.astuple(self)
        if all(v is None for v in values):
            raise ConfigError(f"a suppression rule needs at least one of {', '.join(_RULE_KEYS)}")
        if any(v is not None and not isinstance(v, str) for v in values):
            raise ConfigError(f"suppression rule {self}: every value must be text")

    @classmethod
    def of(cls, rule: Any, where: str) -> Suppression:
        """A rule from a mapping (a config file's entry) or a Suppression as it is."""
        if isinstance(rule, Suppression):
            return rule
        if not isinstance(rule, Mapping):
            raise ConfigError(f"{where}: a suppression rule is a mapping of {', '.join(_RULE_KEYS)}")
        unknown = sorted(set(rule) - set(_RULE_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; a rule accepts {', '.join(_RULE_KEYS)}")
        try:
            return cls(**{k: None if v is None else str(v) for k, v in rule.items()})
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def matches(self, type: str, endpoint: str, statement: str | None, code: str | None) -> bool:
        return (
            (self.type is None or self.type == type)
            and (self.endpoint is None or fnmatchcase(endpoint, self.endpoint))
            and (
                self.statement is None
                or (statement is not None and fnmatchcase(statement.lower(), self.statement.lower()))
            )
            and (self.code is None or (code is not None and fnmatchcase(code, self.code)))
        )


_RULE_KEYS = tuple(f.name for f in dataclasses.fields(Suppression))


def _setting(
    default: Any,
    env: str | None,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] | None = None,
    secret: bool = False,
    doc: str = "",
) -> Any:
    """A field with its variable and bounds; ``choices`` are the names a list may hold, and a
    ``secret`` is neither in the repr nor shown by ``describe`` (logs and ``otel-apm config``)."""
    metadata = {"env": env, "min": minimum, "max": maximum, "choices": choices, "secret": secret, "doc": doc}
    return field(default=default, repr=not secret, metadata=metadata)


@dataclass(frozen=True)
class APMConfig:
    """Settings of the analyzer.  Build it with :meth:`from_env`; the constructor does no I/O."""

    enabled: bool = _setting(
        True, "APM_ENABLED", doc="analyze spans at all; in-process, off too when OTEL_SDK_DISABLED=true"
    )
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
    memory_threshold_mb: float = _setting(
        512.0, "APM_MEMORY_THRESHOLD_MB", minimum=0.0, doc="resident memory that makes a memory_high finding"
    )
    memory_monitor_enabled: bool = _setting(
        True,
        "APM_MEMORY_MONITOR_ENABLED",
        doc="sample the process's memory on a thread: memory_high, memory_leak_suspected, process metrics",
    )
    memory_check_interval_s: float = _setting(
        30.0, "APM_MEMORY_CHECK_INTERVAL_S", minimum=0.01, doc="seconds between memory samples"
    )
    memory_trend_window_s: float = _setting(
        600.0,
        "APM_MEMORY_TREND_WINDOW_S",
        minimum=0.1,
        doc="memory must grow steadily over this long to be a suspected leak",
    )
    memory_trend_min_samples: int = _setting(
        8, "APM_MEMORY_TREND_MIN_SAMPLES", minimum=8, doc="samples in the window needed for a trend"
    )
    memory_leak_min_mb_per_min: float = _setting(
        1.0,
        "APM_MEMORY_LEAK_MIN_MB_PER_MIN",
        minimum=0.0,
        doc="growth rate (Theil-Sen slope over the window) that makes a suspected leak",
    )
    memory_recovery_share: float = _setting(
        0.9,
        "APM_MEMORY_RECOVERY_SHARE",
        minimum=0.0,
        maximum=1.0,
        doc="a high-memory episode ends below this share of the threshold; the next is reported anew",
    )
    heap_snapshot_on_leak: bool = _setting(
        False,
        "APM_HEAP_SNAPSHOT_ON_LEAK",
        doc="on a suspected leak, trace allocations (tracemalloc) for a while to name the growing lines",
    )
    heap_snapshot_on_high_memory: bool = _setting(
        False, "APM_HEAP_SNAPSHOT_ON_HIGH_MEMORY", doc="the same when memory goes over the threshold"
    )
    heap_snapshot_duration_s: float = _setting(
        30.0,
        "APM_HEAP_SNAPSHOT_DURATION_S",
        minimum=0.0,
        doc="how long a heap profile traces allocations (the program runs slower meanwhile)",
    )
    heap_snapshot_top: int = _setting(
        10, "APM_HEAP_SNAPSHOT_TOP", minimum=1, doc="allocation sites a heap profile reports"
    )
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
    n_plus_one_min_duration_ms: float = _setting(
        0.0,
        "APM_N_PLUS_ONE_MIN_DURATION_MS",
        minimum=0.0,
        doc="an N+1 must also take this long in all (0: the count alone decides, as a local "
        "database hides the round trips production pays)",
    )
    mn_plus_one_threshold: int = _setting(
        5,
        "APM_MN_PLUS_ONE_THRESHOLD",
        minimum=2,
        doc="repetitions of a 2..8 query sequence that make an MN+1",
    )
    consecutive_db_min_saved_ms: float = _setting(
        100.0,
        "APM_CONSECUTIVE_DB_MIN_SAVED_MS",
        minimum=0.0,
        doc="time that running sequential independent queries concurrently must save to be reported",
    )
    consecutive_http_min_saved_ms: float = _setting(
        100.0,
        "APM_CONSECUTIVE_HTTP_MIN_SAVED_MS",
        minimum=0.0,
        doc="time that running sequential HTTP calls concurrently must save to be reported",
    )
    slow_query_outlier_factor: float = _setting(
        3.0,
        "APM_SLOW_QUERY_OUTLIER_FACTOR",
        minimum=1.0,
        doc="a query this many times its statement's recent p95 is an outlier",
    )
    slow_query_outlier_min_samples: int = _setting(
        20,
        "APM_SLOW_QUERY_OUTLIER_MIN_SAMPLES",
        minimum=1,
        doc="earlier executions of a statement needed before its p95 is trusted",
    )
    slow_query_outlier_min_ms: float = _setting(
        10.0, "APM_SLOW_QUERY_OUTLIER_MIN_MS", minimum=0.0, doc="outliers faster than this are noise"
    )
    chatty_query_threshold: int = _setting(
        30, "APM_CHATTY_QUERY_THRESHOLD", minimum=1, doc="queries in one request that make it chatty"
    )
    chatty_db_share: float = _setting(
        0.8,
        "APM_CHATTY_DB_SHARE",
        minimum=0.0,
        maximum=1.0,
        doc="share of a request's time spent in the database that makes it chatty",
    )
    chatty_min_duration_ms: float = _setting(
        100.0,
        "APM_CHATTY_MIN_DURATION_MS",
        minimum=0.0,
        doc="requests faster than this are never chatty by share",
    )
    bottleneck_share: float = _setting(
        0.3,
        "APM_BOTTLENECK_SHARE",
        minimum=0.0,
        maximum=1.0,
        doc="share of a request one span or group of like spans must take to be its bottleneck",
    )
    bottleneck_min_duration_ms: float = _setting(
        100.0,
        "APM_BOTTLENECK_MIN_DURATION_MS",
        minimum=0.0,
        doc="requests faster than this have no bottleneck",
    )
    repeated_query_threshold: int = _setting(
        3,
        "APM_REPEATED_QUERY_THRESHOLD",
        minimum=2,
        doc="runs of one statement with the same parameters in a request that make a cache candidate",
    )
    large_payload_bytes: int = _setting(
        1_000_000, "APM_LARGE_PAYLOAD_BYTES", minimum=1, doc="HTTP body size that is a large payload"
    )
    critical_impact_ms: float = _setting(
        500.0,
        "APM_CRITICAL_IMPACT_MS",
        minimum=0.0,
        doc="a finding that costs a request this much time is critical",
    )
    disabled_detectors: tuple[str, ...] = _setting(
        (), "APM_DISABLED_DETECTORS", doc="finding types not to look for, comma-separated"
    )
    suppressions: tuple[Suppression, ...] = _setting(
        (),
        "APM_SUPPRESSIONS_FILE",
        doc="YAML or JSON file with a list of rules (type, endpoint, statement, code) that silence findings",
    )
    code_location_enabled: bool = _setting(
        True,
        "APM_CODE_LOCATION_ENABLED",
        doc="find the application frame of each DB and HTTP client call, for the findings and, on "
        "slow calls, as code.* attributes",
    )
    code_attributes_min_ms: float = _setting(
        100.0,
        "APM_CODE_ATTRIBUTES_MIN_MS",
        minimum=0.0,
        doc="client spans at least this long are exported with their code.* attributes (the "
        "findings name every call's line either way); 0 adds them to every client span",
    )
    native_enabled: bool = _setting(
        True,
        "APM_NATIVE_ENABLED",
        doc="use the compiled hot paths (otel_apm._native) when they were built; false runs their "
        "Python versions",
    )
    profiling_enabled: bool = _setting(
        False,
        "APM_PROFILING_ENABLED",
        doc="sample every thread's stack to find the functions that burn each endpoint's CPU",
    )
    profiling_interval_ms: int = _setting(
        60000,
        "APM_PROFILING_INTERVAL",
        minimum=1,
        doc="CPU profile period (ms): hot spots are reported and flame graphs written, then it restarts",
    )
    profiling_sample_hz: float = _setting(
        20.0,
        "APM_PROFILING_SAMPLE_HZ",
        minimum=0.1,
        maximum=1000.0,
        doc="stack samples per second at most; lowered while sampling costs over the overhead budget",
    )
    profiling_max_overhead: float = _setting(
        0.01,
        "APM_PROFILING_MAX_OVERHEAD",
        minimum=0.0001,
        maximum=1.0,
        doc="share of one core the sampler may use; its rate drops to stay under it",
    )
    profiling_busy_share: float = _setting(
        0.05,
        "APM_PROFILING_BUSY_SHARE",
        minimum=0.0,
        maximum=1.0,
        doc="share of a sampling tick a thread must run on CPU, before and after its stack is read, "
        "for that stack to count (waiting threads do not)",
    )
    profiling_max_stacks: int = _setting(
        10000,
        "APM_PROFILING_MAX_STACKS",
        minimum=1,
        doc="distinct stacks kept per profile period; further ones are counted as one truncated stack",
    )
    profiling_dir: str = _setting(
        "",
        "APM_PROFILING_DIR",
        doc="directory where each period's flame graphs (process and per endpoint) replace the last ones",
    )
    profiling_formats: tuple[str, ...] = _setting(
        PROFILE_FORMATS,
        "APM_PROFILING_FORMATS",
        choices=PROFILE_FORMATS,
        doc="flame graph files written to APM_PROFILING_DIR: folded, speedscope, svg",
    )
    cpu_hot_spot_share: float = _setting(
        0.1,
        "APM_CPU_HOT_SPOT_SHARE",
        minimum=0.0,
        maximum=1.0,
        doc="share of an endpoint's CPU samples one function must take (itself, not its callees) "
        "to be a hot spot",
    )
    cpu_hot_spot_min_samples: int = _setting(
        20,
        "APM_CPU_HOT_SPOT_MIN_SAMPLES",
        minimum=1,
        doc="CPU samples an endpoint needs in a period before its shares are trusted",
    )
    max_traces_in_flight: int = _setting(
        2048,
        "APM_MAX_TRACES_IN_FLIGHT",
        minimum=1,
        doc="open local traces held; past it the oldest is analyzed as it is",
    )
    analysis_delay_ms: int = _setting(
        200,
        "APM_ANALYSIS_DELAY_MS",
        minimum=0,
        doc="longest a closed local trace waits to be analyzed with others on a worker thread (in "
        "batches the analysis runs at about half its cost a trace, warm; tail mode decides its "
        "export there); 0 analyzes each trace on the thread that ends its root, as it ends",
    )
    analysis_batch_size: int = _setting(
        64,
        "APM_ANALYSIS_BATCH_SIZE",
        minimum=1,
        doc="closed traces waiting that wake the analysis worker before the delay is up",
    )
    analysis_max_queue: int = _setting(
        2048,
        "APM_ANALYSIS_MAX_QUEUE",
        minimum=1,
        doc="closed traces waiting at most; past it the thread ending a root analyzes its trace "
        "itself (nothing is dropped)",
    )
    max_spans_per_trace: int = _setting(
        2000,
        "APM_MAX_SPANS_PER_TRACE",
        minimum=1,
        doc="spans kept for analysis per local trace; later ones are exported and counted",
    )
    reporters: tuple[str, ...] = _setting(
        ("console", "metrics"),
        "APM_REPORTERS",
        choices=REPORTER_NAMES,
        doc="where findings are reported besides OTel events, comma-separated: console (stderr), "
        "webhook (APM_WEBHOOK_URL), metrics (otel_apm.* through the meter provider)",
    )
    console_enabled: bool = _setting(
        True,
        "APM_CONSOLE_ENABLED",
        doc="false turns the console reporter off even when APM_REPORTERS names it",
    )
    console_interval_s: float = _setting(
        60.0,
        "APM_CONSOLE_INTERVAL_S",
        minimum=0.0,
        doc="a new problem is printed in full once, then summarized once per interval "
        "(0: every occurrence in full)",
    )
    console_max_per_interval: int = _setting(
        50,
        "APM_CONSOLE_MAX_PER_INTERVAL",
        minimum=1,
        doc="console entries (announcements and summaries) per interval; the rest are counted as suppressed",
    )
    webhook_url: str = _setting(
        "",
        "APM_WEBHOOK_URL",
        secret=True,  # a Slack incoming-webhook URL is itself the credential
        doc="http(s) URL the webhook reporter POSTs findings to",
    )
    webhook_format: WebhookFormat = _setting(
        "json", "APM_WEBHOOK_FORMAT", doc="json: otel-apm's document; slack: a Slack incoming-webhook message"
    )
    webhook_secret: str = _setting(
        "",
        "APM_WEBHOOK_SECRET",
        secret=True,
        doc="when set, each POST carries an HMAC-SHA256 signature of its timestamp and body",
    )
    webhook_interval_s: float = _setting(
        300.0,
        "APM_WEBHOOK_INTERVAL_S",
        minimum=0.0,
        doc="a new problem is sent once, then summarized once per interval (0: every occurrence)",
    )
    webhook_timeout_s: float = _setting(5.0, "APM_WEBHOOK_TIMEOUT_S", minimum=0.01, doc="per attempt")
    webhook_max_attempts: int = _setting(
        5, "APM_WEBHOOK_MAX_ATTEMPTS", minimum=1, doc="attempts per batch before it is given up and counted"
    )
    webhook_backoff_s: float = _setting(
        0.5,
        "APM_WEBHOOK_BACKOFF_S",
        minimum=0.0,
        doc="first retry delay, doubled per attempt with full jitter",
    )
    webhook_backoff_max_s: float = _setting(
        30.0, "APM_WEBHOOK_BACKOFF_MAX_S", minimum=0.0, doc="longest retry delay, Retry-After included"
    )
    webhook_queue_size: int = _setting(
        1000,
        "APM_WEBHOOK_QUEUE_SIZE",
        minimum=1,
        doc="notices waiting to be sent; when full the oldest is dropped",
    )
    webhook_batch_size: int = _setting(
        50, "APM_WEBHOOK_BATCH_SIZE", minimum=1, doc="notices per POST at most (slack: at most 40)"
    )
    span_events_enabled: bool = _setting(
        True, "APM_SPAN_EVENTS_ENABLED", doc="attach findings to the local root as span events"
    )
    events_interval_s: float = _setting(
        0.0,
        "APM_EVENTS_INTERVAL_S",
        minimum=0.0,
        doc="0: every finding is an OTel event; else a new problem is one in full, then its repeats "
        "one per interval carrying their count (span events and metrics still get every finding)",
    )
    stats_enabled: bool = _setting(
        True,
        "APM_STATS_ENABLED",
        doc="keep rolling statistics per endpoint and statement (last minute, hour, day, since start)",
    )
    stats_relative_accuracy: float = _setting(
        0.01,
        "APM_STATS_RELATIVE_ACCURACY",
        minimum=0.0005,
        maximum=0.2,
        doc="relative error bound of the statistics' percentiles (0.01: within 1 %)",
    )
    stats_max_buckets: int = _setting(
        2048,
        "APM_STATS_MAX_BUCKETS",
        minimum=16,
        maximum=65536,
        doc="buckets per percentile sketch; past it the lowest are merged (low percentiles lose accuracy)",
    )
    stats_slots: int = _setting(
        6,
        "APM_STATS_SLOTS",
        minimum=2,
        maximum=60,
        doc="sub-intervals per rolling window: a window reads as (n-1)/n to all of its length",
    )
    stats_max_endpoints: int = _setting(
        1000,
        "APM_STATS_MAX_ENDPOINTS",
        minimum=1,
        doc="service+endpoint pairs with statistics of their own; later ones share an overflow entry",
    )
    stats_max_statements: int = _setting(
        1000,
        "APM_STATS_MAX_STATEMENTS",
        minimum=1,
        doc="statement fingerprints with statistics of their own; later ones share an overflow entry",
    )
    metrics_max_endpoints: int = _setting(
        500,
        "APM_METRICS_MAX_ENDPOINTS",
        minimum=1,
        doc="service+endpoint pairs with metric series of their own; later ones share the "
        "otel.metric.overflow=true series",
    )
    metrics_max_statements: int = _setting(
        500,
        "APM_METRICS_MAX_STATEMENTS",
        minimum=0,
        doc="statement fingerprints with metric series of their own; later ones share the "
        "otel.metric.overflow=true series; 0: no statement metrics (they cost about 1 µs a "
        "statement and trace)",
    )
    stats_max_endpoints_per_statement: int = _setting(
        20, "APM_STATS_MAX_ENDPOINTS_PER_STATEMENT", minimum=1, doc="endpoints listed per statement"
    )
    store_url: str = _setting(
        "",
        "APM_STORE_URL",
        secret=True,  # a PostgreSQL URL may hold a password
        doc="keep findings in a store: sqlite:///path/file.sqlite, or postgresql://user@host/db"
        "?schema=name to share one; empty: no store",
    )
    store_retention_days: float = _setting(
        30.0, "APM_STORE_RETENTION_DAYS", minimum=0.01, doc="findings not seen for this long are removed"
    )
    store_resolve_after_h: float = _setting(
        24.0,
        "APM_STORE_RESOLVE_AFTER_H",
        minimum=0.0,
        doc="an open finding not seen for this long is reported as resolved (open again when seen)",
    )
    store_minute_stats_h: float = _setting(
        2.0,
        "APM_STORE_MINUTE_STATS_H",
        minimum=1.0,
        doc="statistics older than this are kept by the hour instead of by the minute",
    )
    store_examples: int = _setting(
        5, "APM_STORE_EXAMPLES", minimum=1, doc="example trace ids kept per finding, the latest ones"
    )
    store_queue_size: int = _setting(
        10000,
        "APM_STORE_QUEUE_SIZE",
        minimum=1,
        doc="findings waiting for the store's writer; past it they are dropped and counted",
    )

    def __post_init__(self) -> None:
        # Lists are accepted where tuples are kept (keyword arguments, the collector's YAML).
        for name in ("disabled_detectors", "reporters", "profiling_formats"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.suppressions, (list, tuple)):
            rules = tuple(Suppression.of(r, f"suppressions[{i}]") for i, r in enumerate(self.suppressions))
            object.__setattr__(self, "suppressions", rules)
        for f in dataclasses.fields(self):
            _validate(f, getattr(self, f.name))
        if self.store_url:
            from otel_apm.store.url import parse_store_url

            parse_store_url(self.store_url)

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
        config = cls(**values)
        config.check_combination()
        return config

    def check_combination(self) -> None:
        """Settings valid alone but not together.  Not in ``__post_init__``: the collector checks
        its ``analysis`` keys one by one before it builds the whole."""
        if "webhook" in self.reporters:
            if not self.webhook_url:
                raise ConfigError("APM_REPORTERS names webhook: APM_WEBHOOK_URL must be set")
            _check_url(self.webhook_url)

    def reports_to(self, name: str) -> bool:
        """Whether the reporter ``name`` is on: named in APM_REPORTERS, and for the console also
        not switched off by the older APM_CONSOLE_ENABLED."""
        return name in self.reporters and (name != "console" or self.console_enabled)

    def describe(self) -> list[tuple[str, str, str]]:
        """(variable, current value, meaning) rows, for ``otel-apm config`` and the README."""
        return [
            (
                f.metadata["env"],
                "(set)" if f.metadata["secret"] and getattr(self, f.name) else _shown(getattr(self, f.name)),
                f.metadata["doc"],
            )
            for f in dataclasses.fields(self)
        ]


def _shown(value: Any) -> str:
    return (
        ",".join(value) if isinstance(value, tuple) and all(isinstance(v, str) for v in value) else str(value)
    )


def _check_url(url: str) -> None:
    """The message names what is wrong without repeating the URL, which may hold a token."""
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError when the port is not a number
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(
            "APM_WEBHOOK_URL: expected an http:// or https:// URL with a host (and a numeric port)"
        )


def url_origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL, for logs: its path and query may hold a token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


_TYPES: dict[str, Any] = {
    "bool": bool,
    "str": str,
    "float": float,
    "int": int,
    "ExportMode": ExportMode,
    "WebhookFormat": WebhookFormat,
    "tuple[str, ...]": tuple,
    "tuple[Suppression, ...]": Suppression,
}


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
    if kind is tuple:
        choices = f.metadata["choices"]
        return f"a comma-separated list of {', '.join(choices) if choices else 'names'}"
    if kind is Suppression:
        return (
            f"a list of rules, each a mapping of {', '.join(_RULE_KEYS)} "
            "(in APM_SUPPRESSIONS_FILE: a YAML or JSON file holding that list)"
        )
    return "one of " + ", ".join(get_args(kind))


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
        if kind is tuple:
            return tuple(name.strip() for name in raw.split(",") if name.strip())
        if kind is Suppression:
            return _load_rules(raw, source)
        return raw if kind is str else raw.lower()
    except ConfigError:
        raise
    except ValueError:
        raise ConfigError(f"{source}={raw!r}: expected {_accepts(f)}") from None


def _load_rules(path: str, source: str) -> tuple[Suppression, ...]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{source}={path!r}: cannot read the rules: {exc}") from None
    if data is None:
        return ()
    if not isinstance(data, list):
        raise ConfigError(f"{source}={path!r}: expected a list of rules, got {type(data).__name__}")
    return tuple(Suppression.of(rule, f"{source}={path!r}: rule {i}") for i, rule in enumerate(data))


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
    elif kind is tuple:
        choices = f.metadata["choices"]
        ok = isinstance(value, tuple) and all(
            isinstance(v, str) and (choices is None or v in choices) for v in value
        )
    elif kind is Suppression:
        ok = isinstance(value, tuple) and all(isinstance(v, Suppression) for v in value)
    else:
        ok = value in get_args(kind)
    if not ok:
        raise ConfigError(f"{where}={value!r}: expected {_accepts(f)}")
