"""The worked examples of CONTRACT.md (../shared/examples), run as a user would run them."""

import json
import shutil
from pathlib import Path

import pytest

from runner.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "examples"
NAMES = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()) if EXAMPLES.is_dir() else []


def test_examples_are_there():
    assert NAMES, f"no worked examples found at {EXAMPLES}"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _canonical(records: list[dict]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in records)


@pytest.mark.parametrize("name", NAMES)
def test_example(name, tmp_path, monkeypatch, capsys):
    work = tmp_path / name
    shutil.copytree(EXAMPLES / name, work)
    monkeypatch.chdir(work)
    assert main(["run", "pipeline.yaml", "--drain"]) == 0

    assert _canonical(_lines(work / "results.jsonl")) == _canonical(_lines(work / "expected_results.jsonl"))

    expected_dlq = _lines(work / "expected_dlq.jsonl")
    got_dlq = _lines(work / "dlq.jsonl")
    names = {d["id"]: d.pop("error_names", None) for d in expected_dlq}
    for letter in got_dlq:
        if names.get(letter["id"]):
            assert names[letter["id"]] in letter["error"], letter
        assert letter["failed_at"].endswith("Z")
        del letter["error"], letter["failed_at"]
    assert _canonical(got_dlq) == _canonical(expected_dlq)

    capsys.readouterr()
    assert main(["state", "dump", "pipeline.yaml"]) == 0
    dump = json.loads(capsys.readouterr().out)
    assert dump.pop("checkpoint") >= 1
    assert dump == json.loads((work / "expected_dump.json").read_text())
