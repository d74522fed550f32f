"""Emission: findings and per-trace measures leave the analyzer through Emitters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from otel_apm.detectors.base import Finding
from otel_apm.model import Trace

if TYPE_CHECKING:
    from otel_apm.config import APMConfig


class Emitter(Protocol):
    """Told of every analyzed trace, with or without findings (metrics need them all), and of
    findings about the process rather than one trace (memory, CPU hot spots) with ``trace``
    None: those findings have ``trace_id`` 0 and may name no span.

    An emitter that holds work (a queue, a file) also has ``shutdown(timeout_s)``, which
    :func:`shutdown_emitters` calls when its deployment stops; emitters without one need none.
    """

    def emit(self, trace: Trace | None, findings: Sequence[Finding]) -> None: ...


def reporters(config: APMConfig) -> list[Emitter]:
    """The reporters the configuration turns on, the same for the in-process processor, the demo
    and the collector, including the rolling statistics (:func:`otel_apm.stats.statistics_of`
    finds them); the OTel events and metrics are built by each deployment, which owns
    their providers."""
    from otel_apm.emit.console import ConsoleReporter
    from otel_apm.stats import Statistics

    chosen: list[Emitter] = []
    if config.console_enabled:
        chosen.append(ConsoleReporter(config.console_interval_s))
    statistics = Statistics(config) if config.stats_enabled else None
    if statistics is not None:
        chosen.append(statistics)
    if config.store_url:
        from otel_apm.store.emitter import StoreEmitter

        chosen.append(StoreEmitter(config, statistics))
    return chosen


def shutdown_emitters(emitters: Sequence[Emitter], timeout_s: float) -> None:
    """Let each emitter that holds work finish it within ``timeout_s`` in all."""
    for emitter in emitters:
        shutdown = getattr(emitter, "shutdown", None)
        if shutdown is not None:
            shutdown(timeout_s)
