"""The otel-apm collector: an OTLP endpoint that forwards everything downstream and analyzes traces.

    otel-apm collector --config collector.yaml

Receivers (OTLP/gRPC and OTLP/HTTP) hand each request to the pipeline, which queues it unchanged
for the forwarder and feeds its spans to the trace assembler; whole traces are analyzed by the
same detectors as the in-process processor and findings leave as OTLP events and metrics.
"""
