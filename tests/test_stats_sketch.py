"""The quantile sketch against exact percentiles of generated data, within its stated error."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable

import pytest

from otel_apm.stats import DDSketch

QUANTILES = (0.0, 0.01, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)


def _exact(ordered: list[float], q: float) -> float:
    return ordered[math.floor(q * (len(ordered) - 1))]


def _check_within(sketch: DDSketch, values: list[float], alpha: float) -> None:
    ordered = sorted(values)
    for q in QUANTILES:
        exact, estimate = _exact(ordered, q), sketch.quantile(q)
        assert estimate is not None
        assert abs(estimate - exact) <= alpha * abs(exact) + 1e-12, (q, exact, estimate)


GENERATORS: dict[str, Callable[[random.Random], float]] = {
    "uniform": lambda r: r.uniform(1, 1000),
    "lognormal": lambda r: r.lognormvariate(2, 1.5),
    "bimodal": lambda r: r.gauss(5, 1) if r.random() < 0.8 else r.gauss(800, 50),
    "constant": lambda r: 42.0,
    "huge_and_small": lambda r: 10 ** r.uniform(-6, 9),
    "with_zeros": lambda r: 0.0 if r.random() < 0.3 else r.expovariate(0.1),
}


@pytest.mark.parametrize("alpha", [0.01, 0.05])
@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_quantiles_within_the_relative_error(name: str, alpha: float) -> None:
    rng = random.Random(name)
    values = [max(GENERATORS[name](rng), 0.0) for _ in range(20_000)]
    sketch = DDSketch(alpha)
    for v in values:
        sketch.add(v)
    _check_within(sketch, values, alpha)
    assert sketch.count == len(values)
    assert sketch.sum == pytest.approx(math.fsum(values))
    assert (sketch.min, sketch.max) == (min(values), max(values))
    assert sketch.mean == pytest.approx(math.fsum(values) / len(values))


def test_merge_of_parts_equals_the_whole() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(1, 2) for _ in range(10_000)]
    whole = DDSketch()
    parts = [DDSketch() for _ in range(7)]
    for i, v in enumerate(values):
        whole.add(v)
        parts[i % 7].add(v)
    merged = DDSketch()
    for part in parts:
        merged.merge(part)
    a, b = whole.to_dict(), merged.to_dict()
    assert a.pop("sum") == pytest.approx(b.pop("sum"))
    assert a == b
    _check_within(merged, values, 0.01)


def test_collapsing_keeps_the_bound_and_the_high_quantiles() -> None:
    rng = random.Random(3)
    values = [10 ** rng.uniform(-6, 9) for _ in range(20_000)]
    sketch = DDSketch(0.01, max_buckets=1000)  # about 8.7 of the 15 decades
    for v in values:
        sketch.add(v)
    assert len(sketch) <= 1000
    ordered = sorted(values)
    for q in (0.5, 0.9, 0.99, 1.0):
        assert sketch.quantile(q) == pytest.approx(_exact(ordered, q), rel=0.01)
    # The low quantiles are what collapsing gives up: folded upwards, never below the exact value.
    low = sketch.quantile(0.01)
    assert low is not None and low >= _exact(ordered, 0.01) * 0.99
    # Parts collapsed apart merge into what the whole collapsed into, and survive JSON.
    parts = [DDSketch(0.01, max_buckets=1000) for _ in range(4)]
    for i, v in enumerate(values):
        parts[i % 4].add(v)
    merged = DDSketch(0.01, max_buckets=1000)
    for part in parts:
        merged.merge(DDSketch.from_dict(json.loads(json.dumps(part.to_dict()))))
    a, b = sketch.to_dict(), merged.to_dict()
    assert a.pop("sum") == pytest.approx(b.pop("sum"))
    assert a == b


def test_json_round_trip_keeps_every_count() -> None:
    sketch = DDSketch(0.02, 512)
    for v in (0.0, 0.5, 3.0, 3.0, 1e6):
        sketch.add(v)
    back = DDSketch.from_dict(json.loads(json.dumps(sketch.to_dict())))
    assert back.to_dict() == sketch.to_dict()
    assert back.quantile(0.5) == sketch.quantile(0.5)
    assert DDSketch.from_dict(DDSketch().to_dict()).quantile(0.5) is None
    copy = sketch.copy()
    sketch.add(1e9)
    assert copy.to_dict() == back.to_dict()  # a copy does not follow the original


def test_empty_sketch_and_bad_input() -> None:
    empty = DDSketch()
    assert empty.quantile(0.99) is None and empty.mean is None
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="no rank"):
            empty.add(bad)
    assert empty.count == 0  # nothing half-counted
    with pytest.raises(ValueError, match="quantile"):
        empty.quantile(1.5)
    with pytest.raises(ValueError, match="relative accuracy"):
        empty.merge(DDSketch(0.05))
    with pytest.raises(ValueError, match="relative accuracy"):
        DDSketch(0.0)
    negative = DDSketch()
    negative.add(-3.0)  # a skewed clock's duration counts as zero
    assert (negative.quantile(0.5), negative.min, negative.sum) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(version=99),
        lambda d: d.pop("bins"),
        lambda d: d.update(count=d["count"] + 1),
        lambda d: d.update(bins=[[1, -1]]),
        lambda d: d.update(bins="x"),
    ],
)
def test_from_dict_refuses_what_it_cannot_read(mutate: Callable[[dict[str, object]], object]) -> None:
    sketch = DDSketch()
    sketch.add(5.0)
    data = sketch.to_dict()
    mutate(data)
    with pytest.raises(ValueError):
        DDSketch.from_dict(data)
