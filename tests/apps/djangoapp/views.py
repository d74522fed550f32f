"""The views: each shows one performance problem, or its fix, the way application code writes it.

The tests find the offending lines by their text, so each call a finding must point at sits on a
line of its own.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context

from apps.djangoapp.models import Author, Book
from django.db import connections, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.http import HttpRequest, HttpResponse, JsonResponse

# Raw statements per backend: a query that takes as long as asked, and three independent
# "dashboard" counts that each take a while.
WAIT = {"postgresql": "SELECT pg_sleep(%s)", "mysql": "SELECT SLEEP(%s)"}
DASHBOARD = {
    "postgresql": (
        "SELECT (SELECT COUNT(*) FROM djangoapp_book), pg_sleep(%s)",
        "SELECT (SELECT COUNT(*) FROM djangoapp_author), pg_sleep(%s)",
        "SELECT (SELECT MAX(title) FROM djangoapp_book), pg_sleep(%s)",
    ),
    "mysql": (
        "SELECT (SELECT COUNT(*) FROM djangoapp_book), SLEEP(%s)",
        "SELECT (SELECT COUNT(*) FROM djangoapp_author), SLEEP(%s)",
        "SELECT (SELECT MAX(title) FROM djangoapp_book), SLEEP(%s)",
    ),
}
DASHBOARD_QUERY_S = 0.07
RENDER_S = 0.12  # the Python work of /reports/summary/, beside its one query


class OutOfStockError(Exception):
    pass


def _db() -> BaseDatabaseWrapper:
    """This thread's connection to the database the router picks, for raw SQL."""
    return connections[router.db_for_read(Book)]


def books(request: HttpRequest) -> JsonResponse:
    """The N+1: the list is one query, and each ``book.author`` another."""
    rows = []
    for book in Book.objects.order_by("id"):
        rows.append({"title": book.title, "author": book.author.name})  # N+1 here
    return JsonResponse(rows, safe=False)


def books_select_related(request: HttpRequest) -> JsonResponse:
    rows = []
    for book in Book.objects.select_related("author").order_by("id"):
        rows.append({"title": book.title, "author": book.author.name})
    return JsonResponse(rows, safe=False)


def books_prefetch_related(request: HttpRequest) -> JsonResponse:
    rows = []
    for book in Book.objects.prefetch_related("author").order_by("id"):
        rows.append({"title": book.title, "author": book.author.name})
    return JsonResponse(rows, safe=False)


def books_with_counts(request: HttpRequest) -> JsonResponse:
    """The MN+1: two queries per book, the author and the author's book count."""
    rows = []
    for book in Book.objects.order_by("id"):
        author = book.author.name  # MN+1: first query of the period
        written = Book.objects.filter(author_id=book.author_id).count()  # MN+1: second query
        rows.append({"title": book.title, "author": author, "written": written})
    return JsonResponse(rows, safe=False)


def author_badge(request: HttpRequest, author_id: int) -> JsonResponse:
    """The header, the title and the footer each look the same author up again."""
    header = Author.objects.get(pk=author_id).name  # repeated identical query
    title = Author.objects.get(pk=author_id).name
    footer = Author.objects.get(pk=author_id).name
    return JsonResponse({"header": header, "title": title, "footer": footer})


def author_names(request: HttpRequest) -> JsonResponse:
    """One statement, three different authors: not a cache candidate."""
    names = []
    for author_id in request.GET["ids"].split(","):
        names.append(Author.objects.get(pk=int(author_id)).name)
    return JsonResponse(names, safe=False)


def book_count(request: HttpRequest) -> JsonResponse:
    """Raw SQL with its literal in the text, run three times: a cache candidate without
    recorded parameters."""
    counts = []
    with _db().cursor() as cursor:
        for _ in range(3):
            cursor.execute("SELECT COUNT(*) FROM djangoapp_book WHERE author_id > 0")  # repeated raw
            counts.append(cursor.fetchone()[0])
    return JsonResponse(counts, safe=False)


def wait(request: HttpRequest) -> HttpResponse:
    """A query that takes ``?seconds=`` (a slow report, or a fast one)."""
    db = _db()
    with db.cursor() as cursor:
        cursor.execute(WAIT[db.vendor], [float(request.GET["seconds"])])  # the wait query
    return HttpResponse("waited")


def summary(request: HttpRequest) -> HttpResponse:
    """One query that dominates the request without being slow on its own, then rendering."""
    db = _db()
    with db.cursor() as cursor:
        cursor.execute(WAIT[db.vendor], [float(request.GET["seconds"])])  # the dominant query
    time.sleep(RENDER_S)
    return HttpResponse("summary")


def dashboard(request: HttpRequest) -> JsonResponse:
    """Three independent counts, one after the other."""
    db = _db()
    with db.cursor() as cursor:
        values = []
        for sql in DASHBOARD[db.vendor]:
            cursor.execute(sql, [DASHBOARD_QUERY_S])  # sequential dashboard query
            values.append(str(cursor.fetchone()[0]))
    return JsonResponse(values, safe=False)


def _count(sql: str, ready: threading.Barrier) -> str:
    """One dashboard count on this thread's own connection, closed after (Django does not close
    connections of threads it did not start).  The barrier lets the three queries start together
    once every connection is open, as they would on a pool that has them ready."""
    db = _db()
    try:
        db.ensure_connection()
        ready.wait(timeout=10)
        with db.cursor() as cursor:
            cursor.execute(sql, [DASHBOARD_QUERY_S])  # concurrent dashboard query
            return str(cursor.fetchone()[0])
    finally:
        db.close()


def dashboard_concurrent(request: HttpRequest) -> JsonResponse:
    """The same three counts, run at once: the request waits for the longest only."""
    statements = DASHBOARD[_db().vendor]
    ready = threading.Barrier(len(statements))
    with ThreadPoolExecutor(max_workers=len(statements)) as pool:
        futures = [pool.submit(copy_context().run, _count, sql, ready) for sql in statements]
        values = [f.result() for f in futures]
    return JsonResponse(values, safe=False)


def buy(request: HttpRequest, book_id: int) -> HttpResponse:
    book = Book.objects.get(pk=book_id)
    raise OutOfStockError(f"{book.title} is out of stock")


def book_detail(request: HttpRequest, book_id: int) -> JsonResponse:
    book = Book.objects.get(pk=book_id)
    return JsonResponse({"title": book.title})
