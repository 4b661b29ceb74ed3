"""``runner state dump`` and ``runner state reset``: they read and delete only what is the
pipeline's state, and refuse what a run would refuse."""

import json

import pytest

from runner.cli import main
from tests.runner.test_cli import BASE, write


@pytest.fixture
def ran(workdir):
    path = write(workdir, BASE)
    assert main(["run", path, "--until-end"]) == 0
    return path


def test_reset_refuses_a_directory_that_holds_more_than_a_state(workdir, capsys):
    (workdir / "notes").mkdir()
    (workdir / "notes" / "important.txt").write_text("keep me")
    path = write(workdir, BASE.replace("path: state", "path: notes"))
    assert main(["state", "reset", path, "--yes"]) == 1
    assert "holds more than a runner's state (important.txt)" in capsys.readouterr().err
    assert (workdir / "notes" / "important.txt").read_text() == "keep me"


def test_reset_refuses_the_state_of_another_pipeline(ran, workdir, capsys):
    other = write(workdir, BASE.replace("name: p", "name: other"), "other.yaml")
    assert main(["state", "reset", other, "--yes"]) == 1
    assert "belongs to pipeline 'p', not 'other': nothing deleted" in capsys.readouterr().err
    assert (workdir / "state" / "data.mdb").exists()
    assert main(["state", "reset", ran, "--yes"]) == 0
    assert not (workdir / "state").exists()


@pytest.mark.parametrize("before, after", [(["state", "reset"], ["--yes"]), (["state", "dump"], []),
                                           (["run"], ["--until-end"])])
def test_a_state_path_that_is_a_file_is_named_as_such(workdir, capsys, before, after):
    (workdir / "afile").write_text("not a state")
    path = write(workdir, BASE.replace("path: state", "path: afile"))
    assert main([*before, path, *after]) == 1
    assert "state.path afile is not a directory" in capsys.readouterr().err
    assert (workdir / "afile").read_text() == "not a state"


def test_dump_refuses_a_changed_window_definition_as_run_does(ran, capsys):
    assert main(["state", "dump", ran, "--set", "stages.per_5m.size=10m"]) == 1
    err = capsys.readouterr().err
    assert "stage per_5m was checkpointed with another definition (size: 5m -> 10m);" in err  # as the YAML says it


def test_validate_warns_of_a_state_that_run_would_refuse(ran, capsys):
    assert main(["validate", ran, "--set", "stages.per_5m.size=10m"]) == 0  # the file is valid
    assert capsys.readouterr().err.startswith("WARNING: 'runner run' would refuse its stored state: stage per_5m "
                                              "was checkpointed with another definition (size: 5m -> 10m);")
    assert main(["validate", ran]) == 0
    assert capsys.readouterr().err == ""


AGGREGATE = """
  - type: aggregate
    name: per_page
    key_by: page_url
    aggregations: {views: count}
"""


def test_a_changed_aggregate_definition_is_refused(workdir, capsys):
    path = write(workdir, BASE.replace("stages:\n", "stages:" + AGGREGATE))
    assert main(["run", path, "--until-end"]) == 0
    changed = "stages.per_page.aggregations.views={count_distinct: user_id}"
    for command in (["run", path, "--until-end", "--set", changed], ["state", "dump", path, "--set", changed],
                    ["run", path, "--until-end", "--set", "stages.per_page.key_by=user_id"]):
        assert main(command) == 1
        err = capsys.readouterr().err
        assert "stage per_page was checkpointed with another definition" in err and "Traceback" not in err


def test_a_renamed_stage_is_not_started_silently_empty(ran, workdir, capsys):
    capsys.readouterr()
    assert main(["run", ran, "--until-end", "--set", "stages.per_5m.name=per_five"]) == 0
    err = capsys.readouterr().err
    assert "the state holds 1 entry of stage 'per_5m', which this pipeline no longer has" in err
    # its definition stays stored: the old name cannot come back with another one
    assert main(["state", "dump", ran, "--set", "stages.per_5m.size=10m"]) == 1
    assert "stage per_5m was checkpointed with another definition" in capsys.readouterr().err
    assert main(["run", ran, "--until-end"]) == 0  # back to its old name: nothing is left over
    assert "no longer has" not in capsys.readouterr().err


def test_a_changed_definition_is_taken_once_the_stage_holds_nothing(workdir, capsys):
    path = write(workdir, BASE)
    assert main(["run", path, "--drain"]) == 0  # its only window is emitted: nothing of per_5m is stored
    assert main(["run", path, "--until-end", "--set", "stages.per_5m.size=10m"]) == 0
    assert main(["state", "dump", path, "--set", "stages.per_5m.size=10m"]) == 0
    assert "another definition" not in capsys.readouterr().err


def test_a_drained_window_stage_holding_only_its_late_count_takes_a_new_definition(workdir, capsys):
    late = {"event_id": "e0", "user_id": "u1", "page_url": "/home", "timestamp": "2026-11-24T07:50:00Z"}
    with open(workdir / "events.jsonl", "a") as f:
        f.write(json.dumps(late) + "\n")  # after 08:00 with no grace: late
    path = write(workdir, BASE)
    assert main(["run", path, "--drain"]) == 0
    assert main(["run", path, "--until-end", "--set", "stages.per_5m.size=10m"]) == 0
    assert "another definition" not in capsys.readouterr().err


def test_changed_milestones_are_refused_while_the_stage_holds_state(workdir, capsys):
    # an entry keeps the highest multiple of each step it reached: another step would misread it
    path = write(workdir, BASE.replace("stages:\n", "stages:" + AGGREGATE + "    milestones: {views: 5}\n"))
    assert main(["run", path, "--until-end"]) == 0
    assert main(["run", path, "--until-end", "--set", "stages.per_page.milestones.views=2"]) == 1
    assert 'milestones: {"views":5} -> {"views":2}' in capsys.readouterr().err
