"""Per-transaction measures and finding counts through the OTel Metrics API.

Attribute keys are ours (``otel_apm.*``) where no semantic convention fits: in the collector one
stream carries many services, so the service is an attribute, not only a resource.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.metrics import MeterProvider, get_meter
from opentelemetry.util.types import AttributeValue

from otel_apm.detectors.base import Finding
from otel_apm.model import DB, Trace
from otel_apm.version import __version__

SERVICE = "otel_apm.service"
ENDPOINT = "otel_apm.endpoint"


class MetricsEmitter:
    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        meter = get_meter("otel_apm", __version__, meter_provider=meter_provider)
        self.meter = meter
        self._findings = meter.create_counter(
            "otel_apm.findings", unit="{finding}", description="Performance problems found, by type"
        )
        self._duration = meter.create_histogram(
            "otel_apm.transaction.duration",
            unit="s",
            description="Duration of local root spans (transactions), by endpoint",
        )
        self._db_duration = meter.create_histogram(
            "otel_apm.transaction.db.duration",
            unit="s",
            description="Summed duration of the DB spans of one transaction",
        )
        self._db_queries = meter.create_histogram(
            "otel_apm.transaction.db.queries", unit="{query}", description="DB queries run by one transaction"
        )

    def emit(self, trace: Trace, findings: Sequence[Finding]) -> None:
        for finding in findings:
            self._findings.add(
                1,
                {
                    "otel_apm.finding.type": finding.type,
                    "otel_apm.finding.severity": finding.severity,
                    SERVICE: finding.service,
                    ENDPOINT: finding.endpoint,
                },
            )
        root = trace.root
        if root is None:
            return
        attrs: dict[str, AttributeValue] = {
            SERVICE: root.service,
            ENDPOINT: trace.endpoint,
            "error": root.error,
        }
        self._duration.record((root.end_ns - root.start_ns) / 1e9, attrs)
        queries, db_ms = trace.breakdown().get(DB, (0, 0.0))
        self._db_duration.record(db_ms / 1e3, attrs)
        self._db_queries.record(queries, attrs)
