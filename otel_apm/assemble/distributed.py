"""Cross-service assembly in the collector: spans from any number of services and requests,
grouped by trace id until the trace is whole.

A trace is due (``ready``) when its root (the span with no parent) has arrived and no span of
the trace has arrived for ``idle_timeout_s``, or when ``max_wait_s`` have passed since its first
span arrived, root or not (``complete=False`` without a root).  Spans that arrive for a trace
already handed out are late: counted and dropped, never started as a new trace, as long as the
trace id is among the last ``recent_ids`` completed ones.

Bounded memory: ``max_spans`` spans in flight at most.  ``add`` refuses a batch that would go
past it, adding nothing, so the receiver can refuse the request and the client retries later
(back-pressure) rather than the assembler dropping spans itself.

``ready`` costs two dictionary peeks when nothing is due: pending traces are kept in two
OrderedDicts, one by first arrival (for ``max_wait_s``) and one, holding the traces whose root
has arrived, by last arrival (for ``idle_timeout_s``); only their heads are ever compared with
the clock.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from otel_apm.model import SpanView, Trace

DEFAULT_RECENT_IDS = 65536  # about 30 s of trace ids at 50,000 spans/s of 23-span traces


class _Pending:
    """One trace being assembled."""

    __slots__ = ("first_seen", "last_seen", "root", "spans", "trace_id")

    def __init__(self, trace_id: int, now: float) -> None:
        self.trace_id = trace_id
        self.spans: list[SpanView] = []
        self.root: SpanView | None = None
        self.first_seen = now
        self.last_seen = now


class TraceAssembler:
    """Thread-safe (one lock); the clock is injectable so tests can drive time."""

    def __init__(
        self,
        idle_timeout_s: float,
        max_wait_s: float,
        max_spans: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        recent_ids: int = DEFAULT_RECENT_IDS,
    ) -> None:
        if not idle_timeout_s >= 0:
            raise ValueError(f"idle_timeout_s must be >= 0, got {idle_timeout_s!r}")
        if not max_wait_s >= 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s!r}")
        if max_spans < 1:
            raise ValueError(f"max_spans must be >= 1, got {max_spans!r}")
        if recent_ids < 0:
            raise ValueError(f"recent_ids must be >= 0, got {recent_ids!r}")
        self.idle_timeout_s = idle_timeout_s
        self.max_wait_s = max_wait_s
        self.max_spans = max_spans
        self.recent_ids = recent_ids
        self._clock = clock
        self._lock = threading.Lock()
        # Every pending trace, by first arrival; insertion order is arrival order.
        self._by_age: OrderedDict[int, _Pending] = OrderedDict()
        # Pending traces whose root arrived, least recently updated first.
        self._rooted: OrderedDict[int, _Pending] = OrderedDict()
        # Trace ids handed out lately, oldest first: their spans are late.
        self._recent: OrderedDict[int, None] = OrderedDict()
        self._spans = 0
        self._late_spans = 0
        self._duplicate_spans = 0
        self._refused_spans = 0
        self._traces_completed = 0
        self._traces_incomplete = 0

    def add(self, views: list[SpanView]) -> bool:
        """File the views by trace id.  False, with nothing added, when they would take the
        spans in flight past ``max_spans``: the caller refuses the request (back-pressure).

        A batch larger than ``max_spans`` can never fit and is always refused.
        """
        n = len(views)
        if not n:
            return True
        with self._lock:
            if self._spans + n > self.max_spans:
                self._refused_spans += n
                return False
            now = self._clock()
            by_age = self._by_age
            rooted = self._rooted
            recent = self._recent
            added = late = 0
            last_tid = -1  # trace ids are never negative
            pending: _Pending | None = None
            for view in views:
                tid = view.trace_id
                if tid != last_tid:
                    # Spans of one trace mostly come together: look the trace up once per run.
                    last_tid = tid
                    pending = by_age.get(tid)
                    if pending is None:
                        if tid in recent:
                            late += 1
                            continue
                        pending = by_age[tid] = _Pending(tid, now)
                    else:
                        pending.last_seen = now
                        if pending.root is not None:
                            rooted.move_to_end(tid)
                elif pending is None:
                    late += 1
                    continue
                pending.spans.append(view)
                added += 1
                if view.parent_id == 0:
                    root = pending.root
                    if root is None:
                        pending.root = view
                        rooted[tid] = pending  # its last_seen is now: the newest
                    elif view.start_ns < root.start_ns:
                        pending.root = view
            self._spans += added
            self._late_spans += late
        return True

    def ready(self) -> list[Trace]:
        """The traces due now, taken out of the assembler: the caller analyzes them."""
        with self._lock:
            if not self._by_age:
                return []
            now = self._clock()
            due: list[_Pending] = []
            by_age = self._by_age
            rooted = self._rooted
            max_wait = self.max_wait_s
            while by_age:
                pending = next(iter(by_age.values()))
                if now - pending.first_seen < max_wait:
                    break
                by_age.popitem(last=False)
                if pending.root is not None:
                    del rooted[pending.trace_id]
                due.append(pending)
            idle = self.idle_timeout_s
            while rooted:
                pending = next(iter(rooted.values()))
                if now - pending.last_seen < idle:
                    break
                rooted.popitem(last=False)
                del by_age[pending.trace_id]
                due.append(pending)
            if not due:
                return []
            self._complete(due)
        return self._traces(due)

    def drain(self) -> list[Trace]:
        """Every pending trace, due or not: at shutdown."""
        with self._lock:
            due = list(self._by_age.values())
            self._by_age.clear()
            self._rooted.clear()
            self._complete(due)
        return self._traces(due)

    def stats(self) -> dict[str, int]:
        """``spans_in_flight``, ``traces_in_flight``, ``late_spans`` (spans of a trace already
        handed out), ``traces_completed`` (handed out by ready or drain, with or without a root),
        ``traces_incomplete`` (of those, without a root), ``duplicate_spans`` (a span id seen
        twice in one trace, e.g. a client's retry, analyzed once), ``refused_spans`` (in batches
        ``add`` refused)."""
        with self._lock:
            return {
                "spans_in_flight": self._spans,
                "traces_in_flight": len(self._by_age),
                "late_spans": self._late_spans,
                "traces_completed": self._traces_completed,
                "traces_incomplete": self._traces_incomplete,
                "duplicate_spans": self._duplicate_spans,
                "refused_spans": self._refused_spans,
            }

    def __len__(self) -> int:
        """Traces in flight."""
        return len(self._by_age)

    # -- internals -----------------------------------------------------------------------------

    def _complete(self, due: list[_Pending]) -> None:
        """Account for traces leaving, and remember their ids to tell late spans.  Locked."""
        recent = self._recent
        keep = self.recent_ids
        spans = 0
        incomplete = 0
        for pending in due:
            spans += len(pending.spans)
            if pending.root is None:
                incomplete += 1
            if keep:
                recent[pending.trace_id] = None
        if keep:
            while len(recent) > keep:
                recent.popitem(last=False)
        self._spans -= spans
        self._traces_completed += len(due)
        self._traces_incomplete += incomplete

    def _traces(self, due: list[_Pending]) -> list[Trace]:
        """Trace objects for traces already taken out: built outside the lock."""
        out = []
        duplicates = 0
        for pending in due:
            spans = pending.spans
            if len(spans) > 1 and len({s.span_id for s in spans}) != len(spans):
                unique = _unique(spans)
                duplicates += len(spans) - len(unique)
                spans = unique
                root = pending.root
                if root is not None and root not in spans:  # a duplicate was picked as the root
                    pending.root = _root_of(spans)
            out.append(Trace(pending.trace_id, spans, pending.root, complete=pending.root is not None))
        if duplicates:
            with self._lock:
                self._duplicate_spans += duplicates
        return out


def _unique(spans: list[SpanView]) -> list[SpanView]:
    """The first view of each span id, in arrival order."""
    seen: set[int] = set()
    out = []
    for s in spans:
        if s.span_id not in seen:
            seen.add(s.span_id)
            out.append(s)
    return out


def _root_of(spans: list[SpanView]) -> SpanView | None:
    root = None
    for s in spans:
        if s.parent_id == 0 and (root is None or s.start_ns < root.start_ns):
            root = s
    return root
