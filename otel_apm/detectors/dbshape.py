"""The statement shape of a DB span, whether or not the instrumentation recorded the text."""

from __future__ import annotations

from otel_apm.model import SpanView
from otel_apm.sql import SqlShape, parse_sql


def db_shape(span: SpanView) -> SqlShape:
    """Parsed statement when there is one; else a shape from operation and table (or the name).

    Some instrumentations omit the text (it may hold secrets); the operation and collection
    still group the same work together.
    """
    if span.statement:
        shape = parse_sql(span.statement)
        if span.db_table and not shape.tables:
            return SqlShape(
                shape.normalized,
                shape.fingerprint,
                shape.operation,
                (span.db_table,),
                shape.truncated,
                shape.placeholders,
            )
        return shape
    return parse_sql(" ".join(p for p in (span.db_operation, span.db_table) if p) or span.name)
