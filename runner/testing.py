"""A test driver: run a YAML pipeline in-process over a list of events, as many times as you
like over the same state, and get back its results, dead letters and state dump.

    driver = Driver("pipelines/windowed.yaml", tmp_path)
    out = driver.run([{"event_id": "e1", ...}, b"not json"], drain=True)
    out.results, out.dead_letters, out.dump

The pipeline's source becomes a file of the given events (topic ``events``), its sinks and
DLQ become JSONL files and its state goes under the work directory; everything else is the
pipeline as written. ``crash_after=N`` stops the run abruptly after N more input records,
without a checkpoint, as SIGKILL would (the outputs of the last checkpoint may not have been
confirmed yet, so they are delivered again on the next run).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from runner import config
from runner.dump import dump_state
from runner.engine import Runner


class Crash(Exception):
    """Raised inside a run to end it the way a kill would."""


@dataclass
class Outcome:
    results: list[dict]
    dead_letters: list[dict]
    dump: dict | None


class Driver:
    def __init__(self, pipeline: str | Path | dict, workdir: str | Path, overrides: list[str] = ()):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        settings = pipeline if isinstance(pipeline, dict) else yaml.safe_load(Path(pipeline).read_text())
        settings = copy.deepcopy(settings)  # the caller's pipeline stays as it was
        self.events_path = self.workdir / "events.jsonl"
        self.results_path = self.workdir / "results.jsonl"
        self.dlq_path = self.workdir / "dlq.jsonl"
        settings["source"] = {"type": "file", "path": str(self.events_path), "topic": "events"}
        settings["sinks"] = [{"type": "jsonl", "name": "results", "path": str(self.results_path)}]
        settings["dlq"] = {"type": "jsonl", "path": str(self.dlq_path)}
        settings.setdefault("state", {})
        settings["state"] = dict(settings["state"], path=str(self.workdir / "state"))
        for stage in settings.get("stages", []):
            stage.pop("to", None)
        self.pipeline_path = self.workdir / "pipeline.yaml"
        self.pipeline_path.write_text(yaml.safe_dump(settings, sort_keys=False))
        self.overrides = list(overrides)
        self.events_path.touch()

    def add(self, events) -> None:
        """Append events (dicts are written as JSON, bytes as they are) to the source file."""
        with open(self.events_path, "ab") as f:
            for event in events:
                f.write((event if isinstance(event, bytes) else json.dumps(event).encode()) + b"\n")

    def run(self, events=(), drain: bool = False, crash_after: int | None = None) -> Outcome:
        self.add(events)
        pipeline = config.load(str(self.pipeline_path), self.overrides)
        runner = _CrashingRunner(pipeline, until_end=True, drain=drain, log=lambda *a, **k: None)
        runner.crash_after = crash_after
        try:
            runner.run()
        except Crash:
            return Outcome(self._read(self.results_path), self._read(self.dlq_path), None)
        return Outcome(self._read(self.results_path), self._read(self.dlq_path), dump_state(pipeline))

    @staticmethod
    def _read(path: Path) -> list[dict]:
        if not path.exists():
            return []
        # split on newlines only: JSON strings may hold U+2028 and other line breaks raw
        return [json.loads(line) for line in path.read_bytes().split(b"\n") if line.strip()]


class _CrashingRunner(Runner):
    crash_after: int | None = None

    def _process(self, records):
        if self.crash_after is None:
            return super()._process(records)
        records = records[: self.crash_after]
        self.crash_after -= len(records)
        super()._process(records)
        if self.crash_after <= 0:
            raise Crash()
