"""The emit stage's persistent end: findings grouped by fingerprint in SQLite or PostgreSQL
(:mod:`otel_apm.store.db`), written by :class:`otel_apm.store.emitter.StoreEmitter` and read
back by ``otel-apm report`` and the collector's JSON API (:mod:`otel_apm.store.report`)."""
