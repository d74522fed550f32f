"""``otel-apm`` commands."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from otel_apm.config import APMConfig, ConfigError

if TYPE_CHECKING:
    from otel_apm.store.db import FindingsStore


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
            ("store.url", args.store),
            ("api.endpoint", args.api_endpoint),
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


def _using_store(args: argparse.Namespace, work: Callable[[FindingsStore], int]) -> int:
    """``work(store)`` on the store named by ``--store``, else by APM_STORE_URL: a bad argument
    exits 2, a store that cannot be read 1, each with one line saying why."""
    from otel_apm.store.db import FindingsStore

    config = APMConfig.from_env(store_url=args.store) if args.store else APMConfig.from_env()
    if not config.store_url:
        raise ConfigError(
            "no store: pass --store sqlite:///path.sqlite (or postgresql://...) or set APM_STORE_URL"
        )
    store = FindingsStore.from_config(config)
    if store.url.backend == "sqlite" and not os.path.isfile(store.url.target):
        raise ConfigError(f"no store at {store.url.target!r} (a reader does not create one)")
    try:
        return work(store)
    except ValueError as exc:
        print(f"otel-apm {args.command}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"otel-apm {args.command}: cannot read the store {store.url}: {exc!r}", file=sys.stderr)
        return 1
    finally:
        store.close()


def report(args: argparse.Namespace) -> int:
    """Print the performance report of a store for a window."""
    from otel_apm.store.report import build_report, render

    def run(store: FindingsStore) -> int:
        report = build_report(store, args.window, limit=args.limit, service=args.service)
        sys.stdout.write(render(report, args.format))
        return 0

    return _using_store(args, run)


def mute(args: argparse.Namespace) -> int:
    """Mute (or unmute) a finding by fingerprint: the report lists it no more."""

    def run(store: FindingsStore) -> int:
        if store.set_muted(args.fingerprint, not args.unmute):
            return 0
        print(f"otel-apm mute: no finding {args.fingerprint!r} in the store", file=sys.stderr)
        return 1

    return _using_store(args, run)


def _at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def profile(args: argparse.Namespace) -> int:
    """Run a Python program with the CPU profiler on; write its flame graphs at exit."""
    from otel_apm.profiling.run import profile_program

    return profile_program(args.program, args.out, args.format, args.hz, args.duration)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="otel-apm", description="Find what makes OpenTelemetry-traced applications slow."
    )
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
    p.add_argument("--store", metavar="URL", help="findings store: sqlite:///file or postgresql://...; none")
    p.add_argument("--api-endpoint", metavar="HOST:PORT", help="JSON API over the store (localhost:8889)")
    p.set_defaults(run=collector)
    p = commands.add_parser(
        "evaluate",
        help="run the detectors over a labelled corpus of OTLP/JSON traces: precision and recall per type",
    )
    p.add_argument("dir", nargs="?", default="tests/corpus", help="corpus folder (default: tests/corpus)")
    p.add_argument("--json", action="store_true", help="print the scores and mismatches as JSON")
    p.set_defaults(run=evaluate)
    p = commands.add_parser("report", help="the performance report of a findings store, ranked by impact")
    p.add_argument(
        "--store", metavar="URL", help="sqlite:///file or postgresql://... (default: APM_STORE_URL)"
    )
    p.add_argument("--window", default="24h", help="how far back: 15m, 1h, 24h, 7d ... or all (default 24h)")
    p.add_argument("--service", help="one service's problems and statistics (default: every service)")
    p.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    p.add_argument("--limit", type=_at_least_one, default=10, help="rows listed per section (default 10)")
    p.set_defaults(run=report)
    p = commands.add_parser(
        "mute", help="mute a finding in the store by fingerprint (it is no longer reported)"
    )
    p.add_argument("fingerprint")
    p.add_argument(
        "--store", metavar="URL", help="sqlite:///file or postgresql://... (default: APM_STORE_URL)"
    )
    p.add_argument("--unmute", action="store_true", help="report it again")
    p.set_defaults(run=mute)
    p = commands.add_parser(
        "profile",
        help="run a Python program under opentelemetry-instrument with the CPU profiler on; "
        "write flame graphs (process and per endpoint) when it exits",
    )
    p.add_argument("--out", default="profile", help="directory for the flame graph files (default: profile)")
    p.add_argument("--format", help="comma-separated: folded, speedscope, svg (default: all three)")
    p.add_argument(
        "--hz",
        type=float,
        help="stack samples per second (default: APM_PROFILING_SAMPLE_HZ if set, else 100)",
    )
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
