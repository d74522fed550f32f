"""The demo application: ordinary ORM code with an N+1 and a slow report query.

Nothing here knows about otel-apm; it is instrumented from outside, like any app.
"""

from __future__ import annotations

import random

from flask import Flask, Response, jsonify
from sqlalchemy import Engine, ForeignKey, String, create_engine, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload

AUTHORS = 12
REVIEWS = 300_000  # enough rows that the report's unindexed scan takes a few hundred ms
_WORDS = ("great", "bad", "fine", "slow", "long", "short", "boring", "fun", "dense", "light")


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    # lazy="select", the default: touching .books runs one query per author, the N+1.
    books: Mapped[list[Book]] = relationship(back_populates="author", order_by="Book.id")


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(120))
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")


def add_authors(engine: Engine, authors: int, books_per_author: int) -> None:
    """Create the ORM tables and the authors "author {a}" with books "book {a}.{b}"."""
    Base.metadata.create_all(engine)
    with Session(engine) as session, session.begin():
        for a in range(authors):
            books = [Book(title=f"book {a}.{b}") for b in range(books_per_author)]
            session.add(Author(name=f"author {a}", books=books))


def make_engine(url: str) -> Engine:
    """Create and fill the schema; the reviews table has no index on purpose."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS reviews (id INTEGER PRIMARY KEY, book_id INTEGER, "
                "rating INTEGER, body TEXT)"
            )
        )
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        if session.scalar(select(func.count()).select_from(Author)):
            return engine
    add_authors(engine, AUTHORS, 3)
    rng = random.Random(7)
    rows = [
        {"b": rng.randint(1, AUTHORS * 3), "r": rng.randint(1, 5), "t": " ".join(rng.choices(_WORDS, k=12))}
        for _ in range(REVIEWS)
    ]
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO reviews (book_id, rating, body) VALUES (:b, :r, :t)"), rows)
    return engine


def create_app(engine: Engine) -> Flask:
    app = Flask("otel_apm_demo")

    @app.get("/authors")
    def authors() -> Response:
        # N+1: one query for the authors, then one per author when .books is touched.
        with Session(engine) as session:
            return jsonify(
                [
                    {"name": a.name, "books": [b.title for b in a.books]}
                    for a in session.scalars(select(Author))
                ]
            )

    @app.get("/authors/eager")
    def authors_eager() -> Response:
        # The fix: two queries whatever the number of authors.
        with Session(engine) as session:
            query = select(Author).options(selectinload(Author.books))
            return jsonify(
                [{"name": a.name, "books": [b.title for b in a.books]} for a in session.scalars(query)]
            )

    @app.get("/reports/ratings")
    def ratings_report() -> Response:
        # A slow query: leading-wildcard LIKEs over an unindexed table.
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT book_id, avg(rating) AS score, count(*) AS n FROM reviews "
                    "WHERE lower(body) LIKE :a OR lower(body) LIKE :b OR lower(body) LIKE :c "
                    "GROUP BY book_id ORDER BY score DESC"
                ),
                {"a": "%great fun%", "b": "%boring%slow%", "c": "%dense light%"},
            ).all()
        return jsonify([{"book_id": r.book_id, "score": r.score, "n": r.n} for r in rows])

    return app
