"""The fault-tolerant pipeline end to end: the real broker, real LMDB, real processes."""

from __future__ import annotations

import json
import random
import signal
from collections import defaultdict

import pytest

from runner.codec import DecodeError, decode
from tests import e2e, faults

PIPELINE = "pipelines/fault_tolerant.yaml"


def overrides(broker, topic, dlq_topic, tmp_path, name="run"):
    return [
        "--set", f"source.bootstrap_servers={broker}",
        "--set", f"source.topics=[{topic}]",
        "--set", f"dlq.topic={dlq_topic}",
        "--set", f"state.path={tmp_path / name / 'state'}",
        "--set", f"sinks.jsonl.path={tmp_path / name / 'results.jsonl'}",
    ]


def dlq_stage(item) -> str:
    try:
        decode(item["value"], 1 << 20)
    except DecodeError:
        return "source"
    return "validate"


def test_dump_and_dlq_match_a_direct_computation(broker, topic_factory, tmp_path):
    topic, dlq_topic = topic_factory(3), topic_factory(1)
    sent = e2e.produce(broker, topic, 10_000, bad_ratio=0.05)
    args = overrides(broker, topic, dlq_topic, tmp_path)
    proc = e2e.run("run", PIPELINE, "--until-end", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]

    good = [json.loads(item["value"]) for item in sent if item["bad"] is None]
    bad = [item for item in sent if item["bad"] is not None]
    assert 400 <= len(bad) <= 600
    pages = defaultdict(lambda: {"views": 0, "durations": [], "revenue": 0})
    for event in good:
        page = pages[event["page_url"]]
        page["views"] += 1
        if event.get("duration") is not None:
            page["durations"].append(event["duration"])
        page["revenue"] += event.get("revenue") or 0

    state = e2e.dump(PIPELINE, *args)
    keys = {k["key"]: k for k in state["stages"]["page_stats"]["keys"]}
    assert set(keys) == set(pages)
    for url, want in pages.items():
        got = keys[url]
        assert got["views"] == want["views"]
        assert got["revenue"] == pytest.approx(want["revenue"], rel=1e-9)
        avg = sum(want["durations"]) / len(want["durations"]) if want["durations"] else None
        assert got["avg_duration"] == pytest.approx(avg, rel=1e-9)
    assert state["stages"]["validate"]["invalid"] == sum(dlq_stage(item) == "validate" for item in bad)
    assert sum(state["offsets"].values()) == len(sent)

    letters = e2e.read_topic(broker, dlq_topic)
    ids = [dict(r.headers)["runner-id"].decode() for r in letters]
    assert len(ids) == len(set(ids)), "duplicate dead letters"
    expected = {f"fault_tolerant/dlq/{topic}/{i['partition']}/{i['offset']}/{dlq_stage(i)}" for i in bad}
    assert set(ids) == expected
    for record in letters:
        letter = json.loads(record.value)
        assert letter["error"] and letter["error_type"] in ("deserialization", "validation")


def test_sigkill_many_times_equals_one_clean_run(broker, topic_factory, tmp_path):
    topic = topic_factory(3)
    clean_dlq, crash_dlq = topic_factory(1), topic_factory(1)
    e2e.produce(broker, topic, 30_000, seed=11, bad_ratio=0.05)

    clean = overrides(broker, topic, clean_dlq, tmp_path, "clean")
    assert e2e.run("run", PIPELINE, "--drain", *clean).returncode == 0

    # checkpoints five times as often: results must not depend on where batches are cut
    crash = overrides(broker, topic, crash_dlq, tmp_path, "crash") + ["--set", "checkpoint.every_events=20"]
    rng = random.Random(3)
    state = tmp_path / "crash" / "state"
    kills = 0
    for _ in range(12):
        proc = e2e.start("run", PIPELINE, "--until-end", *crash)
        # killed 10 to 300 checkpoints in: a moment found by its progress, as a clock's moment
        # can come after a fast run has ended
        target = faults.stored(state)["checkpoint"] + rng.randint(10, 300)
        faults.wait_until(lambda: proc.poll() is not None or faults.stored(state)["checkpoint"] >= target,
                          60, interval=0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        if kills >= 5:
            break
    assert kills >= 3, "the runs ended before they could be killed"
    final = e2e.run("run", PIPELINE, "--drain", *crash)
    assert final.returncode == 0, final.stderr[-3000:]

    clean_state, crash_state = e2e.dump(PIPELINE, *clean), e2e.dump(PIPELINE, *crash)
    clean_state.pop("checkpoint"), crash_state.pop("checkpoint")
    assert crash_state == clean_state

    def lines(name):
        return (tmp_path / name / "results.jsonl").read_text().splitlines()

    clean_results, crash_results = lines("clean"), lines("crash")
    assert len(crash_results) == len(set(crash_results)), "duplicate results"
    assert {json.dumps(json.loads(x), sort_keys=True) for x in crash_results} == \
           {json.dumps(json.loads(x), sort_keys=True) for x in clean_results}
    assert len(clean_results) > 50

    def letters(dlq):
        ids = [dict(r.headers)["runner-id"].decode() for r in e2e.read_topic(broker, dlq)]
        assert len(ids) == len(set(ids)), "duplicate dead letters"
        return set(ids)

    assert letters(crash_dlq) == letters(clean_dlq)
    print(f"{kills} kills: {len(crash_results)} results and {len(letters(crash_dlq))} dead letters, "
          f"no duplicate, none missing")
