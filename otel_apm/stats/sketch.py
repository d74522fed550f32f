"""A mergeable quantile sketch with a bounded relative error (DDSketch's logarithmic mapping).

A value x > 0 is counted in bucket ``ceil(log_gamma(x))`` with ``gamma = (1 + alpha) / (1 - alpha)``;
every value in a bucket lies within ``alpha`` (relative) of the bucket's representative value
``2 gamma^i / (gamma + 1)``.  So ``quantile(q)`` is within ``alpha`` of the exact value of rank
``floor(q (count - 1))`` in the sorted data, whatever the distribution, and two sketches of the
same ``alpha`` merge by adding bucket counts: the merge of parts equals the sketch of the whole.

Memory is bounded by ``max_buckets``: past it the lowest buckets are collapsed into one, which
loses accuracy only for the lowest quantiles (latency reports care about the high ones).  At
alpha = 1 %, 2048 buckets span 1 ns to 10^8 s in milliseconds without collapsing.  Values at or
below ``MIN_VALUE`` (zero, and negative durations from skewed clocks) are counted apart, as 0.

The JSON form (:meth:`DDSketch.to_dict`) is versioned; :meth:`DDSketch.from_dict` refuses a
version or a shape it does not know with a ValueError rather than reading it wrong.
"""

from __future__ import annotations

import math
from typing import Any

FORMAT_VERSION = 1
MIN_VALUE = 1e-9


class DDSketch:
    __slots__ = (
        "_bins",
        "_gamma",
        "_inv_log_gamma",
        "alpha",
        "count",
        "max",
        "max_buckets",
        "min",
        "sum",
        "zero_count",
    )

    def __init__(self, alpha: float = 0.01, max_buckets: int = 2048) -> None:
        if not 0 < alpha < 1:
            raise ValueError(f"relative accuracy must be between 0 and 1 exclusive, got {alpha!r}")
        if max_buckets < 2:
            raise ValueError(f"max_buckets must be at least 2, got {max_buckets!r}")
        self.alpha = alpha
        self.max_buckets = max_buckets
        self._gamma = (1 + alpha) / (1 - alpha)
        self._inv_log_gamma = 1 / math.log(self._gamma)
        self._bins: dict[int, int] = {}
        self.zero_count = 0
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, value: float) -> None:
        """Count one value; NaN and infinities are refused (ValueError), they have no rank."""
        if MIN_VALUE < value < math.inf:
            key = math.ceil(math.log(value) * self._inv_log_gamma)
            bins = self._bins
            seen = bins.get(key)
            if seen is None:
                bins[key] = 1
                if len(bins) > self.max_buckets:
                    self._collapse()
            else:
                bins[key] = seen + 1
        elif -math.inf < value <= MIN_VALUE:
            value = max(value, 0.0)
            self.zero_count += 1
        else:
            raise ValueError(f"cannot add {value!r} to a sketch: it has no rank")
        self.count += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def merge(self, other: DDSketch) -> None:
        """Add ``other``'s counts to this sketch; both must have the same relative accuracy."""
        if other.alpha != self.alpha:
            raise ValueError(f"cannot merge sketches of relative accuracy {other.alpha} and {self.alpha}")
        if not other.count:
            return
        bins = self._bins
        for key, n in other._bins.items():
            bins[key] = bins.get(key, 0) + n
        if len(bins) > self.max_buckets:
            self._collapse()
        self.zero_count += other.zero_count
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def copy(self) -> DDSketch:
        out = DDSketch(self.alpha, self.max_buckets)
        out.merge(self)
        return out

    def quantile(self, q: float) -> float | None:
        """The value at quantile ``q`` (0..1) within the relative accuracy; None when empty."""
        if not 0 <= q <= 1:
            raise ValueError(f"quantile must be between 0 and 1, got {q!r}")
        if not self.count:
            return None
        rank = q * (self.count - 1)
        seen = self.zero_count
        if seen > rank:
            return max(self.min, 0.0)
        estimate = self.max
        for key in sorted(self._bins):
            seen += self._bins[key]
            if seen > rank:
                estimate = 2 * self._gamma**key / (self._gamma + 1)
                break
        # The exact extremes are known: an estimate never leaves them.
        return min(max(estimate, self.min), self.max)

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def __len__(self) -> int:
        """Buckets held (the memory this sketch costs), not values counted."""
        return len(self._bins)

    def _collapse(self) -> None:
        """Fold the lowest buckets into one so that ``max_buckets`` remain."""
        keys = sorted(self._bins)
        excess = len(keys) - self.max_buckets + 1
        target = keys[excess]
        folded = sum(self._bins.pop(k) for k in keys[:excess])
        self._bins[target] += folded

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"version": 1, "alpha", "max_buckets", "count", "sum", "min", "max",
        "zero_count", "bins": [[index, count], ...]}`` with ``min``/``max`` null when empty."""
        return {
            "version": FORMAT_VERSION,
            "alpha": self.alpha,
            "max_buckets": self.max_buckets,
            "count": self.count,
            "sum": self.sum,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "zero_count": self.zero_count,
            "bins": [[k, self._bins[k]] for k in sorted(self._bins)],
        }

    @classmethod
    def from_dict(cls, data: Any) -> DDSketch:
        try:
            if data["version"] != FORMAT_VERSION:
                raise ValueError(f"unknown sketch format version {data['version']!r}")
            out = cls(float(data["alpha"]), int(data["max_buckets"]))
            bins = {int(k): int(n) for k, n in data["bins"]}
            zero, count = int(data["zero_count"]), int(data["count"])
            if count != zero + sum(bins.values()) or any(n <= 0 for n in bins.values()) or zero < 0:
                raise ValueError("sketch counts do not add up")
            out._bins = bins
            out.zero_count, out.count, out.sum = zero, count, float(data["sum"])
            if count:
                out.min, out.max = float(data["min"]), float(data["max"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a sketch: {exc!r}") from None
        return out
