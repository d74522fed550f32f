"""One readable line per finding on stderr, each fingerprint at most once per interval.

The same N+1 in every request would otherwise bury the app's own output.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

from otel_apm.detectors.base import Finding
from otel_apm.emit.attributes import trace_id_hex
from otel_apm.model import Trace

_MAX_REMEMBERED = 10_000


class ConsoleReporter:
    def __init__(self, interval_s: float = 60.0, stream: TextIO | None = None) -> None:
        self.interval_s = interval_s
        self._stream = stream
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def emit(self, trace: Trace | None, findings: Sequence[Finding]) -> None:
        if not findings:
            return
        now = time.monotonic()
        lines = []
        with self._lock:
            for f in findings:
                last = self._last.get(f.fingerprint)
                if last is not None and now - last < self.interval_s:
                    continue
                self._last[f.fingerprint] = now
                lines.append(format_line(f))
            if len(self._last) > _MAX_REMEMBERED:
                cutoff = now - self.interval_s
                self._last = {k: v for k, v in self._last.items() if v >= cutoff}
        if lines:
            stream = self._stream or sys.stderr
            stream.write("".join(lines))
            stream.flush()


def format_line(f: Finding) -> str:
    return (
        f"[otel-apm] {f.severity.upper()} {f.type} {f.service} {f.endpoint!r}: {f.title}"
        f"{f' at {f.code_location}' if f.code_location else ''}. Fix: {f.recommendation} "
        f"({f'trace {trace_id_hex(f.trace_id)}, ' if f.trace_id else ''}fingerprint {f.fingerprint})\n"
    )
