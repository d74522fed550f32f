"""Client code calling tests/apps/items_service.py with requests and httpx, the way applications
do: each function is one workload, its problem or its fix.  The tests find the offending lines by
their text, so each call a finding must point at sits on a line of its own.

Neither HTTP instrumentation records body sizes; :func:`requests_body_size` and
:func:`httpx_body_size` are the response hooks an application adds to have them.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from typing import Any

import httpx
import requests
from opentelemetry.trace import Span

RESPONSE_BODY_SIZE = "http.response.body.size"
ITEMS = 6  # over APM_N_PLUS_ONE_API_THRESHOLD's default of 5


def requests_body_size(span: Span, request: Any, response: requests.Response) -> None:
    span.set_attribute(RESPONSE_BODY_SIZE, len(response.content))


def httpx_body_size(span: Span, request: Any, response: Any) -> None:
    length = response.headers.get("content-length") if response.headers is not None else None
    if length is not None:
        span.set_attribute(RESPONSE_BODY_SIZE, int(length))


# -- requests ------------------------------------------------------------------------------------


def items_one_by_one(session: requests.Session, base: str) -> list[Any]:
    found = []
    for item_id in range(1, ITEMS + 1):
        found.append(session.get(f"{base}/items/{item_id}", timeout=10).json())  # N+1 API call
    return found


def items_in_one_batch(session: requests.Session, base: str) -> list[Any]:
    ids = ",".join(str(i) for i in range(1, ITEMS + 1))
    result: list[Any] = session.get(f"{base}/items", params={"ids": ids}, timeout=10).json()
    return result


def profile_then_orders(session: requests.Session, base: str) -> list[Any]:
    profile = session.get(f"{base}/slow/profile", timeout=10).json()  # first sequential call
    orders = session.get(f"{base}/slow/orders", timeout=10).json()
    return [profile, orders]


def _get_json(session: requests.Session | httpx.Client, url: str, ready: threading.Barrier) -> Any:
    ready.wait(timeout=10)
    return session.get(url, timeout=10).json()  # concurrent call


def profile_and_orders_at_once(session: requests.Session | httpx.Client, base: str) -> list[Any]:
    """The same two calls in threads, the trace context handed to each (either library: both
    clients are safe to share between threads)."""
    urls = [f"{base}/slow/profile", f"{base}/slow/orders"]
    ready = threading.Barrier(len(urls))
    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        futures = [pool.submit(copy_context().run, _get_json, session, url, ready) for url in urls]
        return [f.result() for f in futures]


def export(session: requests.Session, base: str) -> int:
    return len(session.get(f"{base}/export", timeout=10).content)  # large download


# -- httpx -------------------------------------------------------------------------------------------


def httpx_items_one_by_one(client: httpx.Client, base: str) -> list[Any]:
    found = []
    for item_id in range(1, ITEMS + 1):
        found.append(client.get(f"{base}/items/{item_id}").json())  # N+1 API call
    return found


def httpx_items_in_one_batch(client: httpx.Client, base: str) -> list[Any]:
    ids = ",".join(str(i) for i in range(1, ITEMS + 1))
    result: list[Any] = client.get(f"{base}/items", params={"ids": ids}).json()
    return result


def httpx_profile_then_orders(client: httpx.Client, base: str) -> list[Any]:
    profile = client.get(f"{base}/slow/profile").json()  # first sequential call
    orders = client.get(f"{base}/slow/orders").json()
    return [profile, orders]


def httpx_export(client: httpx.Client, base: str) -> int:
    return len(client.get(f"{base}/export").content)  # large download


async def httpx_async_items_one_by_one(client: httpx.AsyncClient, base: str) -> list[Any]:
    found = []
    for item_id in range(1, ITEMS + 1):
        found.append((await client.get(f"{base}/items/{item_id}")).json())  # N+1 API call
    return found


async def httpx_async_profile_and_orders_at_once(client: httpx.AsyncClient, base: str) -> list[Any]:
    calls = [client.get(f"{base}/slow/profile"), client.get(f"{base}/slow/orders")]
    return [r.json() for r in await asyncio.gather(*calls)]
