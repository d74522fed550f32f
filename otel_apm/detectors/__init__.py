"""Analysis: detectors turn a Trace into Findings."""

from otel_apm.detectors.base import Detector, Finding
from otel_apm.detectors.bottleneck import BottleneckDetector
from otel_apm.detectors.chatty import ChattyTransactionDetector
from otel_apm.detectors.errors import ErrorDetector
from otel_apm.detectors.n_plus_one import NPlusOneQueryDetector
from otel_apm.detectors.n_plus_one_api import NPlusOneApiCallDetector
from otel_apm.detectors.slow_query import SlowQueryDetector
from otel_apm.detectors.slow_request import SlowRequestDetector

DEFAULT_DETECTORS: tuple[type[Detector], ...] = (
    NPlusOneQueryDetector,
    NPlusOneApiCallDetector,
    SlowQueryDetector,
    SlowRequestDetector,
    ChattyTransactionDetector,
    BottleneckDetector,
    ErrorDetector,
)

__all__ = ["DEFAULT_DETECTORS", "Detector", "Finding"]
