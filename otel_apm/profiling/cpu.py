"""A sampling CPU profiler whose samples know the endpoint they were taken in.

A daemon thread reads every thread's stack (``sys._current_frames()``) up to
``APM_PROFILING_SAMPLE_HZ`` times a second and files each stack under the local root span the
thread is running (:class:`SpanThreads`, fed by the APM processor at root start and end; the
endpoint is read when the root ends, as ``http.route`` is often set after the span started).

CPU, not wall time: a thread's stack is counted only when its own CPU clock
(``pthread_getcpuclockid``) advanced by ``APM_PROFILING_BUSY_SHARE`` of the tick both in the tick
before it was read and in the tick after, so threads waiting in a socket, ``select``, a lock or
``sleep`` drop out instead of showing up as the "hottest" code; where the platform has no
per-thread CPU clock every stack counts (wall time).  A wait shorter than a tick on both sides
is still counted where it waits.  Ticks are jittered (+-50 %) so that a workload in step with
the sampling rate is not seen always at the same point.

Cheap enough to leave on: the sampler measures its own CPU time per tick (wake-up included) and
stretches its period so that it stays under ``APM_PROFILING_MAX_OVERHEAD`` of one core.  Every
``APM_PROFILING_INTERVAL`` the period's samples become a :class:`Profile`, which is reported
(hot-spot findings, flame graph files) and dropped.

Attribution is per thread: on an asyncio loop serving several requests at once, a sample goes
to the request whose root span started last on that thread.
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import NamedTuple

from otel_apm.config import APMConfig
from otel_apm.contain import FailureLog, in_forked_children
from otel_apm.ingest.callsite import MAX_DEPTH, qualname

_log = logging.getLogger(__name__)

OUTSIDE_SPANS = "(outside spans)"
# How fast the adaptive period follows the measured cost of a tick (exponential average weight).
_COST_SMOOTHING = 0.2


class Frame(NamedTuple):
    """A function, as flame graphs and findings name it: its file, qualified name, first line."""

    file: str
    function: str
    line: int


Stack = tuple[Frame, ...]  # outermost call first
Endpoint = tuple[str, str]  # (service, endpoint)
TRUNCATED: Stack = (Frame("", "(stacks over APM_PROFILING_MAX_STACKS)", 0),)


@dataclass(frozen=True)
class Profile:
    """One period's CPU samples by endpoint: ``samples[(service, endpoint)][(stack, line)]`` is
    how many ticks found a thread on CPU in that stack, at that line of its innermost function."""

    start_s: float  # epoch seconds
    end_s: float
    sample_period_s: float  # mean time between ticks: the CPU time one sample stands for
    samples: dict[Endpoint, Counter[tuple[Stack, int]]]
    requests: Counter[Endpoint]  # local roots that ended in the period

    @property
    def sample_count(self) -> int:
        return sum(sum(c.values()) for c in self.samples.values())

    def stacks(self, endpoint: Endpoint) -> Counter[Stack]:
        """One endpoint's stacks, lines merged: what its flame graph draws."""
        out: Counter[Stack] = Counter()
        for (stack, _), n in self.samples.get(endpoint, Counter()).items():
            out[stack] += n
        return out

    def process_stacks(self) -> Counter[Stack]:
        """Every sample, each stack under a first frame naming its endpoint."""
        out: Counter[Stack] = Counter()
        for endpoint in self.samples:
            head = (Frame("", endpoint[1], 0),)
            for stack, n in self.stacks(endpoint).items():
                out[head + stack] += n
        return out


class _Root:
    """A local root span as the sampler sees it; renamed to its endpoint when it ends."""

    __slots__ = ("done", "name", "service")

    def __init__(self, name: str) -> None:
        self.name = name
        self.service = ""
        self.done = False


class SpanThreads:
    """Which local root each thread is running, written by the APM processor.

    A thread's entry is replaced by its next root, never deleted, so the sampler reads the
    map without a lock; a root that ended is marked done and its thread counts as outside spans.
    """

    def __init__(self, max_open: int) -> None:
        self.by_thread: dict[int, _Root] = {}
        self._open: dict[int, _Root] = {}  # by span id, oldest first
        self._max_open = max_open
        self._lock = threading.Lock()
        self._requests: Counter[Endpoint] = Counter()
        self.service = ""

    def started(self, span_id: int, name: str) -> None:
        """Called on the thread that starts a local root."""
        root = _Root(name)
        self.by_thread[threading.get_ident()] = root
        with self._lock:
            opened = self._open
            opened[span_id] = root
            if len(opened) > self._max_open:  # roots that never end (evicted traces) go too
                del opened[next(iter(opened))]

    def ended(self, span_id: int, service: str, endpoint: str) -> None:
        with self._lock:
            root = self._open.pop(span_id, None)
            if root is None:
                return
            root.name, root.service, root.done = endpoint, service, True
            self.service = service
            self._requests[(service, endpoint)] += 1

    def take_requests(self) -> Counter[Endpoint]:
        with self._lock:
            requests, self._requests = self._requests, Counter()
        return requests


_RawKey = tuple[_Root | None, tuple[CodeType, ...], int]


class CpuProfiler:
    """The sampler thread.  ``report`` gets each period's :class:`Profile`, on that thread."""

    def __init__(self, config: APMConfig, report: Callable[[Profile], None]) -> None:
        self.config = config
        self._report = report
        self._base_period_s = 1.0 / config.profiling_sample_hz
        self._stop = threading.Event()
        self._fresh()

    def _fresh(self) -> None:
        """An empty period and an unstarted sampler thread."""
        self.threads = SpanThreads(self.config.max_traces_in_flight)
        self.period_s = self._base_period_s
        self._cost_s = 0.0
        self._counts: dict[_RawKey, int] = {}
        self._ticks = 0
        self._start_s = time.time()
        self._clocks: dict[int, int | None] = {}  # thread id -> its CPU clock, None: wall time
        self._cpu_ns: dict[int, int] = {}
        self._pending: dict[int, _RawKey] = {}  # thread id -> its last stack, awaiting the next tick
        self._failures = FailureLog(_log)
        self._thread = threading.Thread(target=self._run, name="otel-apm-cpu-profiler", daemon=True)

    def start(self) -> None:
        self._thread.start()
        in_forked_children(self._restart_in_child)

    def _restart_in_child(self) -> None:
        """A forked worker (gunicorn --preload) inherits no sampler thread: it gets its own.  The
        parent's samples are the parent's to report, and the lock of its span map may have been
        held by the parent's sampler at the fork."""
        if not self._stop.is_set():
            self._fresh()
            self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Stop sampling and report the last, partial period."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._deliver(self.take())

    @property
    def errors(self) -> int:
        return self._failures.total

    # -- the sampler thread --------------------------------------------------------------------

    def _run(self) -> None:
        own = threading.get_ident()
        interval_s = self.config.profiling_interval_ms / 1000
        deadline = time.monotonic() + interval_s
        budget = self.config.profiling_max_overhead
        before = time.thread_time()
        last_tick = time.monotonic()
        while True:
            # time.sleep, not Event.wait: a Condition's Python-level wait costs the tick ~10 us more.
            time.sleep(self.period_s * random.uniform(0.5, 1.5))
            if self._stop.is_set():
                return
            tick = time.monotonic()
            busy_ns = int((tick - last_tick) * 1e9 * self.config.profiling_busy_share)
            last_tick = tick
            try:
                self._sample(own, busy_ns)
            except Exception as exc:
                self._failures.record("cpu sampling", exc)
            now = time.thread_time()
            cost, before = now - before, now
            self._cost_s += _COST_SMOOTHING * (cost - self._cost_s)
            self.period_s = max(self._base_period_s, self._cost_s / budget)
            if time.monotonic() >= deadline and not self._stop.is_set():
                self._deliver(self.take())
                deadline = time.monotonic() + interval_s
                before = time.thread_time()  # the report's cost is not the sampler's

    def _sample(self, own: int, busy_ns: int) -> None:
        """One tick.  A stack is counted once the thread is seen to use CPU both before and
        after it was read: a thread that just stopped running (gone to wait on a socket or a
        lock) is not counted where it waits, nor one that is about to wake."""
        frames = sys._current_frames()
        pending = self._pending
        for tid, frame in frames.items():
            if tid == own:
                continue
            used = self._cpu_used(tid)
            if used is None:  # no CPU clock: wall-time sampling
                self._count(self._key(tid, frame))
                continue
            before = pending.pop(tid, None)
            if used >= busy_ns and used > 0:
                if before is not None:
                    self._count(before)
                pending[tid] = self._key(tid, frame)
        self._ticks += 1
        if len(self._clocks) > len(frames):  # forget threads that ended
            self._clocks = {t: c for t, c in self._clocks.items() if t in frames}
            self._cpu_ns = {t: c for t, c in self._cpu_ns.items() if t in frames}
            self._pending = {t: k for t, k in pending.items() if t in frames}

    def _key(self, tid: int, frame: FrameType) -> _RawKey:
        root = self.threads.by_thread.get(tid)
        if root is not None and root.done:
            root = None
        codes = []
        f = frame
        for _ in range(MAX_DEPTH):
            codes.append(f.f_code)
            if f.f_back is None:
                break
            f = f.f_back
        return (root, tuple(codes), frame.f_lineno or 0)

    def _count(self, key: _RawKey) -> None:
        counts = self._counts
        n = counts.get(key)
        if n is None and len(counts) >= self.config.profiling_max_stacks:
            key = (key[0], (), 0)
            n = counts.get(key)
        counts[key] = (n or 0) + 1

    def _cpu_used(self, tid: int) -> int | None:
        """CPU nanoseconds the thread used since the previous tick; None without CPU clocks."""
        if tid in self._clocks:
            clock = self._clocks[tid]
        else:
            try:
                clock = time.pthread_getcpuclockid(tid)
            except (AttributeError, OSError):
                clock = None
            self._clocks[tid] = clock
        if clock is None:
            return None
        try:
            now = time.clock_gettime_ns(clock)
        except OSError:
            return None
        before = self._cpu_ns.get(tid)
        self._cpu_ns[tid] = now
        return 0 if before is None else now - before

    def take(self) -> Profile:
        """The samples since the last take, as a Profile; the next period starts empty."""
        counts, self._counts = self._counts, {}
        ticks, self._ticks = self._ticks, 0
        start_s, self._start_s = self._start_s, time.time()
        requests = self.threads.take_requests()
        service = self.threads.service or self.config.service_name or "unknown_service"
        frame_of: dict[CodeType, Frame] = {}
        samples: dict[Endpoint, Counter[tuple[Stack, int]]] = {}
        for (root, codes, line), n in counts.items():
            endpoint = (service, OUTSIDE_SPANS) if root is None else (root.service or service, root.name)
            stack: Stack = TRUNCATED
            if codes:
                stack = tuple(_frame(c, frame_of) for c in reversed(codes))
            samples.setdefault(endpoint, Counter())[(stack, line)] += n
        elapsed = max(self._start_s - start_s, 0.0)
        period = elapsed / ticks if ticks else self._base_period_s
        return Profile(start_s, self._start_s, period, samples, requests)

    def _deliver(self, profile: Profile) -> None:
        try:
            self._report(profile)
        except Exception as exc:
            self._failures.record("cpu profile report", exc)


def _frame(code: CodeType, known: dict[CodeType, Frame]) -> Frame:
    frame = known.get(code)
    if frame is None:
        frame = known[code] = Frame(code.co_filename, qualname(code), code.co_firstlineno)
    return frame
