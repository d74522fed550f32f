"""``otel-apm evaluate``: run the analyzer over a labelled corpus of OTLP/JSON traces and score it.

A corpus is a folder of ``<name>.json`` files, each one OTLP/JSON ExportTraceServiceRequest (as an
OTLP/HTTP client sends it), and a ``labels.yaml`` giving, per file, every finding the default
settings must produce.  Scoring per detector type: a labelled finding that is found is a true
positive, one that is not a false negative, and a finding nobody labelled a false positive.  So a
detector change that finds more, or less, than it should shows up as numbers and as named files,
not as a vague feeling about the demo.

Each file gets its own Analyzer, the way one process or one collector would see those requests,
and its traces are analyzed in the order their roots started: detectors that learn from earlier
traces (``slow_query_outlier``'s recent p95) see the history the file was written to build.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from otel_apm.analyze import Analyzer
from otel_apm.config import APMConfig
from otel_apm.detectors import DEFAULT_DETECTORS, Detector, Finding
from otel_apm.ingest.otlp import IngestCounts, otlp_json_to_request, views_from_request
from otel_apm.model import SpanView, Trace

DEFAULT_DIR = Path("tests") / "corpus"
LABELS_FILE = "labels.yaml"
_FIELDS = ("count", "code", "service", "endpoint")  # what a label may pin besides the type
_LABEL_KEYS = frozenset({"type", *_FIELDS})


class CorpusError(ValueError):
    """The corpus cannot be read as a whole (no labels file, a malformed one)."""


@dataclass(frozen=True)
class Expected:
    """One finding a file must produce: its type, and whichever of the other fields the label pins."""

    type: str
    count: int | None = None
    code: str | None = None
    service: str | None = None
    endpoint: str | None = None

    def matches(self, finding: Finding) -> bool:
        return finding.type == self.type and not self.differences(finding)

    def differences(self, finding: Finding) -> list[str]:
        """The pinned fields the finding gets wrong, as "count 9 (expected 10)"."""
        out = []
        for name in _FIELDS:
            want = getattr(self, name)
            if want is not None:
                got = _field(finding, name)
                if got != want:
                    out.append(f"{name} {got!r} (expected {want!r})")
        return out

    def describe(self) -> str:
        pinned = ", ".join(f"{n}={getattr(self, n)!r}" for n in _FIELDS if getattr(self, n) is not None)
        return f"{self.type}({pinned})" if pinned else self.type


@dataclass(frozen=True)
class FileLabels:
    description: str
    expect: tuple[Expected, ...]
    negative_for: tuple[str, ...] = ()


@dataclass(frozen=True)
class Mismatch:
    """A label that failed: ``kind`` is "missing" (false negative), "unexpected" (false positive)
    or "unreadable" (the file or its label could not be used at all)."""

    file: str
    type: str
    kind: str
    why: str


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None


@dataclass
class Report:
    directory: str
    files: int = 0
    detectors: tuple[str, ...] = ()
    scores: dict[str, Score] = field(default_factory=dict)
    mismatches: list[Mismatch] = field(default_factory=list)
    positives: dict[str, list[str]] = field(default_factory=dict)  # type -> files that expect it
    negatives: dict[str, list[str]] = field(default_factory=dict)  # type -> files built not to fire it

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def to_json(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "files": self.files,
            "ok": self.ok,
            "detectors": list(self.detectors),
            "types": {
                t: {"tp": s.tp, "fp": s.fp, "fn": s.fn, "precision": s.precision, "recall": s.recall}
                for t, s in sorted(self.scores.items())
            },
            "mismatches": [vars(m) for m in self.mismatches],
            "positives": {t: sorted(f) for t, f in sorted(self.positives.items())},
            "negatives": {t: sorted(f) for t, f in sorted(self.negatives.items())},
        }


def _field(finding: Finding, name: str) -> Any:
    return getattr(finding, "code_location" if name == "code" else name, None)


def load_labels(directory: Path) -> dict[str, FileLabels]:
    """labels.yaml as FileLabels per file name (without ``.json``); CorpusError when malformed."""
    path = directory / LABELS_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CorpusError(f"{path}: {exc}") from None
    if not isinstance(data, Mapping):
        raise CorpusError(f"{path}: expected a mapping of file name to label")
    out: dict[str, FileLabels] = {}
    for name, label in data.items():
        where = f"{path}: {name}"
        if not isinstance(label, Mapping) or not isinstance(label.get("expect"), list):
            raise CorpusError(f"{where}: needs an 'expect' list (empty when nothing must be found)")
        expect = []
        for i, item in enumerate(label["expect"]):
            if not isinstance(item, Mapping) or not isinstance(item.get("type"), str):
                raise CorpusError(f"{where}: expect[{i}] needs a 'type'")
            unknown = set(item) - _LABEL_KEYS
            if unknown:
                raise CorpusError(f"{where}: expect[{i}] has unknown key(s) {sorted(unknown)}")
            count = item.get("count")
            if count is not None and (not isinstance(count, int) or isinstance(count, bool)):
                raise CorpusError(f"{where}: expect[{i}].count must be an integer")
            expect.append(
                Expected(
                    item["type"],
                    count,
                    *(None if item.get(k) is None else str(item[k]) for k in ("code", "service", "endpoint")),
                )
            )
        negative_for = label.get("negative_for") or []
        if not isinstance(negative_for, list) or not all(isinstance(t, str) for t in negative_for):
            raise CorpusError(f"{where}: negative_for must be a list of types")
        out[str(name)] = FileLabels(str(label.get("description", "")), tuple(expect), tuple(negative_for))
    return out


def load_traces(path: Path) -> list[Trace]:
    """The file's spans grouped into whole traces (the collector's view, across services), in the
    order their roots started.  The root is the span without a parent."""
    request = otlp_json_to_request(path.read_bytes())
    views = views_from_request(request, IngestCounts())
    by_trace: dict[int, list[SpanView]] = {}
    for view in views:
        by_trace.setdefault(view.trace_id, []).append(view)
    traces = []
    for trace_id, spans in by_trace.items():
        roots = [s for s in spans if not s.parent_id]
        root = min(roots, key=lambda s: s.start_ns) if roots else None
        traces.append(Trace(trace_id, spans, root, complete=root is not None))
    traces.sort(key=lambda t: t.root.start_ns if t.root else min(s.start_ns for s in t.spans))
    return traces


def analyze_file(path: Path, detectors: Sequence[type[Detector]] = DEFAULT_DETECTORS) -> list[Finding]:
    """Every finding of the file's traces, from one Analyzer with the default settings."""
    analyzer = Analyzer(APMConfig(console_enabled=False), detectors)
    findings: list[Finding] = []
    for trace in load_traces(path):
        findings.extend(analyzer.analyze(trace))
    return findings


def match(
    expected: Iterable[Expected], findings: Iterable[Finding]
) -> tuple[list[Expected], list[Expected], list[Finding]]:
    """(matched labels, missed labels, unlabelled findings).

    The most specific labels pick first, so a label pinning a count is not robbed of its finding
    by a bare label of the same type that any finding would satisfy.
    """
    left = list(findings)
    found: list[Expected] = []
    missed: list[Expected] = []
    for label in sorted(expected, key=lambda e: -sum(getattr(e, n) is not None for n in _FIELDS)):
        hit = next((f for f in left if label.matches(f)), None)
        if hit is None:
            missed.append(label)
        else:
            left.remove(hit)
            found.append(label)
    return found, missed, left


def _summary(finding: Finding) -> str:
    parts = [f"count={finding.count}", f"service={finding.service!r}", f"endpoint={finding.endpoint!r}"]
    if finding.code_location:
        parts.append(f"code={finding.code_location!r}")
    return f"{finding.type}({', '.join(parts)})"


def evaluate(directory: Path, detectors: Sequence[type[Detector]] = DEFAULT_DETECTORS) -> Report:
    """Score every file of the corpus against its labels."""
    labels = load_labels(directory)
    report = Report(str(directory), detectors=tuple(d.type for d in detectors))
    for t in report.detectors:
        report.scores[t] = Score()
    files = sorted(directory.glob("*.json"))
    names = {p.stem for p in files}
    for name in sorted(set(labels) - names):
        report.mismatches.append(Mismatch(name, "-", "unreadable", f"labelled, but there is no {name}.json"))
    for name, labelled in labels.items():
        for e in labelled.expect:
            report.positives.setdefault(e.type, []).append(name)
        for t in labelled.negative_for:
            report.negatives.setdefault(t, []).append(name)
    for path in files:
        report.files += 1
        name = path.stem
        label = labels.get(name)
        if label is None:
            report.mismatches.append(Mismatch(name, "-", "unreadable", f"no label for it in {LABELS_FILE}"))
            continue
        try:
            findings = analyze_file(path, detectors)
        except Exception as exc:  # one unreadable file must not hide the score of the others
            report.mismatches.append(Mismatch(name, "-", "unreadable", f"{type(exc).__name__}: {exc}"))
            continue
        found, missed, extra = match(label.expect, findings)
        for e in found:
            report.scores.setdefault(e.type, Score()).tp += 1
        for e in missed:
            report.scores.setdefault(e.type, Score()).fn += 1
            report.mismatches.append(Mismatch(name, e.type, "missing", _why_missing(e, extra, detectors)))
        for f in extra:
            report.scores.setdefault(f.type, Score()).fp += 1
            report.mismatches.append(Mismatch(name, f.type, "unexpected", f"not labelled: {_summary(f)}"))
    return report


def _why_missing(label: Expected, unlabelled: list[Finding], detectors: Sequence[type[Detector]]) -> str:
    """Why a label failed: no detector of its type, no finding of it, or one with other fields."""
    if label.type not in {d.type for d in detectors}:
        return f"expected {label.describe()}: the analyzer has no {label.type} detector"
    near = [f for f in unlabelled if f.type == label.type]
    if not near:
        return f"expected {label.describe()}: no such finding"
    return f"expected {label.describe()}: found one with " + "; ".join(label.differences(near[0]))


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_report(report: Report) -> str:
    """The per-type table, then every mismatch: what a person reads after changing a detector."""
    width = max([len("type"), *(len(t) for t in report.scores)])
    lines = [
        f"{report.files} files in {report.directory}",
        "",
        f"{'type':<{width}}  {'TP':>4} {'FP':>4} {'FN':>4}  {'precision':>9} {'recall':>6}",
    ]
    total = Score()
    for t, s in sorted(report.scores.items()):
        total.tp += s.tp
        total.fp += s.fp
        total.fn += s.fn
        lines.append(
            f"{t:<{width}}  {s.tp:>4} {s.fp:>4} {s.fn:>4}  {_ratio(s.precision):>9} {_ratio(s.recall):>6}"
        )
    lines.append(
        f"{'all':<{width}}  {total.tp:>4} {total.fp:>4} {total.fn:>4}  "
        f"{_ratio(total.precision):>9} {_ratio(total.recall):>6}"
    )
    lines.append("")
    if report.ok:
        lines.append("every label holds")
    else:
        lines.append(f"{len(report.mismatches)} mismatches:")
        lines += [f"  {m.file}: {m.type}: {m.kind}: {m.why}" for m in report.mismatches]
    return "\n".join(lines)


def run(directory: str | Path = DEFAULT_DIR, as_json: bool = False) -> tuple[int, str]:
    """(exit status, text to print): 0 when every label holds, 1 when any fails, 2 when the corpus
    cannot be read."""
    path = Path(directory)
    if not path.is_dir():
        return 2, f"otel-apm evaluate: {path} is not a directory"
    try:
        report = evaluate(path)
    except CorpusError as exc:
        return 2, f"otel-apm evaluate: {exc}"
    text = json.dumps(report.to_json(), indent=2) if as_json else format_report(report)
    return (0 if report.ok else 1), text
