"""The metrics reporter compiled and in Python: ``statement_totals`` (csrc/sketch.c) adds each
statement's nanoseconds and runs as ``_add_statements`` (otel_apm/emit/metrics.py, the
reference) does, or declines before adding anything; and ``MetricsEmitter`` exports the same
points either way, endpoints and statements past their bounds included.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pytest
from conftest import require_native
from hypothesis import HealthCheck, given, settings
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from test_histogram import points
from test_processor import process_finding
from test_stats_native import REQUESTS, STATEMENTS, Query, trace_of

from otel_apm.config import APMConfig
from otel_apm.detectors.dbshape import StatementGroups, statements_of
from otel_apm.emit import metrics
from otel_apm.emit.metrics import MetricsEmitter
from otel_apm.model import SpanView

EXCEPTIONS = (None, "ValueError", "")  # a failed root's exception type, "" and None as "_OTHER"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=REQUESTS)
def test_the_metrics_report_the_same_compiled_and_in_python(
    requests: list[tuple[str, int, bool, list[Query], float]],
) -> None:
    """Three endpoints and three statements get series, the rest overflow; failed roots with
    and without an exception type, negative durations (dropped alike); a collection now and
    then between the traces."""
    require_native()
    bounds: dict[str, Any] = {"metrics_max_endpoints": 3, "metrics_max_statements": 3}
    readers = InMemoryMetricReader(), InMemoryMetricReader()
    compiled, python = (
        MetricsEmitter(MeterProvider(metric_readers=[reader]), APMConfig(native_enabled=enabled, **bounds))
        for enabled, reader in zip((True, False), readers, strict=True)
    )
    for number, (route, spent_ns, error, queries, _) in enumerate(requests):
        for emitter in (compiled, python):
            trace = trace_of(number, route, spent_ns, error, queries)
            assert trace.root is not None
            trace.root.exception_type = EXCEPTIONS[number % 3]
            emitter.emit(trace, ())
        if number % 7 == 3:
            assert points(readers[0]) == points(readers[1])
    assert points(readers[0]) == points(readers[1])


def add(
    loop: Callable[..., object], groups: StatementGroups | MappingProxyType[Any, Any]
) -> tuple[object, dict[Any, list[int]], list[Any]]:
    """What ``loop`` returns and leaves in fresh totals, with the statements it was asked to file."""
    totals: dict[Any, list[int]] = {}
    filed: list[Any] = []

    def entry(key: tuple[str, str], shape: Any, first: SpanView) -> list[int]:
        filed.append((key, shape.fingerprint, first.span_id))
        made = totals[key] = [0, 0]
        return made

    return loop(totals, groups, entry), totals, filed


def groups_of(queries: list[Query]) -> StatementGroups:
    return statements_of(trace_of(1, "/a", 10**7, False, queries))


QUERIES: list[Query] = [
    (STATEMENTS[0], 10**6, True, False),
    (STATEMENTS[0], 3, False, False),
    (STATEMENTS[1], 5, False, True),
]


def test_statement_totals_add_as_the_python_loop() -> None:
    compiled = require_native().statement_totals
    done, totals, filed = add(compiled, groups_of(QUERIES))
    assert done is True
    assert (totals, filed) == add(metrics._add_statements, groups_of(QUERIES))[1:]
    assert sorted(totals.values()) == [[5, 1], [10**6 + 3, 2]]


def spoil_every_end(views: list[SpanView]) -> None:
    for v in views:
        v.end_ns = 3 * 2**61


@pytest.mark.parametrize(
    "spoil",
    [
        lambda views: setattr(views[-1], "end_ns", float(views[-1].end_ns)),  # no int
        lambda views: setattr(views[-1], "end_ns", 2**64),  # past a long long
        spoil_every_end,  # their sum past a long long
    ],
)
def test_statement_totals_decline_what_they_do_not_hold(spoil: Callable[[list[SpanView]], object]) -> None:
    """Before adding anything, so the Python loop (run next by the emitter) counts the trace once."""
    compiled = require_native().statement_totals
    groups = groups_of(QUERIES)
    spoil([s for _, spans in groups.values() for s in spans])
    done, totals, filed = add(compiled, groups)
    assert (done, totals, filed) == (False, {}, [])
    assert add(metrics._add_statements, groups)[1]  # what the emitter counts instead


def test_statement_totals_decline_a_mapping_that_is_no_dict() -> None:
    compiled = require_native().statement_totals
    assert add(compiled, MappingProxyType(groups_of(QUERIES)))[:2] == (False, {})


def test_an_endpoint_a_finding_admitted_keeps_its_series_for_the_trace() -> None:
    """With a bound of one endpoint, admitted by a finding first: the finding's endpoint keeps
    its own series for its trace, and the next endpoint goes to the overflow series."""
    reader = InMemoryMetricReader()
    emitter = MetricsEmitter(MeterProvider(metric_readers=[reader]), APMConfig(metrics_max_endpoints=1))
    emitter.emit(trace_of(1, "/b", 10**7, False, []), [process_finding(service="front", endpoint="GET /b")])
    emitter.emit(trace_of(2, "/a", 10**7, False, []), ())
    emitter.emit(trace_of(3, "/b", 10**7, False, []), ())
    counts = {
        (fields["attributes"].get("otel_apm.endpoint", "overflow"), fields["count"])
        for name, _, point in points(reader)
        if name == "otel_apm.transaction.duration"
        for fields in [dict(point)]
    }
    assert counts == {("GET /b", 2), ("overflow", 1)}


def unfiled(key: tuple[str, str], shape: Any, first: SpanView) -> list[int]:
    raise AssertionError(f"{key} has its totals: nothing is filed")


def test_statement_totals_past_a_long_long_add_as_python_ints() -> None:
    """A statement's totals near or past 2**63 (Python's ints have no bound) add the same."""
    compiled = require_native().statement_totals
    sums = []
    for loop in (compiled, metrics._add_statements):
        groups = groups_of(QUERIES)
        totals: dict[Any, list[int]] = {key: [2**63 - 2, 2**64] for key in groups}
        loop(totals, groups, unfiled)
        sums.append(totals)
    assert sums[0] == sums[1]
    assert sorted(sums[0].values()) == [[2**63 + 3, 2**64 + 1], [2**63 - 2 + 10**6 + 3, 2**64 + 2]]
