"""Analysis: detectors turn a Trace into Findings."""

from otel_apm.detectors.base import Detector, Finding
from otel_apm.detectors.consecutive import ConsecutiveDbQueriesDetector, ConsecutiveHttpCallsDetector
from otel_apm.detectors.n_plus_one import NPlusOneQueryDetector
from otel_apm.detectors.n_plus_one_api import NPlusOneApiCallDetector
from otel_apm.detectors.slow_query import SlowQueryDetector
from otel_apm.detectors.slow_request import SlowRequestDetector

DEFAULT_DETECTORS: tuple[type[Detector], ...] = (
    NPlusOneQueryDetector,
    NPlusOneApiCallDetector,
    SlowQueryDetector,
    SlowRequestDetector,
    # det-b: consecutive work.
    ConsecutiveDbQueriesDetector,
    ConsecutiveHttpCallsDetector,
)

__all__ = ["DEFAULT_DETECTORS", "Detector", "Finding"]
