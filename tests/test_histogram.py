"""otel_apm.emit.histogram: points recorded straight into the SDK's aggregations export exactly
as the same points recorded through ``Histogram.record``.

Each test records one sequence twice, into two meter providers configured alike: through the
SDK's ``record()`` (the reference) and through ``DirectHistogram``, and compares every exported
data point but its time stamps.  The direct path is asserted to be taken (``record`` returns
True), so a comparison cannot pass by the fallback alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from conftest import SERVICE_NAME, OTel
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.metrics._internal import _ProxyMeter
from opentelemetry.sdk.metrics import AlwaysOnExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics import Histogram as SDKHistogram
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    MetricReader,
)
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from test_stats import USERS, request

from otel_apm.emit.histogram import DirectHistogram

GET_A = {"otel_apm.service": "svc", "otel_apm.endpoint": "GET /a", "http.route": "/a"}
SETS: list[dict[str, Any]] = [
    {**GET_A, "http.request.method": "GET"},
    {**GET_A, "error.type": "ValueError"},
    {"otel_apm.service": "svc", "otel_apm.endpoint": "POST /b", "http.request.method": "POST"},
    {"otel.metric.overflow": True},
    {},
]
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 1.0)
Point = tuple[Any, ...]


def readers_of(kind: str) -> list[MetricReader]:
    if kind == "delta":
        return [InMemoryMetricReader(preferred_temporality={SDKHistogram: AggregationTemporality.DELTA})]
    if kind == "exponential":
        exponential = ExponentialBucketHistogramAggregation()
        return [InMemoryMetricReader(preferred_aggregation={SDKHistogram: exponential})]
    if kind == "two readers":
        return [InMemoryMetricReader(), InMemoryMetricReader()]
    return [InMemoryMetricReader()]


def points(reader: MetricReader) -> list[Point]:
    """Every histogram point the reader collects, by metric, without time stamps."""
    assert isinstance(reader, InMemoryMetricReader)
    out = []
    data = reader.get_metrics_data()
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                for p in metric.data.data_points:
                    fields = {k: v for k, v in vars(p).items() if "time_unix_nano" not in k}
                    fields["attributes"] = dict(p.attributes or {})
                    fields["exemplars"] = [
                        (e.value, e.trace_id, e.span_id, dict(e.filtered_attributes or {}))
                        for e in p.exemplars
                    ]
                    out.append((metric.name, metric.unit, sorted(fields.items(), key=lambda kv: kv[0])))
    return sorted(out, key=repr)


class Pair:
    """The same histogram in two providers: one recorded through record(), one through
    DirectHistogram."""

    def __init__(self, kind: str = "cumulative", views: Sequence[View] = (), **provider: Any) -> None:
        self.readers = readers_of(kind), readers_of(kind)
        made = [MeterProvider(metric_readers=r, views=views, **provider) for r in self.readers]
        self.providers = made
        self.reference, direct = (
            p.get_meter("m").create_histogram("h", unit="s", explicit_bucket_boundaries_advisory=BOUNDS)
            for p in made
        )
        self.direct = DirectHistogram(direct)
        self.fast = 0

    def record(self, index: int, value: float) -> None:
        self.reference.record(value, SETS[index])
        if self.direct.record(index, value):
            self.fast += 1
        else:
            self.direct.record_new(index, value, dict(SETS[index]))

    def assert_same(self) -> list[Point]:
        """Each reader pair collects the same points; the direct path's first reader's."""
        collected = []
        for reference, direct in zip(*self.readers, strict=True):
            collected.append(points(direct))
            assert collected[-1] == points(reference)
        return collected[0]


# Durations as the emitter makes them, nanoseconds / 1e9: the SDK's exponential histogram fails
# its own collection ("Incorrect merge scale") after a 0 and a value near the smallest normal
# float, through record() alone.
recordings = st.lists(
    st.tuples(
        st.integers(0, len(SETS) - 1),
        st.one_of(
            st.integers(0, 20 * 10**9).map(lambda ns: ns / 1e9),
            st.sampled_from([0.0, 0.005, 0.01, 1.0, 1e-9, -0.5, float("inf"), float("nan")]),
        ),
    ),
    max_size=60,
)


@pytest.mark.parametrize("kind", ["cumulative", "delta", "exponential", "two readers"])
@settings(max_examples=40, deadline=None)
@given(recordings, st.integers(0, 3))
def test_direct_points_equal_recorded_points(
    kind: str, recorded: list[tuple[int, float]], collections: int
) -> None:
    """Whatever the values (negative, infinite and NaN ones are dropped by both), the attribute
    sets and the temporality or aggregation, with collections between the points."""
    pair = Pair(kind)
    step = max(1, len(recorded) // (collections + 1))
    for i, (index, value) in enumerate(recorded):
        pair.record(index, value)
        if i % step == step - 1:
            pair.assert_same()
    pair.assert_same()
    learnt: set[int] = set()  # the sets with a point the SDK took
    direct = 0
    for index, value in recorded:
        if 0 <= value < float("inf"):
            direct += index in learnt
            learnt.add(index)
    assert pair.fast == direct  # every later point of a set went direct


def test_a_view_that_keeps_some_attribute_keys() -> None:
    """The set is filed under the view's kept keys: two sets that differ only in a dropped key
    share one point, on both paths."""
    pair = Pair(views=[View(instrument_name="h", attribute_keys={"otel_apm.endpoint"})])
    for index, value in [(0, 0.02), (1, 0.3), (0, 0.004), (2, 2.0), (1, 0.01)]:
        pair.record(index, value)
    assert pair.fast == 2
    pair.assert_same()


def test_exemplars_of_a_sampled_span_in_context() -> None:
    """With exemplars for every point, they carry the current span's ids and equal record()'s."""
    pair = Pair(exemplar_filter=AlwaysOnExemplarFilter())
    span = NonRecordingSpan(SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1)))
    token = context_api.attach(trace.set_span_in_context(span))
    try:
        for index, value in [(0, 0.02), (0, 0.3), (2, 0.004), (0, 7.0)]:
            pair.record(index, value)
    finally:
        context_api.detach(token)
    assert pair.fast == 2
    exemplars = [e for p in pair.assert_same() for e in dict(p[2])["exemplars"]]
    assert {e[1:3] for e in exemplars} == {(0xABC, 0xDEF)} and len(exemplars) == 4


def test_readers_added_and_removed_after_a_route_was_learnt() -> None:
    """A reader added after a set's route was learnt gets the set's next points, and one
    removed gets no more: the route is learnt again when the readers change."""
    pair = Pair()
    pair.record(0, 0.5)
    pair.record(0, 0.6)
    assert pair.fast == 1
    late = InMemoryMetricReader(), InMemoryMetricReader()
    for change, fast in (("add_metric_reader", 2), ("remove_metric_reader", 3)):
        for provider, reader in zip(pair.providers, late, strict=True):
            getattr(provider, change)(reader)
        pair.record(0, 0.7)
        pair.record(0, 0.8)
        assert pair.fast == fast
        collected = pair.assert_same()
        if change == "add_metric_reader":  # the late readers saw the last two points
            assert points(late[1]) == points(late[0]) and dict(points(late[1])[0][2])["count"] == 2
    assert dict(collected[0][2])["count"] == 6


def test_the_api_proxy_histogram_goes_direct_once_the_sdk_is_set() -> None:
    """In-process the processor may make its instruments before the SDK's meter provider is
    set (opentelemetry-instrument sets tracing up first): the API's proxy instrument."""
    reader = InMemoryMetricReader()
    proxy_meter = _ProxyMeter("m")
    direct = DirectHistogram(proxy_meter.create_histogram("h", explicit_bucket_boundaries_advisory=BOUNDS))
    direct.record_new(0, 0.1, SETS[0])  # dropped: nothing set yet
    assert not direct.record(0, 0.1)
    proxy_meter.on_set_meter_provider(MeterProvider(metric_readers=[reader]))
    direct.record_new(0, 0.2, SETS[0])
    assert direct.record(0, 0.3)
    (point,) = [dict(p[2]) for p in points(reader)]
    assert (point["count"], point["sum"], point["attributes"]) == (2, pytest.approx(0.5), SETS[0])


@pytest.mark.parametrize(
    "make", [lambda: NoOpMeterProvider().get_meter("m").create_histogram("h")], ids=["no-op"]
)
def test_a_provider_that_is_not_the_sdk_is_left_to_record(make: Callable[[], Any]) -> None:
    direct = DirectHistogram(make())
    direct.record_new(0, 0.1, SETS[0])
    assert not direct.record(0, 0.2)


def test_the_transaction_histogram_of_an_endpoint_requested_again_and_again(
    make_otel: Callable[..., OTel],
) -> None:
    """Through the processor: an endpoint's later points take the direct path, into the one
    point the first made, and a new error type makes a set of its own."""
    otel = make_otel()
    base = time.time_ns()
    for ms in (3.0, 30.0, 300.0, 30.0, 7.5):
        request(otel.tracer, "/users/{id}", base, ms, [(USERS, 1.0)])
    request(otel.tracer, "/users/{id}", base, 40.0, [(USERS, 1.0)], error=True)
    durations = {
        frozenset((p.attributes or {}).items()): p for p in otel.data_points("otel_apm.transaction.duration")
    }
    users = {
        "otel_apm.service": SERVICE_NAME,
        "otel_apm.endpoint": "GET /users/{id}",
        "http.route": "/users/{id}",
        "http.request.method": "GET",
    }
    ok = durations[frozenset(users.items())]
    assert (ok.count, ok.sum, ok.min, ok.max) == (
        5,
        pytest.approx(0.3705),
        pytest.approx(0.003),
        pytest.approx(0.3),
    )
    assert list(ok.bucket_counts) == [1, 1, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]  # the advisory buckets
    failed = durations[frozenset({**users, "error.type": "_OTHER"}.items())]
    assert (failed.count, failed.sum) == (1, pytest.approx(0.04))
    assert len(durations) == 2


def test_threads_recording_the_same_sets_lose_no_point() -> None:
    """The routes are learnt by whichever thread comes first; the SDK's aggregation takes its
    own lock for each point, direct or not."""
    pair = Pair()
    values = [(i % 3, (i % 50) / 64) for i in range(600)]  # sums exact in any order

    def run() -> None:
        for index, value in values:
            pair.record(index, value)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    collected = pair.assert_same()
    assert sum(dict(p[2])["count"] for p in collected) == 2400
