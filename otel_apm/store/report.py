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
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

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


def summary(findings: Sequence[StoredFinding]) -> dict[str, Any]:
    """What the window holds: problems by state, severity and type, and the time they cost."""
    active = [f for f in findings if f.state != "muted"]
    by_type: dict[str, int] = {}
    for f in active:
        by_type[f.type] = by_type.get(f.type, 0) + 1
    return {
        "findings": len(active),
        "states": {state: sum(1 for f in findings if f.state == state) for state in STATES},
        "critical": sum(1 for f in active if f.severity == "critical"),
        "occurrences": sum(f.window_occurrences for f in active),
        "impact_ms": round(sum(f.window_impact_ms for f in active), 3),
        "by_type": dict(sorted(by_type.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def _grouped(findings: Sequence[StoredFinding], key: Callable[[StoredFinding], Any]) -> list[dict[str, Any]]:
    groups: dict[Any, list[StoredFinding]] = {}
    for f in findings:
        if f.state != "muted" and key(f) is not None:
            groups.setdefault(key(f), []).append(f)
    rows = [
        {
            "findings": len(group),
            "types": sorted({f.type for f in group}),
            "occurrences": sum(f.window_occurrences for f in group),
            "impact_ms": round(sum(f.window_impact_ms for f in group), 3),
            "worst_ms": max(f.max_duration_ms for f in group),
            "last_seen": max(f.last_seen for f in group),
            "fingerprints": [f.fingerprint for f in group],
            **ident,
        }
        for ident, group in ((dict(k), g) for k, g in groups.items())
    ]
    rows.sort(key=lambda r: (-r["impact_ms"], -r["occurrences"]))
    return rows


def endpoints(findings: Sequence[StoredFinding]) -> list[dict[str, Any]]:
    """Per service and endpoint: the problems found there, costliest endpoint first."""
    return _grouped(findings, lambda f: (("service", f.service), ("endpoint", f.endpoint)))


def statements(findings: Sequence[StoredFinding]) -> list[dict[str, Any]]:
    """Per normalized statement: the problems it is part of, wherever it runs."""
    return _grouped(findings, lambda f: None if f.statement is None else (("statement", f.statement),))


def build_report(
    store: FindingsStore, window: str, *, limit: int = 10, now: float | None = None
) -> dict[str, Any]:
    """The whole report as plain data (the JSON format and the API's /report)."""
    head, found = read_window(store, window, now=now)
    sections: dict[str, list[dict[str, Any]]] = {key: [] for key, _, _ in SECTIONS}
    for f in found:
        rows = sections[section_of(f.type)]
        if f.state != "muted" and len(rows) < limit:
            rows.append(f.to_dict())
    return {**head, "summary": summary(found), **sections}


def read_window(
    store: FindingsStore, window: str, *, now: float | None = None, **filters: Any
) -> tuple[dict[str, Any], list[StoredFinding]]:
    """The findings of a window (``filters`` as :meth:`FindingsStore.findings` takes them), and
    the head every answer starts with: when, over which window, from which store."""
    now = time.time() if now is None else now
    window_s = parse_window(window)
    since = since_of(window_s, now)
    head = {"generated_at": now, "window": window, "since": since or None, "store": str(store.url)}
    return head, store.findings(since, now=now, **filters)


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


def _where(f: dict[str, Any]) -> str:
    return f"{f['service']} {f['endpoint']}"


def _impact(ms: float) -> str:
    return f"{ms / 1000:.1f}s" if ms >= 10_000 else f"{ms:.0f}ms"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _heading(report: dict[str, Any]) -> str:
    s = report["summary"]
    states = s["states"]
    return (
        f"{s['findings']} problems ({s['critical']} critical; {states['open']} open, "
        f"{states['resolved']} resolved, {states['muted']} muted), seen {s['occurrences']} times, "
        f"costing {_impact(s['impact_ms'])} in all"
    )


def _table(report: dict[str, Any]) -> str:
    lines = [
        f"otel-apm performance report: {report['store']}",
        f"window {report['window']}: since {_when(report['since'])}, until {_when(report['generated_at'])}",
        _heading(report),
    ]
    for key, title, _ in SECTIONS:
        rows = report[key]
        if not rows:
            continue
        lines += [
            "",
            f"{title}:",
            f"  {'#':>2} {'impact':>8} {'seen':>6} {'severity':<8} {'state':<8} problem",
        ]
        for i, f in enumerate(rows, 1):
            lines.append(
                f"  {i:>2} {_impact(f['window_impact_ms']):>8} {f['window_occurrences']:>6} "
                f"{f['severity']:<8} {f['state']:<8} {f['type']} in {_where(f)}: {_cut(f['title'], 90)}"
            )
            detail = f["statement"] or f["code_location"]
            if detail:
                lines.append(f"  {'':>35} {_cut(detail, 100)}")
            lines.append(f"  {'':>35} fix: {_cut(f['recommendation'], 100)}  [{f['fingerprint']}]")
    if not any(report[key] for key, _, _ in SECTIONS):
        lines += ["", "No problems found in this window."]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "# otel-apm performance report",
        "",
        f"Window **{report['window']}**: since {_when(report['since'])}, until "
        f"{_when(report['generated_at'])}. {_heading(report)}.",
    ]
    for key, title, _ in SECTIONS:
        rows = report[key]
        if not rows:
            continue
        lines += [
            "",
            f"## {title}",
            "",
            "| # | Impact | Seen | Severity | State | Where | Problem | Fix |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for i, f in enumerate(rows, 1):
            problem = _md(f["title"]) + (f"<br>`{_md(f['statement'])}`" if f["statement"] else "")
            lines.append(
                f"| {i} | {_impact(f['window_impact_ms'])} | {f['window_occurrences']} | {f['severity']} "
                f"| {f['state']} | {_md(_where(f))} | {problem} | {_md(f['recommendation'])} |"
            )
    if not any(report[key] for key, _, _ in SECTIONS):
        lines += ["", "No problems found in this window."]
    return "\n".join(lines) + "\n"
