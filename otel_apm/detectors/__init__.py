"""Analysis: detectors turn a Trace into Findings."""

from otel_apm.detectors.base import Detector, Finding
from otel_apm.detectors.bottleneck import BottleneckDetector
from otel_apm.detectors.chatty import ChattyTransactionDetector
from otel_apm.detectors.consecutive import ConsecutiveDbQueriesDetector, ConsecutiveHttpCallsDetector
from otel_apm.detectors.errors import ErrorDetector
from otel_apm.detectors.large_payload import LargePayloadDetector
from otel_apm.detectors.mn_plus_one import MNPlusOneQueryDetector
from otel_apm.detectors.n_plus_one import NPlusOneQueryDetector
from otel_apm.detectors.n_plus_one_api import NPlusOneApiCallDetector
from otel_apm.detectors.repeated_query import RepeatedIdenticalQueryDetector
from otel_apm.detectors.slow_query import SlowQueryDetector
from otel_apm.detectors.slow_query_outlier import SlowQueryOutlierDetector
from otel_apm.detectors.slow_request import SlowRequestDetector

DEFAULT_DETECTORS: tuple[type[Detector], ...] = (
    NPlusOneQueryDetector,
    MNPlusOneQueryDetector,
    RepeatedIdenticalQueryDetector,
    NPlusOneApiCallDetector,
    SlowQueryDetector,
    SlowRequestDetector,
    # The outlier detector is the one writer of the query history and must come after
    # SlowQueryDetector, which reads it: both then see only earlier traces.
    ConsecutiveDbQueriesDetector,
    ConsecutiveHttpCallsDetector,
    SlowQueryOutlierDetector,
    LargePayloadDetector,
    ChattyTransactionDetector,
    BottleneckDetector,
    ErrorDetector,
)

__all__ = ["DEFAULT_DETECTORS", "Detector", "Finding"]
