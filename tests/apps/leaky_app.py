"""A Flask service that leaks on one endpoint.

GET /leak     builds a chunk and keeps it in a module-level list: it is never let go
GET /steady   builds the same chunk and lets it go when the request ends

Run as a script under ``opentelemetry-instrument`` it requests one endpoint through Flask's test
client (the auto-instrumented Flask makes the server spans) for a number of seconds::

    opentelemetry-instrument python tests/apps/leaky_app.py /leak 5
"""

from __future__ import annotations

import sys
import time

from flask import Flask

from otel_apm.profiling.memory import running_monitors

CHUNK_BYTES = 64 * 1024
WARMED_UP = "leaky_app: warmed up, trend reset"  # on stderr: what comes after is the test's

_kept: list[bytes] = []


def make_app() -> Flask:
    app = Flask(__name__)

    @app.get("/leak")
    def leak() -> str:
        _kept.append(b"x" * CHUNK_BYTES)
        return "kept"

    @app.get("/steady")
    def steady() -> str:
        chunk = b"x" * CHUNK_BYTES
        return str(len(chunk))

    return app


def release() -> None:
    """Let go of what /leak kept, so one test's leak does not stay in the next one's process."""
    _kept.clear()


def main(path: str, seconds: float) -> None:
    client = make_app().test_client()
    assert client.get(path).status_code == 200
    # Warmed up: start-up's own growth (opentelemetry-instrument loading every instrumentation,
    # seconds on a busy machine) is no leak, but the test's one-second window could take it for one.
    monitors = running_monitors()
    assert monitors, "no memory monitor runs: the configurator did not start one"
    for monitor in monitors:
        monitor.reset_trend()
    print(WARMED_UP, file=sys.stderr, flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert client.get(path).status_code == 200
        time.sleep(0.005)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
