"""Fixes worded for the stack that ran the queries: SQLAlchemy, Django, or plain SQL.

"Eager-load the relationship" helps only someone who knows which call to write.  The stack is
read from the spans (the instrumentation scope of the DB spans, a Django server span), and the
relationship is guessed from the tables: the query whose rows the loop walks (the source) and
the table and WHERE column of the repeated query.  Table names map to ORM names simply (singular,
capitalized), so the advice says it names the *likely* relationship.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from otel_apm.model import SpanView, Trace
from otel_apm.sql import SqlShape

SQLALCHEMY = "sqlalchemy"
DJANGO = "django"
SQL = "sql"

_SQLALCHEMY_SCOPE = "opentelemetry.instrumentation.sqlalchemy"
_DJANGO_SCOPE = "opentelemetry.instrumentation.django"

# The first equality with a bound value after WHERE, either way round: "books.author_id = ?" or
# SQLAlchemy-on-SQLite's "? = books.author_id".
_WHERE_EQ_RE = re.compile(
    r" where (?:(?:[\w$]+\.)?(?P<left>[\w$]+) = \?|\? = (?:[\w$]+\.)?(?P<right>[\w$]+))"
)


def stack_of(trace: Trace, db_spans: Iterable[SpanView]) -> str:
    """SQLAlchemy when it made the DB spans, else Django when it served the request, else SQL.
    Loops, not any() over generators: every N+1 finding's advice asks, and on a stack that is
    neither both walks run to their end (an N+1 trace of 23 spans: about 10,000 instructions
    fewer)."""
    for s in db_spans:
        if s.scope == _SQLALCHEMY_SCOPE:
            return SQLALCHEMY
    for s in trace.spans:
        if s.scope == _DJANGO_SCOPE:
            return DJANGO
    return SQL


# The same loop recurs in every request of its endpoint, and its advice depends only on the
# statement shapes and the stack: worded once, then looked up (guessing costs a regex search,
# wording a dozen f-strings).  Shapes and relations are frozen, so they key a cache.
_ADVICE_CACHE = 1024


@dataclass(frozen=True)
class Relation:
    """Rows of ``owner`` (the source query's table) lead to rows of ``target`` (the loop's).

    ``to_many``: target rows point at the owner (``books.author_id = ?``, a collection, e.g.
    Author.books); else the owner points at one target row (``authors.id = ?``, e.g. Book.author).
    """

    owner: str
    target: str
    column: str
    to_many: bool


@lru_cache(maxsize=_ADVICE_CACHE)
def guess_relation(source: SqlShape | None, repeated: SqlShape) -> Relation | None:
    """The relationship a loop over the source's rows most likely touches, when the tables tell."""
    if source is None or not source.tables or not repeated.tables:
        return None
    owner = _bare(source.tables[0])
    target = _bare(repeated.tables[0])
    match = _WHERE_EQ_RE.search(repeated.normalized)
    if owner == target or match is None:
        return None
    column = match.group("left") or match.group("right")
    if column == "id":
        return Relation(owner, target, column, to_many=False)
    if column.endswith("_id") and _names(column[:-3], owner):
        return Relation(owner, target, column, to_many=True)
    return None


@lru_cache(maxsize=_ADVICE_CACHE)
def eager_loading(stack: str, relations: tuple[Relation, ...], owner_hint: str) -> str:
    """How to load what the loop queries up front, for ``stack``; ``owner_hint`` names the rows
    walked when no relation could be guessed."""
    if stack == SQLALCHEMY:
        if not relations:
            return (
                f"Eager-load the relationship the loop touches on the query that loads {owner_hint}: "
                "`.options(selectinload(Model.collection))` for a collection, "
                "`.options(joinedload(Model.parent))` for a many-to-one (or subqueryload())."
            )
        options = ", ".join(
            f"selectinload({_cls(r.owner)}.{r.target})"
            if r.to_many
            else f"joinedload({_cls(r.owner)}.{_singular(r.target)})"
            for r in relations
        )
        return (
            f"Eager-load it on the query that loads {relations[0].owner}: `.options({options})` "
            f"(the likely relationship{_s(relations)}, from the tables; subqueryload() also works "
            "for collections)."
        )
    if stack == DJANGO:
        if not relations:
            return (
                f"Load the related rows with the queryset of {owner_hint}: `.select_related(...)` "
                "for a ForeignKey, `.prefetch_related(...)` for a reverse or many-to-many relation."
            )
        calls = "".join(
            f'.prefetch_related("{_model(r.target)}_set")'
            if r.to_many
            else f'.select_related("{_model(r.target)}")'
            for r in relations
        )
        return (
            f"Load them with the queryset of {relations[0].owner}: `{calls}` (the likely "
            f"field{_s(relations)}, from the tables; use the related_name if the ForeignKey sets one)."
        )
    if not relations:
        return (
            f"Fetch all rows at once with one `WHERE ... IN (...)` over the ids from {owner_hint}, "
            "or a JOIN in the first query, and group them in code."
        )
    joins = "; ".join(
        f"`SELECT ... FROM {r.target} WHERE {r.target}.{r.column} IN (...)` with every {r.owner} id "
        f"at once, or `JOIN {r.target} ON {r.target}.{r.column} = {r.owner}.id`"
        if r.to_many
        else f"`JOIN {r.target} ON {r.target}.id = {r.owner}.{_singular(r.target)}_id` in the query "
        f"that loads {r.owner}, or one `WHERE {r.target}.id IN (...)`"
        for r in relations
    )
    return f"Load them in one query: {joins}."


def _bare(table: str) -> str:
    """The table without its schema: "public.books" -> "books"."""
    return table.rpartition(".")[2]


def _names(word: str, table: str) -> bool:
    """``word`` (the stem of a ``<word>_id`` column) names ``table``: "author" names "authors",
    "author" and Django's "shop_author"."""
    return (
        word in (table, _singular(table))
        or table.endswith("_" + word)
        or _singular(table).endswith("_" + word)
    )


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 3:
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "zes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _cls(table: str) -> str:
    """An ORM class name for a table: "order_items" -> "OrderItem"."""
    return "".join(part.capitalize() for part in _singular(table).split("_") if part)


def _model(table: str) -> str:
    """A Django model's lower-case name from its table: "shop_book" -> "book" (Django names
    tables app_model, and model names hold no underscore)."""
    return _singular(table.rpartition("_")[2])


def _s(items: Sequence[object]) -> str:
    return "s" if len(items) > 1 else ""


def reuse_result(stack: str, shape: SqlShape) -> str:
    """How to stop running one query with the same values again, for ``stack``."""
    match = _WHERE_EQ_RE.search(shape.normalized)
    by_key = match is not None and (match.group("left") or match.group("right")) == "id"
    if stack == SQLALCHEMY and by_key and shape.tables:
        return (
            f"`session.get({_cls(_bare(shape.tables[0]))}, id)` answers a primary-key lookup from the "
            "session's identity map without a round trip; otherwise keep the first result."
        )
    if stack == DJANGO:
        return (
            "A queryset runs again each time it is evaluated: evaluate it once and keep the result "
            "(a variable, cached_property), outside the loop."
        )
    return "Run it once and keep the result (hoist it out of the loop), or cache it for the request."
