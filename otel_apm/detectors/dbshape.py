"""The statement shape of a DB span, whether or not the instrumentation recorded the text."""

from __future__ import annotations

from collections.abc import Iterable

from otel_apm.model import DB, SpanView, Trace
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


def db_shapes(spans: Iterable[SpanView]) -> list[SqlShape]:
    """The shape of each span, parsing each distinct statement text once.

    An ORM sends the same placeholder text again and again within a trace, so a per-trace dict
    spares even the parse cache's lookups.
    """
    by_text: dict[str, SqlShape] = {}
    shapes = []
    for s in spans:
        text = s.statement
        if not text:  # without a text the shape comes from operation and table, which vary
            shapes.append(db_shape(s))
            continue
        shape = by_text.get(text)
        if shape is None:
            shape = by_text[text] = db_shape(s)
        shapes.append(shape)
    return shapes


def statements_of(trace: Trace) -> dict[tuple[str, str], tuple[SqlShape, list[SpanView]]]:
    """The trace's queries by (service, statement fingerprint), made once per
    trace for every reader (the statistics and the metrics both group them so)."""
    return trace.derived("statements", lambda: _group_statements(trace))


def _group_statements(trace: Trace) -> dict[tuple[str, str], tuple[SqlShape, list[SpanView]]]:
    # Grouped by text first (one dict update a span), parsed once per distinct text after, as
    # db_shapes does; a span without text has its own shape (operation and table vary).
    by_text: dict[tuple[str, str | None], list[SpanView]] = {}
    loose: list[SpanView] = []
    for s in trace.spans:
        if s.category == DB:
            if s.statement:
                group = by_text.get((s.service, s.statement))
                if group is None:
                    by_text[(s.service, s.statement)] = [s]
                else:
                    group.append(s)
            else:
                loose.append(s)
    out: dict[tuple[str, str], tuple[SqlShape, list[SpanView]]] = {}
    for spans in (*by_text.values(), *([s] for s in loose)):
        shape = db_shape(spans[0])
        key = (spans[0].service, shape.fingerprint)
        filed = out.get(key)
        if filed is None:
            out[key] = (shape, spans)
        else:
            filed[1].extend(spans)
    return out
