"""The benchmarks' shared workload: what the SQLAlchemy, psycopg2, requests and Flask
instrumentations make of one web request (1 server root, 20 PostgreSQL spans, 2 HTTP client
spans), in an N+1 variant and a clean one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry import trace

SPANS_PER_TRACE = 23


_DB_BASE: dict[str, Any] = {
    "db.system.name": "postgresql",
    "db.namespace": "shop",
    "server.address": "db.internal",
    "server.port": 5432,
    "network.peer.address": "10.0.3.12",
    "db.user": "shop",
}


def _db(op: str, table: str, text: str) -> tuple[str, dict[str, Any]]:
    return f"{op} {table}", {
        **_DB_BASE,
        "db.operation.name": op,
        "db.collection.name": table,
        "db.query.text": text,
    }


USER = _db(
    "SELECT",
    "users",
    "SELECT users.id, users.email, users.name, users.created_at FROM users WHERE users.id = %(pk_1)s",
)
ORDER = _db(
    "SELECT",
    "orders",
    "SELECT orders.id, orders.user_id, orders.status, orders.total_cents, orders.created_at "
    "FROM orders WHERE orders.id = %(pk_1)s",
)
ITEMS = _db(
    "SELECT",
    "order_items",
    "SELECT order_items.id, order_items.order_id, order_items.product_id, order_items.quantity, "
    "order_items.unit_price_cents FROM order_items WHERE order_items.order_id = %(param_1)s "
    "ORDER BY order_items.id",
)
PRODUCT = _db(
    "SELECT",
    "products",
    "SELECT products.id, products.sku, products.name, products.price_cents, products.stock "
    "FROM products WHERE products.id = %(pk_1)s",
)
ADDRESS = _db(
    "SELECT",
    "addresses",
    "SELECT addresses.id, addresses.user_id, addresses.line1, addresses.city, addresses.country "
    "FROM addresses WHERE addresses.user_id = %(param_1)s AND addresses.kind = %(kind_1)s LIMIT %(param_2)s",
)
AUDIT = _db(
    "INSERT",
    "audit_log",
    "INSERT INTO audit_log (user_id, action, object_id, created_at) "
    "VALUES (%(user_id)s, %(action)s, %(object_id)s, now()) RETURNING audit_log.id",
)
WORKLOADS = {
    # products x6 is an N+1 (threshold 5); the repeats of 2, 3 and 4 stay under it.
    "nplusone": (USER, ORDER, ITEMS, *[PRODUCT] * 6, *[ADDRESS] * 4, *[ITEMS] * 3, ORDER, USER, AUDIT, AUDIT),
    # the same 20 statements with no shape repeated 5 times: no finding.
    "clean": (
        USER,
        ORDER,
        ITEMS,
        *[PRODUCT] * 4,
        *[ADDRESS] * 4,
        *[ITEMS] * 3,
        *[ORDER] * 3,
        USER,
        AUDIT,
        AUDIT,
    ),
}
HTTP_CALLS: tuple[dict[str, Any], ...] = (
    {
        "http.request.method": "GET",
        "url.full": "http://inventory.internal:8080/api/v1/stock?order=1042",
        "server.address": "inventory.internal",
        "server.port": 8080,
        "network.protocol.version": "1.1",
    },
    {
        "http.request.method": "POST",
        "url.full": "http://pricing.internal:8081/api/v1/quote",
        "server.address": "pricing.internal",
        "server.port": 8081,
        "network.protocol.version": "1.1",
    },
)
ROOT_ATTRS: dict[str, Any] = {
    "http.request.method": "GET",
    "http.route": "/orders/{id}",
    "url.path": "/orders/1042",
    "url.scheme": "http",
    "server.address": "orders-api.internal",
    "server.port": 8000,
    "network.protocol.version": "1.1",
    "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64) bench",
    "client.address": "10.0.0.17",
}


DbCalls = Sequence[tuple[str, dict[str, Any]]]
FINDINGS_PER_TRACE = {"nplusone": 1, "clean": 0}


def run_trace(tracer: trace.Tracer, db_calls: DbCalls) -> None:
    """One request: 23 spans, each started with its attributes, the status set before its end."""
    with tracer.start_as_current_span(
        "GET /orders/{id}", kind=trace.SpanKind.SERVER, attributes=ROOT_ATTRS
    ) as root:
        for i, (name, attrs) in enumerate(db_calls):
            with tracer.start_as_current_span(name, kind=trace.SpanKind.CLIENT, attributes=attrs):
                pass
            if i == 9:
                for h in HTTP_CALLS:
                    with tracer.start_as_current_span(
                        h["http.request.method"], kind=trace.SpanKind.CLIENT, attributes=h
                    ) as span:
                        span.set_attribute("http.response.status_code", 200)
        root.set_attribute("http.response.status_code", 200)


def run_children(tracer: trace.Tracer, parent: trace.Span, db_calls: DbCalls) -> None:
    """The 22 children of one trace under an already started (and still open) root."""
    ctx = trace.set_span_in_context(parent)
    for i, (name, attrs) in enumerate(db_calls):
        tracer.start_span(name, ctx, kind=trace.SpanKind.CLIENT, attributes=attrs).end()
        if i == 9:
            for h in HTTP_CALLS:
                span = tracer.start_span(
                    h["http.request.method"], ctx, kind=trace.SpanKind.CLIENT, attributes=h
                )
                span.set_attribute("http.response.status_code", 200)
                span.end()
