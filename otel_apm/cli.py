"""``otel-apm`` commands."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence

from otel_apm.config import APMConfig, ConfigError


def demo(args: argparse.Namespace) -> int:
    from otel_apm.demo.run import run_demo  # Flask and friends load only for this command

    return run_demo(args.db, args.otlp_endpoint)


def show_config(_: argparse.Namespace) -> int:
    """Print every setting with its variable, current value and meaning."""
    for variable, value, doc in APMConfig.from_env().describe():
        print(f"{variable:<32} {value:<14} {doc}")
    return 0


def collector(args: argparse.Namespace) -> int:
    """Run the OTLP collector until SIGTERM/SIGINT; flags override the config file."""
    from otel_apm.collector.config import load_config
    from otel_apm.collector.service import run  # grpc and the SDK load only for this command

    overrides = {
        key: value
        for key, value in (
            ("receivers.grpc.endpoint", args.grpc_endpoint),
            ("receivers.http.endpoint", args.http_endpoint),
            ("downstream.endpoint", args.downstream),
            ("downstream.protocol", args.downstream_protocol),
            ("telemetry.endpoint", args.metrics_endpoint),
        )
        if value is not None
    }
    return run(load_config(args.config, overrides))


def evaluate(args: argparse.Namespace) -> int:
    """Score the detectors against a labelled corpus; exit 1 when any label fails."""
    from otel_apm.evaluate import run

    status, text = run(args.dir, as_json=args.json)
    print(text, file=sys.stderr if status == 2 else sys.stdout)
    return status


def profile(args: argparse.Namespace) -> int:
    """Run a Python program with the CPU profiler on; write its flame graphs at exit."""
    from otel_apm.profiling.run import profile_program

    return profile_program(args.program, args.out, args.format, args.hz, args.duration)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="otel-apm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("demo", help="run a Flask + SQLAlchemy app on SQLite and report its problems")
    p.add_argument(
        "--db",
        default=os.path.join(tempfile.gettempdir(), "otel-apm-demo.sqlite"),
        help="SQLite file for the demo data (created and filled on first use)",
    )
    p.add_argument(
        "--otlp-endpoint",
        help="also export spans, finding events and metrics over OTLP/gRPC, e.g. http://localhost:4317",
    )
    p.set_defaults(run=demo)
    p = commands.add_parser("config", help="print the settings and their environment variables")
    p.set_defaults(run=show_config)
    p = commands.add_parser(
        "collector",
        help="OTLP endpoint (gRPC 4317, HTTP 4318): forwards everything downstream, analyzes whole traces",
    )
    p.add_argument("--config", metavar="FILE", help="YAML configuration (every key optional)")
    p.add_argument("--grpc-endpoint", metavar="HOST:PORT", help="OTLP/gRPC listen address (localhost:4317)")
    p.add_argument("--http-endpoint", metavar="HOST:PORT", help="OTLP/HTTP listen address (localhost:4318)")
    p.add_argument(
        "--downstream", metavar="URL", help="forward to this OTLP endpoint, e.g. http://jaeger:4317; none"
    )
    p.add_argument("--downstream-protocol", metavar="PROTOCOL", help="grpc (default) or http/protobuf")
    p.add_argument(
        "--metrics-endpoint", metavar="HOST:PORT", help="Prometheus /metrics listen address (localhost:8888)"
    )
    p.set_defaults(run=collector)
    p = commands.add_parser(
        "evaluate",
        help="run the detectors over a labelled corpus of OTLP/JSON traces: precision and recall per type",
    )
    p.add_argument("dir", nargs="?", default="tests/corpus", help="corpus folder (default: tests/corpus)")
    p.add_argument("--json", action="store_true", help="print the scores and mismatches as JSON")
    p.set_defaults(run=evaluate)
    p = commands.add_parser(
        "profile",
        help="run a Python program under opentelemetry-instrument with the CPU profiler on; "
        "write flame graphs (process and per endpoint) when it exits",
    )
    p.add_argument("--out", default="profile", help="directory for the flame graph files (default: profile)")
    p.add_argument("--format", help="comma-separated: folded, speedscope, svg (default: all three)")
    p.add_argument("--hz", type=float, help="stack samples per second (APM_PROFILING_SAMPLE_HZ, default 100)")
    p.add_argument("--duration", type=float, metavar="S", help="interrupt the program after S seconds")
    p.add_argument("program", nargs=argparse.REMAINDER, help="-- program.py [args] (or -m module [args])")
    p.set_defaults(run=profile)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"otel-apm: invalid configuration: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
