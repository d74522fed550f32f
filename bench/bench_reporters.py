"""Cost of the console and webhook reporters on the application's path.

Two APMSpanProcessor pipelines of bench_processor.py, interleaved, on the N+1 workload (one
finding per trace, the same fingerprint every time: the steady state of a real service):

    b  APM_REPORTERS=metrics                   (what bench_processor.py measures as b)
    d  APM_REPORTERS=metrics,console,webhook   (webhook to a local HTTP server answering 200)

It prints the median µs/span of each and the median of the per-round ratios d/b.  Then the
reporters' ``emit`` alone, µs per call, for a repeated fingerprint and for a new fingerprint each
call (every call queues a notice: the worst case, with the webhook's queue overflowing).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench_processor import make_ours, timed_round
from workload import SPANS_PER_TRACE

from otel_apm.config import APMConfig
from otel_apm.detectors.base import Finding
from otel_apm.emit.console import ConsoleReporter
from otel_apm.emit.webhook import WebhookReporter


class _Ok(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


FINDING = Finding(
    type="n_plus_one_query",
    title="N+1 queries: 6 x SELECT on products",
    severity="warning",
    fingerprint="0123456789abcdef",
    service="orders-api",
    endpoint="GET /orders/{id}",
    trace_id=0x1234,
    span_ids=(1, 2, 3, 4, 5, 6),
    count=6,
    total_duration_ms=3.2,
    max_duration_ms=0.8,
    recommendation="Load them in one query.",
    impact_ms=2.5,
)


def per_call_us(emit: Callable[[Sequence[Finding]], None], findings: list[Finding]) -> float:
    t0 = time.perf_counter_ns()
    for f in findings:
        emit((f,))
    return (time.perf_counter_ns() - t0) / len(findings) / 1000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--traces", type=int, default=2000, help="traces per variant per round (2000)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (7)")
    parser.add_argument("--calls", type=int, default=20000, help="emit() calls per micro run (20000)")
    args = parser.parse_args(argv)
    queue = max(2048, args.traces * SPANS_PER_TRACE + 1024)
    with receiver() as url:
        b = make_ours("b", "APM_REPORTERS=metrics", queue, reporters=("metrics",))
        d = make_ours(
            "d",
            "metrics,console,webhook",
            queue,
            reporters=("metrics", "console", "webhook"),
            console_enabled=True,
            webhook_url=url,
        )
        variants = [b, d]
        for v in variants:
            timed_round(v, 200)
        for r in range(args.rounds):
            for v in variants:
                v.ns_per_span.append(timed_round(v, args.traces)[0])
            last = {v.key: f"{v.ns_per_span[-1] / 1000:.2f}" for v in variants}
            print(f"  round {r + 1}/{args.rounds}: b={last['b']} d={last['d']} µs/span")
        ratio = statistics.median(x / y for x, y in zip(d.ns_per_span, b.ns_per_span, strict=True))
        print(f"\nPer-span cost, {args.rounds} rounds x {args.traces} traces x {SPANS_PER_TRACE} spans")
        for v in variants:
            print(f"  {v.key} {v.label:<26} median {statistics.median(v.ns_per_span) / 1000:.2f} µs/span")
        print(f"  d/b = {ratio:.3f} (median of per-round ratios)")
        for v in variants:
            v.shutdown()

        config = APMConfig(reporters=("webhook",), webhook_url=url, webhook_queue_size=1000)
        repeated = [FINDING] * args.calls
        fresh = [dataclasses.replace(FINDING, fingerprint=format(i, "016x")) for i in range(args.calls)]
        print(f"\nemit() alone, µs per call (median of {args.rounds} runs of {args.calls} calls)")
        for name, make in (
            ("console", lambda: ConsoleReporter(60.0, 50, stream=io.StringIO())),
            ("webhook", lambda: WebhookReporter(config)),
        ):
            for label, findings in (("repeated fingerprint", repeated), ("new fingerprint each call", fresh)):
                runs = []
                for _ in range(args.rounds):
                    reporter = make()
                    runs.append(per_call_us(partial(reporter.emit, None), findings))
                    reporter.shutdown(0.0)
                print(f"  {name:<8} {label:<26} {statistics.median(runs):6.2f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
