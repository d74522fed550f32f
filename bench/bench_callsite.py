"""What recording the code location of each DB call costs, on a real ORM's call stack.

    .venv/bin/python bench/bench_callsite.py [--requests N] [--rounds R]

bench_processor.py starts its spans straight from the bench code, so the application frame is the
first one looked at; an ORM query starts its span 20 to 40 frames below the application.  Here
SQLAlchemy (instrumented) runs a lazy-loading loop (one query for the authors, one per author for
the books) on an in-memory SQLite database, in three pipelines built side by side:

  a  TracerProvider + BatchSpanProcessor(no-op exporter): the baseline
  b  as a with APMSpanProcessor in front, code location off (APM_CODE_LOCATION_ENABLED=false)
  c  as b with code location on (the default; the walk in C, csrc/callsite.c, when built)
  d  as c with the Python walk (APM_NATIVE_ENABLED=false)

Rounds are interleaved (a, b, c, d, a, b, c, d, ...); each times N requests plus the provider's
flush.  It prints the median µs per DB span of each variant, c/b and d/b (what code location adds
to our processor, each way) and c/a, and the µs per DB span that code location costs (c - b,
d - b).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind
from sqlalchemy import ForeignKey, create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from otel_apm.processors.apm import APMSpanProcessor

AUTHORS = 10


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    books: Mapped[list[Book]] = relationship(back_populates="author")


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")


class NoOpExporter(SpanExporter):
    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS


@dataclass
class Variant:
    label: str
    provider: TracerProvider
    engine: Engine
    samples: list[float]


def make_variant(label: str, apm: dict[str, Any] | None) -> Variant:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(
            Author(name=f"a{i}", books=[Book(title=f"b{i}.{j}") for j in range(3)]) for i in range(AUTHORS)
        )
        session.commit()
    provider = TracerProvider()
    export: SpanProcessor = BatchSpanProcessor(NoOpExporter(), max_queue_size=1 << 20)
    if apm is not None:
        export = APMSpanProcessor(export, console_enabled=False, span_events_enabled=False, **apm)
    provider.add_span_processor(export)
    return Variant(label, provider, engine, [])


def one_request(v: Variant) -> None:
    tracer = v.provider.get_tracer("bench")
    with tracer.start_as_current_span("GET /authors", kind=SpanKind.SERVER), Session(v.engine) as session:
        for author in session.query(Author).all():
            _ = [b.title for b in author.books]  # the lazy load: one query per author


def timed(v: Variant, requests: int) -> float:
    """The instrumentor is a process-wide singleton: each round instruments this variant's engine
    into this variant's provider, and undoes it after, outside the timing."""
    instrumentor = SQLAlchemyInstrumentor()
    instrumentor.instrument(engine=v.engine, tracer_provider=v.provider)
    start = time.perf_counter_ns()
    for _ in range(requests):
        one_request(v)
    v.provider.force_flush()
    elapsed = time.perf_counter_ns() - start
    instrumentor.uninstrument()
    return elapsed / 1000 / (requests * (AUTHORS + 1))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    variants = [
        make_variant("a: SDK + BSP", None),
        make_variant("b: ours, code location off", {"code_location_enabled": False}),
        make_variant("c: ours, code location on", {"code_location_enabled": True}),
        make_variant("d: as c, the Python walk", {"code_location_enabled": True, "native_enabled": False}),
    ]
    for v in variants:
        timed(v, 50)  # warm-up: statement caches, the call-site file cache
    for _ in range(args.rounds):
        for v in variants:
            v.samples.append(timed(v, args.requests))
    med = [statistics.median(v.samples) for v in variants]
    print(f"{args.rounds} rounds x {args.requests} requests x {AUTHORS + 1} DB spans (SQLAlchemy, SQLite)")
    for v, m in zip(variants, med, strict=True):
        print(f"  {v.label:32} {m:8.2f} µs per DB span (median; request span included)")
    ratios_cb = statistics.median(
        c / b for b, c in zip(variants[1].samples, variants[2].samples, strict=True)
    )
    ratios_db = statistics.median(
        d / b for b, d in zip(variants[1].samples, variants[3].samples, strict=True)
    )
    ratios_ca = statistics.median(
        c / a for a, c in zip(variants[0].samples, variants[2].samples, strict=True)
    )
    print(f"  c/b (code location, on our processor): {ratios_cb:.3f}")
    print(f"  d/b (the same with the Python walk): {ratios_db:.3f}")
    print(f"  c/a (ours with code location, on the SDK): {ratios_ca:.3f}")
    print(
        f"  code location costs about {med[2] - med[1]:.2f} µs per DB span ({med[3] - med[1]:.2f} in Python)"
    )
    for v in variants:
        v.provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
