"""In-process assembly: spans grouped under their local root, as the SDK starts and ends them.

A local root is a span with no parent or a remote one: the server span of a request, a job's
top span.  A span learns its local trace at start from its parent (always started earlier in
this process), so at end it is one dict pop away from its group, and a span that ends after
its root is recognised as late rather than opening a trace that would never end.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

from otel_apm.model import SpanView

S = TypeVar("S")  # the SDK span type, held only in tail mode


class LocalTrace(Generic[S]):
    """The spans of one local trace so far.  ``held`` is None unless the export is deferred."""

    __slots__ = ("closed", "held", "keep", "root_id", "trace_id", "truncated", "views")

    def __init__(self, trace_id: int, root_id: int, hold: bool) -> None:
        self.trace_id = trace_id
        self.root_id = root_id
        self.views: list[SpanView] = []
        self.held: list[S] | None = [] if hold else None
        self.closed = False
        self.truncated = 0
        self.keep = True  # tail mode: the export decision, read by spans that arrive late


class LocalAssembler(Generic[S]):
    """Bounded: at most ``max_traces`` open local traces and ``max_spans`` views each.

    ``_owner`` maps started-but-not-ended span ids to their local trace.  It is bounded too
    (spans that never end must not leak memory): past its cap the oldest entries go, and their
    spans, should they end, pass through unanalyzed as "untracked".
    """

    def __init__(self, max_traces: int, max_spans: int, hold: bool) -> None:
        self.max_traces = max_traces
        self.max_spans = max_spans
        self.hold = hold
        self._open: dict[int, LocalTrace[S]] = {}
        self._owner: dict[int, LocalTrace[S]] = {}
        self._max_owned = max(65536, max_traces * 64)
        self._lock = threading.Lock()

    def start(self, trace_id: int, span_id: int, parent_id: int | None) -> LocalTrace[S] | None:
        """Register a started span (``parent_id`` None for a local root).

        Returns a trace evicted to stay within bounds: the caller analyzes it as it is.
        """
        owner = self._owner
        if parent_id is not None:
            lt = owner.get(parent_id)
            if lt is not None:
                owner[span_id] = lt
            return None
        lt = LocalTrace(trace_id, span_id, self.hold)
        evicted = None
        with self._lock:
            self._open[span_id] = lt
            owner[span_id] = lt
            if len(self._open) > self.max_traces:
                evicted = self._open.pop(next(iter(self._open)))
                evicted.closed = True
            if len(owner) > self._max_owned:
                for key in list(owner)[: len(owner) - self._max_owned]:
                    owner.pop(key, None)
        return evicted

    def owner(self, span_id: int) -> LocalTrace[S] | None:
        """The local trace of an ending span, forgotten as it is returned."""
        return self._owner.pop(span_id, None)

    def add(self, lt: LocalTrace[S], view: SpanView, span: S) -> str:
        """File an ended non-root span: "added", "held" (export deferred), "truncated" or "late"."""
        with self._lock:
            if lt.closed:
                return "late"
            if len(lt.views) >= self.max_spans:
                # Not held either: a huge trace must not hold memory. Its spans go out at once, so
                # the caller keeps the whole trace rather than orphan them.
                lt.truncated += 1
                return "truncated"
            lt.views.append(view)
            if lt.held is not None:
                lt.held.append(span)
                return "held"
            return "added"

    def close(self, lt: LocalTrace[S]) -> bool:
        """Close at root end; False when it was closed already (evicted), making the root late."""
        with self._lock:
            if lt.closed:
                return False
            lt.closed = True
            self._open.pop(lt.root_id, None)
            return True

    def drain(self) -> list[LocalTrace[S]]:
        """Close and return every open trace, at shutdown."""
        with self._lock:
            traces = list(self._open.values())
            self._open.clear()
            for lt in traces:
                lt.closed = True
            return traces

    def __len__(self) -> int:
        return len(self._open)
