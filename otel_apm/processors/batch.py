"""Closed local traces wait here to be analyzed together, on a worker thread.

Analyzing a trace as its root ends, between the application's spans, costs about twice what
the same analysis costs when traces are analyzed one after another: the interpreter's caches,
the type attribute cache and the branch predictors have been cooled by the SDK's span work in
between (measured inside the processor: 140 µs a trace one at a time, 64 in batches of 64;
bench/README.md).  So, like the SDK's BatchSpanProcessor for export, the processor hands each
closed trace to this queue, and a daemon thread analyzes what waits once ``batch_size`` traces
are waiting or ``delay_s`` after it last woke.  A root is exported after its batch, at most
``delay_s`` (plus the batch) later than it would be one at a time.

Nothing is dropped: past ``max_queue`` waiting traces the thread ending a root analyzes its own
trace; ``flush`` analyzes everything waiting before it returns (the processor's force_flush and
shutdown).  One batch runs at a time, so a flush returns only once the worker's batch in
progress is done too.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from otel_apm.contain import in_forked_children

T = TypeVar("T")


class BatchAnalysis(Generic[T]):
    """``run(batch)`` analyzes and hands on a batch of closed traces; it must not raise (the
    processor contains failures per trace and per emitter), but if it does ``failed`` is told
    and the worker goes on."""

    def __init__(
        self,
        run: Callable[[list[T]], None],
        failed: Callable[[Exception], None],
        *,
        batch_size: int,
        delay_s: float,
        max_queue: int,
    ) -> None:
        self._run = run
        self._failed = failed
        self._batch_size = batch_size
        self._delay_s = delay_s
        self._max_queue = max_queue
        self.analyzed_inline = 0  # traces the thread ending the root analyzed: queue full or shut
        self._stopping = False
        self._fresh()
        in_forked_children(self._fresh)

    def _fresh(self) -> None:
        """Empty, with a worker of our own: at construction and in a forked child, which has none
        of the parent's threads, whose waiting traces are the parent's to analyze, and whose
        locks a parent's thread may have held at the fork (a child of a process that shut us
        down gets no worker: its roots are analyzed as they end, as after shutdown)."""
        self._queue: deque[T] = deque()
        self._wake = threading.Event()
        self._running = threading.Lock()  # held by the batch in progress
        self._worker = threading.Thread(target=self._work, name="otel-apm-analysis", daemon=True)
        if not self._stopping:
            self._worker.start()

    def put(self, item: T) -> None:
        queue = self._queue
        if len(queue) >= self._max_queue or self._stopping:
            self.analyzed_inline += 1
            self._run_contained([item])
            return
        queue.append(item)
        if len(queue) == self._batch_size:
            self._wake.set()

    def __len__(self) -> int:
        return len(self._queue)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Analyze everything waiting now, after the worker's batch in progress; False when
        that batch did not end within ``timeout_s`` (an emitter stuck on the network)."""
        if not self._running.acquire(timeout=-1 if timeout_s is None else max(timeout_s, 0.0)):
            return False
        try:
            self._drain()
        finally:
            self._running.release()
        return True

    def shutdown(self, timeout_s: float) -> bool:
        """Stop the worker (after its batch in progress) and analyze what waits; False when the
        worker's batch did not end within ``timeout_s``."""
        self._stopping = True
        self._wake.set()
        if self._worker.is_alive() and self._worker is not threading.current_thread():
            self._worker.join(timeout_s)
        return self.flush(timeout_s)

    def _work(self) -> None:
        while not self._stopping:
            self._wake.wait(self._delay_s)
            self._wake.clear()
            with self._running:
                self._drain()

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            batch = [queue.popleft() for _ in range(min(len(queue), self._batch_size))]
            self._run_contained(batch)

    def _run_contained(self, batch: list[T]) -> None:
        try:
            self._run(batch)
        except Exception as exc:
            self._failed(exc)
