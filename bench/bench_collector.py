"""Spans per second through the whole ``otel-apm collector``, with analysis and without, per core.

    .venv/bin/python bench/bench_collector.py [--rounds R] [--requests N] [--protocols grpc,http]
        [--variants forward,analyze[,analyze-python][,analyze-only]] [--clients P] [--threads T]
        [--idle-timeout S] [--compression gzip|none] [--memory-requests M] [--collector-cpu C]
        [--workload nplusone|clean]

Three kinds of process, over real sockets on 127.0.0.1:

  collector  ``otel-apm collector --config <tmp yaml>`` (the CLI, in a subprocess), pinned to one
             CPU (``--collector-cpu``, default the last the script may use), so its spans/s are per
             core.  One per variant, side by side: ``forward`` (``analysis.enabled: false``:
             receive -> forward), ``analyze`` (the default: receive -> assemble -> analyze -> emit
             findings as OTLP log records and metrics, and forward) and, when asked for,
             ``analyze-python`` (the same with ``analysis.native_enabled: false``: the Python
             versions of the compiled hot paths) and ``analyze-only`` (no downstream: nothing
             forwarded, no findings emitted; it shows what analysis costs apart from emission).
             Otherwise the defaults, except ports (ephemeral), the downstream (the sink,
             OTLP/gRPC, default gzip compression) and ``assembly.idle_timeout_s``
             (``--idle-timeout``, default 0: every span of a trace arrives in one request, and a
             round ends once its last trace is analyzed, so a 2 s idle wait would only add
             latency to the measurement, not work).
  clients    P processes (multiprocessing, spawn) of T threads each, pinned to the other CPU(s),
             sending pre-serialized ExportTraceServiceRequests: raw-bytes gRPC unary calls to
             TraceService/Export, or HTTP/1.1 keep-alive POSTs of application/x-protobuf to
             /v1/traces.  A refused request (RESOURCE_EXHAUSTED / UNAVAILABLE, HTTP 429 / 503)
             is counted and retried after the delay the collector gives, as an OTLP exporter does.
  sink       one process on the clients' CPU: an OTLP/gRPC server that decodes what it receives
             and counts spans, log records (finding events) and metric requests, and sums the
             CRC-32 of the trace payloads, so the bytes forwarded can be checked against the
             bytes sent.

Workload: the one of bench_collector_engine.py (imported from it): 100 traces x 23 spans a request
(a SERVER root ``GET /orders/{id}``, 20 PostgreSQL client spans with ``db.query.text`` in six
statement shapes, 2 HTTP client spans), recorded with the real SDK and encoded by the real OTLP
encoder; about 1 MiB a request.  ``--workload nplusone`` (the default, the worst case for
emission): one statement 6 times, an N+1, in every trace, so every trace has a finding, an OTLP log
record and the finding's metrics; ``clean``: the same 20 statements with no shape repeated 5 times,
no finding (bench_processor.py's common case).  Every request sent
carries new, random trace ids (written into the serialized template at the trace id offsets before
the round, outside the timing), so no trace id is ever seen twice.

A round: N requests, spread over the clients, sent as fast as P x T concurrent senders can,
timed from the go to the moment the sink has every span (variants that forward) and the
collector's /metrics count every trace analyzed (variants that analyze).  Rounds are interleaved
(forward, analyze, analyze, forward, ...) and per protocol; reported are the medians over R rounds
of spans/s (wall clock), of the collector's CPU use (utime + stime from /proc/<pid>/stat, over the
round), of spans per second of collector CPU, and the median of the per-round ratios
analyze/forward.  Every round is checked against the
collector's own /metrics: spans received, requests forwarded, traces analyzed, findings, and that
nothing was refused, dropped or late; refusals, if any, are reported with the goodput.

Memory: once those have stopped, a fresh collector (analysis on, ``assembly.max_wait_s`` 600)
gets M requests of 100 traces whose 22 child spans are sent without their roots, so every span is
held; VmRSS (/proc/<pid>/status) once they are all held and forwarded, against VmRSS before
(after a small warm-up, M/25 requests, of the same traffic) and after the roots are sent and every
trace is analyzed.  Reported in bytes per span held; what is not given back after analysis is the
allocator keeping its arenas (reused by the next spans), and the ids of recent traces.

Takes about 55 s with the defaults on a 2-CPU machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otel_apm.collector.telemetry import parse_prometheus

TARGET_SPANS_PER_S = 50_000
TARGET_RATIO = 0.7
OTEL_COLLECTOR_TAIL_SAMPLING = 10_000  # spans/s per core, the OpenTelemetry Collector's historical figure
TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOGS = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
METRICS = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
PREFIX = "otel_apm_collector_"
FORWARDED_TRACES = 'requests_forwarded_total{signal="traces"}'
ID_LEN = 16


@dataclass(frozen=True)
class Variant:
    name: str
    path: str
    analysis: bool
    downstream: bool
    native: bool = True  # analysis.native_enabled


VARIANTS = {
    v.name: v
    for v in (
        Variant("forward", "receive -> forward", False, True),
        Variant("analyze", "receive -> assemble/analyze/emit -> fwd", True, True),
        Variant("analyze-python", "the same, native_enabled: false", True, True, native=False),
        Variant("analyze-only", "receive -> assemble/analyze, no downstream", True, False),
    )
}

# Sink counters, in one shared array.
S_TRACE_REQUESTS, S_SPANS, S_LOG_REQUESTS, S_LOG_RECORDS, S_FINDINGS, S_METRIC_REQUESTS, S_CRC = range(7)
findings_per_trace = 1  # --workload's: what each round checks the collector found
SINK_SLOTS = 7
CRC_MOD = 1 << 62


# ---------------------------------------------------------------------------------------------
# Payloads: serialized templates, and new trace ids written into them.


@dataclass(frozen=True)
class Template:
    """A serialized request and, per trace (in order), the offsets of its trace id's copies."""

    payload: bytes
    offsets: tuple[tuple[int, ...], ...]
    spans: int

    def with_ids(self, ids: Sequence[bytes]) -> bytes:
        buf = bytearray(self.payload)
        for tid, offsets in zip(ids, self.offsets, strict=True):
            for o in offsets:
                buf[o : o + ID_LEN] = tid
        return bytes(buf)


def _template(request: ExportTraceServiceRequest, trace_ids: Sequence[bytes], per_trace: int) -> Template:
    payload = request.SerializeToString()
    offsets = []
    for tid in trace_ids:
        found: list[int] = []
        i = payload.find(tid)
        while i >= 0:
            found.append(i)
            i = payload.find(tid, i + 1)
        if len(found) != per_trace:
            raise RuntimeError(f"trace id found {len(found)} times in the template, expected {per_trace}")
        offsets.append(tuple(found))
    spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    return Template(payload, tuple(offsets), spans)


def build_templates(workload: str) -> dict[str, Template]:
    """``full`` (100 traces x 23 spans of ``workload``), ``rootless`` (their 22 children) and
    ``roots`` (the roots), over the same traces in the same order, so one list of ids fills all
    three."""
    from bench_collector_engine import TRACES_PER_REQUEST, build_payloads
    from workload import SPANS_PER_TRACE

    full = ExportTraceServiceRequest.FromString(build_payloads(1, workload)[0])
    trace_ids: list[bytes] = []
    for rs in full.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                if span.trace_id not in trace_ids:
                    trace_ids.append(span.trace_id)
    assert len(trace_ids) == TRACES_PER_REQUEST

    def keep(roots: bool) -> ExportTraceServiceRequest:
        out = ExportTraceServiceRequest()
        out.CopyFrom(full)
        for rs in out.resource_spans:
            for ss in rs.scope_spans:
                kept = [s for s in ss.spans if (not s.parent_span_id) == roots]
                del ss.spans[:]
                ss.spans.extend(kept)
        return out

    templates = {
        "full": _template(full, trace_ids, SPANS_PER_TRACE),
        "rootless": _template(keep(False), trace_ids, SPANS_PER_TRACE - 1),
        "roots": _template(keep(True), trace_ids, 1),
    }
    # The rewriting is right: a filled-in request decodes, with exactly the new ids.
    ids = [os.urandom(ID_LEN) for _ in trace_ids]
    check = ExportTraceServiceRequest.FromString(templates["full"].with_ids(ids))
    seen = {s.trace_id for rs in check.resource_spans for ss in rs.scope_spans for s in ss.spans}
    assert seen == set(ids), "trace id rewriting failed"
    return templates


# ---------------------------------------------------------------------------------------------
# Processes: pinning, the sink, the clients.


def pin(cpus: set[int] | None) -> None:
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)


def sink_main(conn: Connection, counters: Any, cpus: set[int] | None) -> None:
    """An OTLP/gRPC server that counts; its port goes back through ``conn``; any message stops it."""
    pin(cpus)
    from concurrent import futures

    import grpc  # type: ignore[import-untyped, unused-ignore]
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    def add(**amounts: int) -> None:
        slots = {"trace_requests": S_TRACE_REQUESTS, "spans": S_SPANS, "log_requests": S_LOG_REQUESTS}
        slots |= {"log_records": S_LOG_RECORDS, "findings": S_FINDINGS, "metric_requests": S_METRIC_REQUESTS}
        with counters.get_lock():
            for key, amount in amounts.items():
                if key == "crc":
                    counters[S_CRC] = (counters[S_CRC] + amount) % CRC_MOD
                else:
                    counters[slots[key]] += amount

    def traces(body: bytes, context: Any) -> bytes:
        request = ExportTraceServiceRequest.FromString(body)
        spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        add(trace_requests=1, spans=spans, crc=zlib.crc32(body))
        return b""  # an empty Export*ServiceResponse

    def logs(body: bytes, context: Any) -> bytes:
        request = ExportLogsServiceRequest.FromString(body)
        records = [r for rl in request.resource_logs for sl in rl.scope_logs for r in sl.log_records]
        findings = sum(1 for r in records if r.event_name == "otel_apm.finding")
        add(log_requests=1, log_records=len(records), findings=findings)
        return b""

    def metrics(body: bytes, context: Any) -> bytes:
        add(metric_requests=1)
        return b""

    handlers = []
    for method, fn in ((TRACES, traces), (LOGS, logs), (METRICS, metrics)):
        service, _, name = method[1:].partition("/")
        handler = grpc.unary_unary_rpc_method_handler(fn, request_deserializer=None, response_serializer=None)
        handlers.append(grpc.method_handlers_generic_handler(service, {name: handler}))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        handlers=handlers,
        options=[("grpc.max_receive_message_length", -1)],
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    conn.send(port)
    with contextlib.suppress(EOFError):
        conn.recv()
    server.stop(1).wait()


@dataclass
class SendStats:
    sent: int = 0
    spans: int = 0
    refused: int = 0
    errors: int = 0
    crc: int = 0
    error_text: str = ""


class _Sender:
    """One client process's connections, kept across rounds as an exporter keeps them."""

    def __init__(self, threads: int) -> None:
        import grpc  # type: ignore[import-untyped, unused-ignore]

        self._grpc = grpc
        self._pool = ThreadPoolExecutor(max_workers=threads)
        self._threads = threads
        self._channels: dict[str, Any] = {}
        self._local = threading.local()
        self._lock = threading.Lock()

    def send(self, protocol: str, address: str, payloads: Sequence[bytes], spans_each: int) -> SendStats:
        stats = SendStats()
        items: Iterator[bytes] = iter(payloads)
        call = self._grpc_call(address) if protocol == "grpc" else None

        def worker() -> None:
            while True:
                with self._lock:
                    payload = next(items, None)
                if payload is None:
                    return
                refused, errors, text = (
                    self._send_grpc(call, payload) if call is not None else self._send_http(address, payload)
                )
                with self._lock:
                    stats.refused += refused
                    stats.errors += errors
                    if text:
                        stats.error_text = text
                    if text == "":
                        stats.sent += 1
                        stats.spans += spans_each
                        stats.crc = (stats.crc + zlib.crc32(payload)) % CRC_MOD

        for f in [self._pool.submit(worker) for _ in range(self._threads)]:
            f.result()
        return stats

    def _grpc_call(self, address: str) -> Any:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._grpc.insecure_channel(
                address,
                options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
            )
            self._channels[address] = channel
        return channel.unary_unary(TRACES, request_serializer=None, response_deserializer=None)

    def _send_grpc(self, call: Any, payload: bytes) -> tuple[int, int, str]:
        """(refusals, errors, last error text or "" once delivered)."""
        grpc = self._grpc
        refused = errors = 0
        while True:
            try:
                call(payload, timeout=60)
                return refused, errors, ""
            except grpc.RpcError as exc:
                code = exc.code()
                if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
                    refused += 1
                    time.sleep(_grpc_retry_delay(exc))
                    continue
                errors += 1
                if errors >= 3:
                    return refused, errors, f"gRPC {code}: {exc.details()}"

    def _send_http(self, address: str, payload: bytes) -> tuple[int, int, str]:
        import http.client

        conns: dict[str, http.client.HTTPConnection] = self._local.__dict__.setdefault("conns", {})
        refused = errors = 0
        headers = {"Content-Type": "application/x-protobuf"}
        while True:
            conn = conns.get(address)
            if conn is None:
                host, _, port = address.rpartition(":")
                conn = conns[address] = http.client.HTTPConnection(host, int(port), timeout=60)
            try:
                conn.request("POST", "/v1/traces", body=payload, headers=headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conns.pop(address, None)
                errors += 1
                if errors >= 3:
                    return refused, errors, f"HTTP connection error {exc!r}"
                continue
            if response.will_close:
                conn.close()
                conns.pop(address, None)
            if response.status == 200:
                return refused, errors, ""
            if response.status in (429, 503):
                refused += 1
                time.sleep(float(response.getheader("Retry-After") or 1))
                continue
            errors += 1
            if errors >= 3:
                return refused, errors, f"HTTP {response.status}"


def _grpc_retry_delay(exc: Any) -> float:
    from google.rpc import error_details_pb2  # type: ignore[import-untyped, unused-ignore]

    with contextlib.suppress(Exception):
        raw = dict(exc.trailing_metadata() or ()).get("google.rpc.retryinfo-bin")
        if raw is not None:
            info = error_details_pb2.RetryInfo.FromString(raw)
            return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return 1.0


def client_main(
    conn: Connection, templates: dict[str, Template], threads: int, cpus: set[int] | None
) -> None:
    """Commands from ``conn``: ("prepare", name, kind, n), ("send", name, protocol, address),
    ("drop", name), ("stop",)."""
    pin(cpus)
    sender = _Sender(threads)
    prepared: dict[str, tuple[list[bytes], int]] = {}
    per_request = len(templates["full"].offsets)
    while True:
        command = conn.recv()
        op = command[0]
        if op == "stop":
            conn.send("stopped")
            return
        if op == "prepare":
            _, name, kind, n = command
            batches = [[os.urandom(ID_LEN) for _ in range(per_request)] for _ in range(n)]
            kinds = ("rootless", "roots") if kind == "pair" else (kind,)
            for k in kinds:
                t = templates[k]
                prepared[f"{name}/{k}" if kind == "pair" else name] = (
                    [t.with_ids(ids) for ids in batches],
                    t.spans,
                )
            conn.send("prepared")
        elif op == "send":
            _, name, protocol, address = command
            payloads, spans_each = prepared[name]
            conn.send(sender.send(protocol, address, payloads, spans_each))
        elif op == "drop":
            prepared.pop(command[1], None)
            conn.send("dropped")


class Clients:
    """The client processes, driven together."""

    def __init__(
        self, ctx: Any, n: int, threads: int, templates: dict[str, Template], cpus: set[int] | None
    ) -> None:
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=client_main, args=(child, templates, threads, cpus), daemon=True)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)

    def shares(self, total: int) -> list[int]:
        n = len(self.conns)
        return [total // n + (1 if i < total % n else 0) for i in range(n)]

    def prepare(self, name: str, kind: str, requests: int) -> None:
        for conn, share in zip(self.conns, self.shares(requests), strict=True):
            conn.send(("prepare", name, kind, share))
        for conn in self.conns:
            conn.recv()

    def send(self, name: str, protocol: str, address: str) -> SendStats:
        for conn in self.conns:
            conn.send(("send", name, protocol, address))
        total = SendStats()
        for conn in self.conns:
            s: SendStats = conn.recv()
            total.sent += s.sent
            total.spans += s.spans
            total.refused += s.refused
            total.errors += s.errors
            total.crc = (total.crc + s.crc) % CRC_MOD
            total.error_text = total.error_text or s.error_text
        return total

    def drop(self, name: str) -> None:
        for conn in self.conns:
            conn.send(("drop", name))
        for conn in self.conns:
            conn.recv()

    def stop(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError, EOFError):
                conn.send(("stop",))
                conn.recv()
        for p in self.procs:
            p.join(5)


class Sink:
    def __init__(self, ctx: Any, cpus: set[int] | None) -> None:
        self.counters = ctx.Array("q", SINK_SLOTS)
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=sink_main, args=(child, self.counters, cpus), daemon=True)
        self._proc.start()
        self.port: int = self._conn.recv()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def get(self, slot: int) -> int:
        return int(self.counters[slot])

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self._proc.join(5)


# ---------------------------------------------------------------------------------------------
# The collector, through its CLI.

_LISTENING = re.compile(r"OTLP/gRPC \S+:(\d+), OTLP/HTTP \S+:(\d+)\S*;.*/metrics \S+:(\d+)")


def _otel_apm_command() -> list[str]:
    script = Path(sys.executable).parent / "otel-apm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "otel_apm.cli"]


class CollectorProcess:
    def __init__(self, name: str, config: dict[str, Any], workdir: str, cpus: set[int] | None) -> None:
        self.name = name
        path = os.path.join(workdir, f"{name}.yaml")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(config, fh, indent=2)  # JSON is YAML
        self.log_path = os.path.join(workdir, f"{name}.log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - open for the process's lifetime
        self.proc = subprocess.Popen(
            [*_otel_apm_command(), "collector", "--config", path],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: pin(cpus)) if cpus else None,
        )
        deadline = time.monotonic() + 30
        while True:
            text = Path(self.log_path).read_text(errors="replace")
            m = _LISTENING.search(text)
            if m:
                self.grpc_port, self.http_port, self.metrics_port = (int(g) for g in m.groups())
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()
                self._log.close()
                raise RuntimeError(f"collector {name} did not start:\n{text}")
            time.sleep(0.05)

    def address(self, protocol: str) -> str:
        return f"127.0.0.1:{self.grpc_port if protocol == 'grpc' else self.http_port}"

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            parsed = parse_prometheus(response.read().decode())
        return {k.removeprefix(PREFIX): v for k, v in parsed.items()}

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code


def collector_config(
    downstream: str | None, analysis: bool, args: argparse.Namespace, native: bool = True, **assembly: Any
) -> dict[str, Any]:
    return {
        "receivers": {"grpc": {"endpoint": "127.0.0.1:0"}, "http": {"endpoint": "127.0.0.1:0"}},
        "downstream": {"endpoint": downstream, "protocol": "grpc", "compression": args.compression},
        "assembly": {"idle_timeout_s": args.idle_timeout, **assembly},
        "analysis": {"enabled": analysis, "native_enabled": native},
        "telemetry": {"endpoint": "127.0.0.1:0"},
    }


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval)


def delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def deltas_with(after: dict[str, float], before: dict[str, float], prefix: str) -> float:
    return sum(v - before.get(k, 0.0) for k, v in after.items() if k.startswith(prefix))


# ---------------------------------------------------------------------------------------------
# Rounds.


@dataclass
class RoundResult:
    spans: int
    seconds: float
    cpu_seconds: float
    refused: int

    @property
    def rate(self) -> float:
        return self.spans / self.seconds

    @property
    def cpu_rate(self) -> float:
        return self.spans / self.cpu_seconds if self.cpu_seconds else float("nan")

    @property
    def busy(self) -> float:
        return self.cpu_seconds / self.seconds


@dataclass
class Series:
    rounds: list[RoundResult] = field(default_factory=list)

    def median(self, key: Callable[[RoundResult], float]) -> float:
        return statistics.median(key(r) for r in self.rounds)


def run_round(
    clients: Clients,
    sink: Sink,
    collector: CollectorProcess,
    variant: Variant,
    protocol: str,
    requests: int,
    name: str,
) -> RoundResult:
    from bench_collector_engine import TRACES_PER_REQUEST

    clients.prepare(name, "full", requests)
    traces = requests * TRACES_PER_REQUEST
    spans_before = sink.get(S_SPANS)
    crc_before = sink.get(S_CRC)
    before = collector.metrics()
    cpu0 = collector.cpu_seconds()
    t0 = time.perf_counter()
    sent = clients.send(name, protocol, collector.address(protocol))
    if sent.errors or sent.sent != requests:
        raise RuntimeError(f"{collector.name}/{protocol}: {sent}")
    if variant.downstream:
        wait_until(lambda: sink.get(S_SPANS) - spans_before >= sent.spans, 120, 0.002, "the sink")
    if variant.analysis:
        wait_until(
            lambda: delta(collector.metrics(), before, "traces_analyzed_total") >= traces,
            120,
            0.02,
            "analysis",
        )
    elapsed = time.perf_counter() - t0
    cpu = collector.cpu_seconds() - cpu0
    if variant.downstream:  # the sink counts a request before it answers; the collector, after
        wait_until(
            lambda: delta(collector.metrics(), before, FORWARDED_TRACES) >= requests, 30, 0.01, "answers"
        )
    after = collector.metrics()
    clients.drop(name)

    problems = []
    expect = {
        "spans_received_total": sent.spans,
        FORWARDED_TRACES: requests if variant.downstream else 0,
        "traces_analyzed_total": traces if variant.analysis else 0,
        'findings_total{type="n_plus_one_query"}': traces * findings_per_trace if variant.analysis else 0,
        "late_spans_total": 0,
        "analysis_errors_total": 0,
        "incomplete_traces_total": 0,
    }
    for key, want in expect.items():
        got = delta(after, before, key)
        if got != want:
            problems.append(f"{key} {got:g} (expected {want})")
    for prefix in ("requests_dropped_total", "items_dropped_total"):
        if deltas_with(after, before, prefix):
            problems.append(f"{prefix} {deltas_with(after, before, prefix):g}")
    refused_spans = deltas_with(after, before, "spans_refused_total")
    if refused_spans != sent.refused * sent.spans / max(1, sent.sent):
        problems.append(f"spans_refused_total {refused_spans:g} for {sent.refused} refused requests")
    forwarded = sink.get(S_SPANS) - spans_before
    if forwarded != (sent.spans if variant.downstream else 0):
        problems.append(f"sink got {forwarded} spans, sent {sent.spans}")
    if variant.downstream and (sink.get(S_CRC) - crc_before) % CRC_MOD != sent.crc:
        problems.append("the bytes forwarded differ from the bytes sent (CRC-32 sums)")
    if problems:
        raise RuntimeError(f"{collector.name}/{protocol} round: " + "; ".join(problems))
    return RoundResult(sent.spans, elapsed, cpu, sent.refused)


# ---------------------------------------------------------------------------------------------
# Memory per span held.


def measure_memory(
    clients: Clients, sink: Sink, collector: CollectorProcess, requests: int
) -> dict[str, float]:
    from bench_collector_engine import TRACES_PER_REQUEST
    from workload import SPANS_PER_TRACE

    address = collector.address("grpc")

    def hold_then_release(name: str, n: int) -> tuple[int, int, int, int]:
        """Send ``n`` requests of rootless traces, then their roots; RSS (before, held, after) and
        the spans held."""
        clients.prepare(name, "pair", n)
        spans_before = sink.get(S_SPANS)
        before = collector.metrics()
        rss0 = collector.rss_bytes()
        held = clients.send(f"{name}/rootless", "grpc", address)
        wait_until(lambda: sink.get(S_SPANS) - spans_before >= held.spans, 120, 0.01, "the sink")
        wait_until(
            lambda: (
                collector.metrics()["spans_in_flight"] == held.spans
                and collector.metrics()["forward_queue_depth"] == 0
            ),
            60,
            0.05,
            "spans in flight",
        )
        time.sleep(0.5)
        rss_held = collector.rss_bytes()
        roots = clients.send(f"{name}/roots", "grpc", address)
        traces = n * TRACES_PER_REQUEST
        wait_until(
            lambda: delta(collector.metrics(), before, "traces_analyzed_total") >= traces,
            120,
            0.05,
            "analysis",
        )
        wait_until(lambda: sink.get(S_SPANS) - spans_before >= held.spans + roots.spans, 60, 0.01, "the sink")
        time.sleep(1.5)  # the finding events' batch goes out
        after = collector.metrics()
        if delta(after, before, "traces_analyzed_total") != traces or after["spans_in_flight"] != 0:
            raise RuntimeError(f"memory run: {after}")
        if delta(after, before, 'findings_total{type="n_plus_one_query"}') != traces * findings_per_trace:
            raise RuntimeError("memory run: not every trace had the workload's findings")
        rss_after = collector.rss_bytes()
        clients.drop(f"{name}/rootless")
        clients.drop(f"{name}/roots")
        return rss0, rss_held, rss_after, held.spans

    hold_then_release("mem-warmup", max(1, requests // 25))  # code paths warm, arenas not yet grown
    time.sleep(1.0)
    base, held, after, spans = hold_then_release("mem", requests)
    assert spans == requests * TRACES_PER_REQUEST * (SPANS_PER_TRACE - 1)
    return {"spans": spans, "base": base, "held": held, "after": after}


# ---------------------------------------------------------------------------------------------


def choose_cpus(collector_cpu: int | None) -> tuple[set[int] | None, set[int] | None, str]:
    """(collector's CPUs, everyone else's CPUs, description)."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None, "not pinned (no sched_setaffinity)"
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None, f"NOT pinned: only CPU {allowed} available, clients share the collector's core"
    mine = allowed[-1] if collector_cpu is None else collector_cpu
    others = set(allowed) - {mine}
    return {mine}, others, f"collector pinned to CPU {mine}; clients and sink on CPU(s) {sorted(others)}"


def main(argv: Sequence[str] | None = None) -> int:
    from workload import FINDINGS_PER_TRACE  # here, as the other bench imports: not in the clients

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per variant and protocol")
    parser.add_argument("--requests", type=int, default=40, help="requests of 100 x 23 spans per round")
    parser.add_argument("--protocols", default="grpc,http", help="comma-separated: grpc, http")
    parser.add_argument(
        "--variants",
        default="forward,analyze",
        help=f"comma-separated, forward and analyze at least, of: {', '.join(VARIANTS)}",
    )
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--threads", type=int, default=4, help="concurrent senders per client process")
    parser.add_argument("--idle-timeout", type=float, default=0.0, help="assembly.idle_timeout_s")
    parser.add_argument("--compression", choices=("gzip", "none"), default="gzip", help="downstream")
    parser.add_argument("--memory-requests", type=int, default=100, help="0 skips the memory run")
    parser.add_argument(
        "--workload",
        choices=sorted(FINDINGS_PER_TRACE),
        default="nplusone",
        help="nplusone: an N+1 finding in every trace (the worst case for emission); clean: none",
    )
    parser.add_argument("--collector-cpu", type=int, default=None)
    args = parser.parse_args(argv)
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    if not protocols or not set(protocols) <= {"grpc", "http"}:
        parser.error("--protocols: grpc and/or http")
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not {"forward", "analyze"} <= set(names) or not set(names) <= set(VARIANTS):
        parser.error(
            f"--variants: forward, analyze and optionally analyze-python, analyze-only, got {args.variants!r}"
        )
    variants = [VARIANTS[n] for n in VARIANTS if n in names]

    from bench_collector_engine import TRACES_PER_REQUEST
    from workload import SPANS_PER_TRACE

    started = time.monotonic()
    collector_cpus, other_cpus, pinning = choose_cpus(args.collector_cpu)
    pin(other_cpus)
    global findings_per_trace
    findings_per_trace = FINDINGS_PER_TRACE[args.workload]
    templates = build_templates(args.workload)
    ctx = multiprocessing.get_context("spawn")
    sink = Sink(ctx, other_cpus)
    clients = Clients(ctx, args.clients, args.threads, templates, other_cpus)
    workdir = tempfile.mkdtemp(prefix="bench-collector-")
    collectors: dict[str, CollectorProcess] = {}
    exit_codes: dict[str, int] = {}
    spans_per_request = TRACES_PER_REQUEST * SPANS_PER_TRACE
    print(
        f"{args.requests} requests x {TRACES_PER_REQUEST} traces x {SPANS_PER_TRACE} spans a round "
        f"({args.requests * spans_per_request:,} spans, {len(templates['full'].payload) / 1024:.0f} KiB "
        f"a request), {args.rounds} rounds per variant and protocol; {args.clients} client processes x "
        f"{args.threads} senders; downstream OTLP/gRPC compression {args.compression}; "
        f"assembly.idle_timeout_s {args.idle_timeout:g}; Python {sys.version.split()[0]}; {pinning}",
        flush=True,
    )
    results: dict[tuple[str, str], Series] = {}
    ratios: dict[tuple[str, str], list[float]] = {}
    cpu_ratios: dict[tuple[str, str], list[float]] = {}
    memory: dict[str, float] = {}
    final: dict[str, dict[str, float]] = {}
    try:
        for v in variants:
            config = collector_config(sink.endpoint if v.downstream else None, v.analysis, args, v.native)
            collectors[v.name] = CollectorProcess(v.name, config, workdir, collector_cpus)
        for protocol in protocols:  # warm-up, untimed
            for v in variants:
                run_round(
                    clients, sink, collectors[v.name], v, protocol, max(1, args.requests // 2), "warmup"
                )
        for r in range(args.rounds):
            for protocol in protocols:
                order = variants if r % 2 == 0 else variants[::-1]
                got: dict[str, RoundResult] = {}
                for v in order:
                    got[v.name] = run_round(
                        clients, sink, collectors[v.name], v, protocol, args.requests, f"r{r}"
                    )
                    results.setdefault((protocol, v.name), Series()).rounds.append(got[v.name])
                line = []
                for v in variants:
                    g = got[v.name]
                    text = f"{v.name} {g.rate:9,.0f} spans/s (core {100 * g.busy:3.0f}% busy)"
                    if v.name != "forward":
                        ratio = g.rate / got["forward"].rate
                        ratios.setdefault((protocol, v.name), []).append(ratio)
                        cpu_ratios.setdefault((protocol, v.name), []).append(
                            g.cpu_rate / got["forward"].cpu_rate
                        )
                        text += f" ratio {ratio:.2f}"
                    line.append(text)
                print(f"  round {r + 1} {protocol:4}: " + ", ".join(line), flush=True)
        time.sleep(1.5)  # the last batch of finding events goes out
        for name, c in collectors.items():
            final[name] = c.metrics()
            exit_codes[name] = c.stop()
        if args.memory_requests > 0:
            config = collector_config(
                sink.endpoint, True, args, max_wait_s=600, max_spans_in_flight=5_000_000
            )
            collectors["memory"] = CollectorProcess("memory", config, workdir, collector_cpus)
            memory = measure_memory(clients, sink, collectors["memory"], args.memory_requests)
            exit_codes["memory"] = collectors["memory"].stop()
    finally:
        for c in collectors.values():
            if c.proc.poll() is None:
                c.stop()
        clients.stop()
        sink_counts = [sink.get(i) for i in range(SINK_SLOTS)]
        sink.stop()

    print(
        f"\nthroughput through the whole collector, workload {args.workload} (median of the rounds; "
        "µs/span = per CPU-second):"
    )
    print(
        f"  {'protocol':8} {'path':44} {'spans/s':>10} {'core busy':>10} "
        f"{'spans/CPU-s':>12} {'µs/span':>8} {'refused':>8}"
    )
    for protocol in protocols:
        for v in variants:
            s = results[(protocol, v.name)]
            refused = sum(r.refused for r in s.rounds)
            cpu_rate = s.median(lambda r: r.cpu_rate)
            print(
                f"  {protocol:8} {v.path:44} {s.median(lambda r: r.rate):10,.0f} "
                f"{100 * s.median(lambda r: r.busy):9.0f}% {cpu_rate:12,.0f} "
                f"{1e6 / cpu_rate:8.2f} {refused:8d}"
            )
    print()
    for protocol in protocols:
        for v in variants:
            if v.name == "forward":
                continue
            ratio = statistics.median(ratios[(protocol, v.name)])
            rate = results[(protocol, v.name)].median(lambda r: r.rate)
            verdicts = ""
            if v.name == "analyze":
                verdicts = (
                    f"; target >= {TARGET_RATIO}: {'met' if ratio >= TARGET_RATIO else 'NOT met'}; "
                    f"{rate:,.0f} spans/s per core with analysis, target >= {TARGET_SPANS_PER_S:,}: "
                    f"{'met' if rate >= TARGET_SPANS_PER_S else 'NOT met'} "
                    f"({rate / OTEL_COLLECTOR_TAIL_SAMPLING:.1f}x the OTel Collector's historical "
                    f"~{OTEL_COLLECTOR_TAIL_SAMPLING:,} with tail sampling)"
                )
            print(
                f"  {protocol}: ratio {v.name}/forward {ratio:.2f} (per CPU-second "
                f"{statistics.median(cpu_ratios[(protocol, v.name)]):.2f}){verdicts}"
            )
    for name, m in final.items():
        print(
            f"  collector {name} /metrics: spans received {m.get('spans_received_total', 0):,.0f}, "
            f"trace requests forwarded {m.get(FORWARDED_TRACES, 0):,.0f}, "
            f"traces analyzed {m.get('traces_analyzed_total', 0):,.0f}, findings "
            f"{deltas_with(m, {}, 'findings_total'):,.0f}, spans refused "
            f"{deltas_with(m, {}, 'spans_refused_total'):,.0f}, requests dropped "
            f"{deltas_with(m, {}, 'requests_dropped_total'):,.0f}, late spans "
            f"{m.get('late_spans_total', 0):,.0f}; exit status {exit_codes.get(name)}"
        )
    print(
        f"  sink: {sink_counts[S_SPANS]:,} spans in {sink_counts[S_TRACE_REQUESTS]:,} requests, "
        f"{sink_counts[S_FINDINGS]:,} finding events in {sink_counts[S_LOG_REQUESTS]:,} log requests, "
        f"{sink_counts[S_METRIC_REQUESTS]} metric requests; forwarded bytes identical to those sent "
        "(CRC-32 sums, every round)"
    )
    if memory:
        spans = memory["spans"]
        mib = 1024 * 1024
        print(
            f"\nmemory, {spans:,.0f} spans held ({spans / (SPANS_PER_TRACE - 1):,.0f} traces without "
            f"their roots), collector VmRSS: before {memory['base'] / mib:.0f} MiB, held "
            f"{memory['held'] / mib:.0f} MiB, after analysis {memory['after'] / mib:.0f} MiB; exit "
            f"status {exit_codes.get('memory')}"
        )
        print(f"  per span held (held - before)          {(memory['held'] - memory['base']) / spans:7.0f} B")
        print(f"  released once analyzed (held - after)  {(memory['held'] - memory['after']) / spans:7.0f} B")
        print(f"  kept after analysis (after - before)   {(memory['after'] - memory['base']) / spans:7.0f} B")
    print(f"\ncollector configs and logs in {workdir}; took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
