"""The HTTP service the client workloads call: plain WSGI, served by a real server in a thread.

GET /items/<id>        one item
GET /items?ids=1,2,3   a batch of items, in one response
GET /slow/<name>       a slow answer (SLOW_S), as a busy downstream service gives
GET /export            a large body (EXPORT_BYTES)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

SLOW_S = 0.12  # two of these one after the other lose more than the 100 ms setting
EXPORT_BYTES = 1_200_000  # over APM_LARGE_PAYLOAD_BYTES' default of 1 000 000


def item(item_id: int) -> dict[str, Any]:
    return {"id": item_id, "name": f"item {item_id}"}


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    body: bytes
    if path.startswith("/items/"):
        body = json.dumps(item(int(path.rsplit("/", 1)[1]))).encode()
    elif path == "/items":
        ids = parse_qs(environ.get("QUERY_STRING", ""))["ids"][0].split(",")
        body = json.dumps([item(int(i)) for i in ids]).encode()
    elif path.startswith("/slow/"):
        time.sleep(SLOW_S)
        body = json.dumps({"name": path.rsplit("/", 1)[1]}).encode()
    elif path == "/export":
        body = b"x" * EXPORT_BYTES
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    content_type = "application/octet-stream" if path == "/export" else "application/json"
    start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]
