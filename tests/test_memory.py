"""The memory monitor through the processor: real memory of this process, a real Flask service
that leaks on one endpoint, real tracemalloc sessions.  Intervals and windows are short through
the config; every wait is for a condition, bounded by a timeout."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from apps import leaky_app
from conftest import OTel, clean_environ

from otel_apm import APMConfig, ConfigError
from otel_apm.detectors.base import Finding, make_fingerprint
from otel_apm.profiling.memory import (
    MEMORY_HIGH,
    MEMORY_LEAK,
    MemoryMonitor,
    growth_trend,
    read_memory,
    running_monitors,
)

F = "otel_apm.finding."
INSTRUMENT = Path(sys.executable).parent / "opentelemetry-instrument"
MB = 1024 * 1024
# Samples every 50 ms over a 1 s window: /leak keeps 64 KiB a request, megabytes a second,
# far over the 60 MB/min that makes a leak here; a steady service stays far under it.
FAST: dict[str, Any] = {
    "memory_check_interval_s": 0.05,
    "memory_trend_window_s": 1.0,
    "memory_trend_min_samples": 8,
    "memory_leak_min_mb_per_min": 60.0,
    "heap_snapshot_duration_s": 0.5,
}


def monitor_of(otel: OTel) -> MemoryMonitor:
    monitor = otel.processor.memory_monitor
    assert monitor is not None
    return monitor


def attrs(record: Any) -> dict[str, Any]:
    return dict(record.log_record.attributes or {})


def line_of(function: Callable[..., Any], marker: str) -> int:
    lines, first = inspect.getsourcelines(function)
    (index,) = [i for i, text in enumerate(lines) if marker in text]
    return first + index


@pytest.fixture
def leaky_service(
    make_otel: Callable[..., OTel], instrument_flask: Callable[..., None], serve_wsgi: Callable[[Any], str]
) -> Iterator[Callable[..., tuple[OTel, str]]]:
    """``leaky_service(**settings)`` -> (pipeline, base URL) of tests/apps/leaky_app.py."""

    def start(**settings: Any) -> tuple[OTel, str]:
        otel = make_otel(**settings)
        app = leaky_app.make_app()
        instrument_flask(app, otel.tracer_provider)
        return otel, serve_wsgi(app)

    yield start
    leaky_app.release()


def drive(otel: OTel, url: str, until: Callable[[], bool], timeout_s: float = 30.0) -> int:
    """Request ``url`` until ``until()``; the exported spans are dropped as they come, so the
    test's own exporter does not grow.  Returns the number of requests."""
    deadline = time.monotonic() + timeout_s
    n = 0
    with requests.Session() as http:
        while not until():
            assert time.monotonic() < deadline, f"condition not met within {timeout_s} s ({n} requests)"
            assert http.get(url, timeout=10).ok
            otel.span_exporter.clear()
            n += 1
            time.sleep(0.005)
    return n


# -- leaks ---------------------------------------------------------------------------------------


def test_a_leaking_endpoint_is_reported_with_the_allocating_line(
    leaky_service: Callable[..., tuple[OTel, str]],
) -> None:
    # A 2 s snapshot window, not FAST's 0.5: a clean clone's CI once named werkzeug's serving.py,
    # whose request buffers can outgrow the leak when a stalled host serves few requests in it.
    otel, base = leaky_service(heap_snapshot_on_leak=True, **{**FAST, "heap_snapshot_duration_s": 2.0})
    drive(otel, base + "/leak", until=lambda: bool(otel.events(MEMORY_LEAK)))
    (event,) = otel.events(MEMORY_LEAK)
    a = attrs(event)
    line = line_of(leaky_app.make_app, "_kept.append(")
    assert a["code.file.path"] == leaky_app.__file__
    assert a["code.line.number"] == line
    assert a[F + "code_location"] == f"{leaky_app.__file__}:{line}"
    # The leak's identity is its line: the same in every process of the service.
    assert a[F + "fingerprint"] == make_fingerprint(
        MEMORY_LEAK, "test-svc", "process", a[F + "code_location"]
    )
    sites = a[F + "evidence.allocation_sites"]
    assert sites[0].startswith(f"{leaky_app.__file__}:{line} +")
    assert sites[0].endswith('_kept.append(b"x" * CHUNK_BYTES)')
    assert a[F + "evidence.top_site_size_diff_bytes"] >= leaky_app.CHUNK_BYTES
    assert a[F + "evidence.top_site_count_diff"] >= 1
    assert a[F + "evidence.growth_mb_per_min"] >= FAST["memory_leak_min_mb_per_min"]
    assert a[F + "evidence.minutes_to_threshold"] >= 0
    assert a[F + "evidence.window_s"] >= 0.9 * FAST["memory_trend_window_s"]
    assert a[F + "evidence.python_blocks_growth"] > 0  # the kept chunks are Python objects
    assert a[F + "evidence.full_gc_collections"] >= 0
    assert a[F + "endpoint"] == "process" and a[F + "service"] == "test-svc"
    assert a[F + "span_ids"] == ()
    assert event.log_record.trace_id == 0
    assert "leak suspected" in a[F + "title"] and "MB/min" in a[F + "title"]
    # The session that named the line has stopped tracing: it was not on before.
    otel.wait_for(lambda: not tracemalloc.is_tracing())
    assert monitor_of(otel).stats()["errors"] == 0


def test_a_steady_service_over_the_same_time_gives_no_leak(
    leaky_service: Callable[..., tuple[OTel, str]],
) -> None:
    otel, base = leaky_service(heap_snapshot_on_leak=True, **FAST)
    monitor = monitor_of(otel)
    # Three whole windows of checks, the trend evaluated each time.
    drive(otel, base + "/steady", until=lambda: monitor.stats()["checks"] >= 60)
    assert monitor.last_trend is not None
    assert not otel.events(MEMORY_LEAK)
    assert not tracemalloc.is_tracing()


def test_one_jump_is_not_a_leak(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel(**FAST)
    monitor = monitor_of(otel)
    otel.wait_for(lambda: monitor.last_trend is not None)
    block = b"\x01" * (40 * MB)  # written, so resident: one jump, then flat
    min_rate = FAST["memory_leak_min_mb_per_min"] * MB / 60
    # The jump reaches the trend: mid-window, the slope alone would call it growth...
    otel.wait_for(lambda: monitor.last_trend is not None and monitor.last_trend.slope_bytes_per_s > min_rate)
    # ...but no quarter-on-quarter rise follows, through two more windows.
    checks = monitor.stats()["checks"]
    otel.wait_for(lambda: monitor.stats()["checks"] >= checks + 40)
    assert len(block) == 40 * MB
    assert not otel.events(MEMORY_LEAK)


SAWTOOTH = """
import ctypes, gc, json, sys, threading, time
from otel_apm import APMSpanProcessor

# glibc raises its mmap threshold each time a mapped block is freed, after which the teeth stay
# in the heap as free space and resident memory no longer shows them: fix it at its default.
M_MMAP_THRESHOLD = -3
assert ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 128 * 1024) == 1

class Cycle:  # half of a reference cycle: only the garbage collector frees it
    pass

def sawtooth(stop, teeth):
    # Garbage builds up for 15 x 1 MiB over 0.3 s, then goes in one collection; again and again.
    while not stop.is_set():
        for _ in range(15):
            a, b = Cycle(), Cycle()
            a.other, b.other, a.payload = b, a, b"z" * 2**20
            time.sleep(0.02)
        teeth.append(gc.collect())

p = APMSpanProcessor(None, **json.loads(sys.argv[1]))
monitor = p.memory_monitor
stop, teeth = threading.Event(), []
thread = threading.Thread(target=sawtooth, args=(stop, teeth))
thread.start()
deadline = time.monotonic() + 60
while monitor.last_trend is None and time.monotonic() < deadline:
    time.sleep(0.01)
checks = monitor.stats()["checks"]
while monitor.stats()["checks"] < checks + 60 and time.monotonic() < deadline:  # three more windows
    time.sleep(0.01)
window = [s.trend_bytes for s in monitor.samples]
stop.set()
thread.join()
p.shutdown()
checks = monitor.stats()["checks"] - checks
print(json.dumps({"teeth": teeth, "range": max(window) - min(window), "checks": checks}))
"""


def test_a_garbage_collection_sawtooth_is_not_a_leak() -> None:
    """In a process of its own: a long-lived one's allocator keeps what it got back, and the
    teeth would not show in its resident memory."""
    settings = json.dumps({**FAST, "console_enabled": True, "console_interval_s": 0})
    proc = subprocess.run(
        [sys.executable, "-c", SAWTOOTH, settings], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["checks"] >= 60
    assert len(result["teeth"]) >= 6 and all(collected >= 15 for collected in result["teeth"])
    assert result["range"] >= 8 * MB  # the teeth are in the memory the monitor saw
    assert "memory_leak_suspected" not in proc.stderr, proc.stderr


def test_the_trend_tells_a_leak_from_a_jump_a_sawtooth_and_a_warm_up() -> None:
    rate = 1.0 * MB / 60  # 1 MB/min
    seconds = [i * 30.0 for i in range(20)]
    base = 200 * MB

    def trend(values: list[float]) -> Any:
        return growth_trend(list(zip(seconds, values, strict=True)), rate)

    leak = trend([base + 0.05 * MB * t for t in seconds])  # 3 MB/min
    assert leak.sustained and round(leak.mb_per_min, 6) == 3.0
    assert not trend([base + (50 * MB if i >= 7 else 0) for i in range(20)]).sustained  # one jump
    assert not trend([base + (i % 5) * 8 * MB for i in range(20)]).sustained  # GC sawtooth
    assert not trend([base + min(i, 6) * 10 * MB for i in range(20)]).sustained  # warm-up
    assert not trend([base] * 20).sustained
    assert trend([base + 0.05 * MB * t + (i % 4) * 2 * MB for i, t in enumerate(seconds)]).sustained
    # A sawtooth whose teeth line up with the quarters: each quarter higher, the slope steep, but
    # the samples spread by more than the slope climbs.
    teeth = trend([base + (i % 5) * 8 * MB + i // 5 * 2 * MB for i in range(20)])
    assert teeth.quarters_rising == 3 and teeth.mb_per_min > 1
    assert not teeth.sustained and teeth.growth_bytes < 2 * teeth.spread_bytes
    with pytest.raises(ValueError, match="at least 8 samples"):
        growth_trend([(0.0, 1.0), (1.0, 2.0)], rate)


# -- high memory ---------------------------------------------------------------------------------


def grow_in_thread(stop: threading.Event, kept: list[bytes]) -> None:
    while not stop.is_set():
        kept.append(b"y" * 20_000)  # the growing line
        time.sleep(0.002)


def test_memory_over_the_threshold_is_reported_once_per_episode_with_what_grew(
    make_otel: Callable[..., OTel],
) -> None:
    otel = make_otel(memory_threshold_mb=1.0, heap_snapshot_on_high_memory=True, **FAST)
    monitor = monitor_of(otel)
    stop = threading.Event()
    kept: list[bytes] = []
    thread = threading.Thread(target=grow_in_thread, args=(stop, kept))
    thread.start()
    try:
        otel.wait_for(lambda: bool(otel.events(MEMORY_HIGH)))
    finally:
        stop.set()
        thread.join()
    checks = monitor.stats()["checks"]
    otel.wait_for(lambda: monitor.stats()["checks"] >= checks + 10)
    (event,) = otel.events(MEMORY_HIGH)  # still over it, not announced again
    a = attrs(event)
    assert a[F + "evidence.threshold_mb"] == 1.0
    assert a[F + "evidence.rss_mb"] > 1.0
    assert a[F + "title"].startswith("Process memory ")
    assert a[F + "title"].endswith(" MB is over the 1 MB threshold")
    assert a[F + "severity"] == "critical"  # over 5 times the threshold
    assert a["code.line.number"] == line_of(grow_in_thread, "# the growing line")
    assert a["code.file.path"] == __file__
    assert "APM_MEMORY_THRESHOLD_MB" in a[F + "recommendation"]


def test_without_heap_snapshots_the_finding_says_how_to_get_them(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel(memory_threshold_mb=1.0, **FAST)
    otel.wait_for(lambda: bool(otel.events(MEMORY_HIGH)))
    a = attrs(otel.events(MEMORY_HIGH)[0])
    assert "code.file.path" not in a and F + "evidence.allocation_sites" not in a
    assert "APM_HEAP_SNAPSHOT_ON_HIGH_MEMORY=true" in a[F + "recommendation"]
    assert not tracemalloc.is_tracing()


# -- heap profiles on demand ---------------------------------------------------------------------


@pytest.mark.parametrize("already_tracing", [False, True])
def test_profile_heap_on_demand_names_the_growing_line(
    make_otel: Callable[..., OTel], already_tracing: bool
) -> None:
    otel = make_otel(**FAST)
    stop = threading.Event()
    kept: list[bytes] = []
    thread = threading.Thread(target=grow_in_thread, args=(stop, kept))
    if already_tracing:
        tracemalloc.start()
    try:
        thread.start()
        sites = monitor_of(otel).profile_heap(0.3)
        assert tracemalloc.is_tracing() == already_tracing  # left as it was found
    finally:
        stop.set()
        thread.join()
        tracemalloc.stop()
    top = sites[0]
    assert (top.file, top.line) == (__file__, line_of(grow_in_thread, "# the growing line"))
    assert top.size_diff_bytes >= 20_000 and top.count_diff >= 1
    assert top.source == 'kept.append(b"y" * 20_000)  # the growing line'
    assert not any("otel_apm" in s.file or "tracemalloc" in s.file for s in sites)


# -- metrics, lifecycle, containment -------------------------------------------------------------


def test_process_metrics_follow_the_semantic_conventions(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel(**FAST)
    (usage,) = otel.data_points("process.memory.usage")
    rss, virtual = read_memory()
    assert 0.5 * rss < usage.value < 2 * rss
    (virt,) = otel.data_points("process.memory.virtual")
    assert virt.value >= usage.value and 0.5 * virtual < virt.value < 2 * virtual
    for name in (
        "cpython.gc.collections",
        "cpython.gc.collected_objects",
        "cpython.gc.uncollectable_objects",
    ):
        points = otel.data_points(name)
        assert sorted(p.attributes["cpython.gc.generation"] for p in points) == [0, 1, 2], name
    assert sum(p.value for p in otel.data_points("cpython.gc.collections")) > 0
    (blocks,) = otel.data_points("otel_apm.memory.allocated_blocks")
    assert blocks.value > 0
    monitor = monitor_of(otel)
    otel.wait_for(lambda: monitor.last_trend is not None)
    (rate,) = otel.data_points("otel_apm.memory.growth_rate")
    assert isinstance(rate.value, float)


def test_the_monitor_is_a_daemon_thread_stopped_on_shutdown(make_otel: Callable[..., OTel]) -> None:
    otel = make_otel(**FAST)
    threads = [t for t in threading.enumerate() if t.name == "otel-apm-memory"]
    assert threads and all(t.daemon for t in threads)
    otel.wait_for(lambda: monitor_of(otel).stats()["checks"] >= 2)
    assert monitor_of(otel) in running_monitors()
    otel.shutdown()
    mine = monitor_of(otel)._thread
    assert mine is not None and not mine.is_alive()
    assert monitor_of(otel) not in running_monitors()


def test_the_monitor_is_off_when_disabled(make_otel: Callable[..., OTel]) -> None:
    assert make_otel(memory_monitor_enabled=False).processor.memory_monitor is None
    assert make_otel(enabled=False).processor.memory_monitor is None


def test_a_process_with_a_running_monitor_exits_without_shutdown() -> None:
    code = (
        "from otel_apm import APMSpanProcessor\n"
        "p = APMSpanProcessor(None, memory_check_interval_s=0.01, console_enabled=False)\n"
        "import time; time.sleep(0.1)\n"
        "assert p.memory_monitor is not None and p.memory_monitor.stats()['checks'] > 0\n"
        "print('done')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "done\n", proc.stderr


def test_failures_of_the_monitor_are_contained_and_counted() -> None:
    reported: list[Finding] = []

    def report(findings: Any) -> None:
        reported.extend(findings)
        raise RuntimeError("reporter down")

    config = APMConfig(memory_threshold_mb=0.0, **FAST)
    monitor = MemoryMonitor(config, report, lambda: "svc")
    monitor.start()
    try:
        deadline = time.monotonic() + 10
        while monitor.stats()["checks"] < 5:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        monitor.stop()
    assert [f.type for f in reported] == [MEMORY_HIGH]
    assert monitor.stats()["errors"] == 1  # and checking went on
    assert reported[0].service == "svc" and reported[0].trace_id == 0


# -- under opentelemetry-instrument --------------------------------------------------------------


def run_instrumented(path: str, seconds: float, **settings: str) -> str:
    """tests/apps/leaky_app.py requesting ``path`` for ``seconds`` under opentelemetry-instrument
    with our configurator; its stderr, where the console reporter writes the findings."""
    env = clean_environ()
    env.update(
        OTEL_PYTHON_CONFIGURATOR="otel_apm",
        OTEL_SERVICE_NAME="leaky",
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        APM_CONSOLE_ENABLED="true",
        APM_CONSOLE_INTERVAL_S="0",  # every finding printed, however alike
        APM_HEAP_SNAPSHOT_ON_LEAK="true",
        **{f"APM_{key.upper()}": str(value) for key, value in FAST.items()},
    )
    env.update(settings)
    proc = subprocess.run(
        [str(INSTRUMENT), sys.executable, leaky_app.__file__, path, str(seconds)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_under_opentelemetry_instrument_a_leak_is_named_and_a_steady_service_is_not() -> None:
    leak = run_instrumented("/leak", 5)
    line = line_of(leaky_app.make_app, "_kept.append(")
    _, after = leak.split(leaky_app.WARMED_UP)
    reported = [s for s in after.splitlines() if "memory_leak_suspected" in s]
    assert len(reported) == 1, leak
    assert reported[0].startswith("[otel-apm] ") and "memory_leak_suspected leaky 'process'" in reported[0]
    where = after[after.index(reported[0]) :].splitlines()[1]
    assert where == f"    where: {leaky_app.__file__}:{line}", after
    # The threshold shows the monitor ran in the steady process too.
    steady = run_instrumented("/steady", 5, APM_MEMORY_THRESHOLD_MB="1")
    assert "memory_high leaky 'process'" in steady, steady
    _, after = steady.split(leaky_app.WARMED_UP)
    assert "memory_leak_suspected" not in after, steady


def test_memory_settings_are_validated_naming_the_variable() -> None:
    with pytest.raises(
        ConfigError, match=re.escape("APM_MEMORY_CHECK_INTERVAL_S=0.0: expected a number >= 0.01")
    ):
        APMConfig.from_env({"APM_MEMORY_CHECK_INTERVAL_S": "0"})
    with pytest.raises(ConfigError, match="APM_MEMORY_TREND_MIN_SAMPLES=4: expected an integer >= 8"):
        APMConfig.from_env({"APM_MEMORY_TREND_MIN_SAMPLES": "4"})
    with pytest.raises(ConfigError, match="APM_HEAP_SNAPSHOT_ON_LEAK='sometimes': expected true or false"):
        APMConfig.from_env({"APM_HEAP_SNAPSHOT_ON_LEAK": "sometimes"})


def test_a_forked_worker_gets_a_monitor_of_its_own() -> None:
    """gunicorn --preload builds the processor in the master: each worker must sample too."""
    code = (
        "import os, time\n"
        "from otel_apm import APMSpanProcessor\n"
        "p = APMSpanProcessor(None, memory_check_interval_s=0.01, console_enabled=False)\n"
        "m = p.memory_monitor\n"
        "pid = os.fork()\n"
        "before = m.stats()['checks']\n"
        "deadline = time.monotonic() + 30\n"
        "while m.stats()['checks'] < before + 5 and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "grew = m.stats()['checks'] >= before + 5\n"
        "if pid == 0:\n"
        "    os._exit(0 if grew else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(grew, os.waitstatus_to_exitcode(status))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout == "True 0\n", proc.stderr
