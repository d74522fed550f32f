"""``opentelemetry-instrument`` integration: the SDK's own set-up, with our processor in front of
the export processor.

Registered as the ``otel_apm`` entry point of ``opentelemetry_configurator``.  When it is the only
configurator installed it is picked on its own; beside opentelemetry-distro, select it with
``OTEL_PYTHON_CONFIGURATOR=otel_apm``.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk._configuration import _OTelSDKConfigurator
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from otel_apm.analyze import check_detector_names
from otel_apm.config import APMConfig, ConfigError
from otel_apm.processors.apm import APMSpanProcessor

# As opentelemetry-distro does: OTLP for every signal unless the environment says otherwise, so
# the findings (logs) and metrics leave the process without further set-up.
_DEFAULT_EXPORTERS = ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_LOGS_EXPORTER")


class _WrapFirstExporter:
    """Export-processor factory for the SDK: the first exporter's processor gets the analyzer.

    One analyzer per process, however many trace exporters are listed: a second one would
    analyze every trace twice.
    """

    def __init__(self, config: APMConfig) -> None:
        self.config = config
        self.processor: APMSpanProcessor | None = None

    def __call__(self, exporter: SpanExporter, *args: Any, **kwargs: Any) -> SpanProcessor:
        batch = BatchSpanProcessor(exporter, *args, **kwargs)
        if self.processor is not None:
            return batch
        self.processor = APMSpanProcessor(batch, self.config)
        return self.processor


class APMConfigurator(_OTelSDKConfigurator):
    def _configure(self, **kwargs: Any) -> None:
        try:
            config = APMConfig.from_env()
            check_detector_names(config)
        except ConfigError as exc:
            # opentelemetry-instrument's sitecustomize swallows configurator exceptions and runs
            # the app with no telemetry at all, silently.  A typo in a threshold must not cost
            # a deployment its traces unnoticed: stop start-up, naming the variable.
            sys.stderr.write(f"otel-apm: invalid configuration, not starting: {exc}\n")
            sys.stderr.flush()
            os._exit(2)
        for name in _DEFAULT_EXPORTERS:
            os.environ.setdefault(name, "otlp")
        factory = _WrapFirstExporter(config)
        kwargs.setdefault("export_span_processor", factory)
        super()._configure(**kwargs)  # type: ignore[no-untyped-call]  # the SDK method is untyped
        provider = trace.get_tracer_provider()
        processor = factory.processor
        if processor is None and isinstance(provider, TracerProvider):
            # No trace exporter (OTEL_TRACES_EXPORTER=none): analyze all the same.
            processor = APMSpanProcessor(None, config)
            provider.add_span_processor(processor)
        if processor is not None:
            # atexit runs last-registered first, and the SDK registered the tracer, meter and
            # logger providers' shutdowns in that order: the tracer provider would drain the
            # traces still open at exit after the logger and meter providers were shut down,
            # and their findings would reach the console only.  Drain first; the tracer
            # provider's own shutdown of this processor is then a no-op.
            atexit.register(processor.shutdown)
