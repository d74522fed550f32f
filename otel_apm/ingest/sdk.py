"""SDK ReadableSpan → SpanView, on the application's thread at every span end: keep it lean."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

from opentelemetry.sdk.trace import Event, ReadableSpan, Span
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import SpanKind, StatusCode

from otel_apm import model
from otel_apm.semconv import ANALYZED_KEYS, fill_attributes, filled_slots

_ERROR = StatusCode.ERROR
_KIND = {kind: kind.value for kind in SpanKind}  # Enum.value is a descriptor call; a dict is not
_EMPTY: Mapping[str, Any] = {}

# The compiled reader's fills by span shape (name, kind, error and the analyzed attributes'
# values; see csrc/sdkviews.c), across spans and threads: a native Fills, made with the first
# compiled reader.  Bounded as otlp.py's are: emptied when full, so unique statements cost a few
# MiB at most.
_FILLS: Any = None
FILLS_MAX = 4096


def plain_attributes(span: ReadableSpan) -> Mapping[str, Any]:
    """The span's attributes, as the dict the SDK keeps inside BoundedAttributes when it can.

    ``span.attributes`` wraps BoundedAttributes in a MappingProxyType, and every ``get`` then goes
    through Mapping.get -> __getitem__ -> KeyError in Python: 0.36 µs a hit against 0.04 µs on
    the dict, for about ten lookups a span.  The public mapping stays the fallback should the
    SDK's internals change.
    """
    sdk: Any = span  # the SDK's internals, read directly: a getattr() call costs more than they do
    try:
        inner = sdk._attributes._dict
    except AttributeError:
        inner = None
    if type(inner) is dict:
        return inner
    return span.attributes or _EMPTY


def add_on_ending(span: Span, attrs: Mapping[str, str | int]) -> None:
    """Add our attributes to a span in the processors' ``_on_ending`` hook.

    The SDK has marked the span's attributes read-only by then (``set_attributes`` would only
    warn), yet no processor has been handed the ended span: what is added here is what every
    exporter sees, as if it had been added while the span ran.  The SDK's own rules hold: without
    room for all of ours, none is added (a full dict evicts its oldest entry, the statement or
    the URL), and a value-length limit cuts the strings.  A span that is not the SDK's we know
    gets nothing: it has ended, and its own methods refuse.
    """
    sdk: Any = span
    try:
        raw = sdk._attributes
        inner, maxlen, max_value_len = raw._dict, raw.maxlen, raw.max_value_len
    except AttributeError:
        return
    if type(inner) is not dict or (maxlen is not None and len(inner) + len(attrs) > maxlen):
        return
    if max_value_len is None:
        inner.update(attrs)
    else:
        inner.update({k: v[:max_value_len] if isinstance(v, str) else v for k, v in attrs.items()})


def _view_public(span: ReadableSpan, service: str) -> model.SpanView:
    ctx = span.context
    parent = span.parent
    view = model.SpanView(
        ctx.trace_id,
        ctx.span_id,
        parent.span_id if parent is not None and not parent.is_remote else 0,
        span.name,
        _KIND[span.kind],
        span.start_time or 0,
        span.end_time or 0,
        span.status.status_code is _ERROR,
        service,
    )
    attrs = plain_attributes(span)
    if attrs:
        fill_attributes(view, attrs)
    scope = span.instrumentation_scope
    if scope is not None:
        view.scope = scope.name
    if span.events:
        _read_exception(view, span.events)
    return view


def _read_exception(view: model.SpanView, events: Sequence[Event]) -> None:
    """The type of the last recorded exception: what the error detector groups by."""
    for event in events:
        if event.name == "exception":
            kind = (event.attributes or _EMPTY).get("exception.type")
            if kind is not None:
                view.exception_type = str(kind)


def _view_fields(span: Any, service: str) -> model.SpanView:
    """The same view from the fields ReadableSpan's properties return (SpanContext is a tuple:
    trace_id, span_id, is_remote at 0, 1, 2): a dozen property calls less per span."""
    ctx = span._context
    parent = span._parent
    view = model.SpanView(
        ctx[0],
        ctx[1],
        parent[1] if parent is not None and not parent[2] else 0,
        span._name,
        _KIND[span._kind],
        span._start_time or 0,
        span._end_time or 0,
        span._status._status_code is _ERROR,
        service,
    )
    attrs = plain_attributes(span)
    if attrs:
        fill_attributes(view, attrs)
    scope = span._instrumentation_scope
    if scope is not None:
        view.scope = scope._name
    if span._events:
        _read_exception(view, span._events)
    return view


class SpanReader:
    """Builds SpanViews from SDK spans, by the fast paths once they have proved themselves.

    The fast path reads ReadableSpan's fields rather than its properties (0.55 µs a span less,
    measured).  Those fields are the SDK's internals, so the first span is read both ways and
    the fast path is used only if every field agrees; an SDK that changes them costs speed, not
    correctness.  Given the compiled module (``otel_apm._native``), the first span is read by
    its ``read_sdk_spans`` too, and ``read_all`` uses it from then on if that view agrees as well.
    """

    def __init__(self, native: ModuleType | None = None) -> None:
        self.read: Callable[[ReadableSpan, str], model.SpanView] = self._probe
        self.read_all: Callable[[Sequence[ReadableSpan], str], list[model.SpanView]] = self._read_each
        self.fast = False
        self.compiled = False
        # What csrc/sdkviews.c reads with, after the spans and the service: given to the compiled
        # intake too, which reads a span as it ends once ``compiled`` (csrc/intake.c).
        self.setup: tuple[Any, ...] | None = None
        self._compiled = None
        if native is not None:
            self.setup = _compiled_setup(native.Fills)
            self._compiled = _compiled_reader(native.read_sdk_spans, self.setup)

    def _probe(self, span: ReadableSpan, service: str) -> model.SpanView:
        view = _view_public(span, service)
        self.fast = _agrees(view, lambda: _view_fields(span, service))
        self.read = _view_fields if self.fast else _view_public
        compiled = self._compiled
        if compiled is not None:
            self.compiled = _agrees(view, lambda: compiled([span], service)[0])
            if self.compiled:
                self.read_all = compiled
        return view

    def _read_each(self, spans: Sequence[ReadableSpan], service: str) -> list[model.SpanView]:
        read = self.read
        return [read(s, service) for s in spans]


def _compiled_setup(fills_type: Callable[[int], Any]) -> tuple[Any, ...]:
    """read_sdk_spans' arguments after the spans and the service (see csrc/sdkviews.c): the
    semconv.filled_slots remembered per span shape in :data:`_FILLS`, and the Python functions
    it falls back on."""
    global _FILLS
    if _FILLS is None:
        _FILLS = fills_type(FILLS_MAX)
    return (ANALYZED_KEYS, _KIND, _ERROR, _FILLS, filled_slots, _read_exception, _view_fields, BoundedList)


def _compiled_reader(
    read_sdk_spans: Callable[..., list[model.SpanView]], setup: tuple[Any, ...]
) -> Callable[[Sequence[ReadableSpan], str], list[model.SpanView]]:
    """``read_all`` by csrc/sdkviews.c: _view_fields in C."""

    def read_all(spans: Sequence[ReadableSpan], service: str) -> list[model.SpanView]:
        return read_sdk_spans(spans, service, *setup)

    return read_all


def _agrees(view: model.SpanView, read: Callable[[], model.SpanView]) -> bool:
    """Whether ``read()`` makes a view equal to ``view`` in every slot (False if it raises)."""
    try:
        other = read()
        return all(getattr(other, k) == getattr(view, k) for k in model.SpanView.__slots__)
    except Exception:
        return False
