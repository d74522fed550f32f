"""A Flask service with a known CPU hot spot, for the CPU profiler's tests.

GET /hot     burns CPU in :func:`burn` (pure Python arithmetic: its own frame is where the time goes)
GET /light   waits (LIGHT_WAIT_S, as on a slow downstream) and answers with little work

Run as a program (``python tests/apps/hot_service.py [N | forever]``), it calls both endpoints
through Flask's test client N times (default 10), or until interrupted; under
``opentelemetry-instrument`` the Flask instrumentation makes the server spans.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from flask import Flask

# About 80 ms of CPU per request here: the sampler, a Python thread, needs the GIL to read the
# stacks and gets it from a busy thread only after the 5 ms switch interval, so bursts much
# shorter than that are seldom seen.
BURN_ITERATIONS = 1_500_000
LIGHT_WAIT_S = 0.05


def burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/hot")
    def hot() -> dict[str, Any]:
        return {"burned": burn(BURN_ITERATIONS)}

    @app.get("/light")
    def light() -> dict[str, Any]:
        time.sleep(LIGHT_WAIT_S)
        return {"ok": True}

    return app


def main(argv: list[str]) -> None:
    rounds = argv[1] if len(argv) > 1 else "10"
    client = create_app().test_client()
    done = 0
    while rounds == "forever" or done < int(rounds):
        assert client.get("/hot").status_code == 200
        assert client.get("/light").status_code == 200
        done += 1


if __name__ == "__main__":
    main(sys.argv)
