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
from array import array
from typing import Any

FORMAT_VERSION = 1
MIN_VALUE = 1e-9


class DDSketch:
    __slots__ = (
        "_counts",
        "_gamma",
        "_inv_log_gamma",
        "_offset",
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
        # Dense counts of buckets _offset, _offset + 1, ...: 8 bytes a bucket, where a dict entry
        # costs five times that, and a sketch's buckets are mostly contiguous.
        self._counts = array("q")
        self._offset = 0
        self.zero_count = 0
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, value: float) -> None:
        """Count one value; NaN and infinities are refused (ValueError), they have no rank."""
        if MIN_VALUE < value < math.inf:
            key = math.ceil(math.log(value) * self._inv_log_gamma)
            i = key - self._offset
            counts = self._counts
            if 0 <= i < len(counts):
                counts[i] += 1
            else:
                i = self._reserve(key)  # may replace the array: index it after
                self._counts[i] += 1
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

    def _reserve(self, key: int) -> int:
        """The index that counts ``key``, widening the range to take it; past ``max_buckets`` the
        lowest buckets fold into the lowest one kept (and a key below them is counted there)."""
        counts = self._counts
        if not counts:
            self._offset = key
            counts.append(0)
            return 0
        low, high = self._offset, self._offset + len(counts) - 1
        if key > high:
            counts.frombytes(bytes(8 * (key - high)))
            high = key
            if high - low + 1 > self.max_buckets:
                cut = high - self.max_buckets + 1 - low  # buckets folded into the new lowest
                counts[cut] += sum(counts[:cut])
                del counts[:cut]
                self._offset = low = low + cut
        elif key < low:
            floor = max(key, high - self.max_buckets + 1)
            if floor < low:
                self._counts = array("q", bytes(8 * (low - floor))) + counts
                self._offset = low = floor
        return max(key, low) - low

    def merge(self, other: DDSketch) -> None:
        """Add ``other``'s counts to this sketch; both must have the same relative accuracy."""
        if other.alpha != self.alpha:
            raise ValueError(f"cannot merge sketches of relative accuracy {other.alpha} and {self.alpha}")
        if not other.count:
            return
        theirs = other._counts
        if theirs:
            first = other._offset
            self._reserve(first + len(theirs) - 1)  # widen once for both ends, then add in place
            self._reserve(first)
            counts, offset = self._counts, self._offset
            for i, n in enumerate(theirs):
                if n:
                    counts[max(first + i, offset) - offset] += n
        self.zero_count += other.zero_count
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def copy(self) -> DDSketch:
        """An independent copy, made at C speed (the counts are one array): cheap enough to take
        under a lock that the application's threads wait on."""
        out = DDSketch.__new__(DDSketch)
        for name in DDSketch.__slots__:
            setattr(out, name, getattr(self, name))
        out._counts = self._counts[:]
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
        for i, n in enumerate(self._counts):
            seen += n
            if seen > rank:
                estimate = 2 * self._gamma ** (self._offset + i) / (self._gamma + 1)
                break
        # The exact extremes are known: an estimate never leaves them.
        return min(max(estimate, self.min), self.max)

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def __len__(self) -> int:
        """Buckets held (the memory this sketch costs), not values counted."""
        return len(self._counts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"version": 1, "alpha", "max_buckets", "count", "sum", "min", "max",
        "zero_count", "bins": [[index, count], ...]}`` (non-empty buckets, ascending) with
        ``min``/``max`` null when empty."""
        offset = self._offset
        return {
            "version": FORMAT_VERSION,
            "alpha": self.alpha,
            "max_buckets": self.max_buckets,
            "count": self.count,
            "sum": self.sum,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "zero_count": self.zero_count,
            "bins": [[offset + i, n] for i, n in enumerate(self._counts) if n],
        }

    @classmethod
    def from_dict(cls, data: Any) -> DDSketch:
        try:
            if data["version"] != FORMAT_VERSION:
                raise ValueError(f"unknown sketch format version {data['version']!r}")
            out = cls(float(data["alpha"]), int(data["max_buckets"]))
            bins = [(int(k), int(n)) for k, n in data["bins"]]
            zero, count = int(data["zero_count"]), int(data["count"])
            if count != zero + sum(n for _, n in bins) or any(n <= 0 for _, n in bins) or zero < 0:
                raise ValueError("sketch counts do not add up")
            for key, n in sorted(bins):
                i = out._reserve(key)
                out._counts[i] += n
            out.zero_count, out.count, out.sum = zero, count, float(data["sum"])
            if count:
                out.min, out.max = float(data["min"]), float(data["max"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a sketch: {exc!r}") from None
        return out
