"""What the findings store costs the application, and what batching buys the writer.

    .venv/bin/python bench/bench_store.py [--findings N] [--rounds R] [--store URL]

Findings: a mix of 20 problems (fingerprints), each occurrence with its own trace id, one finding
per request, as an app with a few known problems produces them.

App path, per request that has a finding (median µs of R rounds of N requests):
  a  writing the finding to the store on the request path, one transaction each: the baseline
  b  StoreEmitter.emit: queue it for the writer thread (ours); the writer runs meanwhile, so its
     share of the CPU (and of the GIL) is in b's time

Writer, per finding (median µs of R rounds of N findings):
  a  one transaction per finding (the same loop as above, seen from the writer)
  d  FindingsStore.write of everything queued at once (ours: the writer takes up to 1000)

Reading a day of statistics, E endpoints x 1440 minutes (median s of 3 reads):
  e  one row per key and minute
  f  after compact(): one row per key and hour, but for the last 2 hours

Each round starts from the same store; ``--store`` defaults to a SQLite file in a temporary
folder (a postgresql:// URL measures PostgreSQL: it must name a schema of its own).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time

from otel_apm.config import APMConfig
from otel_apm.detectors.base import Finding
from otel_apm.stats import DDSketch, MinuteRecord, Tally
from otel_apm.store.db import FindingsStore
from otel_apm.store.emitter import StoreEmitter

PROBLEMS = 20


def make_findings(n: int, seed: int = 7) -> list[Finding]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        problem = rng.randrange(PROBLEMS)
        out.append(
            Finding(
                type="n_plus_one_query",
                title=f"N+1 queries: 12 x SELECT on table_{problem}",
                severity="warning",
                fingerprint=f"{problem:016x}",
                service="shop",
                endpoint=f"GET /things/{problem}",
                trace_id=rng.getrandbits(128) or 1,
                span_ids=tuple(rng.getrandbits(64) for _ in range(12)),
                count=12,
                total_duration_ms=6.0,
                max_duration_ms=0.8,
                recommendation="eager-load it: .options(selectinload(Thing.parts))",
                services=("shop",),
                statement=f"select * from table_{problem} where thing_id = ?",
                evidence={"threshold": 5, "db.tables": (f"table_{problem}",)},
                impact_ms=5.5,
            )
        )
    return out


def day_of_minutes(store: FindingsStore, endpoints: int, now: float) -> None:
    """A day of per-minute statistics records, 20 requests per endpoint and minute."""
    rng = random.Random(11)
    first = int(now // 60) - 1440
    for minute in range(first, first + 1440):
        records = []
        for e in range(endpoints):
            tally = Tally(DDSketch())
            for _ in range(20):
                tally.duration.add(rng.lognormvariate(3, 1))
            tally.count = 20
            records.append(MinuteRecord("endpoint", minute * 60.0, "shop", f"GET /e{e}", tally))
        store.write_minutes(records)


def median_read_s(store: FindingsStore, now: float) -> float:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        store.statistics("24h", now - 86400, now)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def per_item_us(start: int, items: int) -> float:
    return (time.perf_counter_ns() - start) / 1e3 / items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--findings", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--store", help="store URL (default: a SQLite file in a temporary folder)")
    parser.add_argument("--endpoints", type=int, default=20, help="E, for the read of a day")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="bench-store-")
    url = args.store or f"sqlite:///{os.path.join(folder, 'findings.sqlite')}"
    config = APMConfig(store_url=url, store_queue_size=args.findings + 1, console_enabled=False)
    findings = make_findings(args.findings)
    samples: dict[str, list[float]] = {k: [] for k in "abd"}
    store = FindingsStore.from_config(config)
    for _ in range(args.rounds):
        now = time.time()
        start = time.perf_counter_ns()
        for f in findings:
            store.write([(now, [f])])
        samples["a"].append(per_item_us(start, len(findings)))

        emitter = StoreEmitter(config)
        start = time.perf_counter_ns()
        for f in findings:
            emitter.emit(None, [f])
        samples["b"].append(per_item_us(start, len(findings)))
        emitter.shutdown(60.0)
        assert emitter.stats()["written"] == len(findings), emitter.stats()

        start = time.perf_counter_ns()
        for i in range(0, len(findings), 1000):
            store.write([(now, findings[i : i + 1000])])
        samples["d"].append(per_item_us(start, len(findings)))

    now = time.time()
    day_of_minutes(store, args.endpoints, now)
    read_minutes = median_read_s(store, now)
    store.compact(now - 2 * 3600)
    read_hours = median_read_s(store, now)
    store.close()

    med = {k: statistics.median(v) for k, v in samples.items()}
    ratio_ba = statistics.median(b / a for a, b in zip(samples["a"], samples["b"], strict=True))
    ratio_da = statistics.median(d / a for a, d in zip(samples["a"], samples["d"], strict=True))
    print(f"store: {url.split('?')[0]}; {args.rounds} rounds x {args.findings} findings, medians")
    print(f"app path   a: write on the request path {med['a']:8.1f} µs/finding")
    print(f"           b: StoreEmitter.emit         {med['b']:8.1f} µs/finding   b/a = {ratio_ba:.3f}")
    print(f"writer     d: batched (1000)            {med['d']:8.1f} µs/finding   d/a = {ratio_da:.3f}")
    print(f"read a day e: by the minute             {read_minutes:8.3f} s ({args.endpoints} endpoints)")
    print(
        f"           f: by the hour               {read_hours:8.3f} s   f/e = {read_hours / read_minutes:.3f}"
    )


if __name__ == "__main__":
    main()
