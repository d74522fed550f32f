"""N+1 API calls: the same HTTP request, with other ids or parameters, again and again under one parent.

The service-to-service twin of the N+1 query: a loop over N items makes one HTTP call per item
(``GET /authors/1``, ``GET /authors/2``, ...), one after the other, all children of the same
request or function span.  Grouping HTTP client children by parent, method and URL template
finds the loop without knowing the client library.

The URL template (:func:`url_template`) is what identifies the call and the only form of the
URL that leaves the analyzer: ids in the path and every query value are replaced, so no literal
id, token or parameter reaches a finding.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import urlsplit

from otel_apm.config import APMConfig
from otel_apm.detectors.base import (
    EvidenceValue,
    Finding,
    SiblingsDetector,
    by_start,
    severity_for,
    union_ms,
)
from otel_apm.detectors.summary import TraceSummary
from otel_apm.model import HTTP_CLIENT, SpanView

ID = "{id}"

# A path segment (or query key) that names one item rather than a resource, as a whole:
# an integer; a UUID (8-4-4-4-12 hex digits); a hex hash of 16 or more hex digits; or a long
# mixed token: 16 or more of [A-Za-z0-9_-] with at least one letter and at least one digit
# (base64url keys, opaque ids, slugs with numbers).  Letters-only words ("authors",
# "authentication-callbacks") stay, whatever their length.
_ID_SEGMENT = re.compile(
    r"\d+"
    r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|[0-9a-f]{16,}"
    r"|(?=[\w-]*[a-z])(?=[\w-]*\d)[\w-]{16,}",
    re.IGNORECASE | re.ASCII,
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CACHE_SIZE = 4096  # distinct raw URLs remembered; a loop repeats a few, a crawler would not


def _segment(text: str) -> str:
    return ID if _ID_SEGMENT.fullmatch(text) else text


def _path(path: str) -> str:
    return "/".join(_segment(s) for s in path.split("/"))


def _query(query: str) -> str:
    """Distinct keys, sorted, each ``key=?``; a key that looks like an id is one (``?12345``)."""
    keys = {_segment(pair.partition("=")[0]) for pair in query.split("&") if pair}
    return "&".join(f"{k}=?" for k in sorted(keys))


@lru_cache(maxsize=_CACHE_SIZE)
def url_template(raw: str) -> str:
    """The URL with what varies per item replaced, the same for every call of one loop.

    - scheme and host lowercased, the port kept unless it is the scheme's default; user and
      password dropped;
    - each path segment matching ``_ID_SEGMENT`` (integer, UUID, hex hash >= 16, long mixed
      token) becomes ``{id}``; an empty path becomes ``/``;
    - the query becomes its distinct keys, sorted, each ``=?``; the fragment is dropped.

    ``http://Shop:80/authors/42/books?page=2&sort=asc#top`` -> ``http://shop/authors/{id}/books?page=?&sort=?``.
    Text that is not an absolute URL (a route, a span name) gets the same path and query rule.
    """
    head, _, _ = raw.partition("#")
    head, _, query = head.partition("?")
    if "://" in head:
        try:
            parts = urlsplit(head)
            host = parts.hostname or ""
            port = parts.port
        except ValueError:  # a malformed port or IPv6 literal: keep the authority, minus credentials
            scheme, _, rest = head.partition("://")
            netloc, slash, path = rest.partition("/")
            base = f"{scheme.lower()}://{netloc.rpartition('@')[2].lower()}"
            path = slash + path
        else:
            scheme = parts.scheme.lower()
            if ":" in host:
                host = f"[{host}]"
            if port is not None and port != _DEFAULT_PORTS.get(scheme):
                host = f"{host}:{port}"
            base = f"{scheme}://{host}"
            path = parts.path
        out = base + (_path(path) or "/")
    else:
        out = _path(head)
    return f"{out}?{_query(query)}" if query.strip("&") else out


def call_template(span: SpanView) -> str:
    """The template of a client span's target: its URL, else route or name at its server."""
    if span.url:
        return url_template(span.url)
    target = span.http_route or span.name
    where = span.server_address
    return url_template(f"{where} {target}" if where else target)


class NPlusOneApiCallDetector(SiblingsDetector):
    """APM_N_PLUS_ONE_API_THRESHOLD or more HTTP client spans with one method and URL template
    under one parent."""

    type = "n_plus_one_api_call"
    sibling_category = HTTP_CLIENT

    @classmethod
    def can_fire(cls, config: APMConfig, summary: TraceSummary) -> bool:
        return summary.count(HTTP_CLIENT) >= config.n_plus_one_api_threshold

    def on_complete(self) -> list[Finding]:
        threshold = self.config.n_plus_one_api_threshold
        findings = []
        for siblings in self.sibling_groups(threshold):
            groups: dict[tuple[str, str], list[SpanView]] = {}
            for s in siblings:
                key = ((s.http_method or "").upper(), call_template(s))
                groups.setdefault(key, []).append(s)
            for (method, template), calls in groups.items():
                if len(calls) >= threshold:
                    calls.sort(key=by_start)
                    findings.append(self._finding(method, template, calls))
        return findings

    def _finding(self, method: str, template: str, calls: list[SpanView]) -> Finding:
        count = len(calls)
        total = union_ms(calls)
        longest = max(s.duration_ms for s in calls)
        saving = max(total - longest, 0.0)
        server = next((s.server_address for s in calls if s.server_address), None) or _host(template)
        threshold = self.config.n_plus_one_api_threshold
        shown_method = method or "HTTP"
        evidence: dict[str, EvidenceValue] = {
            "threshold": threshold,
            "http.method": shown_method,
            "url.template": template,
            "server.address": server,
            "concurrent_saving_ms": round(saving, 3),
        }
        return self.finding(
            title=f"N+1 API calls: {count} x {shown_method} {template} ({total:.1f} ms)",
            severity=severity_for(count, threshold, self.config.critical_factor),
            identity=(shown_method, template),
            per_endpoint=True,
            spans=calls,
            total_duration_ms=total,
            impact_ms=total - total / count,
            recommendation=_recommend(shown_method, template, count, total, saving),
            evidence=evidence,
        )


def _host(template: str) -> str:
    """The host of a templated absolute URL, as ``server.address`` has it (no port), else ""."""
    if "://" not in template:
        return ""
    try:
        return urlsplit(template).hostname or ""
    except ValueError:
        return ""


def _recommend(method: str, template: str, count: int, total_ms: float, saving_ms: float) -> str:
    said = (
        f"{count} calls to {method} {template} under one parent took {total_ms:.1f} ms of wall time. "
        f"Fetch them in one request: use (or ask for) a batch endpoint that takes every id at "
        f"once, e.g. ?ids=1,2,3, or include the related data in the first response."
    )
    if saving_ms >= 1.0:
        return said + (
            f" Failing that, send them concurrently (a thread pool, asyncio.gather): that would "
            f"save about {saving_ms:.1f} ms, leaving the time of the longest call."
        )
    return said + " They already overlap, so only batching removes the per-call round trips."
