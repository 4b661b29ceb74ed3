"""State past its plain form survives SIGKILL: long collections (a FrozenList of chunks),
thousands of distinct values (a Distinct) and of counts (a Counts log, compacted now and
then), killed at random moments and restarted, end with exactly the results and state of
one clean run (CONTRACT section 7)."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

from plugins.clickstream import ClickGenerator
from runner import config
from runner.aggregations import SMALL, Collect
from runner.dump import dump_state
from tests import faults

EVENTS = 40_000  # of two users: two sessions of about 20,000 events each
MAX_RUNS = 40
STARTUP_KILLS = 0.25  # the share of runs killed while they start (restore, redeliver)
KILL_WITHIN = 80  # checkpoints of 100 events: each killed run reads at most 8,000 more


def pipeline(workdir: Path, events: Path) -> str:
    return faults.file_pipeline(
        workdir, events, "clicks", name="big_state",
        checkpoint={"every_events": 100, "every_ms": 100},
        event_time={"field": "timestamp", "grace": "0s"},
        stages=[
            {"type": "tumbling_window", "name": "hour", "size": "1h",
             "aggregations": {"events": "count", "ids": {"count_distinct": "event_id"},
                              # ~1,900 durations, each counted again and again: the Counts log
                              # of what changed outgrows twice the counts and is written anew
                              "per_duration": {"count_by": "duration"}, "top": {"top": "duration", "n": 3}}},
            {"type": "session_window", "name": "sessions", "key_by": "user_id", "gap": "10m",
             "aggregations": {"views": "count", "path": {"collect": "page_url"}}},
        ],
        sinks=[{"type": "jsonl", "path": str(workdir / "results.jsonl")}],
    )


def run_to_the_end(yaml: str, state: Path, rng: random.Random | None) -> int:
    """Runs of ``--drain`` until one ends by itself; with ``rng``, each is killed at a random
    moment: while it starts, or once it has taken 1 to ``KILL_WITHIN`` checkpoints (a
    moment found by its progress, not by the clock: on a fast machine a clock's moment
    came after the run had ended). Returns the number of kills."""
    kills = 0
    for attempt in range(MAX_RUNS):
        run = faults.Runner("run", yaml, "--drain")
        try:
            if rng is not None and attempt < MAX_RUNS - 1:
                if rng.random() < STARTUP_KILLS:
                    time.sleep(rng.uniform(0.05, 0.4))
                else:
                    target = faults.stored(state)["checkpoint"] + rng.randint(1, KILL_WITHIN)
                    faults.wait_until(lambda: not run.alive() or faults.stored(state)["checkpoint"] >= target,
                                      60, interval=0.01)
                if run.alive():
                    run.signal(signal.SIGKILL)
                    run.wait(30)
                    kills += 1
                    continue
            assert run.wait(120) == 0, run.stderr[-3000:]
            return kills
        finally:
            run.stop()
    raise AssertionError(f"no run ended by itself in {MAX_RUNS}")


def test_sigkills_leave_big_state_and_its_results_as_one_clean_run(tmp_path):
    gen = ClickGenerator(seed=11, start_ms=1795507200000, rate=5000, bad_ratio=0.0, users=2)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(gen.record(i)[1] + b"\n" for i in range(EVENTS)))
    found = {}
    for name, rng in (("clean", None), ("killed", random.Random(7))):
        workdir = tmp_path / name
        workdir.mkdir()
        yaml = pipeline(workdir, events)
        kills = run_to_the_end(yaml, workdir / "state", rng)
        records = faults.jsonl_records(workdir / "results.jsonl")
        results = faults.by_id([(r["id"], r) for r in records])
        assert len(results) == len(records), f"{name}: an output written twice"
        found[name] = (kills, results, dump_state(config.load(yaml)))
    (_, clean, clean_state), (kills, killed, killed_state) = found["clean"], found["killed"]
    assert kills >= 4
    hour = next(r for r in clean.values() if r["stage"] == "hour")
    assert hour["ids"] == EVENTS > SMALL and len(hour["per_duration"]) > SMALL  # past the plain form
    sessions = [r for r in clean.values() if r["stage"] == "sessions"]
    assert len(sessions) == 2 and min(len(r["path"]) for r in sessions) > 20 * Collect.CHUNK
    assert killed.keys() == clean.keys() and not faults.differences(clean, killed)
    killed_state.pop("checkpoint"), clean_state.pop("checkpoint")  # the one field that may differ
    assert json.dumps(killed_state, sort_keys=True) == json.dumps(clean_state, sort_keys=True)
