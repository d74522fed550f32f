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
    "statistics_of",
    "summarize",
]


def statistics_of(emitters: Iterable[object]) -> Statistics | None:
    """The rolled-up statistics a deployment keeps, when its emitters include them."""
    return next((e for e in emitters if isinstance(e, Statistics)), None)
