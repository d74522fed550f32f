"""Flame graphs of a CPU :class:`~otel_apm.profiling.cpu.Profile`, for the process and per endpoint.

Three files a person can open without this package: Brendan Gregg's folded stacks (one
``outer;...;inner count`` line per distinct stack, what flamegraph.pl, inferno and most viewers
read), speedscope's JSON file format (a ``sampled`` profile, weights in milliseconds) and a
self-contained SVG whose boxes carry their counts as tooltips.  No pprof: it needs protobuf
messages of its own for little a reader gains over speedscope.
"""

from __future__ import annotations

import json
import os
import re
import sys
import zlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from otel_apm.profiling.cpu import Endpoint, Frame, Profile, Stack
from otel_apm.version import __version__

SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"
SUFFIXES = {"folded": ".folded", "speedscope": ".speedscope.json", "svg": ".svg"}

_SVG_WIDTH = 1200
_PAD = 10
_ROW = 17
_HEADER = 36
_CHAR_PX = 6.6  # mean glyph width of 11 px monospace: how much of a label fits a box
_MIN_BOX_PX = 0.5  # narrower boxes are not drawn (their time stays in their parent's box)


class Labels:
    """Frame names for people: ``function (module/path.py:line)``, the path cut to what
    follows its ``sys.path`` entry, as an import names it; each file is cut once."""

    def __init__(self) -> None:
        self._roots = sorted((os.path.join(p, "") for p in sys.path if p), key=len, reverse=True)
        self._short: dict[str, str] = {}

    def __call__(self, frame: Frame) -> str:
        if not frame.file:
            return frame.function
        short = self._short.get(frame.file)
        if short is None:
            short = self._short[frame.file] = next(
                (frame.file[len(r) :] for r in self._roots if frame.file.startswith(r)), frame.file
            )
        return f"{frame.function} ({short}:{frame.line})"


def folded(stacks: Counter[Stack], labels: Labels) -> str:
    """One line per distinct stack; the counts sum to the profile's samples.  A ``;`` inside a
    name would split a frame in two, so it becomes ``:``."""
    lines = sorted(
        ";".join(labels(f).replace(";", ":") for f in stack) + f" {n}" for stack, n in stacks.items()
    )
    return "".join(line + "\n" for line in lines)


def speedscope(name: str, stacks: Counter[Stack], period_s: float, labels: Labels) -> dict[str, Any]:
    """A speedscope file holding one ``sampled`` profile, each distinct stack weighted by the CPU
    time its samples stand for."""
    index: dict[Frame, int] = {}
    frames: list[dict[str, Any]] = []
    samples: list[list[int]] = []
    weights: list[float] = []
    for stack, n in stacks.items():
        ids = []
        for frame in stack:
            i = index.get(frame)
            if i is None:
                i = index[frame] = len(frames)
                entry: dict[str, Any] = {"name": labels(frame)}
                if frame.file:
                    entry.update(file=frame.file, line=frame.line)
                frames.append(entry)
            ids.append(i)
        samples.append(ids)
        weights.append(round(n * period_s * 1000, 3))
    return {
        "$schema": SPEEDSCOPE_SCHEMA,
        "shared": {"frames": frames},
        "profiles": [
            {
                "type": "sampled",
                "name": f"{name}: CPU, {sum(stacks.values())} samples",
                "unit": "milliseconds",
                "startValue": 0,
                "endValue": round(sum(weights), 3),
                "samples": samples,
                "weights": weights,
            }
        ],
        "name": name,
        "activeProfileIndex": 0,
        "exporter": f"otel-apm {__version__}",
    }


class _Node:
    __slots__ = ("children", "count")

    def __init__(self) -> None:
        self.count = 0
        self.children: dict[str, _Node] = {}


def svg(title: str, stacks: Counter[Stack], labels: Labels) -> str:
    """A flame graph: the outermost call at the bottom, each box as wide as its share of the
    samples, its exact count and share in a tooltip; plain SVG 1.1, no script."""
    root = _Node()
    depth = 0
    for stack, n in stacks.items():
        root.count += n
        node = root
        for frame in stack:
            node = node.children.setdefault(labels(frame), _Node())
            node.count += n
        depth = max(depth, len(stack))
    height = _HEADER + (depth + 1) * _ROW + _PAD
    boxes: list[str] = []
    scale = (_SVG_WIDTH - 2 * _PAD) / root.count if root.count else 0.0
    _draw(boxes, f"all ({root.count} samples)", root, _PAD, 0, root.count, scale, height)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{_SVG_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_SVG_WIDTH} {height}" font-family="monospace" font-size="11">\n'
        f'<rect x="0" y="0" width="{_SVG_WIDTH}" height="{height}" fill="#fdf8ee"/>\n'
        f'<text x="{_SVG_WIDTH / 2}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>\n'
        + "".join(boxes)
        + "</svg>\n"
    )


def _draw(
    out: list[str], label: str, node: _Node, x: float, depth: int, total: int, scale: float, height: int
) -> None:
    width = node.count * scale
    if width < _MIN_BOX_PX:
        return
    y = height - _PAD - (depth + 1) * _ROW
    tip = f"{label}: {node.count} samples, {node.count / total:.2%}"
    fits = int((width - 6) / _CHAR_PX)
    text = ""
    if fits >= 3:
        shown = label if len(label) <= fits else label[: fits - 2] + ".."
        text = f'<text x="{x + 3:.2f}" y="{y + _ROW - 5}">{escape(shown)}</text>'
    out.append(
        f"<g><title>{escape(tip)}</title>"
        f'<rect x="{x:.2f}" y="{y}" width="{width:.2f}" height="{_ROW - 1}" rx="2" '
        f"fill={quoteattr(_color(label))}/>"
        f"{text}</g>\n"
    )
    for name in sorted(node.children):
        child = node.children[name]
        _draw(out, name, child, x, depth + 1, total, scale, height)
        x += child.count * scale


def _color(label: str) -> str:
    """A warm colour fixed by the function's name, so one function looks alike across graphs."""
    h = zlib.crc32(label.encode("utf-8", "replace"))
    return f"rgb({205 + h % 50},{(h >> 8) % 190 + 40},{(h >> 16) % 55})"


class FlameGraphWriter:
    """Writes a period's flame graphs into one directory, replacing the previous period's:
    ``process.*`` for every sample, ``<endpoint>.*`` per endpoint.  Each file is written under a
    temporary name and renamed, so a reader never sees half a file."""

    def __init__(self, directory: str, formats: Iterable[str]) -> None:
        self.directory = Path(directory)
        self.formats = tuple(formats)
        self._written: set[Path] = set()

    def write(self, profile: Profile) -> list[Path]:
        self.directory.mkdir(parents=True, exist_ok=True)
        labels = Labels()
        graphs: list[tuple[str, str, Counter[Stack]]] = [("process", "process", profile.process_stacks())]
        used = {"process"}
        for endpoint in sorted(profile.samples):
            base = _file_name(endpoint, used)
            graphs.append((base, endpoint[1], profile.stacks(endpoint)))
        written: list[Path] = []
        for base, name, stacks in graphs:
            for fmt in self.formats:
                path = self.directory / (base + SUFFIXES[fmt])
                _replace(path, self._render(fmt, name, stacks, profile, labels))
                written.append(path)
        for stale in self._written - set(written):
            stale.unlink(missing_ok=True)
        self._written = set(written)
        return written

    @staticmethod
    def _render(fmt: str, name: str, stacks: Counter[Stack], profile: Profile, labels: Labels) -> str:
        if fmt == "folded":
            return folded(stacks, labels)
        if fmt == "speedscope":
            return json.dumps(speedscope(name, stacks, profile.sample_period_s, labels))
        return svg(f"CPU: {name}", stacks, labels)


def _file_name(endpoint: Endpoint, used: set[str]) -> str:
    """A file name from the endpoint (``GET /orders/{id}`` -> ``GET_orders_id``), unique here."""
    base = re.sub(r"[^A-Za-z0-9.-]+", "_", endpoint[1]).strip("_.")[:80] or "endpoint"
    name, i = base, 2
    while name in used:
        name, i = f"{base}-{i}", i + 1
    used.add(name)
    return name


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
