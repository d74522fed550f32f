"""otel-apm: finds what makes OpenTelemetry-traced applications slow.

Importing this package does no work: nothing is registered until a processor is built.
"""

from otel_apm.config import APMConfig, ConfigError
from otel_apm.detectors.base import Finding
from otel_apm.processors.apm import APMSpanProcessor
from otel_apm.version import __version__

__all__ = ["APMConfig", "APMSpanProcessor", "ConfigError", "Finding", "__version__"]
