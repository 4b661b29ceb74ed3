"""A plugin's mistakes at run time (a lint, dump, flush or poll that breaks its promise):
one error line naming the component and what it did, exit 1 or 2, no traceback."""

import sys

import pytest
import yaml

from runner.cli import main

MODULE = '''
import threading

from runner import hookimpl
from runner.components import Record, Sink, Source, Stage
from runner.schema import obj


class BadLint(Stage):
    type = "bad_lint"
    config_schema = obj({}, description="Its lint returns bare strings.")

    @classmethod
    def lint(cls, config):
        return ["something is off"]


class WordPath(Stage):
    type = "word_path"
    config_schema = obj({}, description="Its lint gives a path as a string.")

    @classmethod
    def lint(cls, config):
        return [("limit", "must be > 0")]


class BadDump(Stage):
    type = "bad_dump"
    config_schema = obj({}, description="Its dump returns a set.")

    def build(self, table, emit):
        from runner.components import Processor
        return Processor(self, table, emit)

    def dump(self, table):
        return {"seen": {1, 2}}


class LockState(Sink):
    type = "lock_state"
    config_schema = obj({}, description="Its flush returns a lock.")

    def deliver(self, outputs):
        pass

    def flush(self):
        return threading.Lock()


class Failing(Source):
    type = "failing"
    config_schema = obj({"mode": {"enum": ["raise", "library", "tuples"], "default": "raise",
                                  "description": "what poll does wrong"}},
                        description="Its poll raises, has a library raise, or returns plain tuples.")

    def open(self, offsets):
        return {"t/0": 0}

    def end_offsets(self):
        return {"t/0": 1}

    def poll(self, timeout):
        if self.config["mode"] == "tuples":
            return [("t", 0, 0, None, None, b"{}")]
        if self.config["mode"] == "library":
            import json
            json.loads("{")
        raise ConnectionError("the service is away")


class Quiet(Source):
    type = "quiet"
    config_schema = obj({}, description="Its poll returns None, for no records.")

    def open(self, offsets):
        return {"t/0": 0}

    def end_offsets(self):
        return {"t/0": 0}

    def poll(self, timeout):
        return None


class Counts(Stage):
    type = "counts"
    config_schema = obj({}, description="The last stage: counts and passes nothing on (returns None).")

    def build(self, table, emit):
        from runner.components import Processor

        class CountsEvents(Processor):
            def process(self, events):
                self.table.put(b"n", self.table.get(b"n", 0) + len(events))

        return CountsEvents(self, table, emit)

    def dump(self, table):
        return {"n": table.get(b"n", 0)}


@hookimpl
def runner_register_stages():
    return [BadLint, WordPath, BadDump, Counts]


@hookimpl
def runner_register_sinks():
    return [LockState]


@hookimpl
def runner_register_sources():
    return [Failing, Quiet]
'''


@pytest.fixture
def pipeline(tmp_path, monkeypatch):
    """A function writing a pipeline of the module's components (changes given as a dict)."""
    (tmp_path / "mistakes.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "e.jsonl").write_text('{"a": 1}\nnot json\n')

    def write(**changes) -> str:
        settings = {"name": "p", "plugins": ["mistakes"], "source": {"type": "file", "path": "e.jsonl"},
                    "state": {"path": "state"}, "dlq": {"type": "jsonl", "path": "dlq.jsonl"},
                    "stages": [], "sinks": [{"type": "jsonl", "path": "out.jsonl"}], **changes}
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
        return "p.yaml"
    yield write
    sys.modules.pop("mistakes", None)


@pytest.mark.parametrize("stage, returned", [("BadLint", "['something is off']"),
                                             ("WordPath", "[('limit', 'must be > 0')]")])
def test_a_lint_that_returns_no_pairs_is_the_plugins_mistake(pipeline, capsys, stage, returned):
    kind = {"BadLint": "bad_lint", "WordPath": "word_path"}[stage]
    assert main(["validate", pipeline(stages=[{"type": kind}])]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"p.yaml:13: stages[0]: plugin mistakes: mistakes.{stage}.lint returned {returned}, "
        "not a list of (path, message) pairs"]


def test_a_dump_that_is_not_json_names_the_stage(pipeline, capsys):
    path = pipeline(stages=[{"type": "bad_dump", "name": "counted"}])
    assert main(["run", path, "--until-end"]) == 0
    capsys.readouterr()
    assert main(["state", "dump", path]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: stage counted (type bad_dump): its dump returned what is not JSON: "
        "Object of type set is not JSON serializable"]


def test_a_sink_state_that_cannot_be_committed_names_the_sink(pipeline, capsys):
    assert main(["run", pipeline(dlq={"type": "lock_state"}), "--until-end"]) == 1  # the bad line's dead letter
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: sink dlq (mistakes.LockState.flush) returned a state that cannot be committed (pickled): "
        "TypeError: cannot pickle '_thread.lock' object")


@pytest.mark.parametrize("mode", ["raise", "library", "tuples"])
def test_a_source_whose_poll_fails_names_it(pipeline, capsys, mode):
    path = pipeline(source={"type": "failing", "mode": mode})
    assert main(["run", path, "--until-end"]) == 1
    error = capsys.readouterr().err.splitlines()[-1]
    if mode == "tuples":
        assert error == ("error: source (failing): poll returned tuple records, without the attributes of "
                         "runner.components.Record")
    else:  # the line is the plugin's, also where a library it called raised
        raised = "ConnectionError: the service is away" if mode == "raise" else "JSONDecodeError: Expecting"
        assert error.startswith(f"error: source (failing): poll raised {raised}")
        assert error.endswith("mistakes.py:68)" if mode == "raise" else "mistakes.py:67)"), error


def test_none_from_poll_is_no_records_and_from_a_last_stage_passes_nothing_on(pipeline, capsys):
    assert main(["run", pipeline(stages=[{"type": "counts"}]), "--until-end"]) == 0
    assert main(["state", "dump", "p.yaml"]) == 0
    assert '"n": 1' in capsys.readouterr().out  # the file's good record (the other is a dead letter of the source)
    assert main(["run", pipeline(source={"type": "quiet"}), "--until-end"]) == 0
