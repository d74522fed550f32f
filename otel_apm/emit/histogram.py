"""Histogram points recorded into the SDK's aggregations without the SDK's per-call attribute work.

The OpenTelemetry SDK's ``Histogram.record`` (1.45) costs about 90,000 instructions a call,
nearly half of what the metrics reporter spends on a trace, and adding the value to the
aggregation is under a tenth of it.  The rest is work on the attributes, done again at every
call although the transaction histogram sees the same few attribute sets over and over: the
values are cleaned into a new dict (``Measurement.__post_init__``), that dict is copied and
hashed into a sorted, nested tuple (``_ViewInstrumentMatch.consume_measurement``), and the tuple
looks up the set's aggregation in each reader's view of the instrument.

:class:`DirectHistogram` does that once per attribute set: the set's first point goes through
``record()``, which makes the set's aggregations, and the recorder notes each view's match and
the key the SDK filed the set under.  Later points of the set go to those aggregations as
``record()`` would send them: the same time stamp, context and exemplar decision, the same
``aggregate`` call.  Each point first checks what that relies on (the same readers, every
aggregation still filed under its key, the instrument enabled, a value the SDK accepts) and goes
through ``record()`` when anything differs; with a meter provider that is not the SDK's, or an
SDK laid out otherwise, ``record()`` does it all.  The exported points are the same either way
(tests/test_histogram.py compares the two paths).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from time import time_ns
from typing import Any

from opentelemetry.context import get_current
from opentelemetry.metrics import Histogram
from opentelemetry.sdk.metrics import Histogram as SDKHistogram
from opentelemetry.sdk.metrics import TraceBasedExemplarFilter
from opentelemetry.util.types import AttributeValue

try:  # the SDK's internals this relies on; without them every point goes through record()
    from opentelemetry.sdk.metrics._internal._view_instrument_match import _hash_attributes
    from opentelemetry.sdk.metrics._internal.measurement import Measurement
    from opentelemetry.trace.propagation import _SPAN_KEY
except ImportError:  # pragma: no cover - another SDK version
    _internals = False
else:
    _internals = True


def _plain_measurements() -> bool:
    """Whether a Measurement without attributes can be made by filling its ``__dict__`` (one
    call) instead of by its frozen dataclass ``__init__`` (five ``object.__setattr__`` and
    ``__post_init__``, a sixth of a point's cost): the fields :meth:`DirectHistogram.record`
    fills, in that order, are all that ``__init__`` stores, and a Measurement has a dict."""
    if not _internals:
        return False
    made = Measurement(0.5, 1, None, None, None)  # type: ignore[arg-type]
    fields = ["value", "time_unix_nano", "instrument", "context", "attributes"]
    return list(getattr(made, "__dict__", ())) == fields and not hasattr(Measurement, "__slots__")


_PLAIN = _plain_measurements()
_new = object.__new__  # looked up once: in 3.11 an attribute of a class is looked up at each use
_set = object.__setattr__


@dataclass(frozen=True, slots=True)
class _Route:
    """Where the SDK files one attribute set: each view match's aggregations and the set's key
    there, for the readers the SDK had when the set was first recorded."""

    histogram: Any  # the SDK's Histogram
    consumer: Any  # its SynchronousMeasurementConsumer
    storages: object  # the consumer's reader storages then (replaced when a reader comes or goes)
    attributes: Mapping[str, AttributeValue]  # as the SDK cleaned them
    matches: tuple[tuple[Any, Hashable], ...]  # (_ViewInstrumentMatch, the set's key in it)


class DirectHistogram:
    """One histogram's points by attribute set, each set's route through the SDK learnt at its
    first point."""

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._routes: dict[Hashable, _Route] = {}

    def record(self, key: Hashable, amount: float) -> bool:
        """Record ``amount`` for the attribute set ``key`` stands for; False, recording nothing,
        when the set's route is unknown or no longer holds: then call :meth:`record_new`."""
        route = self._routes.get(key)
        if route is None:
            return False
        histogram = route.histogram
        consumer = route.consumer
        if consumer._reader_storages is not route.storages or not histogram._is_enabled():
            return False
        if not (amount >= 0 and math.isfinite(amount)):  # record() warns and drops it
            return False
        matches = route.matches
        if len(matches) == 1:
            match, filed = matches[0]
            aggregation = match._attributes_aggregation.get(filed)
            if aggregation is None:
                return False
            aggregations: tuple[Any, ...] = (aggregation,)
        else:
            aggregations = tuple(match._attributes_aggregation.get(filed) for match, filed in matches)
            if None in aggregations:
                return False
        now = time_ns()
        context = get_current()
        exemplars = consumer._sdk_config.exemplar_filter
        # The SDK's default filter answers False when the context holds no span (its own three
        # calls to find that out cost a tenth of the point).
        if type(exemplars) is TraceBasedExemplarFilter and context.get(_SPAN_KEY) is None:
            sample = False
        else:
            sample = exemplars.should_sample(amount, now, route.attributes, context)
        # The aggregations read the measurement's attributes only for an exemplar: without one,
        # none are given, which spares cleaning them again.
        if sample or not _PLAIN:
            point = Measurement(amount, now, histogram, context, route.attributes if sample else None)
        else:
            point = _new(Measurement)
            fields = {
                "value": amount,
                "time_unix_nano": now,
                "instrument": histogram,
                "context": context,
                "attributes": None,
            }
            _set(point, "__dict__", fields)
        for aggregation in aggregations:
            aggregation.aggregate(point, sample)
        return True

    def record_new(self, key: Hashable, amount: float, attributes: Mapping[str, AttributeValue]) -> None:
        """Record ``amount`` with ``attributes`` through the SDK's ``record()``, and learn the
        route of the set for the next points of ``key``."""
        self._histogram.record(amount, attributes)
        route = self._route(attributes)
        if route is not None:
            self._routes[key] = route

    def _route(self, attributes: Mapping[str, AttributeValue]) -> _Route | None:
        """Where the SDK filed ``attributes`` just now, or None when it is not the SDK laid out
        as this module knows it (then record() goes on doing all the work)."""
        histogram: Any = self._histogram
        if not isinstance(histogram, SDKHistogram):  # the API's proxy before the SDK is set
            histogram = getattr(histogram, "_real_instrument", None)
        if not _internals or not isinstance(histogram, SDKHistogram):
            return None
        try:
            consumer: Any = histogram._measurement_consumer
            storages = consumer._reader_storages
            cleaned: Any = Measurement(0, 0, histogram, get_current(), attributes).attributes
            matches = []
            for storage in storages.values():
                for match in storage._get_or_init_view_instrument_match(histogram):
                    keys = match._view._attribute_keys
                    kept = dict(cleaned) if keys is None else {k: v for k, v in cleaned.items() if k in keys}
                    filed = _hash_attributes(kept)
                    if filed not in match._attributes_aggregation:
                        return None  # a reader that came meanwhile, or another SDK: not learnt
                    # The dict's own key object: a lookup by it stops at the identity check
                    # instead of comparing the nested tuples item by item.
                    filed = next(k for k in match._attributes_aggregation if k == filed)
                    matches.append((match, filed))
        except (AttributeError, TypeError):
            return None
        return _Route(histogram, consumer, storages, cleaned, tuple(matches))
