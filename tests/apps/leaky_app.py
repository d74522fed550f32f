"""A Flask service that leaks on one endpoint.

GET /leak     builds a chunk and keeps it in a module-level list: it is never let go
GET /steady   builds the same chunk and lets it go when the request ends
"""

from __future__ import annotations

from flask import Flask

CHUNK_BYTES = 64 * 1024

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
