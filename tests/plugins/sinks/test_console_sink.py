"""The console sink when its reader goes away: ``runner run ... | head`` must end the run
cleanly, as SIGTERM does, not print an error at every checkpoint."""

import json
import os
import subprocess

import pytest

from tests import e2e, faults

# what it prints: results (a milestone every 10 views of a page), or display lines alone
PRINTS = {
    "results": {"milestones": {"views": 10}},
    "display lines": {"display": {"every": "1s", "line": "{key}: {views} views"}},
}
STOP_LINE = "an output was closed by its reader: stopping"


def paced_pipeline(tmp_path, prints: str = "results") -> str:
    """It would run for 500 s, printing as ``prints`` says."""
    return faults.write_pipeline(tmp_path / "pipeline.yaml", {
        "name": "piped",
        "source": {"type": "generator", "rate": 200, "count": 100_000},
        "state": {"path": str(tmp_path / "state")},
        "dlq": {"type": "jsonl", "path": str(tmp_path / "dlq.jsonl")},
        "checkpoint": {"every_events": 100, "every_ms": 100},
        "stages": [{"type": "aggregate", "name": "views", "key_by": "page_url",
                    "aggregations": {"views": "count"}, **PRINTS[prints]}],
        "sinks": [{"type": "console"}],
    })


def run_piped(pipeline: str, lines: int, stderr_too: bool = False, buffered: bool = False) -> tuple[int, str]:
    """Run it into a pipe whose reader takes ``lines`` lines and goes (``| head``); its exit
    status and what it wrote on stderr."""
    env = dict(os.environ)
    if buffered:
        env.pop("PYTHONUNBUFFERED", None)
    proc = subprocess.Popen(e2e.runner_cmd("run", pipeline, "--until-end"), cwd=e2e.ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT if stderr_too else subprocess.PIPE)
    try:
        shown = [proc.stdout.readline() for _ in range(lines)]
        proc.stdout.close()
        status = proc.wait(timeout=30)
        errors = "" if stderr_too else proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert all(line.strip() for line in shown)
    return status, errors


def resumes(pipeline: str) -> None:
    """It stopped at a checkpoint well before the end, and the next run goes on from it."""
    offset = json.loads(e2e.run("state", "dump", pipeline).stdout)["offsets"]["generator/0"]
    assert 0 <= offset < 100_000
    again = e2e.run("run", pipeline, "--set", f"source.count={offset + 50}", "--until-end")
    assert again.returncode == 0, again.stderr
    assert "restored checkpoint" in again.stdout


@pytest.mark.parametrize("prints", PRINTS)
def test_a_run_whose_reader_stops_reading_ends_cleanly_and_resumes_later(tmp_path, prints):
    pipeline = paced_pipeline(tmp_path, prints)
    status, errors = run_piped(pipeline, lines=3)
    assert status == 0
    assert "Traceback" not in errors
    assert errors.count(STOP_LINE) == 1, errors
    assert "delivery failed" not in errors and "not confirming" not in errors
    resumes(pipeline)


@pytest.mark.parametrize("buffered", [False, True], ids=["unbuffered", "buffered"])
def test_a_run_whose_status_lines_find_no_reader_ends_cleanly(tmp_path, buffered):
    # no line read: the reader is gone before the first status line
    pipeline = paced_pipeline(tmp_path)
    status, errors = run_piped(pipeline, lines=0, buffered=buffered)
    assert status == 0
    assert errors.count(STOP_LINE) == 1, errors
    assert "Traceback" not in errors and "Exception ignored" not in errors
    resumes(pipeline)


def test_a_run_whose_stderr_goes_into_the_same_closed_pipe_ends_cleanly(tmp_path):
    pipeline = paced_pipeline(tmp_path)
    status, _ = run_piped(pipeline, lines=3, stderr_too=True)  # runner run ... 2>&1 | head -3
    assert status == 0
    resumes(pipeline)


def test_a_run_whose_reader_goes_before_its_last_line_says_nothing_of_stopping(tmp_path):
    # a short bounded run: its reader takes the first status line and goes; the run ends as
    # it would have, and only its last line ("stopped cleanly") finds no reader
    pipeline = faults.write_pipeline(tmp_path / "pipeline.yaml", {
        "name": "short",
        "source": {"type": "generator", "rate": 2000, "count": 1000},
        "state": {"path": str(tmp_path / "state")},
        "dlq": {"type": "jsonl", "path": str(tmp_path / "dlq.jsonl")},
        "stages": [{"type": "aggregate", "name": "views", "key_by": "page_url", "aggregations": {"views": "count"}}],
        "sinks": [{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}],
    })
    status, errors = run_piped(pipeline, lines=1)
    assert status == 0
    assert errors == ""
    assert json.loads(e2e.run("state", "dump", pipeline).stdout)["offsets"]["generator/0"] == 1000


def test_display_lines_over_the_budget_are_counted_and_a_notice_is_never_split(capsys, monkeypatch):
    from plugins.sinks import console
    from runner.components import Context

    clock = [100.0]
    monkeypatch.setattr(console.time, "monotonic", lambda: clock[0])
    sink = console.ConsoleSink({"max_lines_per_s": 3}, Context("p", "console", {}))
    notice = "[VALIDATION ERROR] missing required field: page_url\n[DLQ] sent t/0@{} to the dead letter queue"
    sink.display(["report 1", notice.format(1), notice.format(2), "report 2"])
    assert capsys.readouterr().out.splitlines() == ["report 1", *notice.format(1).splitlines()]
    clock[0] += 1  # the next second: its budget is fresh, and the last one's count is shown first
    sink.display([notice.format(3)])
    assert capsys.readouterr().out.splitlines() == [
        "... 3 more display lines not shown (over max_lines_per_s)", *notice.format(3).splitlines()]
    sink.display(["report 3", "report 4"])  # over this second's budget: counted
    sink.close()  # the last count is shown at the end, not lost
    assert capsys.readouterr().out.splitlines() == [
        "report 3", "... 1 more display lines not shown (over max_lines_per_s)"]


def test_a_budget_of_one_line_still_shows_each_seconds_first_notice(capsys, monkeypatch):
    from plugins.sinks import console
    from runner.components import Context

    monkeypatch.setattr(console.time, "monotonic", lambda: 100.0)
    sink = console.ConsoleSink({"max_lines_per_s": 1}, Context("p", "console", {}))
    sink.display(["[VALIDATION ERROR] x\n[DLQ] sent t/0@1 to the dead letter queue", "[VALIDATION ERROR] y\n[DLQ] ..."])
    assert capsys.readouterr().out.splitlines() == ["[VALIDATION ERROR] x", "[DLQ] sent t/0@1 to the dead letter queue"]


def test_a_run_shorter_than_the_display_interval_shows_its_figures_at_its_stop(tmp_path, capsys):
    from runner.cli import main

    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"page_url": page}) + "\n" for page in ("/a", "/b", "/a")))
    path = faults.write_pipeline(tmp_path / "short.yaml", {
        "name": "short", "source": {"type": "file", "path": str(events)}, "state": {"backend": "memory"},
        "dlq": {"type": "jsonl", "path": str(tmp_path / "dlq.jsonl")},
        "stages": [{"type": "aggregate", "name": "views", "key_by": "page_url", "aggregations": {"views": "count"},
                    "display": {"every": "1h", "line": "{key}: {views} views",
                                "top": {"by": "views", "n": 2, "title": "TOP PAGES"}}}],
        "sinks": [{"type": "console"}],
    })
    assert main(["run", path, "--until-end"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:-1] == ["/a: 2 views", "/b: 1 views", "==== TOP PAGES ====",
                         "  1. /a                           2 views", "  2. /b                           1 views"], out
