"""Rolling statistics per service+endpoint and per statement, in constant memory per key.

Each key keeps, besides the tick being filled (one ``60 / slots`` seconds long), three rings of
``slots`` closed sub-intervals (minute, hour, day) and a since-start total; a window is read by
merging its ring with the open tick, so it covers between ``(slots - 1) / slots`` and all of its
length (the snapshot says which span exactly, and rates are per second of that span).  A span
of the application's costs one tally update on the hot path; ticks are folded into the rings
when the next one opens, once per key and tick, not per trace.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from otel_apm.config import APMConfig
from otel_apm.contain import in_forked_children
from otel_apm.detectors.base import Finding
from otel_apm.detectors.dbshape import StatementGroups, statements_of
from otel_apm.model import DB, HTTP_CLIENT, SpanView, Trace, endpoint_of
from otel_apm.native import native
from otel_apm.sql import SqlShape
from otel_apm.stats.sketch import DDSketch

Window = Literal["minute", "hour", "day", "all"]
WINDOWS: tuple[Window, ...] = get_args(Window)
RECORD_FORMAT_VERSION = 1
# Ticks per sub-interval of the minute, hour and day rings: a tick is 1/slots of a minute.
_RING_TICKS = (1, 60, 1440)
_MINUTE_S = 60.0
# Closed minutes kept for a store that has not collected them, per key: older ones are dropped.
_PENDING_MINUTES = 5
#: The key of everything past the bound on endpoints or statements, as spanmetrics does.
OVERFLOW = "otel.metric.overflow"
_NOTHING = (0, 0.0)  # a category's (spans, milliseconds) when the trace has none


class Tally:
    """What is counted per key and sub-interval.  Durations are milliseconds; ``slow`` counts
    those at or over APM_SLOW_REQUEST_THRESHOLD_MS (endpoints) or APM_SLOW_QUERY_THRESHOLD_MS
    (statements), the seed's slow-query count.

    DB and external (HTTP client) time and the query count are filled for endpoints; the
    endpoints that ran a statement (at most ``max_endpoints`` of them) for statements.
    """

    __slots__ = ("count", "db_ms", "db_queries", "duration", "endpoints", "errors", "external_ms", "slow")

    def __init__(self, duration: DDSketch) -> None:
        self.count = 0
        self.errors = 0
        self.slow = 0
        self.duration = duration
        self.db_ms = 0.0
        self.db_queries = 0
        self.external_ms = 0.0
        self.endpoints: dict[str, None] = {}

    def add_spans(self, spans: Sequence[SpanView], slow_ms: float) -> None:
        """Count the runs ``spans`` stand for (a request's root, or a statement's queries): their
        durations, errors, and runs at or over ``slow_ms``.  The reference and fallback of the
        compiled ``otel_apm._native.tally_add_spans``, which Statistics calls instead when built."""
        self.count += len(spans)
        add = self.duration.add
        errors = slows = 0  # counted here, stored once: an attribute write costs more
        for s in spans:
            duration_ms = (s.end_ns - s.start_ns) / 1e6
            add(duration_ms)
            errors += s.error
            slows += duration_ms >= slow_ms
        self.errors += errors
        self.slow += slows

    def merge(self, other: Tally, max_endpoints: int) -> None:
        self.count += other.count
        self.errors += other.errors
        self.slow += other.slow
        self.duration.merge(other.duration)
        self.db_ms += other.db_ms
        self.db_queries += other.db_queries
        self.external_ms += other.external_ms
        for endpoint in other.endpoints:
            if len(self.endpoints) >= max_endpoints:
                break
            self.endpoints[endpoint] = None

    def copy(self) -> Tally:
        out = Tally(self.duration.copy())
        out.count, out.errors, out.slow = self.count, self.errors, self.slow
        out.db_ms, out.db_queries, out.external_ms = self.db_ms, self.db_queries, self.external_ms
        out.endpoints = dict(self.endpoints)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "errors": self.errors,
            "slow": self.slow,
            "db_ms": self.db_ms,
            "db_queries": self.db_queries,
            "external_ms": self.external_ms,
            "endpoints": list(self.endpoints),
            "duration": self.duration.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Tally:
        try:
            out = cls(DDSketch.from_dict(data["duration"]))
            out.count, out.errors, out.slow = int(data["count"]), int(data["errors"]), int(data["slow"])
            out.db_ms, out.db_queries = float(data["db_ms"]), int(data["db_queries"])
            out.external_ms = float(data["external_ms"])
            out.endpoints = dict.fromkeys(str(e) for e in data["endpoints"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a tally: {exc!r}") from None
        if out.count != out.duration.count:
            raise ValueError("tally count differs from its sketch's")
        return out


@dataclass(frozen=True)
class StatementInfo:
    """What names a statement: its fingerprint, the normalized text (no literal values) and parts."""

    fingerprint: str
    statement: str
    operation: str
    tables: tuple[str, ...]
    db_system: str


@dataclass(frozen=True)
class EndpointStats:
    """One service+endpoint over a window; latencies in milliseconds, None without requests."""

    service: str
    endpoint: str
    overflow: bool
    count: int
    errors: int
    error_rate: float
    slow: int
    throughput_per_s: float
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    total_ms: float
    db_ms: float
    db_time_share: float
    queries_per_request: float
    external_ms: float
    external_ms_per_request: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StatementStats:
    """One statement fingerprint of one service over a window; times in milliseconds."""

    service: str
    fingerprint: str
    statement: str
    operation: str
    tables: tuple[str, ...]
    db_system: str
    overflow: bool
    count: int
    errors: int
    slow: int
    total_ms: float
    mean_ms: float | None
    p95_ms: float | None
    max_ms: float | None
    endpoints: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tables"] = list(self.tables)
        out["endpoints"] = list(self.endpoints)
        return out


@dataclass(frozen=True)
class Snapshot:
    """The seed's getPerformanceSummary, per endpoint and per statement, for one window.

    ``start``/``end`` are epoch seconds of the span actually covered; ``overall`` merges every
    endpoint.  Endpoints and statements are ordered by total time, the largest first.
    """

    window: str
    start: float
    end: float
    overall: EndpointStats
    endpoints: tuple[EndpointStats, ...]
    statements: tuple[StatementStats, ...]

    @property
    def seconds(self) -> float:
        return max(self.end - self.start, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "start": self.start,
            "end": self.end,
            "seconds": self.seconds,
            "overall": self.overall.to_dict(),
            "endpoints": [e.to_dict() for e in self.endpoints],
            "statements": [s.to_dict() for s in self.statements],
        }


@dataclass(frozen=True)
class MinuteRecord:
    """One key's tally for one closed wall-clock minute, for a store to keep and merge later.

    ``kind`` is "endpoint" (``name`` the endpoint) or "statement" (``name`` the fingerprint,
    ``statement`` its text and parts).  ``start`` is the minute's epoch second.
    """

    kind: Literal["endpoint", "statement"]
    start: float
    service: str
    name: str
    tally: Tally
    statement: StatementInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": RECORD_FORMAT_VERSION,
            "kind": self.kind,
            "start": self.start,
            "service": self.service,
            "name": self.name,
            "tally": self.tally.to_dict(),
            "statement": None if self.statement is None else asdict(self.statement),
        }

    @classmethod
    def from_dict(cls, data: Any) -> MinuteRecord:
        try:
            if data["version"] != RECORD_FORMAT_VERSION:
                raise ValueError(f"unknown record format version {data['version']!r}")
            kind = data["kind"]
            if kind not in ("endpoint", "statement"):
                raise ValueError(f"unknown record kind {kind!r}")
            info = data["statement"]
            statement = None
            if info is not None:
                statement = StatementInfo(
                    str(info["fingerprint"]),
                    str(info["statement"]),
                    str(info["operation"]),
                    tuple(str(t) for t in info["tables"]),
                    str(info["db_system"]),
                )
            return cls(
                kind,
                float(data["start"]),
                str(data["service"]),
                str(data["name"]),
                Tally.from_dict(data["tally"]),
                statement,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a minute record: {exc!r}") from None


class _Rolling:
    """The tick being filled, the three rings of closed sub-intervals and the total of one key."""

    __slots__ = ("rings", "tick", "tick_index", "total")

    def __init__(self, tick: Tally, tick_index: int, total: Tally, slots: int) -> None:
        self.tick = tick
        self.tick_index = tick_index
        self.rings: tuple[deque[tuple[int, Tally]], ...] = tuple(deque(maxlen=slots) for _ in _RING_TICKS)
        self.total = total


class Statistics:
    """Rolling statistics fed by analyzed traces: an Emitter (findings are not its business).

    ``snapshot(window)`` reads them; ``closed_minutes()`` hands over (and forgets) the per-minute
    records closed since its last call, oldest first: five minutes' worth of every key at most
    (older ones are dropped, counted in ``minutes_dropped``).  Settings: ``APM_STATS_*``.
    Thread-safe.
    """

    def __init__(self, config: APMConfig | None = None, *, clock: Callable[[], float] = time.time) -> None:
        config = config if config is not None else APMConfig()
        self._alpha = config.stats_relative_accuracy
        self._max_buckets = config.stats_max_buckets
        self._slots = config.stats_slots
        self._tick_s = _MINUTE_S / self._slots
        self._max_endpoints = config.stats_max_endpoints
        self._max_statements = config.stats_max_statements
        self._max_endpoints_per_statement = config.stats_max_endpoints_per_statement
        self._slow_request_ms = config.slow_request_threshold_ms
        self._slow_query_ms = config.slow_query_threshold_ms
        self._clock = clock
        compiled = native(config.native_enabled)
        self._add_spans: Callable[[Tally, Sequence[SpanView], float], None] = (
            Tally.add_spans if compiled is None else compiled.tally_add_spans
        )
        self._tally_statements: Callable[..., None] = (
            _tally_statements if compiled is None else compiled.tally_statements
        )
        self._fresh()
        in_forked_children(self._fresh)

    def _fresh(self) -> None:
        """Nothing counted yet: at construction, and in a worker forked from a process that built
        us (gunicorn --preload), whose parent's traces are the parent's to count and store, and
        whose lock the parent's store writer may have held at the fork."""
        self.started = self._clock()
        self._endpoints: dict[tuple[str, str], _Rolling] = {}
        self._statements: dict[tuple[str, str], tuple[StatementInfo, _Rolling]] = {}
        self._pending: deque[MinuteRecord] = deque(
            maxlen=_PENDING_MINUTES * (self._max_endpoints + self._max_statements + 2)
        )
        self.minutes_dropped = 0
        self._lock = threading.Lock()

    # -- intake ------------------------------------------------------------------------------------

    def emit(self, trace: Trace | None, findings: Sequence[Finding]) -> None:
        root = trace.root if trace is not None else None
        if trace is None or root is None:
            return  # findings about the process, or a trace cut short before its root
        breakdown = trace.breakdown()
        queries, db_ms = breakdown.get(DB, _NOTHING)
        external_ms = breakdown.get(HTTP_CLIENT, _NOTHING)[1]
        endpoint = trace.endpoint
        groups = statements_of(trace) if queries else {}
        tick = math.floor(self._clock() / self._tick_s)
        # acquire() and release(), not "with": __enter__ parses acquire's arguments and __exit__
        # is called with three, 2,000 instructions a trace against 900.
        self._lock.acquire()
        try:
            # The key's entry is looked up here, and only a new key or a closed tick takes the
            # method that files or advances it: the common trace makes no call for it.
            key = (root.service, endpoint)
            rolling = self._endpoints.get(key)
            if rolling is None or tick > rolling.tick_index:
                rolling = self._rolling_endpoint(key, tick)
            tally = rolling.tick
            self._add_spans(tally, (root,), self._slow_request_ms)
            tally.db_ms += db_ms
            tally.db_queries += queries
            tally.external_ms += external_ms
            if groups:
                self._tally_statements(
                    self._statements,
                    groups,
                    tick,
                    self._slow_query_ms,
                    endpoint,
                    root.service,
                    _entry_endpoints,
                    trace,
                    self._max_endpoints_per_statement,
                    self._rolling_statement,
                )
        finally:
            self._lock.release()

    def _new_tally(self) -> Tally:
        return Tally(DDSketch(self._alpha, self._max_buckets))

    def _rolling_endpoint(self, key: tuple[str, str], tick: int) -> _Rolling:
        rolling = self._endpoints.get(key)
        if rolling is None:
            if len(self._endpoints) >= self._max_endpoints:
                key = ("", OVERFLOW)
                rolling = self._endpoints.get(key)
            if rolling is None:
                rolling = self._endpoints[key] = self._new_rolling(tick)
        if tick > rolling.tick_index:  # once a tick and key, not each trace
            self._advance("endpoint", key, None, rolling, tick)
        return rolling

    def _rolling_statement(
        self, key: tuple[str, str], shape: SqlShape, spans: Sequence[SpanView], tick: int
    ) -> tuple[StatementInfo, _Rolling]:
        """The entry of statement ``key`` (service, fingerprint) ready for ``tick``: filed when new
        (under the overflow key past the bound), advanced when a later tick opened."""
        filed = self._statements.get(key)
        if filed is None:
            if len(self._statements) >= self._max_statements:
                key = ("", OVERFLOW)
                info = StatementInfo(OVERFLOW, "", "", (), "")
                filed = self._statements.get(key)
            else:
                system = spans[0].db_system or ""
                info = StatementInfo(
                    shape.fingerprint, shape.normalized, shape.operation, shape.tables, system
                )
            if filed is None:
                filed = self._statements[key] = (info, self._new_rolling(tick))
        if tick > filed[1].tick_index:  # once a tick and key, not each trace
            self._advance("statement", key, filed[0], filed[1], tick)
        return filed

    def _new_rolling(self, tick: int) -> _Rolling:
        return _Rolling(self._new_tally(), tick, self._new_tally(), self._slots)

    def _advance(
        self,
        kind: Literal["endpoint", "statement"],
        key: tuple[str, str],
        info: StatementInfo | None,
        rolling: _Rolling,
        tick: int,
    ) -> None:
        """Fold the tick into the rings and the total once a later one opens, and file the minute
        it closes.  A clock that steps back keeps filling the current tick."""
        old = rolling.tick_index
        if tick <= old:
            return
        closed = rolling.tick
        if closed.count:
            cap = self._max_endpoints_per_statement
            for ring, per in zip(rolling.rings, _RING_TICKS, strict=True):
                index = old // per
                if ring and ring[-1][0] == index:
                    ring[-1][1].merge(closed, cap)
                else:  # the minute ring keeps the tick itself; the others a copy they merge into
                    ring.append((index, closed if per == 1 else closed.copy()))
            rolling.total.merge(closed, cap)
        minute = old // self._slots
        if tick // self._slots != minute:
            parts = [t for i, t in rolling.rings[0] if i // self._slots == minute]
            if parts:
                whole = self._merged(parts)
                if len(self._pending) == self._pending.maxlen:
                    self.minutes_dropped += 1
                self._pending.append(MinuteRecord(kind, minute * _MINUTE_S, key[0], key[1], whole, info))
        rolling.tick = self._new_tally()
        rolling.tick_index = tick

    def _merged(self, parts: Iterable[Tally]) -> Tally:
        out = self._new_tally()
        for part in parts:
            out.merge(part, self._max_endpoints_per_statement)
        return out

    # -- reading -----------------------------------------------------------------------------------

    def closed_minutes(self, final: bool = False) -> list[MinuteRecord]:
        """The per-minute records (endpoints and statements) closed since the last call, oldest
        first; they are forgotten here.  Idle keys' last minutes are closed too.  ``final``: the
        minute in progress is closed as well (at shutdown, so a store keeps it); later traces
        are then counted in the next minute."""
        tick = math.floor(self._clock() / self._tick_s)
        if final:
            tick = (tick // self._slots + 1) * self._slots
        with self._lock:
            self._advance_all(tick)
            out = list(self._pending)
            self._pending.clear()
        return out

    def snapshot(self, window: Window = "minute") -> Snapshot:
        """Statistics of every endpoint and statement over ``window``: "minute", "hour", "day"
        (rolling, see the module's doc for their exact span) or "all" (since start)."""
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r}: expected one of {', '.join(WINDOWS)}")
        now = self._clock()
        tick = math.floor(now / self._tick_s)
        # Under the lock, only references and C-speed copies of what emit() still changes; the
        # merging, which costs milliseconds per hundred keys, happens after, while traces go on.
        with self._lock:
            self._advance_all(tick)
            if window == "all":
                start = self.started
                endpoint_parts = {k: [r.total.copy(), r.tick.copy()] for k, r in self._endpoints.items()}
                statement_parts = {
                    k: (info, [r.total.copy(), r.tick.copy()]) for k, (info, r) in self._statements.items()
                }
            else:
                ring = WINDOWS.index(window)
                per = _RING_TICKS[ring]
                first = tick // per - self._slots + 1
                start = max(self.started, first * per * self._tick_s)
                endpoint_parts = {k: self._window_parts(r, ring, first) for k, r in self._endpoints.items()}
                statement_parts = {
                    k: (info, self._window_parts(r, ring, first)) for k, (info, r) in self._statements.items()
                }
        endpoints = {k: self._merged(parts) for k, parts in endpoint_parts.items()}
        statements = {k: (info, self._merged(parts)) for k, (info, parts) in statement_parts.items()}
        return summarize(window, start, now, endpoints, statements)

    def _advance_all(self, tick: int) -> None:
        for key, rolling in self._endpoints.items():
            self._advance("endpoint", key, None, rolling, tick)
        for key, (info, rolling) in self._statements.items():
            self._advance("statement", key, info, rolling, tick)

    def _window_parts(self, rolling: _Rolling, ring: int, first: int) -> list[Tally]:
        """The window's sub-intervals: closed ones as they are (nothing changes them any more),
        copies of the open tick and of the ring's last slot, which closing ticks merge into."""
        entries = rolling.rings[ring]
        parts = [t for i, t in entries if i >= first]
        if ring and parts and parts[-1] is entries[-1][1]:
            parts[-1] = parts[-1].copy()
        parts.append(rolling.tick.copy())
        return parts

    def memory_keys(self) -> tuple[int, int]:
        """(endpoints, statements) held; each costs constant memory whatever the traffic."""
        with self._lock:
            return len(self._endpoints), len(self._statements)


def _tally_statements(
    statements: dict[tuple[str, str], tuple[StatementInfo, _Rolling]],
    groups: StatementGroups,
    tick: int,
    slow_ms: float,
    endpoint: str,
    service: str,
    names_of: Callable[[Trace, str, list[SpanView]], Iterable[str]],
    trace: Trace,
    cap: int,
    refile: Callable[[tuple[str, str], SqlShape, list[SpanView], int], tuple[StatementInfo, _Rolling]],
) -> None:
    """Count a trace's statement groups in the open ticks of their entries, each with the
    endpoints that ran it, at most ``cap`` of them an entry: the trace's ``endpoint`` for the
    root's ``service``, ``names_of(trace, endpoint, spans)`` for another service's statements
    (asked only for those, which a trace in-process has none of).  A group whose entry is new or
    whose tick closed takes ``refile`` (Statistics._rolling_statement), which files or advances
    it; the common one takes one lookup.  The reference and fallback of the compiled
    ``otel_apm._native.tally_statements``, which runs this loop without a Python step per group."""
    own = (endpoint,)
    for key, (shape, spans) in groups.items():
        filed = statements.get(key)
        if filed is None or tick > filed[1].tick_index:
            filed = refile(key, shape, spans, tick)
        tally = filed[1].tick
        tally.add_spans(spans, slow_ms)
        names = tally.endpoints
        for name in own if key[0] == service else names_of(trace, endpoint, spans):
            if name not in names and len(names) < cap:
                names[name] = None


def _entry_endpoints(trace: Trace, endpoint: str, spans: list[SpanView]) -> dict[str, None]:
    """The endpoints that ran a statement of another service than the root's, in a
    cross-service trace: the entry of the statement's service for each of its ``spans``."""
    names: dict[str, None] = {}
    for span in spans:
        entry = trace.entry_of(span)
        names[endpoint_of(entry) if entry is not None else endpoint] = None
    return names


def summarize(
    window: str,
    start: float,
    end: float,
    endpoints: dict[tuple[str, str], Tally],
    statements: dict[tuple[str, str], tuple[StatementInfo, Tally]],
) -> Snapshot:
    """A snapshot from merged tallies: what :meth:`Statistics.snapshot` returns, and what a store
    builds from :class:`MinuteRecord` s it merged (:func:`merge_records`)."""
    seconds = max(end - start, 1e-9)
    per_endpoint = [
        _endpoint_stats(service, name, tally, seconds)
        for (service, name), tally in endpoints.items()
        if tally.count
    ]
    per_endpoint.sort(key=lambda e: -e.total_ms)
    everything = _empty_like(next(iter(endpoints.values()), None))
    for tally in endpoints.values():
        everything.merge(tally, 0)
    per_statement = [
        _statement_stats(service, info, tally)
        for (service, _), (info, tally) in statements.items()
        if tally.count
    ]
    per_statement.sort(key=lambda s: -s.total_ms)
    return Snapshot(
        window,
        start,
        end,
        _endpoint_stats("", "", everything, seconds),
        tuple(per_endpoint),
        tuple(per_statement),
    )


def merge_records(
    records: Iterable[MinuteRecord], max_endpoints_per_statement: int = 20
) -> tuple[dict[tuple[str, str], Tally], dict[tuple[str, str], tuple[StatementInfo, Tally]]]:
    """Minute records merged per key, ready for :func:`summarize`."""
    endpoints: dict[tuple[str, str], Tally] = {}
    statements: dict[tuple[str, str], tuple[StatementInfo, Tally]] = {}
    for record in records:
        key = (record.service, record.name)
        fresh = _empty_like(record.tally)
        if record.kind == "endpoint":
            endpoints.setdefault(key, fresh).merge(record.tally, max_endpoints_per_statement)
        elif record.statement is not None:
            statements.setdefault(key, (record.statement, fresh))[1].merge(
                record.tally, max_endpoints_per_statement
            )
    return endpoints, statements


def _empty_like(tally: Tally | None) -> Tally:
    """An empty tally whose sketch merges with ``tally``'s (same accuracy and bound)."""
    if tally is None:
        return Tally(DDSketch())
    return Tally(DDSketch(tally.duration.alpha, tally.duration.max_buckets))


def _endpoint_stats(service: str, endpoint: str, tally: Tally, seconds: float) -> EndpointStats:
    count, sketch = tally.count, tally.duration
    total = sketch.sum
    return EndpointStats(
        service=service,
        endpoint=endpoint,
        overflow=endpoint == OVERFLOW,
        count=count,
        errors=tally.errors,
        error_rate=tally.errors / count if count else 0.0,
        slow=tally.slow,
        throughput_per_s=count / seconds,
        mean_ms=sketch.mean,
        p50_ms=sketch.quantile(0.5),
        p95_ms=sketch.quantile(0.95),
        p99_ms=sketch.quantile(0.99),
        max_ms=sketch.max if count else None,
        total_ms=total,
        db_ms=tally.db_ms,
        db_time_share=min(tally.db_ms / total, 1.0) if total > 0 else 0.0,
        queries_per_request=tally.db_queries / count if count else 0.0,
        external_ms=tally.external_ms,
        external_ms_per_request=tally.external_ms / count if count else 0.0,
    )


def _statement_stats(service: str, info: StatementInfo, tally: Tally) -> StatementStats:
    sketch = tally.duration
    return StatementStats(
        service=service,
        fingerprint=info.fingerprint,
        statement=info.statement,
        operation=info.operation,
        tables=info.tables,
        db_system=info.db_system,
        overflow=info.fingerprint == OVERFLOW,
        count=tally.count,
        errors=tally.errors,
        slow=tally.slow,
        total_ms=sketch.sum,
        mean_ms=sketch.mean,
        p95_ms=sketch.quantile(0.95),
        max_ms=sketch.max if tally.count else None,
        endpoints=tuple(tally.endpoints),
    )
