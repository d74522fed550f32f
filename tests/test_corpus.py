"""The labelled corpus (tests/corpus): every detector must find what each trace holds, and nothing else.

The corpus is the suite's end-to-end check of detection quality: OTLP/JSON as real
instrumentations export it, through the same ingest the collector uses, scored by
``otel-apm evaluate``.  A detector change that adds a false positive or loses a true one fails here
with the file named.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from otel_apm.cli import main
from otel_apm.detectors import DEFAULT_DETECTORS
from otel_apm.evaluate import Report, evaluate

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "corpus"
BUILT = {d.type for d in DEFAULT_DETECTORS}


def documented_types() -> set[str]:
    """The finding types of docs/detectors.md's table: what the corpus is written against."""
    text = (ROOT / "docs" / "detectors.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| `([a-z_]+)` \|", text, re.MULTILINE))


NOT_BUILT = sorted(documented_types() - BUILT)


@pytest.fixture(scope="module")
def report() -> Report:
    return evaluate(CORPUS)


def test_the_corpus_reads_and_every_file_is_labelled(report: Report) -> None:
    assert report.files >= 44
    unreadable = [m for m in report.mismatches if m.kind == "unreadable"]
    assert not unreadable, unreadable


@pytest.mark.xfail(
    bool(NOT_BUILT),
    reason=f"detectors of docs/detectors.md not built yet: {', '.join(NOT_BUILT)}",
    strict=True,
)
def test_every_label_holds(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["evaluate", str(CORPUS)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "every label holds" in out


def test_built_detectors_find_every_labelled_finding(report: Report) -> None:
    """No false negative for a type the analyzer has: its positives are right whatever else is
    still missing (the full check above is strict once every documented detector exists)."""
    missed = [m for m in report.mismatches if m.kind == "missing" and m.type in BUILT]
    assert not missed, "\n".join(f"{m.file}: {m.why}" for m in missed)


@pytest.mark.parametrize("kind", ["positive", "negative"])
def test_every_detector_has_positive_and_negative_files(report: Report, kind: str) -> None:
    """Each type of the analyzer and of docs/detectors.md has a file that must fire it and a file
    built so that it must not (``negative_for``)."""
    files = report.positives if kind == "positive" else report.negatives
    uncovered = sorted(t for t in BUILT | documented_types() if not files.get(t))
    assert not uncovered, f"no {kind} file for {uncovered}"


def test_labels_name_only_documented_types() -> None:
    labels = yaml.safe_load((CORPUS / "labels.yaml").read_text(encoding="utf-8"))
    named = {e["type"] for label in labels.values() for e in label["expect"]}
    named |= {t for label in labels.values() for t in label.get("negative_for", [])}
    assert named <= documented_types() | BUILT, named - documented_types()


def test_a_wrong_label_fails_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS, corpus)
    labels = yaml.safe_load((corpus / "labels.yaml").read_text(encoding="utf-8"))
    labels["nplus1_sqlalchemy_authors"]["expect"][0]["count"] = 11  # the trace has 10 repeats
    labels["fast_health_check"]["expect"] = [{"type": "slow_request"}]  # a 2 ms request
    (corpus / "labels.yaml").write_text(yaml.safe_dump(labels), encoding="utf-8")

    assert main(["evaluate", str(corpus), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    failed = {(m["file"], m["type"], m["kind"]) for m in result["mismatches"]}
    assert ("nplus1_sqlalchemy_authors", "n_plus_one_query", "missing") in failed
    assert ("nplus1_sqlalchemy_authors", "n_plus_one_query", "unexpected") in failed
    assert ("fast_health_check", "slow_request", "missing") in failed
    assert result["types"]["slow_request"]["fn"] >= 1


def test_an_unlabelled_file_and_a_missing_corpus_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(CORPUS / "fast_health_check.json", corpus / "stray.json")
    (corpus / "labels.yaml").write_text("{}\n", encoding="utf-8")
    assert main(["evaluate", str(corpus)]) == 1
    assert "stray: -: unreadable: no label for it" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "nowhere")]) == 2


def test_the_fixture_is_what_the_generator_writes() -> None:
    """The JSON files and labels.yaml are generated: a hand edit that the generator would undo fails."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    for index, case in enumerate(module.CASES):
        written = (CORPUS / f"{case.name}.json").read_text(encoding="utf-8")
        assert written == module.to_json(module.encode(case, index)) + "\n", case.name
    assert (CORPUS / "labels.yaml").read_text(encoding="utf-8") == module.labels_yaml(module.CASES)
    assert len(list(CORPUS.glob("*.json"))) == len(module.CASES)
