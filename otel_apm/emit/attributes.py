"""A Finding as OTel attributes: one mapping for log events and span events alike."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry.util.types import AttributeValue

from otel_apm.detectors.base import DERIVED_ATTRIBUTES, Finding
from otel_apm.ingest.callsite import CODE_FILE_PATH, CODE_FUNCTION_NAME, CODE_LINE_NUMBER

EVENT_NAME = "otel_apm.finding"
PREFIX = "otel_apm.finding."


def span_id_hex(span_id: int) -> str:
    return format(span_id, "016x")


def trace_id_hex(trace_id: int) -> str:
    return format(trace_id, "032x")


def code_attributes(location: str) -> dict[str, AttributeValue]:
    """The location "path:line:function" as the stable code.* attributes, so backends link to it."""
    attrs: dict[str, AttributeValue] = {PREFIX + "code_location": location}
    path, line, function = [*location.rsplit(":", 2), "", ""][:3]
    attrs[CODE_FILE_PATH] = path
    if line.isdigit():
        attrs[CODE_LINE_NUMBER] = int(line)
    if function:
        attrs[CODE_FUNCTION_NAME] = function
    return attrs


def finding_attributes(finding: Finding) -> Mapping[str, AttributeValue]:
    """Built once per finding and then shared, as its log record and its span event both ask.
    Read-only for every caller: the log record copies it into a BoundedAttributes of its own
    (the SDK cleans every value again whatever mapping it is given, so handing it a bounded
    one saves nothing), the span event keeps it as it is, as the SDK keeps an Event's."""
    cached: Mapping[str, AttributeValue] | None = finding.__dict__.get(DERIVED_ATTRIBUTES)
    if cached is None:
        cached = finding.__dict__[DERIVED_ATTRIBUTES] = _build(finding)
    return cached


def _build(finding: Finding) -> dict[str, AttributeValue]:
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
        PREFIX + "impact_ms": finding.impact_ms,
        PREFIX + "rate_per_min": finding.rate_per_min,
    }
    if finding.code_location is not None:
        attrs.update(code_attributes(finding.code_location))
    if finding.services:
        attrs[PREFIX + "services"] = list(finding.services)
    if finding.statement is not None:
        attrs["db.query.text"] = finding.statement
    for key, value in finding.evidence.items():
        attrs[PREFIX + "evidence." + key] = list(value) if isinstance(value, tuple) else value
    return attrs
