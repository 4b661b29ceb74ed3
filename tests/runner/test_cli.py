"""The command line as users meet it: exit codes and the messages that say what to do."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runner.cli import main

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BASE = """name: p
source: {type: file, path: events.jsonl}
dlq: {type: jsonl, path: dlq.jsonl}
state: {path: state}
event_time: {grace: 0s}
stages:
  - type: validate
  - type: tumbling_window
    name: per_5m
    size: 5m
    aggregations: {events: count}
sinks:
  - type: jsonl
    path: results.jsonl
"""


def test_bad_pipeline_exits_2_naming_file_line_path_and_the_fix(workdir, capsys):
    path = write(workdir, BASE.replace("size: 5m", "size: five").replace("type: validate", "type: validat"))
    assert main(["validate", path]) == 2
    err = capsys.readouterr().err.splitlines()
    assert any(":7: stages[0].type: unknown stage type \"validat\"" in line and "validate" in line for line in err), err
    assert any(":10: stages[1].size: expected a duration like 5m, got \"five\"" in line for line in err), err
    assert main(["run", path]) == 2


def test_hopping_advance_must_divide_size(workdir, capsys):
    path = write(workdir, BASE.replace("type: tumbling_window", "type: hopping_window")
                 .replace("size: 5m", "size: 5m\n    advance: 2m"))
    assert main(["validate", path]) == 2
    assert "stages[1].advance: advance (2m) must divide size (5m) evenly" in capsys.readouterr().err


def test_unknown_set_path_exits_2(workdir, capsys):
    path = write(workdir, BASE)
    assert main(["run", path, "--set", "stages.nope.gap=5m"]) == 2
    assert "nope" in capsys.readouterr().err


def test_set_retunes_a_window_by_stage_name(workdir, capsys):
    path = write(workdir, BASE)
    assert main(["validate", path, "--set", "stages.per_5m.size=10m", "--set", "checkpoint.every_events=500"]) == 0


def test_state_dump_of_a_pipeline_that_never_ran(workdir, capsys):
    assert main(["state", "dump", write(workdir, BASE)]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "checkpoint": 0, "offsets": {}, "event_time": {}, "watermark": None, "stages": {}}


@pytest.mark.parametrize("action", [["dump"], ["reset", "--yes"]])
def test_state_dump_or_reset_of_a_memory_pipeline_exits_2(workdir, capsys, action):
    path = write(workdir, BASE.replace("state: {path: state}", "state: {backend: memory}"))
    assert main(["state", action[0], path, *action[1:]]) == 2
    assert capsys.readouterr().err == f"{path}: state.backend is memory: nothing is persisted\n"


def test_state_reset_without_terminal_or_yes_deletes_nothing(workdir):
    path = write(workdir, BASE)
    assert main(["run", path, "--until-end"]) == 0
    proc = subprocess.run([sys.executable, "-m", "runner", "state", "reset", path], cwd=workdir,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert proc.returncode == 2 and "--yes" in proc.stderr
    assert (workdir / "state").exists()
    assert main(["state", "reset", path, "--yes"]) == 0
    assert not (workdir / "state").exists()


def test_a_changed_window_definition_is_refused(workdir, capsys):
    path = write(workdir, BASE)
    assert main(["run", path, "--until-end"]) == 0
    assert main(["run", path, "--until-end", "--set", "stages.per_5m.size=10m"]) == 1
    err = capsys.readouterr().err
    assert "per_5m" in err and "(size: 5m -> 10m)" in err and "state reset" in err


def test_a_state_made_by_another_pipeline_is_refused(workdir, capsys):
    path = write(workdir, BASE)
    assert main(["run", path, "--until-end"]) == 0
    other = write(workdir, BASE.replace("name: p", "name: other"), "other.yaml")
    assert main(["run", other, "--until-end"]) == 1
    assert "belongs to pipeline 'p'" in capsys.readouterr().err


def test_a_second_runner_on_the_same_state_is_refused(workdir):
    path = write(workdir, BASE.replace("path: events.jsonl", "path: events.jsonl, topic: events"))
    first = subprocess.Popen([sys.executable, "-m", "runner", "run", path], cwd=workdir,
                             stdout=subprocess.PIPE, text=True)
    try:
        first.stdout.readline()  # the start line: it holds the lock by now
        second = subprocess.run([sys.executable, "-m", "runner", "run", path, "--until-end"], cwd=workdir,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert "in use by another runner" in second.stderr
    finally:
        first.terminate()
        assert first.wait(timeout=30) == 0  # SIGTERM is a clean stop


def test_missing_source_file_is_a_clear_error(workdir, capsys):
    path = write(workdir, BASE.replace("events.jsonl", "nowhere.jsonl"))
    assert main(["run", path, "--until-end"]) == 1
    assert "cannot read the source file nowhere.jsonl" in capsys.readouterr().err


def test_a_state_path_that_cannot_be_made_is_a_clear_error(workdir, capsys):
    # (tests run as root, which ignores permission bits: a file in the way fails for anyone)
    path = write(workdir, BASE.replace("state: {path: state}", "state: {path: events.jsonl/state}"))
    assert main(["run", path, "--until-end"]) == 1
    err = capsys.readouterr().err
    assert "cannot create the state directory events.jsonl/state" in err


@pytest.mark.parametrize("change, message", [
    ("size: 5m", "size: 0s"),
    ("size: 5m", "size: -5m"),
])
def test_zero_or_negative_window_sizes_are_refused_with_the_line(workdir, capsys, change, message):
    path = write(workdir, BASE.replace(change, message))
    assert main(["validate", path]) == 2
    err = capsys.readouterr().err
    assert ":10: stages[1].size:" in err, err


def test_a_session_stage_without_key_by_is_refused_with_the_line(workdir, capsys):
    path = write(workdir, BASE.replace("type: tumbling_window", "type: session_window").replace("size: 5m", "gap: 10m"))
    assert main(["validate", path]) == 2
    err = capsys.readouterr().err
    assert ":8: stages[1]: missing required key \"key_by\"" in err, err


@pytest.mark.parametrize("buffered", [False, True], ids=["unbuffered", "buffered"])
def test_a_listing_whose_reader_is_gone_ends_without_a_traceback(buffered):
    env = {k: v for k, v in os.environ.items() if not (buffered and k == "PYTHONUNBUFFERED")}
    proc = subprocess.Popen([sys.executable, "-m", "runner", "plugins"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before it prints: as `runner plugins | head -0` does
    try:
        errors = proc.stderr.read().decode()
        assert proc.wait(timeout=30) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert errors == ""


def test_generate_into_a_directory_is_bad_usage(tmp_path, capsys):
    assert main(["generate", "--out", str(tmp_path), "--count", "5"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"error: --out {tmp_path} is a directory: give a file to write, or '-' for stdout"


@pytest.mark.parametrize("out, reason", [("/dev/full", "No space left on device"),
                                         ("{tmp}/a-file/x.jsonl", "File exists ({tmp}/a-file)")])
def test_generate_into_a_file_that_cannot_be_written_says_so(tmp_path, capsys, out, reason):
    (tmp_path / "a-file").write_text("")
    out, reason = out.format(tmp=tmp_path), reason.format(tmp=tmp_path)
    assert main(["generate", "--out", out, "--count", "5"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == f"error: cannot write --out {out}: {reason}"


def test_validate_counts_in_the_singular_and_plural(workdir, capsys):
    assert main(["validate", write(workdir, BASE)]) == 0
    assert capsys.readouterr().out.endswith("valid pipeline 'p' (2 stages, 1 sink)\n")


def test_state_without_an_action_shows_the_state_help(capsys):
    assert main(["state"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: runner state") and "print the last checkpoint as JSON" in err
    assert err.splitlines()[-1] == "error: state needs an action: dump or reset"


@pytest.mark.parametrize("command", [["run"], ["validate"], ["state", "dump"], ["state", "reset"]])
def test_every_pipeline_command_explains_its_arguments(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "pipeline the pipeline YAML file" in out
    assert "override a YAML value, e.g. --set checkpoint.every_events=500 (repeatable)" in out


def test_plugins_lists_the_common_keys_once_and_each_default_once(capsys):
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.count("(default") > 1] == []
    assert any(line.split()[:3] == ["each", "of", "stages:"] and "to (sink names" in line for line in lines)
    assert any(line.split()[:3] == ["each", "of", "sinks:"] and "name (unique" in line for line in lines)


GENERATED = """name: gen
source: {type: generator, rate: 1000, count: 100000}
state: {path: state}
dlq: {type: jsonl, path: dlq.jsonl}
stages:
  - type: aggregate
    key_by: page_url
    aggregations: {views: count}
sinks:
  - type: jsonl
    path: out.jsonl
"""


def test_a_stop_signal_that_comes_while_the_command_starts_is_a_clean_stop(tmp_path):
    # held from before the imports (python -m runner, the runner command): here sent right away
    path = write(tmp_path, GENERATED)
    code = ("import os, signal, sys\nfrom runner import signals\nsignals.hold()\n"
            "os.kill(os.getpid(), signal.SIGTERM)\nfrom runner.cli import main\n"
            f"sys.exit(main(['run', {path!r}, '--until-end']))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (0, "[gen] stopped while starting; nothing was read\n")
    assert not (tmp_path / "out.jsonl").exists() or (tmp_path / "out.jsonl").read_text() == ""


def test_a_stop_signal_while_waiting_for_a_broker_stops_at_once(tmp_path):
    from plugins.broker import free_port

    path = write(tmp_path, GENERATED.replace("{type: generator, rate: 1000, count: 100000}",
                                             f"{{type: kafka, topics: [t], bootstrap_servers: '127.0.0.1:{free_port()}'}}"))
    proc = subprocess.Popen([sys.executable, "-m", "runner", "run", path], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # imports done (or not: a signal during them is held), the broker waited for (10 s)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - signalled < 5
    assert (proc.returncode, err) == (0, "[gen] stopped while starting; nothing was read\n"), err


def test_a_second_stop_signal_exits_with_its_own_code(workdir, monkeypatch):
    from runner import cli

    def interrupted(args):
        raise KeyboardInterrupt(signal.SIGTERM)  # what the runner raises at a second SIGTERM

    monkeypatch.setattr(cli, "cmd_run", interrupted)
    assert main(["run", write(workdir, BASE)]) == 143


def test_plugins_lists_the_modules_a_pipeline_names_too(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_stages.py").write_text(
        "from runner import hookimpl\nfrom runner.components import Stage\n\n"
        "class Shout(Stage):\n    type = 'shout'\n\n"
        "@hookimpl\ndef runner_register_stages():\n    return [Shout]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write(tmp_path, "name: p\nplugins: [my_stages]\nsource: {type: file, path: e.jsonl}\n"
                           "dlq: {type: jsonl, path: d.jsonl}\nstages: [{type: shout}]\n")
    assert main(["plugins"]) == 0
    assert "from my_stages" not in capsys.readouterr().out  # named only in the pipeline
    assert main(["plugins", path]) == 0
    assert "  shout              from my_stages" in capsys.readouterr().out


def test_a_stop_signal_held_at_start_acts_as_python_would_for_other_commands(workdir, capsys):
    from runner import signals

    path = write(workdir, BASE)
    signals.hold()
    try:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl+C while `runner validate` was importing
        assert main(["validate", path]) == 130  # as Python's Ctrl+C, without a traceback
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert "valid pipeline" not in capsys.readouterr().out


def running(tmp_path) -> subprocess.Popen:
    """``runner run`` of an endless paced generator, once it has started (its start line read)."""
    path = write(tmp_path, GENERATED.replace(", count: 100000", ""))
    proc = subprocess.Popen([sys.executable, "-m", "runner", "run", path], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "starting fresh" in proc.stdout.readline()
    return proc


def test_the_same_stop_signal_twice_at_once_is_one_clean_stop(tmp_path):
    proc = running(tmp_path)  # as `timeout 60 runner run ...` sends its SIGTERM: to the runner, then to the group
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.02)  # handled apart (signals that come before the first is handled are one anyway)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "stopped cleanly" in out, (out, err)


def test_a_second_stop_signal_says_that_the_last_checkpoint_stands(tmp_path, monkeypatch, capsys):
    from runner import engine

    def slow_finish(self):  # a final checkpoint that takes long (a slow disk): the second signal comes in it
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)

    monkeypatch.setattr(engine.Runner, "_finish", slow_finish)
    monkeypatch.chdir(tmp_path)  # the pipeline's relative paths
    path = write(tmp_path, GENERATED)
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    assert main(["run", path]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        "[gen] stopped at once by a second signal, without a checkpoint: the last one on disk stands")
