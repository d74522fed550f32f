"""Containment of our own failures: counted every time, logged once per kind.

Analysis runs inside the application's process (or on every request the collector takes): a
bug of ours must neither reach the caller nor flood its logs with one traceback per span.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable


class FailureLog:
    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._lock = threading.Lock()
        self._logged: set[tuple[str, str]] = set()
        self.counts: dict[str, int] = {}

    def record(self, where: str, exc: BaseException) -> None:
        kind = (where, type(exc).__name__)
        with self._lock:
            self.counts[where] = self.counts.get(where, 0) + 1
            first = kind not in self._logged
            self._logged.add(kind)
        if first:
            self._logger.warning(
                "otel-apm: %s failed (%r); the application is unaffected, and further failures of this "
                "kind are only counted",
                where,
                exc,
                exc_info=exc,
            )

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def in_forked_children(method: Callable[[], None]) -> None:
    """Call the bound ``method`` in every child forked from now on (gunicorn --preload,
    multiprocessing): a child inherits our objects but none of our threads, and a lock one of
    those threads held at the fork stays held in the child for ever.  Fork hooks cannot be
    unregistered, so the hook holds its object weakly: one garbage-collected since is skipped."""
    if not hasattr(os, "register_at_fork"):
        return
    ref = weakref.WeakMethod(method)

    def hook() -> None:
        bound = ref()
        if bound is not None:
            bound()

    os.register_at_fork(after_in_child=hook)
