"""StoreEmitter: findings into the store without the application ever waiting for it.

``emit`` puts the findings on a bounded queue and returns; one writer thread takes everything
queued at once and writes it in one transaction, so a burst costs one commit, not one per
request.  When the queue is full (the store is slower than the findings come) the findings are
dropped and counted rather than block a request.  A failing store (disk full, PostgreSQL down)
costs the batch being written: counted, logged once, and the next batch opens a new connection.

The writer thread also keeps the rolled-up statistics: it stores their closed minutes every
``STATS_INTERVAL_S``, at each flush, and at shutdown with the minute still in progress.  And it
applies retention and rolls old statistics up into hours, at start and every ``PURGE_INTERVAL_S``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from otel_apm.config import APMConfig
from otel_apm.contain import FailureLog, in_forked_children
from otel_apm.detectors.base import Finding
from otel_apm.model import Trace
from otel_apm.stats import Statistics
from otel_apm.store.db import FindingsStore, check_driver
from otel_apm.store.url import parse_store_url

_log = logging.getLogger(__name__)

# Retention is counted in days: an hourly pass keeps the tables within an hour of it.
PURGE_INTERVAL_S = 3600.0
# Emitted batches (a trace's findings each) written per transaction at most: a long backlog is
# written in bounded steps.
BATCH_SIZE = 1000
# How often the writer collects the statistics' closed minutes (each closes once a minute).
STATS_INTERVAL_S = 15.0

_Item = tuple[float, Sequence[Finding]] | threading.Event | None

# In a forked child: the stores its parent opened, never to be used nor closed by it.
_INHERITED: list[FindingsStore] = []


class StoreEmitter:
    def __init__(self, config: APMConfig, statistics: Statistics | None = None) -> None:
        url = parse_store_url(config.store_url)
        check_driver(url)
        self.store = FindingsStore(url, config)
        self._retention_s = config.store_retention_days * 86400
        self._minutes_s = config.store_minute_stats_h * 3600
        self._statistics = statistics
        self._queue: queue.Queue[_Item] = queue.Queue(config.store_queue_size)
        self.failures = FailureLog(_log)
        self._lock = threading.Lock()
        self.written = 0
        self.dropped = 0
        self.minutes_written = 0
        self._dropped_logged = False
        self._closed = False
        self._start_writer()
        # A worker forked from a process that built us (gunicorn --preload) has our queue but not
        # our thread, nor a connection it may use: it gets both of its own.
        in_forked_children(self._forked)

    def _start_writer(self) -> None:
        self._thread = threading.Thread(target=self._run, name="otel-apm-store", daemon=True)
        self._thread.start()

    def emit(self, trace: Trace | None, findings: Sequence[Finding]) -> None:
        if not findings or self._closed:
            return
        try:
            self._queue.put_nowait((time.time(), tuple(findings)))
        except queue.Full:
            self._drop(len(findings), "the store's queue is full (APM_STORE_QUEUE_SIZE)")

    def _drop(self, n: int, why: str) -> None:
        with self._lock:
            self.dropped += n
            first = not self._dropped_logged
            self._dropped_logged = True
        if first:
            _log.warning("otel-apm: findings not stored: %s; further drops are only counted", why)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until what was emitted before is written (or given up); False on timeout."""
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout_s)
        except queue.Full:
            return False
        return done.wait(timeout_s)

    def shutdown(self, timeout_s: float) -> None:
        """Write what is queued within ``timeout_s``, then close the store."""
        deadline = time.monotonic() + timeout_s
        self._closed = True
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=max(0.0, timeout_s))
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            _log.warning("otel-apm: the store's writer did not finish within %.1fs", timeout_s)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "written": self.written,
                "dropped": self.dropped,
                "errors": self.failures.total,
                "minutes_written": self.minutes_written,
            }

    # -- the writer thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        next_purge = next_stats = time.monotonic()
        stop = False
        while not stop:
            now = time.monotonic()
            if now >= next_purge:
                self._guarded("purge", lambda: self.store.purge(time.time() - self._retention_s))
                self._guarded("compaction", lambda: self.store.compact(time.time() - self._minutes_s))
                next_purge = now + PURGE_INTERVAL_S
            if now >= next_stats:
                self._write_minutes()
                next_stats = now + STATS_INTERVAL_S
            try:
                item = self._queue.get(timeout=max(0.01, min(next_purge, next_stats) - time.monotonic()))
            except queue.Empty:
                continue
            items = [item]
            while len(items) < BATCH_SIZE:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            batch = [i for i in items if isinstance(i, tuple)]
            if batch:
                self._write(batch)
            stop = any(i is None for i in items)
            if stop or any(isinstance(i, threading.Event) for i in items):
                self._write_minutes(final=stop)
            for i in items:
                if isinstance(i, threading.Event):
                    i.set()
        self.store.close()

    def _forked(self) -> None:
        """In a forked child: what the parent's writer had queued is the parent's to write."""
        # The parent's connection is left open and alive: closing it here would close the
        # parent's session (PostgreSQL) or checkpoint its WAL file (SQLite).
        _INHERITED.append(self.store)
        self.store = FindingsStore(self.store.url, self.store.config)
        self._queue = queue.Queue(self._queue.maxsize)
        self._lock = threading.Lock()
        self.failures = FailureLog(_log)
        self.written = self.dropped = self.minutes_written = 0
        if not self._closed:
            self._start_writer()

    def _write_minutes(self, final: bool = False) -> None:
        statistics = self._statistics
        if statistics is None:
            return
        records = statistics.closed_minutes(final)
        if records and self._guarded("statistics", lambda: self.store.write_minutes(records)):
            with self._lock:
                self.minutes_written += len(records)

    def _write(self, batch: list[tuple[float, Sequence[Finding]]]) -> None:
        n = sum(len(findings) for _, findings in batch)
        if self._guarded("write", lambda: self.store.write(batch)):
            with self._lock:
                self.written += n
        else:
            self._drop(n, "writing to the store failed")

    def _guarded(self, what: str, work: Callable[[], object]) -> bool:
        try:
            work()
        except Exception as exc:
            self.failures.record(f"store {what}", exc)
            return False
        return True
