"""Large payload: an HTTP request or response body at or over APM_LARGE_PAYLOAD_BYTES.

A big body costs transfer time on the network, memory and (de)serialization time at both ends,
whichever side sent it; it usually means a whole collection where a page was needed, or every
field where a few were.  Reads ``http.request.body.size`` / ``http.response.body.size`` (or the
older ``*_content_length``) of HTTP client and server spans.
"""

from __future__ import annotations

from otel_apm.config import APMConfig
from otel_apm.detectors.base import Detector, EvidenceValue, Finding, severity_for, union_ms
from otel_apm.detectors.history import History
from otel_apm.detectors.n_plus_one_api import call_template
from otel_apm.detectors.summary import TraceSummary
from otel_apm.model import HTTP_CLIENT, HTTP_SERVER, SpanView, Trace, endpoint_of

REQUEST, RESPONSE = "request", "response"


class LargePayloadDetector(Detector):
    """One finding per direction and call (client: method and URL template; server: endpoint)."""

    type = "large_payload"
    categories = frozenset({HTTP_CLIENT, HTTP_SERVER})

    @classmethod
    def can_fire(cls, config: APMConfig, summary: TraceSummary) -> bool:
        return summary.largest_body((HTTP_CLIENT, HTTP_SERVER)) >= config.large_payload_bytes

    def __init__(self, config: APMConfig, trace: Trace, history: History) -> None:
        super().__init__(config, trace, history)
        self._limit = config.large_payload_bytes
        self._large: list[SpanView] = []

    def visit_span(self, span: SpanView) -> None:
        limit = self._limit
        request, response = span.request_size, span.response_size
        if (request is not None and request >= limit) or (response is not None and response >= limit):
            self._large.append(span)

    def on_complete(self) -> list[Finding]:
        if not self._large:
            return []
        limit = self._limit
        groups: dict[tuple[str, bool, str], list[tuple[SpanView, int]]] = {}
        for s in self._large:
            client = s.category == HTTP_CLIENT
            target = f"{(s.http_method or 'HTTP').upper()} {call_template(s)}" if client else endpoint_of(s)
            for direction, size in ((REQUEST, s.request_size), (RESPONSE, s.response_size)):
                if size is not None and size >= limit:
                    groups.setdefault((direction, client, target), []).append((s, size))
        return [self._finding(*key, found) for key, found in groups.items()]

    def _finding(
        self, direction: str, client: bool, target: str, found: list[tuple[SpanView, int]]
    ) -> Finding:
        limit = self._limit
        spans = [s for s, _ in found]
        largest = max(size for _, size in found)
        # Time is assumed to grow with the bytes moved: bringing the body down to the limit
        # gives back that share of the time spent on it, the call's duration for a client, the
        # handler's own time (not its queries and calls) for a server.
        impact = sum(self._time_on_body(s) * (size - limit) / size for s, size in found)
        side = "client" if client else "server"
        verb = {(True, REQUEST): "sent", (True, RESPONSE): "received", (False, REQUEST): "received"}.get(
            (client, direction), "returned"
        )
        evidence: dict[str, EvidenceValue] = {
            "limit_bytes": limit,
            "direction": direction,
            "span.kind": side,
            "size_bytes": largest,
            "total_bytes": sum(size for _, size in found),
            "http.target": target,
        }
        return self.finding(
            title=f"Large HTTP {direction}: {target} {verb} {_size(largest)} (limit {_size(limit)})",
            severity=severity_for(largest, limit, self.config.critical_factor),
            identity=(direction, side, target),
            per_endpoint=True,
            spans=spans,
            total_duration_ms=sum(s.duration_ms for s in spans),
            impact_ms=impact,
            recommendation=_recommend(direction, client, target, verb, largest, limit, impact),
            evidence=evidence,
        )

    def _time_on_body(self, span: SpanView) -> float:
        if span.category == HTTP_CLIENT:
            return span.duration_ms
        children = [s for s in self.trace.spans if s.parent_id == span.span_id]
        return max(span.duration_ms - union_ms(children), 0.0) if children else span.duration_ms


def _size(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} MB"
    if n >= 1_000:
        return f"{n / 1e3:.1f} kB"
    return f"{n} B"


def _recommend(
    direction: str, client: bool, target: str, verb: str, size: int, limit: int, impact_ms: float
) -> str:
    said = (
        f"{target} {verb} a {_size(size)} {direction} body ({_size(limit)} is the limit); shrinking "
        f"it to the limit would save about {impact_ms:.1f} ms if time grows with size. "
    )
    if direction == RESPONSE and client:
        return said + (
            "Ask for less: a page at a time (limit and cursor parameters), only the fields needed, "
            "and a compressed body (Accept-Encoding: gzip, which requests and httpx send: check "
            "that the server compresses); stream what must be large (requests stream=True with "
            "iter_content, httpx client.stream()) instead of holding it whole in memory."
        )
    if direction == RESPONSE:
        return said + (
            "Paginate the endpoint (limit and cursor), let clients select the fields they need, "
            "compress responses (gzip middleware, or the proxy in front), and stream large exports "
            "(a generator response) rather than building them in memory."
        )
    if client:
        return said + (
            "Send less per call: split it into batches, compress the body (Content-Encoding: gzip, "
            "where the server accepts it), or stream the upload from a file or generator."
        )
    return said + (
        "Accept it in parts: have clients send batches or compressed bodies, read the body as a "
        "stream instead of whole, and cap the accepted body size."
    )
