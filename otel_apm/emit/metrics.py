"""Per-transaction measures, statement totals and finding counts through the OTel Metrics API.

Only the transaction duration is recorded per trace, as a histogram: its percentiles need every
value.  DB time, query counts, statement times and findings are sums, so they are added up here,
per service and endpoint (or statement), and reported by observable counters when a reader
collects (Elastic APM's agents pre-aggregate their breakdown metrics the same way).  A histogram
point costs the SDK's ``record()`` about 9 µs, still a third of that through
:class:`~otel_apm.emit.histogram.DirectHistogram` (which the duration's points take); a sum here
costs a dict update.  That is why statements have sums and no histogram: a point per query would
cost more than the analysis of the query.  What a sum gives up is the distribution: divide by the
count for the mean, and read percentiles from the rolling statistics (otel_apm.stats).

Names: ``otel_apm.*`` where no semantic convention fits (a transaction is a local root, HTTP or
not; the instrumentations already emit ``http.server.request.duration``); semantic-convention
attribute keys where one does (``http.route``, ``http.request.method``, ``error.type``,
``db.system.name``, ``db.operation.name``, ``db.collection.name``, ``db.query.summary``).  In
the collector one stream carries many services, so the service is an attribute, not only a
resource.  The histogram's advisory buckets are the convention's for HTTP server durations;
an exporter configured for exponential histograms
(``OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION=base2_exponential_bucket_histogram``)
overrides them.

Cardinality is bounded before the SDK's own limit: the first ``APM_METRICS_MAX_ENDPOINTS``
service+endpoint pairs and ``APM_METRICS_MAX_STATEMENTS`` statements get series of their own;
what comes later is counted in one series with the only attribute ``otel.metric.overflow=true``,
as the SDK's cardinality limit and the Collector's spanmetrics connector do, so totals stay right.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Sequence
from functools import partial
from types import ModuleType

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter
from opentelemetry.util.types import AttributeValue

from otel_apm.config import APMConfig
from otel_apm.contain import in_forked_children
from otel_apm.detectors.base import Finding
from otel_apm.detectors.dbshape import StatementGroups, statements_of
from otel_apm.emit.histogram import DirectHistogram
from otel_apm.model import DB, SpanView, Trace
from otel_apm.native import native
from otel_apm.sql import SqlShape
from otel_apm.version import __version__

SERVICE = "otel_apm.service"
ENDPOINT = "otel_apm.endpoint"
FINDING_TYPE = "otel_apm.finding.type"
SEVERITY = "otel_apm.finding.severity"
FINGERPRINT = "otel_apm.statement.fingerprint"
STATEMENT_KEYS = (
    SERVICE,
    FINGERPRINT,
    "db.system.name",
    "db.operation.name",
    "db.collection.name",
    "db.query.summary",
)
OVERFLOW_ATTRIBUTES: dict[str, AttributeValue] = {"otel.metric.overflow": True}
# The semantic conventions' advice for http.server.request.duration, in seconds.
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class _Admission:
    """The first ``limit`` keys seen get series of their own; the rest share the overflow series."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._keys: set[Hashable] = set()

    def admits(self, key: Hashable) -> bool:
        keys = self._keys
        if key in keys:
            return True
        if len(keys) < self._limit:
            keys.add(key)
            return True
        return False


class _Sums:
    """Monotonic totals by attribute set, read by an observable counter's callback; ``None``
    values stand for the overflow series."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = keys
        self._totals: dict[tuple[AttributeValue, ...] | None, float] = {}

    def add(self, values: tuple[AttributeValue, ...] | None, amount: float) -> None:
        self._totals[values] = self._totals.get(values, 0) + amount

    def observe(self) -> list[Observation]:
        return [
            Observation(
                total, OVERFLOW_ATTRIBUTES if values is None else dict(zip(self._keys, values, strict=True))
            )
            for values, total in list(self._totals.items())
        ]


class _TransactionTotals:
    """DB time and queries per (service, endpoint); ``None`` stands for the overflow series."""

    def __init__(self) -> None:
        self._totals: dict[tuple[str, str] | None, list[float]] = {}  # key -> [seconds, queries]

    def entry(self, where: tuple[str, str] | None) -> list[float]:
        """The totals of ``where``, made when it is first seen: a trace adds to them in place."""
        entry = self._totals.get(where)
        if entry is None:
            entry = self._totals[where] = [0, 0]
        return entry

    def observe(self, index: int) -> list[Observation]:
        return [
            Observation(
                totals[index],
                OVERFLOW_ATTRIBUTES if where is None else {SERVICE: where[0], ENDPOINT: where[1]},
            )
            for where, totals in list(self._totals.items())
        ]


class _StatementTotals:
    """Time and runs per (service, fingerprint), both updated through one short key per statement
    and trace; the attributes are made once per statement, for the first ``limit`` of them."""

    def __init__(self, limit: int, compiled: ModuleType | None) -> None:
        self._limit = limit
        self._attributes: dict[tuple[str, str], dict[str, AttributeValue]] = {}
        self._totals: dict[tuple[str, str] | None, list[int]] = {}  # key -> [nanoseconds, runs]
        self._compiled: Callable[..., bool] | None = None if compiled is None else compiled.statement_totals

    def add_all(self, groups: StatementGroups) -> None:
        """A trace's statements, in one call: a trace has several, of a few runs each.  The
        compiled twin (csrc/sketch.c) declines, changing nothing, what it does not hold exactly."""
        compiled = self._compiled
        if compiled is None or not compiled(self._totals, groups, self._entry):
            _add_statements(self._totals, groups, self._entry)

    def _entry(self, key: tuple[str, str], shape: SqlShape, first: SpanView) -> list[int]:
        """The totals of a statement seen for the first time: its own, with its attributes,
        while under the limit; else the overflow series'."""
        if len(self._attributes) >= self._limit:
            return self._totals.setdefault(None, [0, 0])
        tables = shape.tables
        summary = " ".join((shape.operation, *tables)) if shape.operation else " ".join(tables)
        values = (*key, first.db_system or "", shape.operation, tables[0] if tables else "", summary)
        self._attributes[key] = dict(zip(STATEMENT_KEYS, values, strict=True))
        entry = self._totals[key] = [0, 0]
        return entry

    def observe(self, index: int, scale: float) -> list[Observation]:
        return [
            Observation(totals[index] * scale, OVERFLOW_ATTRIBUTES if key is None else self._attributes[key])
            for key, totals in list(self._totals.items())
        ]


def _add_statements(
    totals: dict[tuple[str, str] | None, list[int]],
    groups: StatementGroups,
    entry: Callable[[tuple[str, str], SqlShape, SpanView], list[int]],
) -> None:
    """Add each statement group's nanoseconds and runs to its totals, made by ``entry`` for a
    statement seen for the first time.  The reference of the compiled
    ``otel_apm._native.statement_totals``, and what runs when it declines."""
    for key, (shape, spans) in groups.items():
        filed = totals.get(key)
        if filed is None:
            filed = entry(key, shape, spans[0])
        nanoseconds = 0
        for s in spans:  # a loop, not sum() of a list: the comprehension would cost a frame
            nanoseconds += s.end_ns - s.start_ns
        filed[0] += nanoseconds
        filed[1] += len(spans)


class _Series:
    """One attribute set of the transaction histogram, filed by the root's fields that make it:
    its point's attributes and the DB totals of its service and endpoint.  The object is also
    the set's key in the DirectHistogram: hashed by identity, not by its values."""

    __slots__ = ("attributes", "totals")

    def __init__(self, attributes: dict[str, AttributeValue], totals: list[float]) -> None:
        self.attributes = attributes
        self.totals = totals


class MetricsEmitter:
    def __init__(self, meter_provider: MeterProvider | None = None, config: APMConfig | None = None) -> None:
        config = config if config is not None else APMConfig()
        meter = get_meter("otel_apm", __version__, meter_provider=meter_provider)
        self._lock = threading.Lock()
        in_forked_children(self._new_lock)
        self._endpoints = _Admission(config.metrics_max_endpoints)
        self._statements = _StatementTotals(config.metrics_max_statements, native(config.native_enabled))
        self._statement_metrics = config.metrics_max_statements > 0
        self._duration = DirectHistogram(
            meter.create_histogram(
                "otel_apm.transaction.duration",
                unit="s",
                description="Duration of local root spans (transactions), by endpoint",
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
            )
        )
        self._transactions = _TransactionTotals()
        # The admitted endpoints' series by the root's fields (see emit), and the overflow's.
        self._series: dict[_SeriesKey, _Series] = {}
        self._overflow: _Series | None = None
        self._findings = _Sums((FINDING_TYPE, SEVERITY, SERVICE, ENDPOINT))
        statements = self._statements
        for name, read, unit, description in (
            (
                "otel_apm.transaction.db.duration",
                partial(self._transactions.observe, 0),
                "s",
                "DB time of transactions, summed",
            ),
            (
                "otel_apm.transaction.db.queries",
                partial(self._transactions.observe, 1),
                "{query}",
                "DB queries of transactions",
            ),
            (
                "otel_apm.db.statement.duration",
                partial(statements.observe, 0, 1e-9),
                "s",
                "Time in each statement",
            ),
            (
                "otel_apm.db.statement.executions",
                partial(statements.observe, 1, 1),
                "{execution}",
                "Statement runs",
            ),
            ("otel_apm.findings", self._findings.observe, "{finding}", "Performance problems found, by type"),
        ):
            meter.create_observable_counter(name, [self._observer(read)], unit=unit, description=description)

    def _new_lock(self) -> None:
        """In a forked worker (gunicorn --preload): the SDK's export thread, reading our totals
        under the lock, may have held it at the fork; the worker's own thread never will."""
        self._lock = threading.Lock()

    def _observer(
        self, read: Callable[[], list[Observation]]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                return read()

        return observe

    def emit(self, trace: Trace | None, findings: Sequence[Finding]) -> None:
        self._lock.acquire()  # not "with": see Statistics.emit
        try:
            for finding in findings:
                admitted = self._endpoints.admits((finding.service, finding.endpoint))
                self._findings.add(
                    (finding.type, finding.severity, finding.service, finding.endpoint) if admitted else None,
                    1,
                )
            # No root: findings about the process, or a trace cut short by our bounds.
            root = trace.root if trace is not None else None
            if trace is None or root is None:
                return
            # What the series' attributes are made of, the endpoint's parts rather than its
            # string, which would be formatted anew: the name makes the endpoint without a route.
            route = root.http_route
            error = (root.exception_type or "_OTHER") if root.error else None
            key = (root.service, route, root.http_method, None if route else root.name, error)
            series = self._series.get(key)
            if series is None:
                series = self._new_series(key, trace.endpoint)
            queries, db_ms = trace.breakdown().get(DB, _NOTHING)
            totals = series.totals
            totals[0] += db_ms / 1e3
            totals[1] += queries
            if queries and self._statement_metrics:
                self._statements.add_all(statements_of(trace))
        finally:
            self._lock.release()
        seconds = (root.end_ns - root.start_ns) / 1e9
        if not self._duration.record(series, seconds):
            self._duration.record_new(series, seconds, series.attributes)

    def _new_series(self, key: _SeriesKey, endpoint: str) -> _Series:
        """The series of a root whose fields ``key`` were not seen yet: filed when its endpoint
        is admitted (then for good: admission is never withdrawn), else the overflow's, which is
        not filed by key, so that a stream of endpoints past the bound takes no memory."""
        service, route, method, _, error = key
        where = (service, endpoint)
        if not self._endpoints.admits(where):
            if self._overflow is None:
                self._overflow = _Series(OVERFLOW_ATTRIBUTES, self._transactions.entry(None))
            return self._overflow
        attributes = _duration_attributes(where, route, method, error)
        series = self._series[key] = _Series(attributes, self._transactions.entry(where))
        return series


# (service, http.route, http.request.method, name when there is no route, error type)
_SeriesKey = tuple[str, str | None, str | None, str | None, str | None]
_NOTHING = (0, 0.0)  # DB's (queries, milliseconds) in a trace without any


def _duration_attributes(
    where: tuple[str, str], route: str | None, method: str | None, error: str | None
) -> dict[str, AttributeValue]:
    """The transaction histogram's attributes for an admitted endpoint."""
    service, endpoint = where
    attrs: dict[str, AttributeValue] = {SERVICE: service, ENDPOINT: endpoint}
    if route:
        attrs["http.route"] = route
    if method:
        attrs["http.request.method"] = method
    if error is not None:
        attrs["error.type"] = error
    return attrs
