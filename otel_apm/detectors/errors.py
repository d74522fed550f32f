"""Errors: failed spans and recorded exceptions, one finding per endpoint and kind of error.

An exception raised in a query usually fails the function span around it and then the server
span, each recording it again: three spans, one error.  Counting it once, at the deepest span
(where it was raised, with the code location), keeps the count honest; the spans it propagated to
still count in its impact, since a request that failed lost its user's whole wait.

Only what the instrumentation says is an error: status ERROR, or an ``exception`` event.  A 4xx
answer is the client's mistake, not the server's error (OTel semantic conventions leave those
server spans' status unset), so server spans with a 4xx status are never reported.  An exception
event on a span whose status is not ERROR was caught and handled: it is reported, as a warning
titled "handled", because raising and catching in a hot path still costs time and often hides a bug.
"""

from __future__ import annotations

from otel_apm.config import APMConfig
from otel_apm.detectors.base import Detector, EvidenceValue, Finding, by_start, union_ms
from otel_apm.detectors.dbshape import db_shape
from otel_apm.detectors.summary import TraceSummary
from otel_apm.model import DB, HTTP_CLIENT, KIND_SERVER, SpanView, endpoint_of

UNSPECIFIED = "unspecified error"  # status ERROR with no exception, error.type or HTTP status


class ErrorDetector(Detector):
    """Groups failed spans per service, endpoint, handled or not, and error label.

    Asks for no categories: errors can be on any span, and one comprehension over the trace's
    spans costs less than a dispatched ``visit_span`` call for each of them.
    """

    type = "error"

    @classmethod
    def can_fire(cls, config: APMConfig, summary: TraceSummary) -> bool:
        return summary.error

    def on_complete(self) -> list[Finding]:
        failed = [s for s in self.trace.spans if s.error or s.exception_type is not None]
        if not failed:
            return []
        labels = {s.span_id: _label(s) for s in failed if not _client_mistake(s)}
        parent_of = self.trace.parent_of
        bound = len(self.trace)
        chains: dict[int, list[SpanView]] = {}  # origin candidate -> its ancestors with its label
        for s in failed:
            label = labels.get(s.span_id)
            if label is None:
                continue
            chain = []
            ancestor = parent_of(s)
            for _ in range(bound):  # bounded: a malformed parent cycle cannot hang us
                if ancestor is None:
                    break
                if labels.get(ancestor.span_id) == label:
                    chain.append(ancestor)
                ancestor = parent_of(ancestor)
            chains[s.span_id] = chain
        propagated = {a.span_id for chain in chains.values() for a in chain}
        groups: dict[tuple[str, str, bool, str], list[SpanView]] = {}
        entries: dict[tuple[str, str, bool, str], SpanView | None] = {}
        for s in failed:
            if s.span_id not in chains or s.span_id in propagated:
                continue
            label = labels[s.span_id]
            handled = not (s.error or any(a.error for a in chains[s.span_id]))
            entry = self.trace.entry_of(s)
            key = (s.service, "unknown" if entry is None else endpoint_of(entry), handled, label)
            groups.setdefault(key, []).append(s)
            entries[key] = entry
        return [
            self._finding(origins, chains, entries[key], handled=key[2], label=key[3])
            for key, origins in groups.items()
        ]

    def _finding(
        self,
        origins: list[SpanView],
        chains: dict[int, list[SpanView]],
        entry: SpanView | None,
        *,
        handled: bool,
        label: str,
    ) -> Finding:
        origins.sort(key=by_start)
        carried = {a.span_id: a for s in origins for a in chains[s.span_id]}
        involved = [*origins, *carried.values()]
        lost = union_ms(involved)
        count = len(origins)
        request_failed = entry is not None and entry.error
        status = next((s.http_status for s in involved if s.http_status), None)
        endpoint = "unknown" if entry is None else endpoint_of(entry)
        evidence: dict[str, EvidenceValue] = {
            "exception.type": label,
            "handled": handled,
            "request.failed": request_failed,
            "propagated.count": len(carried),
            "propagated.span_ids": tuple(format(i, "016x") for i in carried),
        }
        if status is not None:
            evidence["http.status_code"] = status
        shapes = (
            {db_shape(s).normalized for s in origins} if all(s.category == DB for s in origins) else set()
        )
        statement = next(iter(shapes)) if len(shapes) == 1 else None
        title = (
            f"Handled exception {label} in {endpoint} ({count}x)"
            if handled
            else f"Error {label} in {endpoint} ({count}x)"
        )
        return self.finding(
            title=title,
            severity="critical" if request_failed and not handled else "warning",
            identity=("handled" if handled else "unhandled", label),
            per_endpoint=True,
            spans=origins,
            total_duration_ms=lost,
            impact_ms=lost,
            recommendation=_recommend(origins, label, handled, request_failed, lost, status, statement),
            statement=statement,
            evidence=evidence,
        )


def _client_mistake(span: SpanView) -> bool:
    status = span.http_status
    return span.kind == KIND_SERVER and status is not None and 400 <= status < 500


def _label(span: SpanView) -> str:
    """exception.type, else error.type, else ``HTTP <status>``; a bare status code reads as the latter."""
    kind = span.exception_type
    status = span.http_status
    if kind is not None and (status is None or kind != str(status)):
        return kind
    if status is not None:
        return f"HTTP {status}"
    return kind or UNSPECIFIED


def _recommend(
    origins: list[SpanView],
    label: str,
    handled: bool,
    request_failed: bool,
    lost: float,
    status: int | None,
    statement: str | None,
) -> str:
    count = len(origins)
    first = origins[0]
    where = f" at {first.code}" if first.code else f" in span `{first.name}`"
    if handled:
        said = (
            f"{label} was raised and caught {count} time(s){where}, in {lost:.1f} ms of failing work. "
            "If it is expected, check the condition instead of raising (a raise builds a traceback "
            "each time); if not, it hides a bug: fix its cause."
        )
    elif request_failed:
        said = f"{label} ({count}x){where} failed the request after {lost:.1f} ms: the user's wait was lost."
    else:
        said = f"{label} ({count}x){where} failed {lost:.1f} ms of work; the request went on without it."
    if first.category == DB:
        about = f" `{statement[:120]}`" if statement else ""
        return said + (
            f" The statement{about} failed in the database: check constraints and input before "
            "writing, and the exception's message in the span's event."
        )
    if first.category == HTTP_CLIENT:
        answer = f" answered {status}" if status else " failed"
        return said + (
            f" The call to {first.server_address or 'the remote service'}{answer}: retry idempotent "
            "calls with backoff, add a timeout and a circuit breaker, and see that service's trace."
        )
    return said + " The span's exception event holds the message and stack trace."
