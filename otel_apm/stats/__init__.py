"""Rolled-up statistics, fed by analyzed traces: the seed's getPerformanceSummary and slow-query
statistics, with bounded memory and a bounded relative error.

API (stable; the findings store builds on it):

- :class:`~otel_apm.stats.sketch.DDSketch`: mergeable quantile sketch, relative error <= alpha;
  ``add``, ``merge``, ``quantile(q)``, ``count``/``sum``/``min``/``max``, ``to_dict()`` /
  ``from_dict()`` (JSON-able, ``"version": 1``).
- :class:`~otel_apm.stats.rollup.Statistics`: an Emitter.  ``snapshot(window)`` with window
  "minute", "hour", "day" or "all" returns a :class:`Snapshot` (``overall``, ``endpoints``,
  ``statements``: typed dataclasses with ``to_dict()``).  ``closed_minutes()`` returns and
  forgets the :class:`MinuteRecord` s (one per endpoint or statement and closed wall-clock
  minute: counters plus the sketch) closed since the last call; ``MinuteRecord.to_dict()`` /
  ``from_dict()`` for a store, and :func:`merge_records` + :func:`summarize` to turn stored
  records back into a Snapshot for any span of minutes.
- :func:`statistics_of`: the Statistics among a deployment's emitters (processor, collector).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from otel_apm.stats.rollup import (
    OVERFLOW,
    WINDOWS,
    EndpointStats,
    MinuteRecord,
    Snapshot,
    StatementInfo,
    StatementStats,
    Statistics,
    Tally,
    Window,
    merge_records,
    summarize,
)
from otel_apm.stats.sketch import DDSketch

if TYPE_CHECKING:
    from otel_apm.config import APMConfig

__all__ = [
    "OVERFLOW",
    "WINDOWS",
    "DDSketch",
    "EndpointStats",
    "MinuteRecord",
    "Snapshot",
    "StatementInfo",
    "StatementStats",
    "Statistics",
    "Tally",
    "Window",
    "merge_records",
    "statistics_from_config",
    "statistics_of",
    "summarize",
]


def statistics_from_config(config: APMConfig) -> Statistics:
    return Statistics(
        relative_accuracy=config.stats_relative_accuracy,
        max_buckets=config.stats_max_buckets,
        slots=config.stats_slots,
        max_endpoints=config.stats_max_endpoints,
        max_statements=config.stats_max_statements,
        max_endpoints_per_statement=config.stats_max_endpoints_per_statement,
    )


def statistics_of(emitters: Iterable[object]) -> Statistics | None:
    """The rolled-up statistics a deployment keeps, when its emitters include them."""
    return next((e for e in emitters if isinstance(e, Statistics)), None)
