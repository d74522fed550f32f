"""SpanProcessors that put the analyzer into an SDK TracerProvider."""

from otel_apm.processors.apm import APMSpanProcessor

__all__ = ["APMSpanProcessor"]
