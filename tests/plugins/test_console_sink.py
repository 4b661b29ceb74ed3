"""The console sink when its reader goes away: ``runner run ... | head`` must end the run
cleanly, as SIGTERM does, not print an error at every checkpoint."""

import json
import subprocess

import pytest

from tests import e2e, faults

# what it prints: results (a milestone every 10 views of a page), or display lines alone
PRINTS = {
    "results": {"milestones": {"views": 10}},
    "display lines": {"display": {"every": "1s", "line": "{key}: {views} views"}},
}


@pytest.mark.parametrize("prints", PRINTS)
def test_a_run_whose_reader_stops_reading_ends_cleanly_and_resumes_later(tmp_path, prints):
    # paced: it would run for 500 s
    pipeline = faults.write_pipeline(tmp_path / "pipeline.yaml", {
        "name": "piped",
        "source": {"type": "generator", "rate": 200, "count": 100_000},
        "state": {"path": str(tmp_path / "state")},
        "dlq": {"type": "jsonl", "path": str(tmp_path / "dlq.jsonl")},
        "checkpoint": {"every_events": 100, "every_ms": 100},
        "stages": [{"type": "aggregate", "name": "views", "key_by": "page_url",
                    "aggregations": {"views": "count"}, **PRINTS[prints]}],
        "sinks": [{"type": "console"}],
    })
    proc = subprocess.Popen(e2e.runner_cmd("run", pipeline, "--until-end"), cwd=e2e.ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        shown = [proc.stdout.readline() for _ in range(3)]  # what `head -3` reads
        proc.stdout.close()
        assert proc.wait(timeout=30) == 0
        errors = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert all(line.strip() for line in shown)
    assert "Traceback" not in errors
    assert errors.count("output was closed by its reader") == 1, errors
    assert "delivery failed" not in errors
    # it stopped at a checkpoint well before the end, and the next run goes on from it
    dump = json.loads(e2e.run("state", "dump", pipeline).stdout)
    assert 0 < dump["offsets"]["generator/0"] < 100_000
    again = e2e.run("run", pipeline, "--set", "source.count=" + str(dump["offsets"]["generator/0"] + 50),
                    "--until-end")
    assert again.returncode == 0, again.stderr
    assert "restored checkpoint" in again.stdout
