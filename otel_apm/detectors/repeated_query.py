"""Repeated identical query: the same statement with the same values, run again in one request.

Unlike an N+1, where each query fetches another row, these return the same rows every time:
a cache candidate, or a lookup to hoist out of a loop.  Values are known to be the same only
when the instrumentation recorded the parameters (``db.statement.parameters``,
``db.query.parameter.*``), or when the statement has no placeholders (its literals are in the
text).  With placeholders and no recorded parameters the values are unknown: nothing is said.
"""

from __future__ import annotations

from otel_apm.config import APMConfig
from otel_apm.detectors.advice import reuse_result, stack_of
from otel_apm.detectors.base import Detector, EvidenceValue, Finding, by_start, severity_for, union_ms
from otel_apm.detectors.dbshape import db_shape
from otel_apm.detectors.history import History
from otel_apm.detectors.summary import TraceSummary
from otel_apm.model import DB, SpanView, Trace
from otel_apm.sql import SqlShape, parse_sql

Key = tuple[str, str | None]  # raw statement text, recorded parameters


def identical_key(span: SpanView, shape: SqlShape) -> Key | None:
    """What makes two executions identical, or None when their values cannot be known alike.

    Cached spans paid no round trip and a truncated text may hide a difference: neither counts.
    """
    text = span.statement
    if not text or span.cached or shape.truncated or (span.db_params is None and shape.placeholders):
        return None
    return text, span.db_params


def repeats_knowable(summary: TraceSummary, threshold: int) -> bool:
    """Whether some text ran ``threshold`` times or more and its runs' values can be known
    alike: recorded, or in the text (see :func:`identical_key`).  The reference of the compiled
    ``repeats_knowable`` (csrc/traceindex.c), and the fallback for a summary it declines."""
    for text, spans in summary.texts().items():
        if len(spans) >= threshold:
            shape = parse_sql(text)
            if shape.truncated:
                continue
            if not shape.placeholders:
                return True
            for s in spans:  # a loop, not any() over a generator: a third of the cost
                if s.db_params is not None:
                    return True
    return False


class RepeatedIdenticalQueryDetector(Detector):
    """One finding per statement shape run with the same values APM_REPEATED_QUERY_THRESHOLD
    times or more in the trace, under any parents."""

    type = "repeated_identical_query"
    categories = frozenset({DB})

    @classmethod
    def can_fire(cls, config: APMConfig, summary: TraceSummary) -> bool:
        """Some text ran often enough, and its runs' values can be known alike (see
        :func:`repeats_knowable`, which the summary's compiled module has a twin of)."""
        threshold = config.repeated_query_threshold
        compiled = summary.compiled
        known = None if compiled is None else compiled.repeats_knowable(summary.statements, threshold)
        return repeats_knowable(summary, threshold) if known is None else bool(known)

    def __init__(self, config: APMConfig, trace: Trace, history: History) -> None:
        super().__init__(config, trace, history)
        # Runs by text, and by text and parameters where recorded; nothing is parsed per span.
        self._groups: dict[str | Key, list[SpanView]] = {}

    def visit_span(self, span: SpanView) -> None:
        text = span.statement
        if text and not span.cached:
            params = span.db_params
            key = text if params is None else (text, params)
            group = self._groups.get(key)
            if group is None:
                self._groups[key] = [span]
            else:
                group.append(span)

    def on_complete(self) -> list[Finding]:
        threshold = self.config.repeated_query_threshold
        by_shape: dict[str, tuple[SqlShape, list[list[SpanView]]]] = {}
        for spans in self._groups.values():
            if len(spans) >= threshold:
                shape = db_shape(spans[0])
                if identical_key(spans[0], shape) is not None:
                    by_shape.setdefault(shape.fingerprint, (shape, []))[1].append(spans)
        return [self._finding(shape, groups) for shape, groups in by_shape.values()]

    def _finding(self, shape: SqlShape, groups: list[list[SpanView]]) -> Finding:
        spans = sorted((s for group in groups for s in group), key=by_start)
        count = len(spans)
        most = max(len(group) for group in groups)
        total = union_ms(spans)
        # Keeping the first result of each set of values saves every later run of it.
        impact = sum(
            sum(s.duration_ms for s in group) - sum(s.duration_ms for s in group) / len(group)
            for group in groups
        )
        threshold = self.config.repeated_query_threshold
        evidence: dict[str, EvidenceValue] = {
            "threshold": threshold,
            "db.system": spans[0].db_system or "",
            "db.tables": shape.tables,
            "statement.fingerprint": shape.fingerprint,
            "value_sets": len(groups),
            "max_repeats": most,
            "values": "recorded parameters" if spans[0].db_params is not None else "literals in the text",
        }
        what = f"{shape.operation or 'query'} on {', '.join(shape.tables) or 'the table'}"
        sets = f" ({len(groups)} sets of values, {count} runs)" if len(groups) > 1 else ""
        return self.finding(
            title=f"Repeated identical query: {most} x {what} ({total:.1f} ms)",
            severity=severity_for(most, threshold, self.config.critical_factor),
            identity=(shape.fingerprint,),
            per_endpoint=True,
            spans=spans,
            total_duration_ms=total,
            impact_ms=impact,
            recommendation=(
                f"The same {what} with the same values ran {most} times in this request{sets}, "
                f"{total:.1f} ms in all; reusing the first result would save about {impact:.1f} ms "
                f"per request. {reuse_result(stack_of(self.trace, spans), shape)}"
            ),
            statement=shape.normalized,
            evidence=evidence,
        )
