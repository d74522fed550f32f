"""Findings as OTel events: log records with an event name, in the trace's context.

Any OTLP backend stores them beside the trace and can jump from the event to the span.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry._logs import LoggerProvider, SeverityNumber, get_logger
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from otel_apm.detectors.base import Finding
from otel_apm.emit.attributes import EVENT_NAME, finding_attributes
from otel_apm.model import Trace
from otel_apm.version import __version__

SEVERITY = {"warning": SeverityNumber.WARN, "critical": SeverityNumber.ERROR}
SCOPE = "otel_apm"  # the instrumentation scope of the events


class EventEmitter:
    """Emits through the global LoggerProvider unless given one; the API's proxy logger picks up
    a provider installed after this emitter was built, so start-up order does not matter."""

    def __init__(self, logger_provider: LoggerProvider | None = None) -> None:
        self._logger = get_logger(SCOPE, __version__, logger_provider=logger_provider)

    def emit(self, trace: Trace | None, findings: Sequence[Finding]) -> None:
        end_ns = trace.root.end_ns if trace is not None and trace.root is not None else None
        for finding in findings:
            self._logger.emit(
                timestamp=end_ns,
                context=_context_of(finding),
                severity_number=SEVERITY[finding.severity],
                severity_text=finding.severity.upper(),
                body=finding.title,
                attributes=finding_attributes(finding),
                event_name=EVENT_NAME,
            )


def offending_span(finding: Finding) -> tuple[int, int] | None:
    """(trace id, span id) of the span the event is linked to; None for a finding about the
    process (trace id 0), which is emitted in no span's context rather than the caller's."""
    if not finding.trace_id or not finding.span_ids:
        return None
    return finding.trace_id, finding.span_ids[0]


def _context_of(finding: Finding) -> Context:
    """The offending span's context, so the backend links the event to it."""
    span = offending_span(finding)
    if span is None:
        return Context()
    span_context = SpanContext(*span, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return set_span_in_context(NonRecordingSpan(span_context))
