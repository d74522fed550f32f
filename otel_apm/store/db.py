"""The findings store: one table of findings grouped by fingerprint, their occurrences per minute
(so a report over the last hour counts the last hour only) and a few example trace ids each; and
the rolled-up statistics (:mod:`otel_apm.stats`) as one record per key and closed minute.

The SQL is written once for both backends: SQLite (3.24+) and PostgreSQL share ``INSERT ... ON
CONFLICT DO UPDATE`` and ``excluded``, and counters are incremented in SQL, so analyzers sharing
one PostgreSQL store add up instead of overwriting each other.  Statements are written with
``?`` placeholders; the PostgreSQL connection turns them into psycopg2's ``%s``.

The state of a finding: ``muted`` is stored (the user said so; it stays muted when seen again),
``resolved`` is derived when read: an unmuted finding not seen for ``APM_STORE_RESOLVE_AFTER_H``,
which becomes ``open`` again by being seen, with no write needed to notice either.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from otel_apm.config import APMConfig, ConfigError
from otel_apm.detectors.base import Finding
from otel_apm.emit.attributes import trace_id_hex
from otel_apm.stats import MinuteRecord, Snapshot, merge_records, summarize
from otel_apm.store.url import StoreURL, parse_store_url

State = str  # "open", "resolved" or "muted"
STATES = ("open", "resolved", "muted")
T = TypeVar("T")

# Tries at switching a new SQLite file to WAL while another connection does the same (see _SQLite).
_WAL_ATTEMPTS = 100

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS apm_findings (
        fingerprint TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        title TEXT NOT NULL,
        severity TEXT NOT NULL,
        service TEXT NOT NULL,
        services TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        statement TEXT,
        code_location TEXT,
        recommendation TEXT NOT NULL,
        evidence TEXT NOT NULL,
        first_seen DOUBLE PRECISION NOT NULL,
        last_seen DOUBLE PRECISION NOT NULL,
        occurrences BIGINT NOT NULL,
        total_impact_ms DOUBLE PRECISION NOT NULL,
        max_duration_ms DOUBLE PRECISION NOT NULL,
        impact_score DOUBLE PRECISION NOT NULL,
        muted INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS apm_finding_minutes (
        fingerprint TEXT NOT NULL,
        minute BIGINT NOT NULL,
        occurrences BIGINT NOT NULL,
        impact_ms DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (fingerprint, minute)
    )""",
    "CREATE INDEX IF NOT EXISTS apm_finding_minutes_minute ON apm_finding_minutes (minute)",
    # One row per analyzer, key and closed minute: analyzers sharing a store each add theirs,
    # and a read merges every row of the window (the sketches merge exactly).
    # ``minutes``: 1, or 60 once the minutes of an hour are rolled up into one row (compact()).
    """CREATE TABLE IF NOT EXISTS apm_stats_minutes (
        kind TEXT NOT NULL,
        service TEXT NOT NULL,
        name TEXT NOT NULL,
        minute BIGINT NOT NULL,
        minutes INTEGER NOT NULL,
        record TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS apm_stats_minutes_minute ON apm_stats_minutes (minute)",
    """CREATE TABLE IF NOT EXISTS apm_finding_examples (
        fingerprint TEXT NOT NULL,
        trace_id TEXT NOT NULL,
        seen DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (fingerprint, trace_id)
    )""",
)

_UPSERT_FINDING = """
INSERT INTO apm_findings (fingerprint, type, title, severity, service, services, endpoint, statement,
    code_location, recommendation, evidence, first_seen, last_seen, occurrences, total_impact_ms,
    max_duration_ms, impact_score)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (fingerprint) DO UPDATE SET
    title = excluded.title, severity = excluded.severity, services = excluded.services,
    statement = excluded.statement, code_location = excluded.code_location,
    recommendation = excluded.recommendation, evidence = excluded.evidence,
    impact_score = excluded.impact_score,
    first_seen = CASE WHEN excluded.first_seen < apm_findings.first_seen
        THEN excluded.first_seen ELSE apm_findings.first_seen END,
    last_seen = CASE WHEN excluded.last_seen > apm_findings.last_seen
        THEN excluded.last_seen ELSE apm_findings.last_seen END,
    max_duration_ms = CASE WHEN excluded.max_duration_ms > apm_findings.max_duration_ms
        THEN excluded.max_duration_ms ELSE apm_findings.max_duration_ms END,
    occurrences = apm_findings.occurrences + excluded.occurrences,
    total_impact_ms = apm_findings.total_impact_ms + excluded.total_impact_ms
"""

_UPSERT_MINUTE = """
INSERT INTO apm_finding_minutes (fingerprint, minute, occurrences, impact_ms) VALUES (?, ?, ?, ?)
ON CONFLICT (fingerprint, minute) DO UPDATE SET
    occurrences = apm_finding_minutes.occurrences + excluded.occurrences,
    impact_ms = apm_finding_minutes.impact_ms + excluded.impact_ms
"""

_UPSERT_EXAMPLE = """
INSERT INTO apm_finding_examples (fingerprint, trace_id, seen) VALUES (?, ?, ?)
ON CONFLICT (fingerprint, trace_id) DO UPDATE SET seen = excluded.seen
"""

_PRUNE_EXAMPLES = """
DELETE FROM apm_finding_examples WHERE fingerprint = ? AND trace_id NOT IN (
    SELECT trace_id FROM apm_finding_examples WHERE fingerprint = ? ORDER BY seen DESC, trace_id LIMIT ?)
"""

_COLUMNS = (
    "fingerprint, type, title, severity, service, services, endpoint, statement, code_location, "
    "recommendation, evidence, first_seen, last_seen, occurrences, total_impact_ms, max_duration_ms, "
    "impact_score, muted"
)


@dataclass(frozen=True)
class StoredFinding:
    """A problem as the store knows it, over all its occurrences; ``window_*`` count those of the
    window it was read for (all of them for ``since=0``)."""

    fingerprint: str
    type: str
    title: str
    severity: str
    service: str
    services: tuple[str, ...]
    endpoint: str
    statement: str | None
    code_location: str | None
    recommendation: str
    evidence: dict[str, Any]
    first_seen: float
    last_seen: float
    occurrences: int
    total_impact_ms: float
    max_duration_ms: float
    impact_score: float
    state: State
    window_occurrences: int
    window_impact_ms: float
    example_trace_ids: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of the API and of ``otel-apm report --format json``."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["services"] = list(self.services)
        out["example_trace_ids"] = list(self.example_trace_ids)
        return out


class _Connection(Protocol):
    """What the store needs of a DB-API connection, ``?`` placeholders whatever the backend."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...
    def commit(self) -> None: ...
    def close(self) -> None: ...


class _DBAPI:
    """What both connections do alike."""

    _conn: Any

    def commit(self) -> None:
        self._conn.commit()

    def close(self) -> None:
        self._conn.close()


class _SQLite(_DBAPI):
    _conn: sqlite3.Connection

    def __init__(self, path: str) -> None:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self._conn = sqlite3.connect(path, timeout=10.0, check_same_thread=False)
        # WAL: readers (the report, the API) never wait for the writer, nor it for them.  Turning
        # it on takes the file exclusively, and SQLite answers "locked" at once rather than wait
        # when another connection is doing the same: so it is tried again for a while.
        for attempt in range(_WAL_ATTEMPTS):
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                if attempt == _WAL_ATTEMPTS - 1:
                    self._conn.close()
                    raise
                time.sleep(0.05)
        self._conn.execute("PRAGMA synchronous=NORMAL")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()


class _Postgres(_DBAPI):
    def __init__(self, url: StoreURL) -> None:
        check_driver(url)
        import psycopg2

        self._conn = psycopg2.connect(url.target, connect_timeout=5, application_name="otel-apm")
        # CREATE ... IF NOT EXISTS still collides when two connections create the same thing at
        # once (analyzers starting together, the collector's API and writer): the tables are
        # created under a lock held until the transaction the store commits after them.
        try:
            self.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (f"otel_apm schema {url.schema}",))
            self.execute(f'CREATE SCHEMA IF NOT EXISTS "{url.schema}"')
            self.execute(f'SET search_path TO "{url.schema}"')
        except BaseException:
            self._conn.close()
            raise

    def _cursor(self) -> Any:
        return self._conn.cursor()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self._cursor() as cur:
            cur.execute(sql.replace("?", "%s"), tuple(params))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        from psycopg2.extras import execute_batch

        # executemany is a round trip per row; a page of statements per round trip instead.
        with self._cursor() as cur:
            execute_batch(cur, sql.replace("?", "%s"), [tuple(r) for r in rows], page_size=200)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._cursor() as cur:
            cur.execute(sql.replace("?", "%s"), tuple(params))
            return list(cur.fetchall())


def check_driver(url: StoreURL) -> None:
    """ConfigError now, at configuration time, when the backend's driver is missing."""
    import importlib.util

    if url.backend == "postgresql" and importlib.util.find_spec("psycopg2") is None:
        raise ConfigError(f"store {url}: PostgreSQL needs psycopg2: pip install 'otel-apm[postgres]'")


class FindingsStore:
    """One connection to the store, its schema created on first use.  Thread-safe (one lock):
    the writer thread and readers in the same process take turns; each process opens its own."""

    def __init__(self, url: StoreURL | str, config: APMConfig | None = None) -> None:
        self.url = parse_store_url(url) if isinstance(url, str) else url
        self.config = config or APMConfig()
        self._lock = threading.Lock()
        self._conn: _Connection | None = None
        self.unreadable = 0

    @classmethod
    def from_config(cls, config: APMConfig) -> FindingsStore:
        if not config.store_url:
            raise ConfigError("APM_STORE_URL is not set: no store to open")
        return cls(config.store_url, config)

    def _connection(self) -> _Connection:
        if self._conn is None:
            conn: _Connection = (
                _SQLite(self.url.target) if self.url.backend == "sqlite" else _Postgres(self.url)
            )
            try:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.commit()
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _transaction(self, work: Callable[[_Connection], T]) -> T:
        """``work(connection)`` in one transaction; on failure the connection is dropped, so the
        next call starts from a fresh one (the server may have restarted)."""
        with self._lock:
            conn = self._connection()
            try:
                result = work(conn)
                conn.commit()
            except BaseException:
                self._drop()
                raise
            return result

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: closing it is all we wanted
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._drop()

    # -- writing ---------------------------------------------------------------------------------------

    def write(self, batch: Sequence[tuple[float, Sequence[Finding]]]) -> int:
        """Store findings seen at the given times (epoch seconds), in one transaction.  Returns
        the number of findings written."""
        keep = self.config.store_examples
        merged: dict[str, _Merged] = {}
        for seen, findings in batch:
            for finding in findings:
                entry = merged.get(finding.fingerprint)
                if entry is None:
                    merged[finding.fingerprint] = _Merged(finding, seen, keep)
                else:
                    entry.add(finding, seen)
        if not merged:
            return 0

        def work(conn: _Connection) -> None:
            conn.executemany(_UPSERT_FINDING, [m.row() for m in merged.values()])
            conn.executemany(
                _UPSERT_MINUTE,
                [(fp, minute, n, ms) for fp, m in merged.items() for minute, (n, ms) in m.minutes.items()],
            )
            examples = [(fp, trace, seen) for fp, m in merged.items() for trace, seen in m.examples.items()]
            if examples:
                conn.executemany(_UPSERT_EXAMPLE, examples)
                conn.executemany(_PRUNE_EXAMPLES, [(fp, fp, keep) for fp in {e[0] for e in examples}])

        self._transaction(work)
        return sum(m.occurrences for m in merged.values())

    def write_minutes(self, records: Sequence[MinuteRecord]) -> int:
        """Store the rolled-up statistics' closed minutes (:meth:`Statistics.closed_minutes`)."""
        if not records:
            return 0
        self._transaction(lambda conn: _insert_records(conn, records, 1))
        return len(records)

    def compact(self, before: float) -> int:
        """Roll the statistics' minutes of every hour that ended before ``before`` up into one
        row per key and hour (the sketches merge exactly; only the time resolution is lost), so
        a week's report reads 60 times fewer rows.  Returns the minutes rolled up.

        The minutes are taken with ``DELETE ... RETURNING`` in the transaction that inserts the
        hours: two analyzers compacting one store at once cannot both take the same minute."""
        hour_start = int(before // 3600) * 60

        def work(conn: _Connection) -> int:
            rows = conn.query(
                "DELETE FROM apm_stats_minutes WHERE minutes = 1 AND minute < ? "
                "RETURNING kind, service, name, minute, minutes, record",
                (hour_start,),
            )
            readable, unreadable = self._readable(rows)
            if unreadable:  # another version's: put back as they were, for it to read
                conn.executemany(_INSERT_RECORD, unreadable)
            by_hour: dict[float, list[MinuteRecord]] = {}
            for record in readable:
                by_hour.setdefault(record.start // 3600 * 3600, []).append(record)
            cap = self.config.stats_max_endpoints_per_statement
            hours: list[MinuteRecord] = []
            for start, records in by_hour.items():
                endpoints, statements = merge_records(records, cap)
                hours += [MinuteRecord("endpoint", start, s, n, t) for (s, n), t in endpoints.items()]
                hours += [
                    MinuteRecord("statement", start, s, n, t, info)
                    for (s, n), (info, t) in statements.items()
                ]
            _insert_records(conn, hours, 60)
            return len(rows)

        return self._transaction(work)

    def _readable(self, rows: Iterable[tuple[Any, ...]]) -> tuple[list[MinuteRecord], list[tuple[Any, ...]]]:
        """The records in the last column of ``rows``, and the rows this version cannot read
        (counted in ``unreadable``)."""
        records = []
        unreadable = []
        for row in rows:
            try:
                records.append(MinuteRecord.from_dict(json.loads(row[-1])))
            except ValueError:
                self.unreadable += 1
                unreadable.append(row)
        return records, unreadable

    def purge(self, before: float) -> int:
        """Remove findings last seen before ``before`` (epoch seconds) and every per-minute count
        and statistic older than that; returns the findings removed."""
        minute = int(before // 60)

        def work(conn: _Connection) -> int:
            gone = conn.query("SELECT count(*) FROM apm_findings WHERE last_seen < ?", (before,))[0][0]
            conn.execute("DELETE FROM apm_finding_minutes WHERE minute < ?", (minute,))
            conn.execute("DELETE FROM apm_stats_minutes WHERE minute < ?", (minute,))
            conn.execute(
                "DELETE FROM apm_finding_examples WHERE fingerprint IN "
                "(SELECT fingerprint FROM apm_findings WHERE last_seen < ?)",
                (before,),
            )
            conn.execute("DELETE FROM apm_findings WHERE last_seen < ?", (before,))
            return int(gone)

        return self._transaction(work)

    def set_muted(self, fingerprint: str, muted: bool) -> bool:
        """Mute (or unmute) a finding; False when the store has no such fingerprint."""

        def work(conn: _Connection) -> bool:
            found = conn.query("SELECT 1 FROM apm_findings WHERE fingerprint = ?", (fingerprint,))
            if found:
                conn.execute(
                    "UPDATE apm_findings SET muted = ? WHERE fingerprint = ?", (int(muted), fingerprint)
                )
            return bool(found)

        return self._transaction(work)

    # -- reading ---------------------------------------------------------------------------------------

    def statistics(
        self, window: str, since: float = 0.0, now: float | None = None, *, service: str | None = None
    ) -> Snapshot:
        """The rolled-up statistics of the minutes since ``since`` (0: all kept), of one
        ``service`` or all, merged: the same Snapshot a live :class:`Statistics` gives,
        percentiles from the merged sketches.  A record this version cannot read is skipped and
        counted in ``unreadable``."""
        now = time.time() if now is None else now
        sql = "SELECT record FROM apm_stats_minutes WHERE minute >= ?"
        params: list[Any] = [int(since // 60)]
        if service is not None:
            sql += " AND service = ?"
            params.append(service)
        rows = self._transaction(lambda conn: conn.query(sql + " ORDER BY minute", params))
        records, _ = self._readable(rows)
        endpoints, statements = merge_records(records, self.config.stats_max_endpoints_per_statement)
        start = since if since else min((r.start for r in records), default=now)
        return summarize(window, start, now, endpoints, statements)

    def findings(
        self,
        since: float = 0.0,
        *,
        types: Sequence[str] = (),
        state: State | None = None,
        fingerprint: str | None = None,
        service: str | None = None,
        now: float | None = None,
    ) -> list[StoredFinding]:
        """Findings seen since ``since`` (epoch seconds; 0: ever), costliest first: by the time
        they cost in the window (the sum of each occurrence's impact), then by occurrences."""
        sql = (
            f"SELECT {', '.join('f.' + c.strip() for c in _COLUMNS.split(','))}, "
            "sum(m.occurrences), sum(m.impact_ms) FROM apm_findings f "
            "JOIN apm_finding_minutes m ON m.fingerprint = f.fingerprint AND m.minute >= ?"
        )
        params: list[Any] = [int(since // 60)]
        where = []
        if types:
            where.append(f"f.type IN ({', '.join('?' * len(types))})")
            params += types
        for column, value in (("fingerprint", fingerprint), ("service", service)):
            if value is not None:
                where.append(f"f.{column} = ?")
                params.append(value)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " GROUP BY f.fingerprint"
        resolved_before = (time.time() if now is None else now) - self.config.store_resolve_after_h * 3600

        def work(conn: _Connection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            rows = conn.query(sql, params)
            examples: list[tuple[Any, ...]] = []
            if rows:
                marks = ", ".join("?" * len(rows))
                examples = conn.query(
                    "SELECT fingerprint, trace_id FROM apm_finding_examples "
                    f"WHERE fingerprint IN ({marks}) ORDER BY seen DESC, trace_id",
                    [r[0] for r in rows],
                )
            return rows, examples

        rows, example_rows = self._transaction(work)
        by_fingerprint: dict[str, list[str]] = {}
        for fp, trace in example_rows:
            by_fingerprint.setdefault(fp, []).append(trace)
        out = []
        for row in rows:
            muted, last_seen = bool(row[17]), float(row[12])
            found_state = "muted" if muted else "resolved" if last_seen < resolved_before else "open"
            if state is not None and found_state != state:
                continue
            out.append(
                StoredFinding(
                    fingerprint=row[0],
                    type=row[1],
                    title=row[2],
                    severity=row[3],
                    service=row[4],
                    services=tuple(json.loads(row[5])),
                    endpoint=row[6],
                    statement=row[7],
                    code_location=row[8],
                    recommendation=row[9],
                    evidence=json.loads(row[10]),
                    first_seen=float(row[11]),
                    last_seen=last_seen,
                    occurrences=int(row[13]),
                    total_impact_ms=round(float(row[14]), 3),
                    max_duration_ms=float(row[15]),
                    impact_score=float(row[16]),
                    state=found_state,
                    window_occurrences=int(row[18]),
                    window_impact_ms=round(float(row[19]), 3),
                    example_trace_ids=tuple(by_fingerprint.get(row[0], ())),
                )
            )
        out.sort(key=lambda f: (-f.window_impact_ms, -f.window_occurrences, f.fingerprint))
        return out


_INSERT_RECORD = (
    "INSERT INTO apm_stats_minutes (kind, service, name, minute, minutes, record) VALUES (?, ?, ?, ?, ?, ?)"
)


def _insert_records(conn: _Connection, records: Iterable[MinuteRecord], minutes: int) -> None:
    conn.executemany(
        _INSERT_RECORD,
        [
            (
                r.kind,
                r.service,
                r.name,
                int(r.start // 60),
                minutes,
                json.dumps(r.to_dict(), separators=(",", ":")),
            )
            for r in records
        ],
    )


class _Merged:
    """The occurrences of one fingerprint in one batch, as one row per table."""

    def __init__(self, finding: Finding, seen: float, keep: int) -> None:
        self.keep = keep
        self.latest = finding
        self.first = self.last = seen
        self.occurrences = 0
        self.impact_ms = 0.0
        self.max_duration_ms = 0.0
        self.minutes: dict[int, tuple[int, float]] = {}
        self.examples: dict[str, float] = {}
        self.add(finding, seen)

    def add(self, finding: Finding, seen: float) -> None:
        if seen >= self.last:
            self.latest, self.last = finding, seen
        self.first = min(self.first, seen)
        self.occurrences += 1
        self.impact_ms += finding.impact_ms
        self.max_duration_ms = max(self.max_duration_ms, finding.max_duration_ms)
        minute = int(seen // 60)
        n, ms = self.minutes.get(minute, (0, 0.0))
        self.minutes[minute] = (n + 1, ms + finding.impact_ms)
        if finding.trace_id:  # findings about the process have no trace to show
            self.examples[trace_id_hex(finding.trace_id)] = seen
            if len(self.examples) > self.keep:  # only the latest few can be kept anyway
                del self.examples[min(self.examples, key=self.examples.__getitem__)]

    def row(self) -> tuple[Any, ...]:
        f = self.latest
        return (
            f.fingerprint,
            f.type,
            f.title,
            f.severity,
            f.service,
            json.dumps(list(f.services)),
            f.endpoint,
            f.statement,
            f.code_location,
            f.recommendation,
            json.dumps(f.evidence, default=list),
            self.first,
            self.last,
            self.occurrences,
            self.impact_ms,
            self.max_duration_ms,
            f.impact_score,
        )
