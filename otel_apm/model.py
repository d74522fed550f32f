"""The one span model analysis reads, filled from SDK spans and from OTLP protobuf alike.

A SpanView holds only what detectors use, so a trace waiting for its root costs a few hundred
bytes per span rather than the SDK span with all its attributes and events.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from types import ModuleType
from typing import Any, TypeVar

T = TypeVar("T")
_UNSET: Any = object()  # Trace.derived's "not computed yet": a derived value may be None

# Categories: what kind of work a span is, decided once at intake from its attributes.
DB = "db"
DB_CONNECTION = "db.connection"  # a pool checkout / connect span: DB time, but not a query
CACHE = "cache"
HTTP_SERVER = "http.server"
HTTP_CLIENT = "http.client"
MESSAGING = "messaging"
RPC = "rpc"
INTERNAL = "internal"

# SpanKind values, as in the OTel API and (plus one) in OTLP.
KIND_INTERNAL, KIND_SERVER, KIND_CLIENT, KIND_PRODUCER, KIND_CONSUMER = range(5)


class SpanView:
    """An ended span, reduced to what analysis needs.  Times are nanoseconds since the epoch.

    Every slot holds an atomic value (str, int, float, bool or None): the compiled readers
    take the views they make out of the cycle collector's walks (csrc/view.c), which is only
    sound while a view can refer to no container."""

    __slots__ = (
        "cached",
        "category",
        "code",
        "db_operation",
        "db_params",
        "db_system",
        "db_table",
        "end_ns",
        "error",
        "exception_type",
        "http_method",
        "http_route",
        "http_status",
        "kind",
        "name",
        "parent_id",
        "request_size",
        "response_size",
        "scope",
        "server_address",
        "service",
        "span_id",
        "start_ns",
        "statement",
        "trace_id",
        "url",
    )

    def __init__(
        self,
        trace_id: int,
        span_id: int,
        parent_id: int,
        name: str,
        kind: int,
        start_ns: int,
        end_ns: int,
        error: bool,
        service: str,
        category: str = INTERNAL,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id  # 0: no parent, or the parent is in another process
        self.name = name
        self.kind = kind
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.error = error
        self.service = service
        self.category = category
        self.db_system: str | None = None
        self.statement: str | None = None
        self.db_operation: str | None = None
        self.db_table: str | None = None
        self.http_method: str | None = None
        self.url: str | None = None
        self.http_route: str | None = None
        self.http_status: int | None = None
        self.server_address: str | None = None
        self.scope = ""  # instrumentation scope name: tells SQLAlchemy from Django from raw DB-API
        self.code: str | None = None  # "path:line:function" of the call, from code.* attributes
        self.exception_type: str | None = None  # of an exception event, else error.type
        self.db_params: str | None = None  # recorded statement parameters, only compared
        self.cached = False  # the result came from a cache (cache.hit): no round trip paid
        self.request_size: int | None = None  # HTTP body sizes in bytes, where recorded
        self.response_size: int | None = None

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    def __repr__(self) -> str:
        return f"SpanView({self.name!r}, {self.category}, {self.span_id:016x}, {self.duration_ms:.3f}ms)"


class Trace:
    """The spans of one local trace (in-process) or one whole trace (collector), with its root.

    ``complete`` is False when the trace was analyzed before its root ended (memory bound hit,
    shutdown) or lost spans past ``max_spans_per_trace``; detectors that need the root skip it.
    """

    __slots__ = (
        "__weakref__",  # what is derived from the trace refers back to it weakly (TraceSummary)
        "_breakdown",
        "_by_category",
        "_by_id",
        "_derived",
        "_siblings",
        "complete",
        "root",
        "spans",
        "trace_id",
    )

    def __init__(
        self, trace_id: int, spans: list[SpanView], root: SpanView | None, complete: bool = True
    ) -> None:
        self.trace_id = trace_id
        self.spans = spans
        self.root = root
        self.complete = complete
        self._breakdown: dict[str, tuple[int, float]] | None = None
        self._by_category: dict[str, list[SpanView]] | None = None
        self._by_id: dict[int, SpanView] | None = None
        self._siblings: dict[str, dict[int, list[SpanView]]] = {}
        self._derived: dict[Hashable, Any] = {}

    def derived(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()``, once per trace and key: what several detectors derive alike (the
        per-parent statement sequence the N+1 and MN+1 detectors both walk) is made once."""
        # One lookup, and no typing.cast call (a Python function in 3.11): every reader of a
        # trace asks for the statements, the summary and the texts again and again.
        value: T = self._derived.get(key, _UNSET)
        if value is _UNSET:
            value = self._derived[key] = compute()
        return value

    def siblings(self, category: str, compiled: ModuleType | None = None) -> dict[int, list[SpanView]]:
        """The spans of ``category`` by parent span id, in arrival order, computed once per category.

        Shared by every detector of repeated work under one parent; they may sort a parent's list
        by start time in place (all of them read it in that order), but never change its members.
        ``compiled`` (otel_apm._native or None) files them with the compiled twin of the loop
        below (csrc/traceindex.c by_parent), which stays the reference and the fallback.
        """
        filed = self._siblings.get(category)
        if filed is None and compiled is not None:
            filed = compiled.by_parent(self.spans, category)
            if filed is not None:
                self._siblings[category] = filed
        if filed is None:
            filed = self._siblings[category] = {}
            for s in self.spans:
                if s.category == category:
                    group = filed.get(s.parent_id)
                    if group is None:
                        filed[s.parent_id] = [s]
                    else:
                        group.append(s)
        return filed

    def by_category(self) -> dict[str, list[SpanView]]:
        """The spans of each category, in arrival order, filed once per trace."""
        if self._by_category is None:
            filed: dict[str, list[SpanView]] = {}
            for s in self.spans:
                group = filed.get(s.category)
                if group is None:
                    filed[s.category] = [s]
                else:
                    group.append(s)
            self._by_category = filed
        return self._by_category

    def breakdown(self) -> dict[str, tuple[int, float]]:
        """(span count, summed milliseconds) per category below the root, computed once.

        Summed, not unioned: "DB time" is the database's work, as every APM product reports it.
        """
        if self._breakdown is None:
            out: dict[str, tuple[int, float]] = {}
            root = self.root
            for category, spans in self.by_category().items():
                spent = [(s.end_ns - s.start_ns) / 1e6 for s in spans if s is not root]
                if spent:
                    out[category] = (len(spent), sum(spent))
            self._breakdown = out
        return self._breakdown

    @property
    def endpoint(self) -> str:
        """What a user calls the transaction: "GET /users/{id}" for HTTP, else the root's name."""
        return "unknown" if self.root is None else endpoint_of(self.root)

    def entry_of(self, span: SpanView) -> SpanView | None:
        """Where the work around ``span`` entered its service: the highest ancestor of the same
        service (its server span, in the collector's cross-service traces; the local root
        in-process).  None when an ancestor is missing, as in a trace analyzed before its root.
        """
        by_id = self._spans_by_id()
        current = span
        for _ in range(len(by_id)):  # bounded: a malformed parent cycle cannot hang us
            if not current.parent_id:
                return current
            parent = by_id.get(current.parent_id)
            if parent is None:
                return None
            if parent.service != current.service:
                return current
            current = parent
        return None

    def parent_of(self, span: SpanView) -> SpanView | None:
        """The span's parent when it is in this trace."""
        return self._spans_by_id().get(span.parent_id) if span.parent_id else None

    def _spans_by_id(self) -> dict[int, SpanView]:
        if self._by_id is None:
            self._by_id = {s.span_id: s for s in self.spans}
        return self._by_id

    @property
    def services(self) -> list[str]:
        return sorted({s.service for s in self.spans if s.service})

    def __iter__(self) -> Iterator[SpanView]:
        return iter(self.spans)

    def __len__(self) -> int:
        return len(self.spans)


def endpoint_of(span: SpanView) -> str:
    if span.http_route:
        return f"{span.http_method} {span.http_route}" if span.http_method else span.http_route
    return span.name
