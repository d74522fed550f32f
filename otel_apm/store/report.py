"""The seed's PerformanceReport, read from the store: a summary, then slow queries, N+1 issues,
memory warnings and bottlenecks, each ranked by the time it cost in the window.

One set of functions builds plain dicts for every reader: ``otel-apm report`` renders them as
a terminal table, JSON or Markdown, and the collector's JSON API serves them as they are.
Muted findings are counted in the summary and listed nowhere else.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from otel_apm.stats import Snapshot
from otel_apm.store.db import STATES, FindingsStore, StoredFinding

WINDOW_HELP = "how far back: 15m, 1h, 24h, 7d ... or all"
_WINDOW = re.compile(r"(\d+)([mhd])")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400}

# The report's sections, the seed's names; a finding type is in the first section that claims it.
SECTIONS: tuple[tuple[str, str, Callable[[str], bool]], ...] = (
    ("slow_queries", "Slow queries", lambda t: t in ("slow_query", "slow_query_outlier")),
    (
        "n_plus_one",
        "N+1 issues",
        lambda t: t in ("n_plus_one_query", "mn_plus_one_query", "n_plus_one_api_call"),
    ),
    ("memory_warnings", "Memory warnings", lambda t: t.startswith("memory")),
    (
        "bottlenecks",
        "Bottlenecks",
        lambda t: (
            t
            in (
                "bottleneck",
                "slow_request",
                "chatty_transaction",
                "consecutive_db_queries",
                "consecutive_http_calls",
                "large_payload",
            )
            or t.startswith("cpu")
        ),
    ),
    ("other", "Other problems", lambda t: True),
)


def parse_window(text: str) -> float | None:
    """Seconds in a window such as ``1h``, ``24h``, ``7d`` or ``15m``; None for ``all``.
    ValueError naming what is accepted otherwise."""
    text = text.strip().lower()
    if text == "all":
        return None
    match = _WINDOW.fullmatch(text)
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"window {text!r}: expected {WINDOW_HELP}")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def since_of(window_s: float | None, now: float) -> float:
    return 0.0 if window_s is None else now - window_s


def section_of(finding_type: str) -> str:
    return next(key for key, _, claims in SECTIONS if claims(finding_type))


def summary(findings: Sequence[StoredFinding], statistics: Snapshot) -> dict[str, Any]:
    """What the window holds: the transactions (the seed's PerformanceSummary: count, mean, p95,
    error rate, throughput; None without statistics), and the problems by state, severity and
    type with the time they cost."""
    active = [f for f in findings if f.state != "muted"]
    by_type: dict[str, int] = {}
    for f in active:
        by_type[f.type] = by_type.get(f.type, 0) + 1
    return {
        "transactions": statistics.overall.to_dict() if statistics.overall.count else None,
        "findings": len(active),
        "states": {state: sum(1 for f in findings if f.state == state) for state in STATES},
        "critical": sum(1 for f in active if f.severity == "critical"),
        "occurrences": sum(f.window_occurrences for f in active),
        "impact_ms": round(sum(f.window_impact_ms for f in active), 3),
        "by_type": dict(sorted(by_type.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def _problems(group: Sequence[StoredFinding]) -> dict[str, Any]:
    return {
        "findings": len(group),
        "types": sorted({f.type for f in group}),
        "occurrences": sum(f.window_occurrences for f in group),
        "impact_ms": round(sum(f.window_impact_ms for f in group), 3),
        "fingerprints": [f.fingerprint for f in group],
    }


def _joined(
    names: tuple[str, str],
    stats: Iterable[tuple[tuple[str, str], dict[str, Any]]],
    findings: Sequence[StoredFinding],
    key: Callable[[StoredFinding], tuple[str, str] | None],
) -> list[dict[str, Any]]:
    """Statistics and the problems found, side by side per key; a key may have only one of them
    (no traffic in the window's statistics, or no problem).  The busiest first."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for k, data in stats:
        rows[k] = {names[0]: k[0], names[1]: k[1], "stats": data, "problems": None}
    groups: dict[tuple[str, str], list[StoredFinding]] = {}
    for f in findings:
        found = key(f)
        if f.state != "muted" and found is not None:
            groups.setdefault(found, []).append(f)
    for k, group in groups.items():
        row = rows.setdefault(k, {names[0]: k[0], names[1]: k[1], "stats": None})
        row["problems"] = _problems(group)
    return sorted(
        rows.values(),
        key=lambda r: (
            -(r["stats"]["total_ms"] if r["stats"] else 0.0),
            -(r["problems"]["impact_ms"] if r["problems"] else 0.0),
        ),
    )


def endpoints(findings: Sequence[StoredFinding], statistics: Snapshot) -> list[dict[str, Any]]:
    """Per service and endpoint: latency, errors, DB share (the statistics) and the problems found."""
    return _joined(
        ("service", "endpoint"),
        (((e.service, e.endpoint), e.to_dict()) for e in statistics.endpoints),
        findings,
        lambda f: (f.service, f.endpoint),
    )


def statements(findings: Sequence[StoredFinding], statistics: Snapshot) -> list[dict[str, Any]]:
    """Per service and normalized statement: its timings, the endpoints running it, its problems."""
    return _joined(
        ("service", "statement"),
        (((s.service, s.statement), s.to_dict()) for s in statistics.statements),
        findings,
        lambda f: None if f.statement is None else (f.service, f.statement),
    )


def build_report(
    store: FindingsStore,
    window: str,
    *,
    limit: int = 10,
    service: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The whole report as plain data (the JSON format and the API's /report), of one
    ``service`` or all."""
    head, found = read_window(store, window, now=now, service=service)
    stats = read_statistics(store, head)
    sections: dict[str, list[dict[str, Any]]] = {key: [] for key, _, _ in SECTIONS}
    for f in found:
        rows = sections[section_of(f.type)]
        if f.state != "muted" and len(rows) < limit:
            rows.append(f.to_dict())
    return {
        **head,
        # statistics records another version of otel-apm wrote, which this one cannot read
        "unreadable_records": store.unreadable,
        "summary": summary(found, stats),
        **sections,
        "endpoints": endpoints(found, stats)[:limit],
        "statements": statements(found, stats)[:limit],
    }


def read_window(
    store: FindingsStore, window: str, *, now: float | None = None, **filters: Any
) -> tuple[dict[str, Any], list[StoredFinding]]:
    """The findings of a window (``filters`` as :meth:`FindingsStore.findings` takes them), and
    the head every answer starts with: when, over which window and service (None: all), from
    which store."""
    now = time.time() if now is None else now
    window_s = parse_window(window)
    since = since_of(window_s, now)
    head = {
        "generated_at": now,
        "window": window,
        "since": since or None,
        "service": filters.get("service"),
        "store": str(store.url),
    }
    return head, store.findings(since, now=now, **filters)


def read_statistics(store: FindingsStore, head: dict[str, Any]) -> Snapshot:
    """The stored statistics of the window (and service) ``head`` (from :func:`read_window`)
    describes."""
    return store.statistics(
        head["window"], head["since"] or 0.0, head["generated_at"], service=head["service"]
    )


# -- rendering ------------------------------------------------------------------------------------------


def render(report: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report, indent=2, sort_keys=False) + "\n"
    if fmt == "markdown":
        return _markdown(report)
    return _table(report)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "the start"
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _span(report: dict[str, Any]) -> str:
    return f"since {_when(report['since'])}, until {_when(report['generated_at'])}"


def _impact(ms: float) -> str:
    return f"{ms / 1000:.1f}s" if ms >= 10_000 else f"{ms:.0f}ms"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}ms" if value < 100 else f"{value:.0f}ms"


def _share(value: float) -> str:
    return f"{value * 100:.1f}%"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _transactions(report: dict[str, Any]) -> str:
    t = report["summary"]["transactions"]
    if t is None:
        return "No transaction statistics in this window."
    return (
        f"{t['count']} transactions, {t['throughput_per_s'] * 60:.1f}/min; mean {_ms(t['mean_ms'])}, "
        f"p95 {_ms(t['p95_ms'])}, p99 {_ms(t['p99_ms'])}; errors {_share(t['error_rate'])}; "
        f"DB {_share(t['db_time_share'])} of the time, {t['queries_per_request']:.1f} queries a request"
    )


def _unreadable(report: dict[str, Any]) -> list[str]:
    n = report["unreadable_records"]
    return [f"{n} statistics records written by another version of otel-apm are left out."] if n else []


def _problems_text(report: dict[str, Any]) -> str:
    s = report["summary"]
    states = s["states"]
    return (
        f"{s['findings']} problems ({s['critical']} critical; {states['open']} open, "
        f"{states['resolved']} resolved, {states['muted']} muted), seen {s['occurrences']} times, "
        f"costing {_impact(s['impact_ms'])} in all"
    )


# A table: its title, its header, and per row its cells and the lines shown under it (the
# terminal) or folded into its last cell (Markdown).
_Table = tuple[str, list[str], list[tuple[list[str], list[str]]]]


class _Code(str):
    """Text that Markdown shows as code (a statement, a code location); plain on a terminal."""

    __slots__ = ()


def _tables(report: dict[str, Any]) -> list[_Table]:
    tables: list[_Table] = []
    rows: list[tuple[list[str], list[str]]] = []
    for e in report["endpoints"]:
        st, pr = e["stats"], e["problems"]
        found = f"{pr['findings']} ({', '.join(pr['types'])})" if pr else "-"
        cells = [f"{e['service']} {e['endpoint']}"]
        if st is None:
            cells += ["-"] * 7
        else:
            cells += [
                str(st["count"]),
                _ms(st["mean_ms"]),
                _ms(st["p95_ms"]),
                str(st["slow"]),
                _share(st["error_rate"]),
                _share(st["db_time_share"]),
                f"{st['queries_per_request']:.1f}",
            ]
        rows.append(([*cells, found], []))
    if rows:
        header = ["endpoint", "requests", "mean", "p95", "slow", "errors", "db share", "queries", "problems"]
        tables.append(("Endpoints, busiest first", header, rows))
    for key, title, _ in SECTIONS:
        rows = []
        for i, f in enumerate(report[key], 1):
            detail = [_Code(f["statement"] or f["code_location"] or ""), f"fix: {f['recommendation']}"]
            cells = [str(i), _impact(f["window_impact_ms"]), str(f["window_occurrences"]), f["severity"]]
            cells += [f["state"], f"{f['type']} in {f['service']} {f['endpoint']}: {f['title']}"]
            rows.append((cells, [d for d in detail if d] + [f"fingerprint {f['fingerprint']}"]))
        if rows:
            tables.append((title, ["#", "impact", "seen", "severity", "state", "problem"], rows))
    rows = []
    for st_row in report["statements"]:
        st = st_row["stats"]
        cells = ["-"] * 6 if st is None else [str(st["count"]), str(st["slow"]), _impact(st["total_ms"])]
        if st is not None:
            cells += [_ms(st["mean_ms"]), _ms(st["p95_ms"]), _ms(st["max_ms"])]
        endpoints = ", ".join(st["endpoints"]) if st else ""
        rows.append(([*cells, _Code(st_row["statement"])], [f"in {endpoints}"] if endpoints else []))
    if rows:
        tables.append(
            (
                "Statements, most time first",
                ["runs", "slow", "total", "mean", "p95", "max", "statement"],
                rows,
            )
        )
    return tables


def _table(report: dict[str, Any]) -> str:
    lines = [
        f"otel-apm performance report: {report['store']}"
        + (f", service {report['service']}" if report["service"] else ""),
        f"window {report['window']}: {_span(report)}",
        _transactions(report),
        _problems_text(report),
        *_unreadable(report),
    ]
    for title, header, rows in _tables(report):
        widths = [max(len(h), *(len(_cut(r[0][i], 100)) for r in rows)) for i, h in enumerate(header)]
        widths[-1] = 0  # the last column is free text
        lines += ["", f"{title}:", "  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
        indent = "  " + " " * sum(w + 2 for w in widths[:-1])
        for cells, under in rows:
            lines.append("  " + "  ".join(_cut(c, 100).ljust(w) for c, w in zip(cells, widths, strict=True)))
            lines += [indent + _cut(text, 100) for text in under]
    if not any(report[key] for key, _, _ in SECTIONS):
        lines += ["", "No problems found in this window."]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _md(text: str) -> str:
    escaped = text.replace("|", "\\|").replace("\n", " ")
    return f"`{escaped}`" if isinstance(text, _Code) else escaped


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "# otel-apm performance report",
        "",
        f"Window **{report['window']}**: {_span(report)}."
        + (f" Service **{_md(report['service'])}**." if report["service"] else ""),
        "",
        f"{_transactions(report)}. {_problems_text(report)}.",
        *_unreadable(report),
    ]
    for title, header, rows in _tables(report):
        lines += ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for cells, under in rows:
            last = "<br>".join(_md(text) for text in [cells[-1], *under])
            lines.append("| " + " | ".join([*(_md(c) for c in cells[:-1]), last]) + " |")
    if not any(report[key] for key, _, _ in SECTIONS):
        lines += ["", "No problems found in this window."]
    return "\n".join(lines) + "\n"
