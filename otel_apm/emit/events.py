"""Findings as OTel events: log records with an event name, in the trace's context.

Any OTLP backend stores them beside the trace and can jump from the event to the span.

By default every finding is an event.  The same N+1 in every request to its endpoint then
writes one log record per request: a backend bills each, and in-process each costs the SDK's
log record (its attributes cleaned one by one) on the application's CPU.  With
APM_EVENTS_INTERVAL_S the events follow the reporters' policy (:mod:`otel_apm.emit.digest`), as
the Collector's log deduplication processor does for logs: a new problem is an event in full,
and its repeats one event per interval, the latest occurrence's with how many it stands for.
The root span of every trace still carries its findings as span events, and the metrics still
count each one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from opentelemetry._logs import LoggerProvider, SeverityNumber, get_logger
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context
from opentelemetry.util.types import AttributeValue

from otel_apm.detectors.base import Finding
from otel_apm.emit.attributes import (
    EVENT_NAME,
    IMPACT_MAX_MS,
    IMPACT_P95_MS,
    OCCURRENCES,
    WINDOW_S,
    finding_attributes,
)
from otel_apm.emit.digest import Digest, Summary
from otel_apm.model import Trace
from otel_apm.version import __version__

SEVERITY = {"warning": SeverityNumber.WARN, "critical": SeverityNumber.ERROR}
SCOPE = "otel_apm"  # the instrumentation scope of the events

# One event to write: the finding it links to and takes its severity from, its body, its
# attributes, and its time (None: the end of the trace it was found in).
Event = tuple[Finding, str, Mapping[str, AttributeValue], int | None]


def event_digest(interval_s: float) -> Digest | None:
    """APM_EVENTS_INTERVAL_S's digest, shared in kind by both deployments' emitters; None for 0,
    an event per finding."""
    return Digest(interval_s) if interval_s > 0 else None


def events_of(digest: Digest | None, findings: Sequence[Finding], *, everything: bool = False) -> list[Event]:
    """The events to write for one trace's findings (``everything``: and every repeat not yet
    summarized, at shutdown).

    Under a digest every event carries ``occurrences``: 1 for a new problem, the count of
    repeats for a summary, which also says its window and the repeats' impact (p95 and max).  A
    summary is linked to its latest occurrence's span, an example trace to open, and is timed
    when it is written."""
    if digest is None:
        return [(f, f.title, finding_attributes(f), None) for f in findings]
    now = time.monotonic()
    new = digest.observe(findings, now) if findings else ()
    events: list[Event] = [(f, f.title, {**finding_attributes(f), OCCURRENCES: 1}, None) for f in new]
    for summary in digest.due(now, everything=everything):
        events.append((summary.latest, summary.describe(), _summary_attributes(summary), time.time_ns()))
    return events


def _summary_attributes(summary: Summary) -> dict[str, AttributeValue]:
    return {
        **finding_attributes(summary.latest),
        OCCURRENCES: summary.occurrences,
        WINDOW_S: round(summary.window_s, 3),
        IMPACT_P95_MS: summary.impact_p95_ms,
        IMPACT_MAX_MS: summary.impact_max_ms,
    }


class EventEmitter:
    """Emits through the global LoggerProvider unless given one; the API's proxy logger picks up
    a provider installed after this emitter was built, so start-up order does not matter."""

    def __init__(self, logger_provider: LoggerProvider | None = None, interval_s: float = 0.0) -> None:
        self._logger = get_logger(SCOPE, __version__, logger_provider=logger_provider)
        self._digest = event_digest(interval_s)

    def emit(self, trace: Trace | None, findings: Sequence[Finding]) -> None:
        if not findings and self._digest is None:
            return
        end_ns = trace.root.end_ns if trace is not None and trace.root is not None else None
        self._write(events_of(self._digest, findings), end_ns)

    def shutdown(self, timeout_s: float) -> None:
        """Write the repeats not yet summarized, so a short run's events count every finding."""
        if self._digest is not None:
            self._write(events_of(self._digest, (), everything=True), None)

    def _write(self, events: list[Event], end_ns: int | None) -> None:
        for finding, body, attributes, timestamp in events:
            self._logger.emit(
                timestamp=end_ns if timestamp is None else timestamp,
                context=_context_of(finding),
                severity_number=SEVERITY[finding.severity],
                severity_text=finding.severity.upper(),
                body=body,
                attributes=attributes,
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
