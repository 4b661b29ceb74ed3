"""The third-party plugin of docs/plugins.md, loaded the two ways a user would load it."""

import sys
from pathlib import Path

import pytest

from runner.cli import main
from runner.testing import Driver

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "examples" / "runner-redact"

EVENT = {"event_id": "e1", "user_id": "alice", "page_url": "/home", "timestamp": "2026-11-24T08:00:00Z",
         "referrer": "https://example.com/"}


def pipeline(plugins_list):
    return {
        "name": "redacting",
        "plugins": plugins_list,
        "stages": [
            {"type": "validate"},
            {"type": "redact", "drop": ["referrer"], "hash": ["user_id"]},
            {"type": "aggregate", "name": "users", "key_by": "user_id", "aggregations": {"views": "count"}},
        ],
        "source": {"type": "file", "path": "unused"},
        "dlq": {"type": "jsonl", "path": "unused"},
    }


@pytest.fixture
def on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(PACKAGE))
    yield
    sys.modules.pop("runner_redact", None)


def test_loaded_by_import_path_from_yaml(on_path, tmp_path):
    out = Driver(pipeline(["runner_redact"]), tmp_path).run([EVENT, dict(EVENT, event_id="e2")], drain=True)
    keys = out.dump["stages"]["users"]["keys"]
    assert [k["key"] for k in keys] == ["2bd806c97f0e"]  # sha256("alice")[:12]
    assert keys[0]["views"] == 2
    assert out.dump["stages"]["redact"] == {"redacted": 2}


def test_loaded_by_entry_point(on_path, tmp_path, monkeypatch):
    # what `pip install examples/runner-redact` leaves behind: a dist-info with the entry point
    dist = tmp_path / "site" / "runner_redact-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: runner-redact\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[runner]\nredact = runner_redact\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    out = Driver(pipeline([]), tmp_path / "work").run([EVENT], drain=True)
    assert out.dump["stages"]["redact"] == {"redacted": 1}


def test_its_lint_rule_is_reported_with_the_line(on_path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.yaml").write_text(
        "name: p\nplugins: [runner_redact]\nsource: {type: file, path: e.jsonl}\ndlq: {type: jsonl, path: d.jsonl}\n"
        "stages:\n  - type: redact\n    drop: [user_id]\n    hash: [user_id]\n")
    assert main(["validate", "p.yaml"]) == 2
    err = capsys.readouterr().err
    assert "p.yaml:8: stages[0].hash: fields both dropped and hashed: user_id" in err


def test_placed_before_validate_it_leaves_a_value_that_is_not_an_object_to_validate(on_path, tmp_path):
    settings = pipeline(["runner_redact"])
    settings["stages"][:2] = settings["stages"][1::-1]  # redact, then validate
    out = Driver(settings, tmp_path).run([[1, 2], EVENT], drain=True)
    assert [(d["stage"], d["error_type"]) for d in out.dead_letters] == [("validate", "validation")]
    assert out.dump["stages"]["redact"] == {"redacted": 1}
