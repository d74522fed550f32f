"""The statement shape of a DB span, whether or not the instrumentation recorded the text."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from otel_apm.model import DB, SpanView, Trace
from otel_apm.sql import SqlShape, parse_sql

# (service, statement fingerprint) -> the shape and the spans that ran it
StatementGroups = dict[tuple[str, str], tuple[SqlShape, list[SpanView]]]
# (service, statement text) -> the DB spans that sent it, in arrival order
TextGroups = dict[tuple[str, str | None], list[SpanView]]
# The key of the trace's TextGroups in Trace.derived (the compiled index files them there too).
DB_TEXTS = "db_texts"


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


def db_texts(trace: Trace) -> TextGroups:
    """The trace's DB spans by (service, statement text), cached ones included, in arrival
    order: the one grouping every reader starts from (the trace summary, the statistics, the
    metrics), made once per trace."""
    return trace.derived(DB_TEXTS, lambda: _group_texts(trace))


def statements_of(
    trace: Trace, regroup: Callable[[TextGroups], StatementGroups] | None = None
) -> StatementGroups:
    """The trace's queries by (service, statement fingerprint), cached ones included, made once
    per trace for every reader (the statistics and the metrics both group them so).

    ``regroup`` is :func:`by_fingerprint` or its compiled twin (csrc/traceindex.c): the analyzer,
    which asks first, passes the one its config chose."""
    return trace.derived("statements", lambda: (regroup or by_fingerprint)(db_texts(trace)))


def _group_texts(trace: Trace) -> TextGroups:
    by_text: TextGroups = {}
    for s in trace.by_category().get(DB, ()):
        group = by_text.get((s.service, s.statement))
        if group is None:
            by_text[(s.service, s.statement)] = [s]
        else:
            group.append(s)
    return by_text


def by_fingerprint(by_text: Mapping[tuple[str, str | None], list[SpanView]]) -> StatementGroups:
    """Spans grouped by (service, statement text) regrouped by (service, statement fingerprint).

    Grouping by text first costs one dict update a span; each distinct text is then parsed
    once, as in :func:`db_shapes`.  Spans without a text each take their own shape (operation
    and table vary).  The given lists are copied, not extended.
    """
    out: StatementGroups = {}
    for (service, text), spans in by_text.items():
        for group in (spans,) if text else [[s] for s in spans]:
            shape = db_shape(group[0])
            key = (service, shape.fingerprint)
            filed = out.get(key)
            if filed is None:
                out[key] = (shape, list(group))
            else:
                filed[1].extend(group)
    return out
