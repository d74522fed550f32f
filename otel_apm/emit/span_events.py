"""Findings as span events on the local root, so any trace UI shows them on the request."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.trace import Event, ReadableSpan

from otel_apm.detectors.base import Finding
from otel_apm.emit.attributes import EVENT_NAME, finding_attributes


def with_finding_events(span: ReadableSpan, findings: Sequence[Finding]) -> ReadableSpan:
    """A copy of the ended span with one event per finding; the span context is the same object,
    so trace and span ids and the sampled flag hold for every processor and exporter after us."""
    timestamp = span.end_time
    events = (*span.events, *(Event(EVENT_NAME, finding_attributes(f), timestamp) for f in findings))
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=span.attributes,
        events=events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )
