"""Meta-tests that keep the manual honest: hooks documented, schemas described, pipelines valid."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner import config, hookspecs, plugins

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = sorted((ROOT / "pipelines").glob("*.yaml"))


def test_every_hook_is_documented_and_used_by_a_builtin():
    pm = plugins.build_manager()
    specs = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("runner_")]
    assert len(specs) == 4
    for name in specs:
        doc = inspect.getdoc(getattr(hookspecs, name))
        assert doc and "Return" in doc, name
        assert getattr(pm.hook, name).get_hookimpls(), f"no built-in implements {name}"


def test_every_config_property_is_described_with_a_default_or_required():
    registry = plugins.load()
    for kind in ("sources", "stages", "sinks"):
        for name, cls in registry.kind(kind).items():
            schema = cls.config_schema
            assert schema.get("additionalProperties") is False, name
            assert schema.get("description"), name
            required = set(schema.get("required", ()))
            for key, prop in schema["properties"].items():
                assert prop.get("description"), f"{kind} {name}.{key} has no description"
                assert key in required or "default" in prop, f"{kind} {name}.{key}: neither default nor required"


def test_the_committed_pipeline_schema_is_the_generated_one(monkeypatch):
    monkeypatch.setattr(plugins.importlib.metadata, "distributions", lambda: [])  # the built-ins' schema
    generated = config.pipeline_schema(plugins.load())
    committed = json.loads((ROOT / "schemas" / "pipeline.schema.json").read_text())
    assert committed == generated, ("run, in the project's venv without third-party plugins: "
                                    "runner plugins --schema > schemas/pipeline.schema.json")


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_shipped_pipelines_are_valid(path):
    pipeline = config.load(str(path))
    assert pipeline.settings["name"] == path.stem


def test_shipped_pipelines_are_the_three_of_the_contract():
    assert [p.name for p in PIPELINES] == ["basic.yaml", "fault_tolerant.yaml", "windowed.yaml"]


def test_runner_plugins_lists_every_builtin_with_its_keys():
    out = subprocess.run([sys.executable, "-m", "runner", "plugins"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for name in ("kafka", "file", "generator", "validate", "aggregate", "tumbling_window", "hopping_window",
                 "session_window", "console", "jsonl"):
        assert f"  {name} " in out.stdout
    assert "every_events" not in out.stdout  # pipeline keys are not plugin keys
    assert "gap " in out.stdout and "advance " in out.stdout
    once = {line.split()[0] for line in out.stdout.splitlines() if line.endswith("(exactly once)")}
    assert once == {"jsonl", "kafka", "postgres"}  # sinks: the console may repeat itself
