"""Findings on stderr for the developer at the terminal: each new problem once, in full, then a
one-line summary per interval of how often it came back (:mod:`otel_apm.emit.digest`).

The same N+1 in every request would otherwise bury the app's own output, and so would a burst
of new problems: at most ``max_per_interval`` entries are printed per interval, and a line says
how many more were held back.  A new problem held back is announced when it next occurs.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

from otel_apm.detectors.base import Finding
from otel_apm.emit.attributes import trace_id_hex
from otel_apm.emit.digest import Digest, Summary
from otel_apm.model import Trace

PREFIX = "[otel-apm]"
_STATEMENT_CHARS = 300


class ConsoleReporter:
    def __init__(
        self, interval_s: float = 60.0, max_per_interval: int = 50, stream: TextIO | None = None
    ) -> None:
        self.interval_s = interval_s
        self.max_per_interval = max_per_interval
        self._stream = stream
        self._digest = Digest(interval_s)
        self._lock = threading.Lock()
        self._budget_start = time.monotonic()
        self._printed = 0
        self._suppressed = 0

    def emit(self, trace: Trace | None, findings: Sequence[Finding]) -> None:
        now = time.monotonic()
        new = self._digest.observe(findings, now) if findings else []
        summaries = self._digest.due(now)
        if new or summaries:
            self._print(now, new, summaries)

    def shutdown(self, timeout_s: float) -> None:
        """Print the repeats not yet summarized, so a short run still says what came back."""
        now = time.monotonic()
        self._print(now, [], self._digest.due(now, everything=True), final=True)

    def _print(self, now: float, new: list[Finding], summaries: list[Summary], final: bool = False) -> None:
        entries: list[str] = []
        with self._lock:
            if now - self._budget_start >= self.interval_s:
                entries += self._suppressed_line(now)
                self._budget_start, self._printed = now, 0
            for finding in new:
                if self._admit():
                    entries.append(format_announcement(finding))
                else:
                    self._digest.forget(finding.fingerprint)
            entries += [format_summary(summary) for summary in summaries if self._admit()]
            if final:
                entries += self._suppressed_line(now)
        if entries:
            stream = self._stream or sys.stderr
            stream.write("".join(entries))
            stream.flush()

    def _admit(self) -> bool:
        """Whether one more entry fits in this interval's budget; counts it either way."""
        if self._printed < self.max_per_interval:
            self._printed += 1
            return True
        self._suppressed += 1
        return False

    def _suppressed_line(self, now: float) -> list[str]:
        if not self._suppressed:
            return []
        line = (
            f"{PREFIX} {self._suppressed} more suppressed in the last {now - self._budget_start:.0f} s "
            f"(at most {self.max_per_interval} per {self.interval_s:g} s: APM_CONSOLE_MAX_PER_INTERVAL)\n"
        )
        self._suppressed = 0
        return [line]


def format_announcement(f: Finding) -> str:
    """A headline that stands alone (greppable: severity, type, service, endpoint, trace), then
    indented lines: where in the code, the statement, the evidence, the fix."""
    trace = f"trace {trace_id_hex(f.trace_id)}, " if f.trace_id else ""
    headline = f"{PREFIX} {f.severity.upper()} {f.type} {f.service} {f.endpoint!r}: {f.title}"
    lines = [f"{headline} ({trace}fingerprint {f.fingerprint})"]
    if f.code_location:
        lines.append(f"    where: {f.code_location}")
    if f.statement:
        statement = (
            f.statement if len(f.statement) <= _STATEMENT_CHARS else f.statement[:_STATEMENT_CHARS] + "..."
        )
        lines.append(f"    statement: {statement}")
    measures = f"{f.count} span(s), {f.total_duration_ms:g} ms in all, impact {f.impact_ms:g} ms per request"
    evidence = ", ".join(f"{k}={','.join(v) if isinstance(v, tuple) else v}" for k, v in f.evidence.items())
    lines.append(f"    evidence: {measures}{'; ' + evidence if evidence else ''}")
    lines.append(f"    fix: {f.recommendation}")
    return "\n".join(lines) + "\n"


def format_summary(s: Summary) -> str:
    trace = f", e.g. trace {trace_id_hex(s.latest.trace_id)}" if s.latest.trace_id else ""
    return f"{PREFIX} {s.describe()} (fingerprint {s.latest.fingerprint}{trace})\n"
