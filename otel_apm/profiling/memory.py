"""The memory monitor: samples the process's memory on a daemon thread, warns when it is high,
and suspects a leak when it grows steadily, naming the lines that allocate when asked to.

A sample costs about 30 µs (reading /proc/self/statm, the allocator's block count and the
collector's statistics), once per ``APM_MEMORY_CHECK_INTERVAL_S``: cheap enough to stay on.

A leak is growth that lasts, not a jump nor a wobble: three tests over the samples of
``APM_MEMORY_TREND_WINDOW_S``.  The Theil-Sen slope of resident memory (the median of the slopes
between every pair of samples, which a few outliers do not move) must reach
``APM_MEMORY_LEAK_MIN_MB_PER_MIN``; each quarter of the window must sit higher than the one
before; and the growth over the window must be at least twice the interquartile spread of the
samples around that slope.  One jump (a cache filled once, a large request) raises one quarter
over the next and no other; a warm-up that levels off leaves its last quarters flat; a garbage
collection sawtooth, whose teeth can line up with the quarters, spreads the samples by a whole
tooth around a slope that climbs less than that.  A leak passes all three, a leak under a
sawtooth once it has grown by about a tooth and a half.  Memory that tracemalloc itself uses
while a heap profile runs is left out of the trend, so profiling cannot look like a leak.
"""

from __future__ import annotations

import gc
import logging
import mmap
import sys
import threading
import time
import tracemalloc
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from statistics import median, quantiles

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter

from otel_apm.config import APMConfig
from otel_apm.contain import FailureLog, in_forked_children
from otel_apm.detectors.base import EvidenceValue, Finding, Severity, make_fingerprint, severity_for
from otel_apm.profiling.heap import AllocationSite, HeapProfiler
from otel_apm.version import __version__

_log = logging.getLogger(__name__)

MEMORY_HIGH = "memory_high"
MEMORY_LEAK = "memory_leak_suspected"
PROCESS = "process"  # the endpoint of findings about the whole process

_MB = 1024 * 1024
_QUARTERS = 4  # the window is cut in four: three rises in a row are no single jump
# The growth over the window must be this many times the samples' interquartile spread around the
# fitted slope: it rose by more than it wobbles.  A sawtooth's spread is half a tooth.
_GROWTH_OVER_SPREAD = 2.0
# Theil-Sen compares every pair of samples; past this many samples it compares a spaced
# selection, which keeps a check under a millisecond whatever the window and interval.
_MAX_TREND_POINTS = 64


@dataclass(frozen=True)
class MemorySample:
    at_s: float  # time.monotonic()
    rss_bytes: int
    virtual_bytes: int
    trend_bytes: int  # resident memory less tracemalloc's own, what the leak trend follows
    allocated_blocks: int  # sys.getallocatedblocks(): Python objects, whatever the allocator keeps
    full_collections: int  # of the oldest generation: growth that outlives them is no garbage


def read_memory() -> tuple[int, int]:
    """(resident, virtual) bytes of this process: /proc/self/statm on Linux; elsewhere the peak
    resident size from getrusage (the only figure the standard library gives) and no virtual."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            fields = fh.read().split()
        return int(fields[1]) * mmap.PAGESIZE, int(fields[0]) * mmap.PAGESIZE
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return (peak if sys.platform == "darwin" else peak * 1024), 0


@dataclass(frozen=True)
class Trend:
    """The growth of a series of samples and whether it is the sustained growth of a leak."""

    slope_bytes_per_s: float
    quarters_rising: int  # of the _QUARTERS - 1 steps between quarters, those that rose enough
    growth_bytes: float  # the slope over the window's span
    spread_bytes: float  # interquartile range of the samples around the slope
    sustained: bool

    @property
    def mb_per_min(self) -> float:
        return self.slope_bytes_per_s * 60 / _MB


def growth_trend(samples: Sequence[tuple[float, float]], min_bytes_per_s: float) -> Trend:
    """The trend of (seconds, bytes) samples, oldest first (at least 2 per quarter).

    Sustained: the Theil-Sen slope reaches ``min_bytes_per_s`` (and is above 0), each quarter's
    median is above the previous one's by at least half of what that rate gives over the time
    between them (and above it at all), and the growth is at least ``_GROWTH_OVER_SPREAD`` times
    the spread of the samples around the slope.
    """
    if len(samples) < 2 * _QUARTERS:
        raise ValueError(f"a trend needs at least {2 * _QUARTERS} samples, got {len(samples)}")
    if len(samples) > _MAX_TREND_POINTS:
        step = len(samples) / _MAX_TREND_POINTS
        samples = [samples[int(i * step)] for i in range(_MAX_TREND_POINTS - 1)] + [samples[-1]]
    n = len(samples)
    slope = median(
        (samples[j][1] - samples[i][1]) / (samples[j][0] - samples[i][0])
        for i in range(n)
        for j in range(i + 1, n)
        if samples[j][0] > samples[i][0]
    )
    quarters = [samples[k * n // _QUARTERS : (k + 1) * n // _QUARTERS] for k in range(_QUARTERS)]
    levels = [(median(t for t, _ in q), median(v for _, v in q)) for q in quarters]
    rising = sum(
        1
        for (t0, v0), (t1, v1) in pairwise(levels)
        if v1 > v0 and v1 - v0 >= 0.5 * min_bytes_per_s * (t1 - t0)
    )
    intercept = median(v - slope * t for t, v in samples)
    q1, _, q3 = quantiles((v - slope * t - intercept for t, v in samples), n=4)
    growth, spread = slope * (samples[-1][0] - samples[0][0]), q3 - q1
    sustained = (
        slope > 0
        and slope >= min_bytes_per_s
        and rising == _QUARTERS - 1
        and growth >= _GROWTH_OVER_SPREAD * spread
    )
    return Trend(slope, rising, growth, spread, sustained)


# A finding waiting for the heap profile that will name its allocation sites.
_Pending = Callable[[Sequence[AllocationSite]], Finding]

_running: weakref.WeakSet[MemoryMonitor] = weakref.WeakSet()


def running_monitors() -> tuple[MemoryMonitor, ...]:
    """The monitors sampling in this process: how an application run by opentelemetry-instrument,
    which never holds the processor, reaches :meth:`MemoryMonitor.profile_heap` and
    :meth:`MemoryMonitor.reset_trend`."""
    return tuple(_running)


class MemoryMonitor:
    """Samples memory every ``APM_MEMORY_CHECK_INTERVAL_S`` on a daemon thread (it never keeps the
    process alive) and hands its findings to ``report``; ``service`` names the service in them.

    ``memory_high`` is reported once per episode: when resident memory reaches
    ``APM_MEMORY_THRESHOLD_MB``, and again only after it fell below
    ``APM_MEMORY_RECOVERY_SHARE`` of it.  ``memory_leak_suspected`` is reported once per episode
    too: when the trend is sustained growth, and again only after the slope fell below the
    minimum rate.  With ``APM_HEAP_SNAPSHOT_ON_LEAK`` / ``APM_HEAP_SNAPSHOT_ON_HIGH_MEMORY`` the
    finding waits for a heap profile of ``APM_HEAP_SNAPSHOT_DURATION_S`` and names the lines
    whose memory grew most.  Failures are logged once per kind and counted in :meth:`stats`;
    none reaches the application.
    """

    def __init__(
        self,
        config: APMConfig,
        report: Callable[[Sequence[Finding]], None],
        service: Callable[[], str],
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.config = config
        self._report = report
        self._service = service
        self._meter_provider = meter_provider
        self._samples: deque[MemorySample] = deque()
        self._heap = HeapProfiler(config.heap_snapshot_top)
        self._pending: list[_Pending] = []
        self._profiling = False  # a heap profile of ours runs (one called for on demand is not)
        self._high = False
        self._leaking = False
        self._started_at = 0.0
        self._checks = 0
        self._lock = threading.Lock()  # check() from a caller as well as from the thread
        self.last_trend: Trend | None = None
        self._failures = FailureLog(_log)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Register the process metrics and start sampling."""
        if self._thread is not None:
            return
        self._register_metrics()
        in_forked_children(self._restart_in_child)
        _running.add(self)
        self._launch()

    def _launch(self) -> None:
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="otel-apm-memory", daemon=True)
        self._thread.start()

    def _restart_in_child(self) -> None:
        """A forked worker (gunicorn --preload, multiprocessing) inherits no thread: it gets its
        own, with its own samples and episodes, and a heap profile the parent ran ends there."""
        if self._stop.is_set():
            return
        self._heap.abandon()
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._samples.clear()
        self._pending = []
        self._profiling = self._high = self._leaking = False
        self.last_trend = None
        self._launch()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop sampling; a heap profile still running ends now and its findings are reported."""
        self._stop.set()
        _running.discard(self)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        # The first check waits one interval: under opentelemetry-instrument the processor is
        # built before the logger provider, and a finding emitted before it is set would be lost.
        while not self._stop.wait(self.config.memory_check_interval_s):
            self._contained("check", self.check)
        with self._lock:
            if self._profiling:
                self._contained("heap profile", self._finish_heap)

    def _contained(self, where: str, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as exc:
            self._failures.record(f"memory monitor {where}", exc)

    # -- public --------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        return {"checks": self._checks, "errors": self._failures.total}

    @property
    def samples(self) -> tuple[MemorySample, ...]:
        """The samples of the current trend window, oldest first."""
        return tuple(self._samples)

    def profile_heap(self, duration_s: float | None = None) -> list[AllocationSite]:
        """On demand: trace allocations for ``duration_s`` (``APM_HEAP_SNAPSHOT_DURATION_S`` by
        default) and return the lines whose held memory grew most.  Blocks the caller for that
        long (after a profile the monitor runs, if any)."""
        return self._heap.profile(self.config.heap_snapshot_duration_s if duration_s is None else duration_s)

    def reset_trend(self) -> None:
        """Start a new trend window now: the samples so far are forgotten, a leak episode ends,
        and a heap profile running for one ends and reports.  Start-up (imports, caches filling)
        is steady growth too: a window much longer than start-up, the default, sees it level
        off; an application with a short window calls this once it is warmed up."""
        with self._lock:
            if self._profiling:
                self._contained("heap profile", self._finish_heap)
            self._samples.clear()
            self._started_at = time.monotonic()
            self._leaking = False
            self.last_trend = None

    def check(self) -> None:
        """Take one sample and act on it; the thread calls this every interval."""
        with self._lock:
            self._check()

    def _check(self) -> None:
        now = time.monotonic()
        rss, virtual = read_memory()
        own = tracemalloc.get_tracemalloc_memory() if tracemalloc.is_tracing() else 0
        full = gc.get_stats()[-1]["collections"]
        sample = MemorySample(now, rss, virtual, rss - own, sys.getallocatedblocks(), full)
        samples = self._samples
        samples.append(sample)
        while now - samples[0].at_s > self.config.memory_trend_window_s:
            samples.popleft()
        self._checks += 1
        self._check_high(sample)
        self._check_trend(now)
        started = self._heap.started_at
        if self._profiling and started is not None and now - started >= self.config.heap_snapshot_duration_s:
            self._finish_heap()

    # -- episodes ------------------------------------------------------------------------------

    def _check_high(self, sample: MemorySample) -> None:
        threshold = self.config.memory_threshold_mb * _MB
        if self._high:
            if sample.rss_bytes < threshold * self.config.memory_recovery_share:
                self._high = False
            return
        if sample.rss_bytes < threshold:
            return
        self._high = True
        rss_mb, threshold_mb = sample.rss_bytes / _MB, self.config.memory_threshold_mb
        evidence: dict[str, EvidenceValue] = {
            "rss_mb": round(rss_mb, 1),
            "virtual_mb": round(sample.virtual_bytes / _MB, 1),
            "threshold_mb": threshold_mb,
            "python_allocated_blocks": sample.allocated_blocks,
        }

        def finding(sites: Sequence[AllocationSite]) -> Finding:
            return self._finding(
                MEMORY_HIGH,
                f"Process memory {rss_mb:.0f} MB is over the {threshold_mb:g} MB threshold",
                severity_for(rss_mb, threshold_mb, self.config.critical_factor),
                evidence,
                "Find what holds the memory"
                + _where(sites, "APM_HEAP_SNAPSHOT_ON_HIGH_MEMORY")
                + "; or raise APM_MEMORY_THRESHOLD_MB if this size is expected.",
                sites,
            )

        self._announce(finding, self.config.heap_snapshot_on_high_memory)

    def _check_trend(self, now: float) -> None:
        samples = self._samples
        if now - self._started_at < self.config.memory_trend_window_s or len(samples) < (
            self.config.memory_trend_min_samples
        ):
            return
        min_rate = self.config.memory_leak_min_mb_per_min * _MB / 60
        trend = growth_trend([(s.at_s, s.trend_bytes) for s in samples], min_rate)
        self.last_trend = trend
        if self._leaking:
            if trend.slope_bytes_per_s < min_rate or trend.slope_bytes_per_s <= 0:
                self._leaking = False
            return
        if not trend.sustained:
            return
        self._leaking = True
        first, last = samples[0], samples[-1]
        rate = trend.mb_per_min
        rss_mb, threshold_mb = last.rss_bytes / _MB, self.config.memory_threshold_mb
        minutes = max(threshold_mb - rss_mb, 0.0) / rate
        window_s = last.at_s - first.at_s
        evidence: dict[str, EvidenceValue] = {
            "growth_mb_per_min": round(rate, 3),
            "rss_mb": round(rss_mb, 1),
            "threshold_mb": threshold_mb,
            "minutes_to_threshold": round(minutes, 1),
            "window_s": round(window_s, 1),
            "samples": len(samples),
            "python_blocks_growth": last.allocated_blocks - first.allocated_blocks,
            "full_gc_collections": last.full_collections - first.full_collections,
        }
        projection = (
            f"the {threshold_mb:g} MB threshold in {minutes:.0f} min" if minutes else "over the threshold"
        )
        title = (
            f"Memory grows {rate:.2f} MB/min over {window_s:.0f} s: leak suspected "
            f"({rss_mb:.0f} MB now, {projection})"
        )

        def finding(sites: Sequence[AllocationSite]) -> Finding:
            return self._finding(
                MEMORY_LEAK,
                title,
                severity_for(rate, self.config.memory_leak_min_mb_per_min, self.config.critical_factor),
                evidence,
                "Look for a list, dict or cache that only grows (module-level, class attribute, "
                "closure): bound it, evict from it, or stop keeping the references"
                + _where(sites, "APM_HEAP_SNAPSHOT_ON_LEAK")
                + ".",
                sites,
            )

        self._announce(finding, self.config.heap_snapshot_on_leak)

    def _announce(self, finding: _Pending, profile: bool) -> None:
        """Report now, or once a heap profile (running or started now) can name the sites."""
        if profile and (self._profiling or self._heap.begin()):
            self._profiling = True
            self._pending.append(finding)
        else:
            self._report([finding(())])

    def _finish_heap(self) -> None:
        pending, self._pending = self._pending, []
        self._profiling = False
        try:
            sites = self._heap.end()
        except Exception:
            self._report([f(()) for f in pending])
            raise
        if pending:
            self._report([f(sites) for f in pending])

    def _finding(
        self,
        type: str,
        title: str,
        severity: Severity,
        evidence: dict[str, EvidenceValue],
        recommendation: str,
        sites: Sequence[AllocationSite],
    ) -> Finding:
        service = self._service()
        site = sites[0].location if sites else None
        # A leak is its allocating line, the same in every process; high memory is the service's.
        identity = (site,) if site is not None and type == MEMORY_LEAK else ()
        evidence = dict(evidence)
        if sites:
            evidence["allocation_sites"] = tuple(s.describe() for s in sites)
            evidence["top_site_size_diff_bytes"] = sites[0].size_diff_bytes
            evidence["top_site_count_diff"] = sites[0].count_diff
            evidence["heap_profile_s"] = self.config.heap_snapshot_duration_s
        return Finding(
            type=type,
            title=title,
            severity=severity,
            fingerprint=make_fingerprint(type, service, PROCESS, *identity),
            service=service,
            endpoint=PROCESS,
            trace_id=0,
            span_ids=(),
            count=0,  # spans: none; the samples and the window are in the evidence
            total_duration_ms=0.0,
            max_duration_ms=0.0,
            recommendation=recommendation,
            evidence=evidence,
            code_location=site,
        )

    # -- metrics -------------------------------------------------------------------------------

    def _register_metrics(self) -> None:
        """The semantic conventions' process and CPython metrics (development status: no stable
        names exist), read fresh at each collection, and our own where none is defined."""
        meter = get_meter("otel_apm.memory", __version__, meter_provider=self._meter_provider)

        def one(read: Callable[[], float]) -> Callable[[CallbackOptions], Iterable[Observation]]:
            return lambda _: [Observation(read())]

        def per_generation(key: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
            return lambda _: [
                Observation(stats[key], {"cpython.gc.generation": generation})
                for generation, stats in enumerate(gc.get_stats())
            ]

        meter.create_observable_up_down_counter(
            "process.memory.usage",
            [one(lambda: read_memory()[0])],
            unit="By",
            description="The amount of physical memory in use.",
        )
        meter.create_observable_up_down_counter(
            "process.memory.virtual",
            [one(lambda: read_memory()[1])],
            unit="By",
            description="The amount of committed virtual memory.",
        )
        for name, key, unit, description in (
            ("cpython.gc.collections", "collections", "{collection}", "Collections of a generation"),
            ("cpython.gc.collected_objects", "collected", "{object}", "Objects collected in a generation"),
            (
                "cpython.gc.uncollectable_objects",
                "uncollectable",
                "{object}",
                "Objects found uncollectable in a generation",
            ),
        ):
            meter.create_observable_counter(name, [per_generation(key)], unit=unit, description=description)
        meter.create_observable_up_down_counter(
            "otel_apm.memory.allocated_blocks",
            [one(sys.getallocatedblocks)],
            unit="{block}",
            description="Memory blocks the Python allocator has handed out and not got back",
        )
        meter.create_observable_gauge(
            "otel_apm.memory.growth_rate",
            [lambda _: [] if self.last_trend is None else [Observation(self.last_trend.slope_bytes_per_s)]],
            unit="By/s",
            description="Theil-Sen slope of resident memory over the trend window",
        )


def _where(sites: Sequence[AllocationSite], setting: str) -> str:
    if sites:
        return f": what it holds grew most at {sites[0].describe()}"
    return f" (set {setting}=true, or call profile_heap(), to name the lines that allocate it)"
