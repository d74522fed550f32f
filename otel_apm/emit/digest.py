"""The reporters' policy: a new problem is announced once, in full; its repeats are summarized.

The same N+1 runs in every request to its endpoint: reporting each occurrence would bury the
one line that matters (there is a new problem, here, fix it like this) under thousands of copies.
A :class:`Digest` tells a reporter which findings to announce and, once per interval, how often
each announced problem came back (:class:`Summary`).  Every reporter keeps its own (a console
may summarize every minute, a chat channel every few minutes); all share this one policy.
"""

from __future__ import annotations

import random
import threading
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from otel_apm.detectors.base import Finding
from otel_apm.detectors.history import p95_of

_MAX_REMEMBERED = 10_000
# Per fingerprint, 8 bytes each (an array of doubles): at most ~5 MB with every remembered
# fingerprint repeating, and a p95 that is a sample's, not exact: good enough to say "about".
_IMPACT_SAMPLES = 64


@dataclass(frozen=True)
class Summary:
    """The repeats of one announced problem over ``window_s`` seconds; ``latest`` is the last
    occurrence (its trace is an example to open)."""

    latest: Finding
    occurrences: int
    window_s: float
    impact_p95_ms: float
    impact_max_ms: float

    def describe(self) -> str:
        f = self.latest
        return (
            f"{f.type} {f.service} {f.endpoint!r}: {self.occurrences} more in the last "
            f"{self.window_s:.0f} s, impact p95 {self.impact_p95_ms:g} ms, max {self.impact_max_ms:g} ms"
        )


class _Known:
    """What is remembered of one announced fingerprint: the current window's repeats."""

    __slots__ = ("impacts", "latest", "max_impact", "repeats", "window_start")

    def __init__(self, now: float) -> None:
        self._reset(now)

    def _reset(self, now: float) -> None:
        self.window_start = now
        self.repeats = 0
        self.impacts = array("d")  # a uniform sample of the window's impacts
        self.max_impact = 0.0
        self.latest: Finding | None = None

    def add(self, finding: Finding, now: float, interval_s: float) -> None:
        if self.repeats == 0 and now - self.window_start >= interval_s:
            self.window_start = now  # a quiet spell is not part of the next window
        self.repeats += 1
        self.latest = finding
        self.max_impact = max(self.max_impact, finding.impact_ms)
        if len(self.impacts) < _IMPACT_SAMPLES:
            self.impacts.append(finding.impact_ms)
        else:  # reservoir sampling: bounded memory, every repeat equally likely kept
            slot = random.randrange(self.repeats)
            if slot < _IMPACT_SAMPLES:
                self.impacts[slot] = finding.impact_ms

    def close(self, now: float) -> Summary | None:
        """The window's summary, starting the next window; None when nothing repeated."""
        if self.repeats == 0 or self.latest is None:
            return None
        summary = Summary(
            self.latest,
            self.repeats,
            now - self.window_start,
            round(p95_of(self.impacts), 3),
            round(self.max_impact, 3),
        )
        self._reset(now)
        return summary


class Digest:
    """Thread-safe; bounded to the most recently seen ``max_remembered`` fingerprints (one that
    is forgotten is announced again when it returns).  With ``interval_s`` 0 every occurrence
    is announced and nothing summarized."""

    def __init__(self, interval_s: float, max_remembered: int = _MAX_REMEMBERED) -> None:
        self.interval_s = interval_s
        self._max = max_remembered
        self._known: dict[str, _Known] = {}  # least recently seen first
        self._pending: set[str] = set()  # fingerprints with repeats not yet summarized
        self._next_scan = 0.0
        self._lock = threading.Lock()

    def observe(self, findings: Sequence[Finding], now: float) -> list[Finding]:
        """Record the findings; return those to announce (the first of each new fingerprint)."""
        if self.interval_s == 0:
            return list(findings)
        new: list[Finding] = []
        with self._lock:
            for finding in findings:
                fp = finding.fingerprint
                known = self._known.pop(fp, None)
                if known is None:
                    known = _Known(now)
                    new.append(finding)
                    if len(self._known) >= self._max:
                        oldest = next(iter(self._known))
                        del self._known[oldest]
                        self._pending.discard(oldest)
                else:
                    known.add(finding, now, self.interval_s)
                    self._pending.add(fp)
                self._known[fp] = known
        return new

    def forget(self, fingerprint: str) -> None:
        """Treat the fingerprint as never seen: its announcement could not be made."""
        with self._lock:
            self._known.pop(fingerprint, None)
            self._pending.discard(fingerprint)

    def due(self, now: float, *, everything: bool = False) -> list[Summary]:
        """Summaries of the windows that are ``interval_s`` old (``everything``: all pending, as
        when the reporter shuts down), largest first."""
        summaries: list[Summary] = []
        with self._lock:
            if now < self._next_scan and not everything:
                return summaries  # called per trace: the pending set is scanned at most once a second
            self._next_scan = now + min(self.interval_s, 1.0)
            for fp in list(self._pending):
                known = self._known[fp]
                if everything or now - known.window_start >= self.interval_s:
                    summary = known.close(now)
                    self._pending.discard(fp)
                    if summary is not None:
                        summaries.append(summary)
        summaries.sort(key=lambda s: s.occurrences, reverse=True)
        return summaries
