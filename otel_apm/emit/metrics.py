"""Per-transaction measures and finding counts through the OTel Metrics API.

Only the transaction duration is recorded per trace, as a histogram: its percentiles need every
value.  DB time, query counts and findings are sums, so they are added up here, per service and
endpoint, and reported by observable counters when a reader collects (Elastic APM's agents
pre-aggregate their breakdown metrics the same way).  A histogram point costs the SDK about
7 µs; a sum here costs a dict update.  What a sum gives up is the per-transaction distribution:
divide by the transaction count (the duration histogram's count) for the mean per transaction.

Attribute keys are ours (``otel_apm.*``) where no semantic convention fits: in the collector one
stream carries many services, so the service is an attribute, not only a resource.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter
from opentelemetry.util.types import AttributeValue

from otel_apm.detectors.base import Finding
from otel_apm.model import DB, Trace
from otel_apm.version import __version__

SERVICE = "otel_apm.service"
ENDPOINT = "otel_apm.endpoint"
FINDING_TYPE = "otel_apm.finding.type"
SEVERITY = "otel_apm.finding.severity"


class _Sums:
    """Monotonic totals by attribute set, read by an observable counter's callback."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = keys
        self._totals: dict[tuple[str, ...], float] = {}

    def add(self, values: tuple[str, ...], amount: float) -> None:
        self._totals[values] = self._totals.get(values, 0) + amount

    def observe(self) -> list[Observation]:
        return [
            Observation(total, dict(zip(self._keys, values, strict=True)))
            for values, total in list(self._totals.items())
        ]


class MetricsEmitter:
    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        meter = get_meter("otel_apm", __version__, meter_provider=meter_provider)
        self._lock = threading.Lock()
        self._duration = meter.create_histogram(
            "otel_apm.transaction.duration",
            unit="s",
            description="Duration of local root spans (transactions), by endpoint",
        )
        self._db_duration = _Sums((SERVICE, ENDPOINT))
        self._db_queries = _Sums((SERVICE, ENDPOINT))
        self._findings = _Sums((FINDING_TYPE, SEVERITY, SERVICE, ENDPOINT))
        for name, sums, unit, description in (
            ("otel_apm.transaction.db.duration", self._db_duration, "s", "DB time of transactions, summed"),
            ("otel_apm.transaction.db.queries", self._db_queries, "{query}", "DB queries of transactions"),
            ("otel_apm.findings", self._findings, "{finding}", "Performance problems found, by type"),
        ):
            meter.create_observable_counter(name, [self._observer(sums)], unit=unit, description=description)

    def _observer(self, sums: _Sums) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                return sums.observe()

        return observe

    def emit(self, trace: Trace | None, findings: Sequence[Finding]) -> None:
        with self._lock:
            for finding in findings:
                self._findings.add((finding.type, finding.severity, finding.service, finding.endpoint), 1)
            # No root: findings about the process, or a trace cut short by our bounds.
            root = trace.root if trace is not None else None
            if trace is None or root is None:
                return
            where = (root.service, trace.endpoint)
            queries, db_ms = trace.breakdown().get(DB, (0, 0.0))
            self._db_duration.add(where, db_ms / 1e3)
            self._db_queries.add(where, queries)
        attrs: dict[str, AttributeValue] = {SERVICE: where[0], ENDPOINT: where[1], "error": root.error}
        self._duration.record((root.end_ns - root.start_ns) / 1e9, attrs)
