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


# The attribute names, joined once: joining them per finding made each a new str to hash.
_TYPE, _TITLE, _SEVERITY, _FINGERPRINT = (PREFIX + n for n in ("type", "title", "severity", "fingerprint"))
_SERVICE, _ENDPOINT, _SPAN_IDS, _COUNT = (PREFIX + n for n in ("service", "endpoint", "span_ids", "count"))
_TOTAL_MS, _MAX_MS, _RECOMMENDATION = (
    PREFIX + n for n in ("total_duration_ms", "max_duration_ms", "recommendation")
)
_IMPACT_MS, _RATE, _SERVICES = (PREFIX + n for n in ("impact_ms", "rate_per_min", "services"))
# What an event stands for under APM_EVENTS_INTERVAL_S (absent: the one finding it describes).
OCCURRENCES, WINDOW_S = PREFIX + "occurrences", PREFIX + "window_s"
IMPACT_P95_MS, IMPACT_MAX_MS = PREFIX + "impact_p95_ms", PREFIX + "impact_max_ms"
_EVIDENCE = PREFIX + "evidence."
# Evidence names (a detector's own, a few dozen in all) joined with _EVIDENCE, as they recur in
# every finding of their detector; bounded all the same, in case one ever named its evidence
# after the data.
_evidence_keys: dict[str, str] = {}
_EVIDENCE_KEYS = 256


def _build(finding: Finding) -> dict[str, AttributeValue]:
    attrs: dict[str, AttributeValue] = {
        _TYPE: finding.type,
        _TITLE: finding.title,
        _SEVERITY: finding.severity,
        _FINGERPRINT: finding.fingerprint,
        _SERVICE: finding.service,
        _ENDPOINT: finding.endpoint,
        # span_id_hex's digits: % formats an int in two thirds of format()'s instructions
        _SPAN_IDS: ["%016x" % s for s in finding.span_ids],  # noqa: UP031
        _COUNT: finding.count,
        _TOTAL_MS: finding.total_duration_ms,
        _MAX_MS: finding.max_duration_ms,
        _RECOMMENDATION: finding.recommendation,
        _IMPACT_MS: finding.impact_ms,
        _RATE: finding.rate_per_min,
    }
    if finding.code_location is not None:
        attrs.update(code_attributes(finding.code_location))
    if finding.services:
        attrs[_SERVICES] = list(finding.services)
    if finding.statement is not None:
        attrs["db.query.text"] = finding.statement
    keys = _evidence_keys
    for key, value in finding.evidence.items():
        name = keys.get(key)
        if name is None:
            name = _EVIDENCE + key
            if len(keys) < _EVIDENCE_KEYS:
                keys[key] = name
        attrs[name] = list(value) if isinstance(value, tuple) else value
    return attrs
