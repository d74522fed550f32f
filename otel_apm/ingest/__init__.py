"""Intake: turn spans as they arrive (SDK ReadableSpan, OTLP protobuf) into SpanView."""
