"""A small Flask + SQLAlchemy shop on SQLite with the problems otel-apm finds (``otel-apm demo``)."""
