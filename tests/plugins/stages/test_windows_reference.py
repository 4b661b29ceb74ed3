"""Tumbling and hopping windows (CONTRACT 3, 5, 6, 7) against the batch reference in
tests/reference.py: random single-partition click streams through ``runner.testing.Driver``.

One partition only (the file source has one): multi-partition behaviour is tested against a
real broker elsewhere.
"""

from __future__ import annotations

import signal
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.testing import Driver
from tests import reference

streams, aggregations = reference.strategies()

PROPERTY = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
T0 = 1795507200000  # 2026-11-24T08:00:00Z

# the same lengths written the ways users write them
SIZES = {30_000: ["30s", "30000ms", "0.5m", 30], 60_000: ["1m", "60s", 60], 120_000: ["2m", "120s"]}
GRACES = ["1m", "30s", "2m", "0s", "15s", "1ms", 0, "1000ms"]


def _ms_text(ms: int, draw) -> str:
    return draw(st.sampled_from([f"{ms}ms"] + ([f"{ms // 1000}s"] if ms % 1000 == 0 else [])
                                + ([f"{ms / 1000}s"] if ms % 1000 else [])))


@st.composite
def window_pipelines(draw, n_stages=st.integers(1, 2)):
    stages = [{"type": "validate"}]
    for i in range(draw(n_stages)):
        size = draw(st.sampled_from(sorted(SIZES)))
        stage = {"name": f"w{i}", "size": draw(st.sampled_from(SIZES[size]))}
        if draw(st.booleans()):
            stage["type"] = "tumbling_window"
        else:
            stage["type"] = "hopping_window"
            stage["advance"] = _ms_text(size // draw(st.integers(1, 4)), draw)
        key_by = draw(st.sampled_from([None, "user_id", "country"]))
        if key_by:
            stage["key_by"] = key_by
        stage["aggregations"] = draw(aggregations())
        stages.append(stage)
    return reference.drawn_pipeline(draw, "wref", stages, GRACES)


# --- 1. a drained run equals the reference --------------------------------------------------------

@PROPERTY
@given(pipeline=window_pipelines(), records=streams())
def test_drained_run_matches_reference(pipeline, records):
    ref = reference.expected(pipeline, records, drain=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Driver(pipeline, tmp).run(records, drain=True)
    reference.assert_matches(ref, out)
    for stage in pipeline["stages"][1:]:
        assert out.dump["stages"][stage["name"]]["open"] == []
    assert out.dump["watermark"] == "+inf"


# --- 2. crashes change nothing ----------------------------------------------------------------------

@settings(PROPERTY, max_examples=40)
@given(pipeline=window_pipelines(), records=streams(max_size=25), data=st.data())
def test_crashes_between_checkpoints_change_nothing(pipeline, records, data):
    reference.assert_crashes_change_nothing(Driver, pipeline, records, data)


# --- 3. --until-end leaves the open windows; --drain emits them -----------------------------------

@PROPERTY
@given(pipeline=window_pipelines(), records=streams(), later=streams(max_size=6), data=st.data())
def test_until_end_keeps_open_windows_and_drain_emits_them(pipeline, records, later, data):
    records = records + reference.closer(pipeline, records, data)
    ref = reference.Reference(pipeline)
    with tempfile.TemporaryDirectory() as tmp:
        driver = Driver(pipeline, tmp)
        out = driver.run(records)
        reference.assert_matches(ref.feed(records).finish(drain=False), out)
        open_before = {s["name"]: out.dump["stages"][s["name"]]["open"] for s in pipeline["stages"][1:]}

        out = driver.run(drain=True)
        reference.assert_matches(ref.finish(drain=True), out)
        emitted = {(r["stage"], reference.compact(r["key"]), r["window_start"], r["window_end"]) for r in out.results}
        for name, windows in open_before.items():
            for w in windows:
                assert (name, reference.compact(w["key"]), w["window_start"], w["window_end"]) in emitted

        # drained for good: later events are late for every window stage, never aggregated
        renamed = [dict(e, event_id=f"later{i}") if isinstance(e, dict) else e for i, e in enumerate(later)]
        out = driver.run(renamed)
        reference.assert_matches(ref.feed(renamed).finish(drain=False), out)
        assert out.dump["watermark"] == "+inf"


# --- explicit cases (also checks of the reference itself) ----------------------------------------

def click(i, t, **extra):
    return {"event_id": f"e{i}", "user_id": extra.pop("user_id", "u1"), "page_url": extra.pop("page_url", "/home"),
            "timestamp": t, **extra}


def pipeline_of(stage: dict, grace="0s", late="dlq", every=100) -> dict:
    return {"name": "wref", "event_time": {"grace": grace, "late": late},
            "checkpoint": {"every_events": every, "every_ms": 0}, "state": {"backend": "lmdb"},
            "stages": [{"type": "validate"}, stage]}


def test_window_end_is_exclusive_and_a_window_closes_when_the_watermark_reaches_it(tmp_path):
    p = pipeline_of({"type": "tumbling_window", "name": "m", "size": "1m", "aggregations": {"n": "count", "ids": {"collect": "event_id"}}})
    records = [click(0, T0), click(1, T0 + 59_999), click(2, T0 + 60_000),  # W = 08:01: [08:00, 08:01) final
               click(3, T0 + 59_999), click(4, T0 + 60_000), click(5, T0 + 119_999)]
    out = Driver(p, tmp_path).run(records, drain=True)
    ref = reference.expected(p, records)
    reference.assert_matches(ref, out)
    got = {r["window_start"]: (r["n"], r["ids"]) for r in out.results}
    assert got == {"2026-11-24T08:00:00.000Z": (2, ["e0", "e1"]), "2026-11-24T08:01:00.000Z": (3, ["e2", "e4", "e5"])}
    assert [d["id"] for d in out.dead_letters] == ["wref/dlq/events/0/3/m"]
    assert out.dump["stages"]["m"]["late"] == 1


def test_hopping_windows_near_the_epoch_start_at_it_and_partial_lateness_is_not_late(tmp_path):
    p = pipeline_of({"type": "hopping_window", "name": "h", "size": "4s", "advance": "1s",
                     "aggregations": {"n": "count", "ids": {"collect": "event_id"}}})
    # e0 at 2.5 s is in [0,4), [1,5), [2,6) only (none starts before the epoch);
    # e1 at 5 s makes W = 5 s: [0,4) and [1,5) are final; e2 at 2.5 s is late for those but not
    # for [2,6), so it is not late and counts there.
    records = [click(0, 2_500), click(1, 5_000), click(2, "1970-01-01T00:00:02.500999Z")]
    out = Driver(p, tmp_path).run(records, drain=True)
    reference.assert_matches(reference.expected(p, records), out)
    got = {(r["window_start"][17:23], r["window_end"][17:23]): r["ids"] for r in out.results}
    assert got == {("00.000", "04.000"): ["e0"], ("01.000", "05.000"): ["e0"], ("02.000", "06.000"): ["e0", "e2", "e1"],
                   ("03.000", "07.000"): ["e1"], ("04.000", "08.000"): ["e1"], ("05.000", "09.000"): ["e1"]}
    assert out.dead_letters == [] and out.dump["stages"]["h"]["late"] == 0


def test_grace_keeps_windows_open_and_late_drop_counts_without_dlq(tmp_path):
    p = pipeline_of({"type": "tumbling_window", "name": "m", "size": "1m", "key_by": "country",
                     "aggregations": {"n": "count", "rev": {"sum": "revenue"}, "avg": {"avg": "revenue"}}},
                    grace="30s", late="drop")
    records = [click(0, T0, country="US", revenue=1), click(1, T0 + 80_000, revenue=2),  # W = 08:00:50
               click(2, T0 + 10_000, country=None, revenue=2.5),  # [08:00, 08:01) still open: key null
               click(3, T0 + 90_000, country="US"),  # W = 08:01:00: [08:00, 08:01) final
               click(4, T0 + 59_000, country="US", revenue=7)]  # late, dropped
    out = Driver(p, tmp_path).run(records, drain=True)
    reference.assert_matches(reference.expected(p, records), out)
    got = {(r["key"], r["window_start"][11:16]): (r["n"], r["rev"], r["avg"]) for r in out.results}
    assert got == {("US", "08:00"): (1, 1, 1.0), (None, "08:00"): (1, 2.5, 2.5),
                   (None, "08:01"): (1, 2, 2.0), ("US", "08:01"): (1, 0, None)}
    assert type(next(r for r in out.results if r["key"] == "US" and r["window_start"][11:16] == "08:00")["rev"]) is int
    assert out.dead_letters == [] and out.dump["stages"]["m"]["late"] == 1


def test_a_processing_error_in_one_window_stage_stops_the_event_there_but_the_high_mark_stays(tmp_path):
    p = pipeline_of({"type": "tumbling_window", "name": "a", "size": "1m", "aggregations": {"amt": {"sum": "amount"}}})
    p["stages"].append({"type": "tumbling_window", "name": "b", "size": "1m", "aggregations": {"n": "count"}})
    records = [click(0, T0, amount=1), click(1, T0 + 70_000, amount="12"), click(2, T0 + 30_000, amount=2)]
    out = Driver(p, tmp_path).run(records, drain=True)
    reference.assert_matches(reference.expected(p, records), out)
    assert {d["id"]: d["error_type"] for d in out.dead_letters} == {
        "wref/dlq/events/0/1/a": "processing", "wref/dlq/events/0/2/a": "late", "wref/dlq/events/0/2/b": "late"}
    assert "amount" in next(d for d in out.dead_letters if d["error_type"] == "processing")["error"]
    assert out.dump["event_time"] == {"events/0": "2026-11-24T08:01:10.000Z"}


def test_until_end_emits_a_window_the_watermark_just_reached_and_keeps_the_next_open(tmp_path):
    p = pipeline_of({"type": "hopping_window", "name": "h", "size": "1m", "advance": "30s", "aggregations": {"n": "count"}},
                    grace="30s")
    records = [click(0, T0 + 15_000), click(1, T0 + 90_000)]  # W = 08:01:00: the end of [08:00, 08:01)
    driver = Driver(p, tmp_path)
    out = driver.run(records)
    reference.assert_matches(reference.expected(p, records, drain=False), out)
    assert sorted((r["window_start"][11:19], r["n"]) for r in out.results) == [("07:59:30", 1), ("08:00:00", 1)]
    assert [(w["window_start"][11:19], w["window_end"][11:19], w["n"]) for w in out.dump["stages"]["h"]["open"]] == [
        ("08:01:00", "08:02:00", 1), ("08:01:30", "08:02:30", 1)]
    assert out.dump["watermark"] == "2026-11-24T08:01:00.000Z"
    out = driver.run(drain=True)
    assert sorted((r["window_start"][11:19], r["n"]) for r in out.results) == [
        ("07:59:30", 1), ("08:00:00", 1), ("08:01:00", 1), ("08:01:30", 1)]


# --- runner.testing itself ------------------------------------------------------------------------

class Hung(Exception):
    pass


def test_driver_crash_inside_the_last_chunk_of_a_poll_crashes_instead_of_hanging(tmp_path):
    """runner.testing (fixed in 0606326): ``crash_after=N`` inside the last every_events chunk
    of a poll dropped the rest of that chunk without crashing; the source had already read
    those lines, so ``run`` polled for them forever."""
    p = pipeline_of({"type": "tumbling_window", "name": "m", "size": "1m", "aggregations": {"n": "count"}}, every=5)
    records = [click(i, T0 + i * 1000) for i in range(7)]
    driver = Driver(p, tmp_path)

    def give_up(signum, frame):
        raise Hung("Driver.run(crash_after=6) over 7 records with every_events=5 did not return in 5 s")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.setitimer(signal.ITIMER_REAL, 5)
    try:
        out = driver.run(records, crash_after=6)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert out.dump is None, "6 of 7 records and then a crash"
    assert driver.run(drain=True).results[0]["n"] == 7
