"""Session windows (CONTRACT 3, 5, 6, 7) against the batch reference in tests/reference.py:
random single-partition click streams through ``runner.testing.Driver``.

The reference forms sessions as the gap-connected groups of each key's non-late events, the
way CONTRACT 6 states the result; the runner merges them incrementally. One partition only.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.testing import Driver
from tests import reference

streams, aggregations = reference.strategies()

PROPERTY = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
T0 = 1795507200000  # 2026-11-24T08:00:00Z
GAPS = ["15s", "15000ms", "30s", "0.5m", "1m", 60, "2m", "1ms", "14999ms"]
GRACES = ["1m", "30s", "2m", "0s", "15s", "1ms", 0]


@st.composite
def session_pipelines(draw):
    session = {"type": "session_window", "name": "sessions", "key_by": draw(st.sampled_from(["user_id", "country"])),
               "gap": draw(st.sampled_from(GAPS)), "aggregations": draw(aggregations())}
    stages = [{"type": "validate"}, session]
    other = draw(st.sampled_from([None, "before", "after"]))
    if other:
        # a second window stage: its processing errors keep events from the sessions, or not
        tumbling = {"type": "tumbling_window", "name": "per_minute", "size": "1m", "aggregations": draw(aggregations())}
        stages.insert(1 if other == "before" else 2, tumbling)
    return reference.drawn_pipeline(draw, "sref", stages, GRACES)


# --- 1. a drained run equals the reference --------------------------------------------------------

@PROPERTY
@given(pipeline=session_pipelines(), records=streams())
def test_drained_run_matches_reference(pipeline, records):
    ref = reference.expected(pipeline, records, drain=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Driver(pipeline, tmp).run(records, drain=True)
    reference.assert_matches(ref, out)
    assert out.dump["stages"]["sessions"]["open"] == []
    for r in out.results:
        if r["stage"] == "sessions":
            assert r["duration_s"] >= 0 and r["window_start"] <= r["window_end"]


# --- 2. crashes change nothing ----------------------------------------------------------------------

@settings(PROPERTY, max_examples=40)
@given(pipeline=session_pipelines(), records=streams(max_size=25), data=st.data())
def test_crashes_between_checkpoints_change_nothing(pipeline, records, data):
    reference.assert_crashes_change_nothing(Driver, pipeline, records, data)


# --- 3. --until-end leaves the open sessions; --drain emits them ----------------------------------

@PROPERTY
@given(pipeline=session_pipelines(), records=streams(), later=streams(max_size=6), data=st.data())
def test_until_end_keeps_open_sessions_and_drain_emits_them(pipeline, records, later, data):
    records = records + reference.closer(pipeline, records, data)
    ref = reference.Reference(pipeline)
    with tempfile.TemporaryDirectory() as tmp:
        driver = Driver(pipeline, tmp)
        out = driver.run(records)
        reference.assert_matches(ref.feed(records).finish(drain=False), out)
        open_before = out.dump["stages"]["sessions"]["open"]

        out = driver.run(drain=True)
        reference.assert_matches(ref.finish(drain=True), out)
        emitted = {(reference.compact(r["key"]), r["window_start"], r["window_end"]): r
                   for r in out.results if r["stage"] == "sessions"}
        for s in open_before:  # an open session is emitted as it was: nothing came after
            got = emitted[(reference.compact(s["key"]), s["window_start"], s["window_end"])]
            assert reference.same_value(s, {k: v for k, v in got.items() if k not in ("id", "stage")}) is None

        renamed = [dict(e, event_id=f"later{i}") if isinstance(e, dict) else e for i, e in enumerate(later)]
        out = driver.run(renamed)
        reference.assert_matches(ref.feed(renamed).finish(drain=False), out)
        assert out.dump["stages"]["sessions"]["open"] == []


# --- explicit cases --------------------------------------------------------------------------------

def click(i, t, user="u1", **extra):
    return {"event_id": f"e{i}", "user_id": user, "page_url": extra.pop("page_url", "/home"), "timestamp": t, **extra}


def pipeline_of(gap="1m", grace="0s", key_by="user_id", aggs=None, late="dlq") -> dict:
    return {"name": "sref", "event_time": {"grace": grace, "late": late},
            "checkpoint": {"every_events": 100, "every_ms": 0}, "state": {"backend": "lmdb"},
            "stages": [{"type": "validate"},
                       {"type": "session_window", "name": "sessions", "key_by": key_by, "gap": gap,
                        "aggregations": aggs or {"n": "count", "ids": {"collect": "event_id"}}}]}


def sessions_of(out) -> dict:
    return {(r["key"], r["window_start"][11:23], r["window_end"][11:23]): r["ids"] for r in out.results}


def test_a_bridging_event_merges_two_sessions_and_the_gap_is_inclusive(tmp_path):
    p = pipeline_of(gap="1m", grace="2m")
    records = [click(0, T0), click(1, T0 + 120_000),  # two sessions of u1, 2 min apart
               click(2, T0 + 60_000),  # exactly one gap from both: they become one
               click(5, T0 + 120_000),  # an equal time
               click(3, T0 + 180_001, "u2"), click(4, T0 + 240_001, "u2"),  # exactly one gap apart: one session
               click(6, T0 + 120_000)]  # late now: W_p = 08:04:00.001 - 2m
    out = Driver(p, tmp_path).run(records, drain=True)
    reference.assert_matches(reference.expected(p, records), out)
    assert sessions_of(out) == {("u1", "08:00:00.000", "08:02:00.000"): ["e0", "e2", "e1", "e5"],
                                ("u2", "08:03:00.001", "08:04:00.001"): ["e3", "e4"]}
    assert [d["id"] for d in out.dead_letters] == ["sref/dlq/events/0/6/sessions"]
    assert {r["key"]: r["duration_s"] for r in out.results} == {"u1": 120.0, "u2": 60.0}


def test_late_is_strictly_before_the_partition_watermark_and_a_session_closes_after_last_plus_gap(tmp_path):
    p = pipeline_of(gap="1m", grace="0s", key_by="country")
    records = [click(0, T0, country="US"), click(1, T0 + 60_000),  # key null; W = 08:01
               click(2, T0 + 60_000, country="US"),  # t == W_p: not late; joins e0 (exactly one gap)
               click(3, T0 + 59_999, country=None),  # t < W_p: late
               click(4, T0 + 120_000),  # W = 08:02: null's session (last 08:01) is not final (W > L + gap is false)
               click(5, T0 + 180_001, country="US"),  # W > 08:02 + 1m: every session so far is final
               click(6, T0 + 180_001, country="DE")]
    out = Driver(p, tmp_path).run(records)
    ref = reference.expected(p, records, drain=False)
    reference.assert_matches(ref, out)
    assert sessions_of(out) == {("US", "08:00:00.000", "08:01:00.000"): ["e0", "e2"],
                                (None, "08:01:00.000", "08:02:00.000"): ["e1", "e4"]}
    assert [d["id"] for d in out.dead_letters] == ["sref/dlq/events/0/3/sessions"]
    assert [s["key"] for s in out.dump["stages"]["sessions"]["open"]] == ["DE", "US"]  # sorted by compact JSON key


def test_sessions_worked_example_through_the_driver(tmp_path):
    example = Path(__file__).resolve().parents[4] / "shared" / "examples" / "sessions"
    pipeline = yaml.safe_load((example / "pipeline.yaml").read_text())
    raw = [line.encode() for line in (example / "events.jsonl").read_text().splitlines()]
    out = Driver(pipeline, tmp_path).run(raw, drain=True)
    ref = reference.expected(pipeline, raw)
    reference.assert_matches(ref, out)
    want = [json.loads(line) for line in (example / "expected_results.jsonl").read_text().splitlines()]
    reference.assert_same_results(reference.by_id(want), out.results)


def test_until_end_a_session_is_open_while_the_watermark_equals_last_plus_gap(tmp_path):
    p = pipeline_of(gap="1m", grace="30s")
    driver = Driver(p, tmp_path)
    out = driver.run([click(0, T0), click(1, T0 + 90_000, "u2")])  # W = 08:01 = last + gap: still open
    assert out.results == [] and [s["key"] for s in out.dump["stages"]["sessions"]["open"]] == ["u1", "u2"]
    out = driver.run([click(2, T0 + 90_001, "u2")])  # W = 08:01:00.001 > last + gap: final
    assert sessions_of(out) == {("u1", "08:00:00.000", "08:00:00.000"): ["e0"]}
    assert [s["key"] for s in out.dump["stages"]["sessions"]["open"]] == ["u2"]
    out = driver.run([click(3, T0 + 61_000)])  # not late (W_p = 08:01:00.001), more than a gap after e0: new
    reference.assert_matches(reference.Reference(p).feed(
        [click(0, T0), click(1, T0 + 90_000, "u2"), click(2, T0 + 90_001, "u2"), click(3, T0 + 61_000)]
    ).finish(drain=False), out)
    assert [(s["key"], s["window_start"][11:23]) for s in out.dump["stages"]["sessions"]["open"]] == [
        ("u1", "08:01:01.000"), ("u2", "08:01:30.000")]
