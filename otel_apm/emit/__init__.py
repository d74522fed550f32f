"""Emission: findings and per-trace measures leave the analyzer through Emitters."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from otel_apm.detectors.base import Finding
from otel_apm.model import Trace

_log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

    from otel_apm.config import APMConfig


class Emitter(Protocol):
    """Told of every analyzed trace, with or without findings (metrics need them all), and of
    findings about the process rather than one trace (memory, CPU hot spots) with ``trace``
    None: those findings have ``trace_id`` 0 and may name no span.

    An emitter that holds work (a queue, a file) also has ``shutdown(timeout_s)``, which
    :func:`shutdown_emitters` calls when its deployment stops; emitters without one need none.
    """

    def emit(self, trace: Trace | None, findings: Sequence[Finding]) -> None: ...


def reporters(
    config: APMConfig, meter_provider: MeterProvider | None = None, *, metrics: bool = True
) -> list[Emitter]:
    """The reporters APM_REPORTERS turns on, the same for the in-process processor, the demo and
    the collector.  The metrics reporter and the webhook's own counters record through
    ``meter_provider`` (the global one when None); a deployment with nowhere to send metrics (a
    collector without a downstream) passes ``metrics=False``.  The rolling statistics
    (APM_STATS_ENABLED) are among them, found by :func:`otel_apm.stats.statistics_of`, and the
    findings store (APM_STORE_URL), which keeps their closed minutes too.  The OTel events are
    built by each deployment, which owns their provider."""
    config.check_combination()
    chosen: list[Emitter] = []
    if config.reports_to("console"):
        from otel_apm.emit.console import ConsoleReporter

        chosen.append(ConsoleReporter(config.console_interval_s, config.console_max_per_interval))
    if config.reports_to("webhook"):
        from otel_apm.emit.webhook import WebhookReporter

        chosen.append(WebhookReporter(config, meter_provider))
    elif config.webhook_url:
        _log.warning(
            "otel-apm: APM_WEBHOOK_URL is set but APM_REPORTERS does not name webhook: nothing is sent"
        )
    if metrics and config.reports_to("metrics"):
        from otel_apm.emit.metrics import MetricsEmitter

        chosen.append(MetricsEmitter(meter_provider, config))
    statistics = None
    if config.stats_enabled:
        from otel_apm.stats import Statistics

        statistics = Statistics(config)
        chosen.append(statistics)
    if config.store_url:
        from otel_apm.store.emitter import StoreEmitter

        chosen.append(StoreEmitter(config, statistics))
    return chosen


def shutdown_emitters(
    emitters: Sequence[Emitter], timeout_s: float, failed: Callable[[Exception], None] | None = None
) -> None:
    """Let each emitter that holds work finish it, each within ``timeout_s``: a webhook that
    cannot deliver must not take the store's time to write.  One that raises is reported to
    ``failed`` (logged when None) and the others still finish theirs."""
    for emitter in emitters:
        shutdown = getattr(emitter, "shutdown", None)
        if shutdown is not None:
            try:
                shutdown(timeout_s)
            except Exception as exc:
                if failed is None:
                    _log.warning("otel-apm: %s failed to shut down: %r", type(emitter).__name__, exc)
                else:
                    failed(exc)
