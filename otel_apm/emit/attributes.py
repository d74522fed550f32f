"""A Finding as OTel attributes: one mapping for log events and span events alike."""

from __future__ import annotations

from opentelemetry.util.types import AttributeValue

from otel_apm.detectors.base import Finding

EVENT_NAME = "otel_apm.finding"
PREFIX = "otel_apm.finding."


def span_id_hex(span_id: int) -> str:
    return format(span_id, "016x")


def trace_id_hex(trace_id: int) -> str:
    return format(trace_id, "032x")


def finding_attributes(finding: Finding) -> dict[str, AttributeValue]:
    attrs: dict[str, AttributeValue] = {
        PREFIX + "type": finding.type,
        PREFIX + "title": finding.title,
        PREFIX + "severity": finding.severity,
        PREFIX + "fingerprint": finding.fingerprint,
        PREFIX + "service": finding.service,
        PREFIX + "endpoint": finding.endpoint,
        PREFIX + "span_ids": [span_id_hex(s) for s in finding.span_ids],
        PREFIX + "count": finding.count,
        PREFIX + "total_duration_ms": finding.total_duration_ms,
        PREFIX + "max_duration_ms": finding.max_duration_ms,
        PREFIX + "recommendation": finding.recommendation,
    }
    if finding.services:
        attrs[PREFIX + "services"] = list(finding.services)
    if finding.statement is not None:
        attrs["db.query.text"] = finding.statement
    for key, value in finding.evidence.items():
        attrs[PREFIX + "evidence." + key] = list(value) if isinstance(value, tuple) else value
    return attrs
