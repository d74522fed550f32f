"""Findings POSTed to a URL (a team's chat, an incident tool, a function of one's own).

The application's request path only appends to a bounded queue; one background thread sends.
Like the console, a new problem is sent once, in full, then summarized once per interval
(:mod:`otel_apm.emit.digest`).  The thread sends what is queued in batches; a batch is one POST
with one delivery id (``X-OtelApm-Delivery``, also as ``Idempotency-Key``) that stays the same
across its retries, so a receiver that saw a POST whose answer was lost can drop the repeat.

Retries: on connection errors, timeouts, 5xx, 408 and 429, with exponential backoff and full
jitter, honoring ``Retry-After`` (capped by APM_WEBHOOK_BACKOFF_MAX_S); any other 4xx (or a
redirect, which is not followed) means the receiver refuses the content, and sending it again
would not help.  A batch given up is counted,
as are notices dropped from a full queue (the oldest go) and those still queued when
``shutdown`` runs out of time.

With APM_WEBHOOK_SECRET, each attempt carries ``X-OtelApm-Timestamp`` (Unix seconds) and
``X-OtelApm-Signature: sha256=<hex>``, the HMAC-SHA256 under the secret of
``<timestamp>.<body>``; :func:`verify` is the receiver's check (README, "Reporters").
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter

from otel_apm.config import APMConfig, url_origin
from otel_apm.contain import in_forked_children
from otel_apm.detectors.base import Finding
from otel_apm.emit.attributes import span_id_hex, trace_id_hex
from otel_apm.emit.digest import Digest, Summary
from otel_apm.model import Trace
from otel_apm.version import __version__

_log = logging.getLogger(__name__)

DELIVERY_HEADER = "X-OtelApm-Delivery"
TIMESTAMP_HEADER = "X-OtelApm-Timestamp"
SIGNATURE_HEADER = "X-OtelApm-Signature"
SIGNATURE_TOLERANCE_S = 300.0
SLACK_MAX_NOTICES = 40  # Slack takes 50 blocks per message; one block per notice, plus a header
_SLACK_TEXT_CHARS = 3000  # Slack's limit for a section's text
_RETRIED_4XX = frozenset({408, 429})
_TICK_S = 1.0  # how often the sender looks for due summaries when nothing is queued

NOTICE_OUTCOMES = ("queued", "delivered", "dropped", "rejected", "failed", "undelivered")

Notice = Finding | Summary
Outcome = Literal["delivered", "retry", "rejected"]


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value for a body sent at ``timestamp`` (Unix seconds, as text)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return "sha256=" + digest


def verify(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    now: float | None = None,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
) -> bool:
    """The receiver's check: the signature matches (compared in constant time) and the timestamp
    is recent, so a captured request replayed later is refused."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance_s and hmac.compare_digest(sign(secret, timestamp, body), signature)


def finding_document(f: Finding) -> dict[str, Any]:
    """A finding as JSON: its fields, ids in the hex form trace backends show."""
    doc = dataclasses.asdict(f)
    doc["trace_id"] = trace_id_hex(f.trace_id) if f.trace_id else None
    doc["span_ids"] = [span_id_hex(s) for s in f.span_ids]
    return doc


def notice_document(notice: Notice) -> dict[str, Any]:
    if isinstance(notice, Finding):
        return {"kind": "new", **finding_document(notice)}
    f = notice.latest
    return {
        "kind": "summary",
        "fingerprint": f.fingerprint,
        "type": f.type,
        "severity": f.severity,
        "service": f.service,
        "endpoint": f.endpoint,
        "occurrences": notice.occurrences,
        "window_s": round(notice.window_s, 3),
        "impact_p95_ms": notice.impact_p95_ms,
        "impact_max_ms": notice.impact_max_ms,
        "example_trace_id": trace_id_hex(f.trace_id) if f.trace_id else None,
    }


def json_body(notices: Sequence[Notice], delivery_id: str) -> dict[str, Any]:
    return {
        "source": "otel-apm",
        "version": __version__,
        "delivery_id": delivery_id,
        "notices": [notice_document(n) for n in notices],
    }


def slack_body(notices: Sequence[Notice], delivery_id: str) -> dict[str, Any]:
    """A Slack incoming-webhook message: ``text`` for notifications, one section block per notice."""
    new = sum(isinstance(n, Finding) for n in notices)
    text = f"otel-apm: {new} new performance problem(s), {len(notices) - new} summary(ies)"
    blocks: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": "otel-apm"}}]
    for notice in notices:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _slack_text(notice)}})
    return {"text": text, "blocks": blocks}


def _slack_text(notice: Notice) -> str:
    if isinstance(notice, Summary):
        return _slack_escape(notice.describe())[:_SLACK_TEXT_CHARS]
    f = notice
    lines = [
        f"*{f.severity.upper()}* `{f.type}` in *{_slack_escape(f.service)}* `{_slack_escape(f.endpoint)}`",
        _slack_escape(f.title),
    ]
    if f.code_location:
        lines.append(f"*Where:* `{_slack_escape(f.code_location)}`")
    lines.append(f"*Impact:* {f.impact_ms:g} ms per request")
    lines.append(f"*Fix:* {_slack_escape(f.recommendation)}")
    if f.trace_id:
        lines.append(f"trace `{trace_id_hex(f.trace_id)}` · fingerprint `{f.fingerprint}`")
    text = "\n".join(lines)
    return text if len(text) <= _SLACK_TEXT_CHARS else text[: _SLACK_TEXT_CHARS - 3] + "..."


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not followed: urllib would turn the POST into a GET without its
    body, and the notices would be counted delivered to a page that never saw them."""

    def redirect_request(self, *args: Any) -> None:
        return None


class WebhookReporter:
    def __init__(self, config: APMConfig, meter_provider: MeterProvider | None = None) -> None:
        self._url = config.webhook_url
        self._origin = url_origin(self._url)  # what logs name
        self._secret = config.webhook_secret
        self._slack = config.webhook_format == "slack"
        self._timeout_s = config.webhook_timeout_s
        self._max_attempts = config.webhook_max_attempts
        self._backoff_s = config.webhook_backoff_s
        self._backoff_max_s = config.webhook_backoff_max_s
        self._queue_size = config.webhook_queue_size
        self._batch_size = (
            min(config.webhook_batch_size, SLACK_MAX_NOTICES) if self._slack else config.webhook_batch_size
        )
        self._interval_s = config.webhook_interval_s
        self._stopping = threading.Event()
        self._deadline: float | None = None
        self._warned: set[str] = set()
        self._opener = urllib.request.build_opener(_NoRedirect())
        self._start()
        in_forked_children(self._forked)
        meter = get_meter("otel_apm.webhook", __version__, meter_provider=meter_provider)
        meter.create_observable_counter(
            "otel_apm.webhook.notices",
            [self._observe],
            unit="{notice}",
            description="Webhook reporter notices by outcome (queued, delivered, dropped, rejected, failed, "
            "undelivered)",
        )

    def _start(self) -> None:
        """Fresh state and the sender thread: at construction, and again in a forked child."""
        self._digest = Digest(self._interval_s)
        self._queue: deque[Notice] = deque()
        self._cond = threading.Condition()
        self._counts = dict.fromkeys((*NOTICE_OUTCOMES, "posts", "retries"), 0)
        self._sending = 0  # notices in the POST under way
        self._thread = threading.Thread(target=self._run, name="otel-apm-webhook", daemon=True)
        self._thread.start()

    def _forked(self) -> None:
        """A worker forked from a process that built us (gunicorn --preload) has no sender
        thread, and the parent's may have held our locks at the fork: the worker gets new ones
        and a thread of its own.  What the parent had queued is the parent's to send."""
        if not self._stopping.is_set():
            self._start()

    # -- the application's side: never waits on the network ---------------------------------------

    def emit(self, trace: Trace | None, findings: Sequence[Finding]) -> None:
        now = time.monotonic()
        new: list[Notice] = list(self._digest.observe(findings, now)) if findings else []
        self._enqueue([*new, *self._digest.due(now)])

    def _enqueue(self, notices: Sequence[Notice]) -> None:
        if not notices:
            return
        dropped = 0
        with self._cond:
            if self._stopping.is_set():
                self._counts["undelivered"] += len(notices)
                return
            for notice in notices:
                if len(self._queue) >= self._queue_size:
                    self._queue.popleft()
                    dropped += 1
                self._queue.append(notice)
            self._counts["queued"] += len(notices)
            self._counts["dropped"] += dropped
            self._cond.notify()
        if dropped:
            self._warn_once(
                "dropped",
                "otel-apm: webhook queue full (APM_WEBHOOK_QUEUE_SIZE=%d): dropping the oldest notices; "
                "further drops are only counted",
                self._queue_size,
            )

    def stats(self) -> dict[str, int]:
        """Notices queued, delivered, dropped (queue full), rejected (4xx), failed (attempts
        exhausted), undelivered (left at shutdown); POSTs made and retried."""
        with self._cond:
            return {**self._counts, "in_queue": len(self._queue)}

    def _observe(self, _: CallbackOptions) -> Iterable[Observation]:
        stats = self.stats()
        return [Observation(stats[o], {"outcome": o}) for o in NOTICE_OUTCOMES]

    def shutdown(self, timeout_s: float) -> None:
        """Queue the repeats not yet summarized, send what can be sent within ``timeout_s`` (retries
        included), and count the rest as undelivered."""
        if self._stopping.is_set():
            return
        self._enqueue(self._digest.due(time.monotonic(), everything=True))
        with self._cond:
            self._deadline = time.monotonic() + timeout_s
            self._stopping.set()
            self._cond.notify()
        self._thread.join(timeout_s)
        with self._cond:
            left = len(self._queue)
            self._queue.clear()
            self._counts["undelivered"] += left
            undelivered = self._counts["undelivered"]
            sending = self._sending if self._thread.is_alive() else 0
        if undelivered or sending:
            _log.warning(
                "otel-apm: webhook shut down with %d notice(s) undelivered to %s%s",
                undelivered,
                self._origin,
                f" and {sending} in a POST still waiting for its answer" if sending else "",
            )

    # -- the sender thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._queue and not self._stopping.is_set():
                    self._cond.wait(_TICK_S)
                if self._stopping.is_set() and (not self._queue or self._out_of_time()):
                    return
                batch = [self._queue.popleft() for _ in range(min(self._batch_size, len(self._queue)))]
            if batch:
                self._deliver(batch)
            elif not self._stopping.is_set():
                self._enqueue(self._digest.due(time.monotonic()))

    def _out_of_time(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _deliver(self, batch: list[Notice]) -> None:
        """Deliver one batch; a bug of ours costs that batch (counted, logged once), not the thread."""
        self._sending = len(batch)
        try:
            self._deliver_batch(batch)
        except Exception as exc:
            self._count("failed", len(batch))
            self._warn_once(
                "error", "otel-apm: webhook could not send a batch (%r); it is counted as failed", exc
            )
        finally:
            self._sending = 0

    def _deliver_batch(self, batch: list[Notice]) -> None:
        delivery_id = uuid.uuid4().hex
        document = (slack_body if self._slack else json_body)(batch, delivery_id)
        body = json.dumps(document, separators=(",", ":")).encode()
        outcome: Outcome = "retry"
        for attempt in range(self._max_attempts):
            if attempt:
                self._count("retries")
            outcome, retry_after = self._post(body, delivery_id)
            if outcome != "retry" or attempt + 1 == self._max_attempts:
                break
            backoff = random.uniform(0, self._backoff_s * 2**attempt)  # full jitter
            delay = min(self._backoff_max_s, backoff if retry_after is None else retry_after)
            if not self._pause(delay):
                self._count("undelivered", len(batch))
                return
        if outcome == "delivered":
            self._count("delivered", len(batch))
        elif outcome == "rejected":
            self._count("rejected", len(batch))
        else:
            self._count("failed", len(batch))
            self._warn_once(
                "failed",
                "otel-apm: webhook %s failed %d times; the batch is given up (further ones are only counted)",
                self._origin,
                self._max_attempts,
            )

    def _post(self, body: bytes, delivery_id: str) -> tuple[Outcome, float | None]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"otel-apm/{__version__}",
            DELIVERY_HEADER: delivery_id,
            "Idempotency-Key": delivery_id,
        }
        if self._secret:
            timestamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = sign(self._secret, timestamp, body)
        timeout = self._timeout_s
        if self._deadline is not None:
            timeout = max(0.01, min(timeout, self._deadline - time.monotonic()))
        request = urllib.request.Request(self._url, data=body, headers=headers, method="POST")
        self._count("posts")
        try:
            with self._opener.open(request, timeout=timeout) as response:
                response.read()
            return "delivered", None
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code >= 500 or exc.code in _RETRIED_4XX:
                return "retry", _retry_after(exc.headers.get("Retry-After"))
            self._warn_once(
                "rejected",
                "otel-apm: webhook %s refused a batch with HTTP %d; it is not retried (further "
                "refusals are only counted)",
                self._origin,
                exc.code,
            )
            return "rejected", None
        except (OSError, ValueError):  # refused, reset, timed out (URLError and TimeoutError are OSErrors)
            return "retry", None

    def _pause(self, delay: float) -> bool:
        """Sleep before a retry, no later than the shutdown deadline; False once it has passed."""
        end = time.monotonic() + delay
        while True:
            limit = end if self._deadline is None else min(end, self._deadline)
            left = limit - time.monotonic()
            if left <= 0:
                return not self._out_of_time()
            if self._stopping.is_set():
                time.sleep(left)
            else:
                self._stopping.wait(left)  # returns early when shutdown sets a deadline

    def _count(self, key: str, n: int = 1) -> None:
        with self._cond:
            self._counts[key] += n

    def _warn_once(self, kind: str, message: str, *args: object) -> None:
        with self._cond:
            first = kind not in self._warned
            self._warned.add(kind)
        if first:
            _log.warning(message, *args)
