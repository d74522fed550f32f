"""Heap snapshot analysis with tracemalloc: which lines allocated the memory that stayed.

tracemalloc records where every allocation was made while it traces, which makes an
allocation-heavy program several times slower (bench/bench_memory.py measures it): too costly to
leave on, affordable for a bounded window once memory is seen growing.  A session takes a
snapshot when it starts and another when it ends and compares them line by line: what grew
between the two is what the program allocated in the window and still holds, which for a leak
is the leaking line.  Tracing starts and stops with the session unless someone else had it on.
"""

from __future__ import annotations

import linecache
import os
import threading
import time
import tracemalloc
from dataclasses import dataclass

_KIB = 1024
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class AllocationSite:
    """One source line and how much the memory allocated there and still held grew."""

    file: str
    line: int
    size_diff_bytes: int
    count_diff: int
    size_bytes: int
    source: str

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"

    def describe(self) -> str:
        text = f"{self.location} +{self.size_diff_bytes / _KIB:.1f} KiB in {self.count_diff:+d} blocks"
        return f"{text}: {self.source}" if self.source else text


def _filters() -> list[tracemalloc.Filter]:
    """Frames that are not the application's: tracemalloc's own, the import system's (modules
    loaded in the window are not a leak) and ours, so the sites name code a user can change."""
    return [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib.*>"),
        tracemalloc.Filter(False, "<unknown>"),
        tracemalloc.Filter(False, os.path.join(_PACKAGE, "*")),
    ]


def grown_sites(first: tracemalloc.Snapshot, last: tracemalloc.Snapshot, top: int) -> list[AllocationSite]:
    """The ``top`` lines whose held memory grew most from ``first`` to ``last``, largest first."""
    filters = _filters()
    diffs = last.filter_traces(filters).compare_to(first.filter_traces(filters), "lineno")
    grown = sorted((d for d in diffs if d.size_diff > 0), key=lambda d: d.size_diff, reverse=True)
    sites = []
    for diff in grown[:top]:
        frame = diff.traceback[0]
        sites.append(
            AllocationSite(
                file=frame.filename,
                line=frame.lineno,
                size_diff_bytes=diff.size_diff,
                count_diff=diff.count_diff,
                size_bytes=diff.size,
                source=linecache.getline(frame.filename, frame.lineno).strip(),
            )
        )
    return sites


class HeapProfiler:
    """One tracemalloc session at a time: :meth:`begin`, later :meth:`end` (the monitor, across
    its checks), or :meth:`profile` (a caller that waits for the result)."""

    def __init__(self, top: int) -> None:
        self.top = top
        self._busy = threading.Lock()
        self._first: tracemalloc.Snapshot | None = None
        self._started_tracing = False
        self.started_at: float | None = None

    def begin(self, *, wait: bool = False) -> bool:
        """Start a session; False when one is already running (unless ``wait``: then wait for it)."""
        if not self._busy.acquire(blocking=wait):
            return False
        try:
            self._started_tracing = not tracemalloc.is_tracing()
            if self._started_tracing:
                tracemalloc.start()
            self._first = tracemalloc.take_snapshot()
        except BaseException:
            self._stop_tracing()
            self._busy.release()
            raise
        self.started_at = time.monotonic()
        return True

    def end(self) -> list[AllocationSite]:
        """The sites that grew since :meth:`begin`; tracing stops if the session started it."""
        first = self._first
        if first is None:
            raise RuntimeError("no heap profile is running")
        try:
            last = tracemalloc.take_snapshot()
        finally:
            self._stop_tracing()
            self._first = None
            self.started_at = None
            self._busy.release()
        return grown_sites(first, last, self.top)

    def profile(self, duration_s: float) -> list[AllocationSite]:
        """Trace allocations for ``duration_s`` (after any running session) and return the sites."""
        self.begin(wait=True)
        time.sleep(duration_s)
        return self.end()

    def abandon(self) -> None:
        """In a forked child: forget a session the parent was running (its lock may be held
        by a thread that does not exist here), stopping the tracing it started."""
        if self._first is not None:
            self._stop_tracing()
        self._first = None
        self.started_at = None
        self._busy = threading.Lock()

    def _stop_tracing(self) -> None:
        if self._started_tracing:
            self._started_tracing = False
            tracemalloc.stop()
