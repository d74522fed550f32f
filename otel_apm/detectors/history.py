"""What the analyzer remembers across traces: recent query durations and how often findings recur.

Detectors live for one trace; a statement that is slow *for itself*, or a finding that costs
little once but happens every second, can only be judged against the past.  Both memories are
bounded by key count (least recently updated key evicted) and shared by every thread, so each
takes a lock for a few dictionary operations.
"""

from __future__ import annotations

import math
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from types import ModuleType

from otel_apm.detectors.dbshape import StatementGroups

MAX_KEYS = 10_000
SAMPLES_PER_QUERY = 256
_P95_REFRESH = 16  # recompute a statement's p95 after this many new samples, not at every read
RATE_TIME_CONSTANT_S = 600.0  # occurrences decay with a 10-minute time constant


def p95_of(samples: Iterable[float]) -> float:
    """The nearest-rank 95th percentile of a non-empty sample."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


class _Samples:
    """A statement's recent durations in a ring of doubles, with what its p95 cache needs:
    samples added in all, and the p95 with the count it was computed at.  Kept on the ring's
    holder, one dict entry a key instead of three, so a trace's write is one lookup a statement.

    An ``array('d')`` rather than a deque of floats: no float object a sample (a quarter of
    the memory: 8 bytes a sample instead of 32), and no samples for the cycle collector to
    visit, where a deque's 256 floats were each visited by every full collection, for every
    statement remembered.  The ring grows to SAMPLES_PER_QUERY; past it, sample number
    ``added`` overwrites the oldest, at ``added % SAMPLES_PER_QUERY``."""

    __slots__ = ("added", "p95", "p95_at", "ring")

    def __init__(self) -> None:
        self.ring = array("d")
        self.added = 0
        self.p95_at = -_P95_REFRESH  # never computed
        self.p95 = 0.0

    def __len__(self) -> int:
        return len(self.ring)

    def __iter__(self) -> Iterator[float]:
        return iter(self.ring)


class QueryHistory:
    """The last SAMPLES_PER_QUERY durations of each (service, statement fingerprint).

    ``compiled`` is otel_apm._native or None (otel_apm.native): whether a trace's round trips
    are written by the compiled twin of :meth:`add_trips` (csrc/traceindex.c), which every
    trace with DB spans pays for, or by Python."""

    def __init__(self, max_keys: int = MAX_KEYS, compiled: ModuleType | None = None) -> None:
        self._max_keys = max_keys
        self._samples: dict[tuple[str, str], _Samples] = {}  # least recently updated first
        self._lock = threading.Lock()
        self._compiled_add = None if compiled is None else compiled.add_trips

    def p95(self, key: tuple[str, str], min_samples: int) -> float | None:
        """The recent p95 of the statement, or None with fewer than ``min_samples`` known."""
        with self._lock:
            samples = self._samples.get(key)
            if samples is None or len(samples) < min_samples:
                return None
            if samples.added - samples.p95_at >= _P95_REFRESH:
                samples.p95 = p95_of(samples.ring)
                samples.p95_at = samples.added
            return samples.p95

    def add_trips(self, groups: StatementGroups) -> None:
        """A trace's DB round trips by statement, every statement's durations under one lock,
        each read straight from its spans (no list of durations made per statement first).
        The reference of the compiled twin, and its fallback for groups it declines."""
        with self._lock:
            by_key = self._samples
            if self._compiled_add is not None and self._compiled_add(by_key, groups, self._max_keys):
                return
            for key, (_, spans) in groups.items():
                samples = by_key.pop(key, None)  # re-inserted last: the dict stays in LRU order
                if samples is None:
                    samples = _Samples()
                    if len(by_key) >= self._max_keys:
                        del by_key[next(iter(by_key))]
                ring, added = samples.ring, samples.added
                for s in spans:
                    ms = (s.end_ns - s.start_ns) / 1e6
                    if len(ring) < SAMPLES_PER_QUERY:
                        ring.append(ms)
                    else:
                        ring[added % SAMPLES_PER_QUERY] = ms
                    added += 1
                samples.added = added
                by_key[key] = samples

    def __len__(self) -> int:
        return len(self._samples)


class FindingRates:
    """Occurrences per minute of each fingerprint, as an exponentially decayed count.

    A count decayed with time constant T holds about rate x T in steady state, so rate = count / T;
    a problem that stopped happening fades out of the ranking instead of staying on top forever.
    """

    def __init__(
        self,
        max_keys: int = MAX_KEYS,
        time_constant_s: float = RATE_TIME_CONSTANT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_keys = max_keys
        self._tau = time_constant_s
        self._clock = clock
        self._counts: dict[str, tuple[float, float]] = {}  # fingerprint -> (decayed count, at)
        self._lock = threading.Lock()

    def observe(self, fingerprint: str) -> float:
        """Count one occurrence; the fingerprint's rate per minute, this one included."""
        now = self._clock()
        with self._lock:
            previous = self._counts.pop(fingerprint, None)
            if previous is None:
                count = 1.0
                if len(self._counts) >= self._max_keys:
                    del self._counts[next(iter(self._counts))]
            else:
                count = previous[0] * math.exp(-(now - previous[1]) / self._tau) + 1.0
            self._counts[fingerprint] = (count, now)
        return count * 60.0 / self._tau


class History:
    """Everything an Analyzer remembers between traces; one per Analyzer, given its
    ``compiled`` module (None: the Python versions)."""

    def __init__(self, compiled: ModuleType | None = None) -> None:
        self.queries = QueryHistory(compiled=compiled)
        self.findings = FindingRates()
