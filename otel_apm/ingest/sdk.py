"""SDK ReadableSpan → SpanView, on the application's thread at every span end: keep it lean."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from otel_apm import model
from otel_apm.semconv import fill_attributes

_ERROR = StatusCode.ERROR


def span_view(span: ReadableSpan, service: str) -> model.SpanView:
    """The view of an ended SDK span; never raises on odd attribute values."""
    ctx = span.context
    parent = span.parent
    view = model.SpanView(
        ctx.trace_id,
        ctx.span_id,
        parent.span_id if parent is not None and not parent.is_remote else 0,
        span.name,
        span.kind.value,
        span.start_time or 0,
        span.end_time or 0,
        span.status.status_code is _ERROR,
        service,
    )
    attrs = span.attributes
    if attrs:
        fill_attributes(view, attrs)
    return view
