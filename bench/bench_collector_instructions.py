"""What the collector's pipeline costs per span beyond forwarding, in instructions (callgrind).

    .venv/bin/python bench/bench_collector_instructions.py [--parts LIST] [--requests N]
        [--emitters NAMES] [--python] [--keep FILE | --recorded FILE]

bench_collector.py times the real collector, whose CPU a shared machine's load moves by more
than what one change saves.  Here the requests of bench_collector.py's workload (100 traces x 23
spans, an N+1 in every trace, fresh trace ids) are made once outside valgrind, and a child runs
the collector's own code on them as a receiver does, with no sockets: the receiver's check or
parse of the request (``Pipeline.prechecked`` / ``decode_protobuf``), ``Pipeline.accept_traces``
and, for the parts that analyze, ``TraceAssembler.ready`` and ``Pipeline._analyze_all`` (the
detectors, every emitter, the flush of the finding events).  The forwarder queues nothing: the
sending (gzip, gRPC), which both variants pay, is not counted.  After a warm-up of as many
requests, the next N run inside one ``functools.reduce`` call that
``valgrind --tool=callgrind --toggle-collect=*functools_reduce*`` counts alone; the garbage
collector's young threshold is the collector's (500,000).

Parts (``--parts``, comma-separated):

  forward   analysis off: the receiver's parse and the id check of every span
  intake    analysis on, without analysis: the check, the views, assembly's add
  full      intake, then every trace analyzed and emitted as the collector does

``--emitters`` keeps only the emitters named (class names, e.g. ``FindingEvents,Statistics``;
``none`` for none), so one emitter's share is ``full`` with it minus ``full`` with none.
``--python`` runs the collector with ``analysis.native_enabled: false``.  ``--keep FILE`` keeps
the requests made, ``--recorded FILE`` counts those again (another build, another branch).
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import random
import sys
import tempfile
from collections.abc import Sequence
from functools import reduce
from typing import Any

from bench_collector import build_templates
from bench_instructions import callgrind_count

from otel_apm.collector.config import CollectorConfig
from otel_apm.collector.forwarder import Forwarder
from otel_apm.collector.pipeline import Emission, Pipeline
from otel_apm.collector.receivers import decode_protobuf
from otel_apm.collector.telemetry import Telemetry

PARTS = ("forward", "intake", "full")


def record(requests: int, path: str) -> None:
    """Twice ``requests`` requests (warm-up, then counted), every one with new trace ids."""
    full = build_templates("nplusone")["full"]  # bench_collector.py's default workload
    rng = random.Random(1)
    payloads = [full.with_ids([rng.randbytes(16) for _ in full.offsets]) for _ in range(2 * requests)]
    with open(path, "wb") as f:
        pickle.dump((payloads, full.spans), f)


def pipeline_for(part: str, python: bool, emitters: str | None) -> Pipeline:
    data: dict[str, Any] = {
        "assembly": {"idle_timeout_s": 0},
        "analysis": {"enabled": part != "forward", "native_enabled": not python},
        "downstream": {"endpoint": "http://127.0.0.1:9"},  # never reached: nothing is sent
    }
    config = CollectorConfig.from_mapping(data)
    telemetry = Telemetry()
    forwarder = Forwarder(config.downstream, telemetry)
    emission = Emission(config, forwarder)
    forwarder.enabled = False  # takes and drops: the sending is not counted
    chosen = emission.emitters
    if emitters is not None:
        chosen = [e for e in chosen if type(e).__name__ in emitters.split(",")]
    return Pipeline(config, telemetry, forwarder, chosen)


def child(part: str, recorded: str, python: bool, emitters: str | None) -> None:
    with open(recorded, "rb") as f:
        payloads, _ = pickle.load(f)
    pipeline = pipeline_for(part, python, emitters)
    prechecked = getattr(pipeline, "prechecked", None)  # absent before the compiled check

    def receive(traces: int, payload: bytes) -> int:
        request = None if prechecked and prechecked("traces", payload) else decode_protobuf("traces", payload)
        if not pipeline.accept_traces(request, payload).accepted:
            raise RuntimeError("a request was refused")
        if part != "full":
            return traces
        due = pipeline.assembler.ready()
        pipeline._analyze_all(due)
        return traces + len(due)

    warm = len(payloads) // 2
    gc.set_threshold(500_000)
    for payload in payloads[:warm]:
        receive(0, payload)
    gc.collect()
    analyzed = reduce(receive, payloads[warm:], 0)
    if part == "full" and analyzed != warm * 100:
        raise RuntimeError(f"{analyzed} traces analyzed")
    os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated: forward, intake, full")
    parser.add_argument("--requests", type=int, default=4, help="requests counted (100 traces each)")
    parser.add_argument("--emitters", help="keep only these emitters (class names, comma-separated; none)")
    parser.add_argument("--python", action="store_true", help="analysis.native_enabled: false")
    parser.add_argument("--recorded", help="requests made by an earlier run (--keep)")
    parser.add_argument("--keep", help="keep the requests made in this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.recorded, args.python, args.emitters)
    with tempfile.TemporaryDirectory() as tmp:
        recorded = args.recorded or args.keep or os.path.join(tmp, "requests.pickle")
        if not args.recorded:
            record(args.requests, recorded)
        with open(recorded, "rb") as f:
            payloads, spans = pickle.load(f)
        counted = len(payloads) // 2 * spans
        print(f"Instructions per span ({counted:,} spans counted, {len(payloads) // 2} requests)")
        for part in args.parts.split(","):
            options = ["--python"] if args.python else []
            if args.emitters is not None:
                options.append(f"--emitters={args.emitters}")
            count = callgrind_count(
                [__file__, "--recorded", recorded, "--child", part, *options],
                ["--toggle-collect=*functools_reduce*"],
            )
            print(f"  {part:<10} {count / counted:>10,.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
