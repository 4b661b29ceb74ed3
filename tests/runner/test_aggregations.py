"""The aggregations of CONTRACT section 3 (runner.aggregations.Aggregations) and the aggregate
stage's milestones.

Expected values are written from the contract; the property tests compare with the batch
reference in tests/reference.py (its ``aggregate``), which never imports the runner.
"""

from __future__ import annotations

import json
import random
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.aggregations import Aggregations, Collect
from runner.components import ProcessingError
from runner.state import LmdbStore
from runner.testing import Driver
from tests import faults, reference

T0 = 1795507200000  # 2026-11-24T08:00:00Z


def aggregate(spec: dict, events: list[dict], arrival: list[int] | None = None) -> dict:
    """Add ``events`` (event order = list order) in ``arrival`` order; the results."""
    aggs = Aggregations(spec)
    accs = aggs.new()
    for i in arrival if arrival is not None else range(len(events)):
        aggs.add(accs, aggs.extract(events[i]), order(i))
    out = aggs.results(accs)
    json.dumps(out)  # results are JSON
    return out


def order(i: int) -> tuple:
    """Event order (event time, topic, partition, offset), ascending with ``i``; three events
    per time, on three partitions."""
    return (T0 + (i // 3) * 1000, "events", i % 3, i)


def values(field_values: list, name: str = "x") -> list[dict]:
    """Events with ``name`` set to each value; ``ABSENT`` leaves it out."""
    return [{} if v is ABSENT else {name: v} for v in field_values]


ABSENT = object()


# --- every kind -------------------------------------------------------------------------------------

def test_count_counts_every_event_even_without_the_field():
    assert aggregate({"n": "count"}, values([1, None, ABSENT, "a", {"o": 1}])) == {"n": 5}
    assert aggregate({"n": "count"}, []) == {"n": 0}


def test_sum_of_integers_is_an_integer_and_of_nothing_zero():
    got = aggregate({"s": {"sum": "x"}}, values([1, 2, None, ABSENT, 40]))
    assert got == {"s": 43} and type(got["s"]) is int
    got = aggregate({"s": {"sum": "x"}}, values([1, 2.5, 0]))
    assert got == {"s": 3.5}
    got = aggregate({"s": {"sum": "x"}}, values([None, ABSENT]))
    assert got == {"s": 0} and type(got["s"]) is int
    assert aggregate({"s": {"sum": "x"}}, values([-3, 1.25]))["s"] == pytest.approx(-1.75, rel=1e-9)


def test_avg_min_max_skip_nulls_and_are_null_of_nothing():
    spec = {"a": {"avg": "x"}, "lo": {"min": "x"}, "hi": {"max": "x"}}
    assert aggregate(spec, values([4, None, 1.5, ABSENT, 10])) == {"a": pytest.approx(15.5 / 3, rel=1e-9), "lo": 1.5, "hi": 10}
    assert aggregate(spec, values([None, ABSENT])) == {"a": None, "lo": None, "hi": None}
    assert aggregate(spec, values([-2, -2.0])) == {"a": -2.0, "lo": -2, "hi": -2}
    assert aggregate(spec, values([0])) == {"a": 0.0, "lo": 0, "hi": 0}


def test_count_distinct_compares_json_values():
    cd = {"d": {"count_distinct": "x"}}
    assert aggregate(cd, values([1, 1.0, 1])) == {"d": 1}  # 1 == 1.0
    assert aggregate(cd, values([1, True])) == {"d": 2}  # true != 1
    assert aggregate(cd, values([0, False])) == {"d": 2}
    assert aggregate(cd, values(["1", 1])) == {"d": 2}  # numbers are not strings
    assert aggregate(cd, values(["true", True, False, "false"])) == {"d": 4}
    assert aggregate(cd, values([None, ABSENT, "a", "a", "A"])) == {"d": 2}  # null is skipped
    assert aggregate(cd, values([2.5, 2.5, 2, 9007199254740993, 9007199254740992.0])) == {"d": 4}
    assert aggregate(cd, []) == {"d": 0}


def test_count_by_keys_are_strings_or_compact_json_with_integral_numbers_as_integers():
    cb = {"c": {"count_by": "x"}}
    got = aggregate(cb, values([1, 1.0, 2.5, True, False, True, "a", None, ABSENT, 1e20, -3, -3.0]))
    assert got == {"c": {"1": 2, "2.5": 1, "true": 2, "false": 1, "a": 1, "100000000000000000000": 1, "-3": 2}}
    assert aggregate(cb, []) == {"c": {}}


def test_count_by_a_string_and_a_number_with_the_same_text_loses_no_count():
    """"1" and 1 are two JSON values but have one count_by key, "1": its count must be that of
    both (the counts always add up to the number of values), whatever the arrival order.
    (Fixed in c670a5a: the runner kept the count of one of them, which one depending on the
    arrival order.)"""
    cb = {"c": {"count_by": "x"}}
    events = values(["1", 1, "1", True, "true"])
    for arrival in ([0, 1, 2, 3, 4], [1, 0, 2, 4, 3], [2, 1, 0, 3, 4]):
        got = aggregate(cb, events, arrival)["c"]
        assert sum(got.values()) == 5, (arrival, got)
        assert got == {"1": 3, "true": 2}, (arrival, got)


def test_top_orders_by_count_then_numbers_strings_false_true():
    top = {"t": {"top": "x", "n": 10}}
    once = [True, "b", False, 10, "a", 2, 2.5, "B", "é"]
    assert aggregate(top, values(once)) == {
        "t": [[2, 1], [2.5, 1], [10, 1], ["B", 1], ["a", 1], ["b", 1], ["é", 1], [False, 1], [True, 1]]}
    got = aggregate({"t": {"top": "x", "n": 3}}, values(["z", 1, 1.0, "z", True, "z", None, ABSENT, 7, 7.0, 3]))
    assert reference.same_value([["z", 3], [1, 2], [7, 2]], got["t"]) is None
    assert aggregate({"t": {"top": "x", "n": 2}}, values([None])) == {"t": []}


def test_collect_is_in_event_order_not_arrival_and_limit_keeps_the_first():
    events = values(["a", None, {"o": [1]}, ABSENT, 3, "f", False])
    assert aggregate({"c": {"collect": "x"}}, events) == {"c": ["a", {"o": [1]}, 3, "f", False]}
    assert aggregate({"c": {"collect": "x"}}, events, [6, 4, 2, 0, 1, 3, 5]) == {"c": ["a", {"o": [1]}, 3, "f", False]}
    for arrival in ([0, 1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1, 0], [4, 6, 0, 2, 5, 1, 3]):
        assert aggregate({"c": {"collect": "x", "limit": 2}}, events, arrival) == {"c": ["a", {"o": [1]}]}
        assert aggregate({"c": {"collect": "x", "limit": 1}}, events, arrival) == {"c": ["a"]}
    assert aggregate({"c": {"collect": "x", "limit": 3}}, values([None])) == {"c": []}



def test_a_collection_longer_than_its_frozen_chunks_keeps_event_order_through_inserts_and_merges():
    n = Collect.CHUNK * 5 + 7
    events = values(list(range(n)))
    rng = random.Random(3)
    nearly = list(range(n))  # in order but for a few swapped neighbours, far back in the frozen chunks
    for i in rng.sample(range(1, n), 20):
        nearly[i - 1], nearly[i] = nearly[i], nearly[i - 1]
    for arrival in (list(range(n)), nearly, rng.sample(range(n), n)):
        assert aggregate({"c": {"collect": "x"}}, events, arrival) == {"c": list(range(n))}
        limit = Collect.CHUNK + 3
        assert aggregate({"c": {"collect": "x", "limit": limit}}, events, arrival) == {"c": list(range(limit))}
    aggs = Aggregations({"c": {"collect": "x"}})
    halves = [aggs.new(), aggs.new()]
    for i in range(n):  # odd and even events in two sessions, merged
        aggs.add(halves[i % 2], aggs.extract(events[i]), order(i))
    assert aggs.results(aggs.merge(*halves)) == {"c": list(range(n))}
    assert len(halves[0][0][2]) == (n // 2 + 1) // Collect.CHUNK  # its full chunks are frozen


def test_an_insert_out_of_order_keeps_the_frozen_chunks_before_its_place():
    aggs = Aggregations({"c": {"collect": "x"}})
    accs = aggs.new()
    n = Collect.CHUNK * 4
    for i in range(0, 2 * n, 2):  # even orders only, leaving room between them
        aggs.add(accs, aggs.extract({"x": i}), order(i))
    chunks = list(accs[0][2])
    aggs.add(accs, aggs.extract({"x": 2 * n - 3}), order(2 * n - 3))  # into the last chunk
    assert [c.id for c in accs[0][2][:3]] == [c.id for c in chunks[:3]]  # not frozen again
    assert accs[0][2][3].id != chunks[3].id
    aggs.add(accs, aggs.extract({"x": 1}), order(1))  # into the first: all after it change
    assert not {c.id for c in accs[0][2]} & {c.id for c in chunks}
    assert aggs.results(accs) == {"c": sorted([*range(0, 2 * n, 2), 2 * n - 3, 1])}

def bytes_put(checkpoints: list) -> list[int]:
    """The bytes each of ``faults.record_writes``' checkpoints put, all databases together."""
    return [sum(len(raw) for _, puts, _ in writes for _, raw in puts) for writes in checkpoints]


def test_a_checkpoint_writes_the_values_a_count_distinct_saw_since_the_last_not_all_it_saw(tmp_path):
    aggs = Aggregations({"users": {"count_distinct": "u"}})
    store = LmdbStore(tmp_path)
    table = store.table("w")
    accs = aggs.new()
    for i in range(20_000):
        aggs.add(accs, aggs.extract({"u": f"user-{i}"}), None)
    table.put(b"w", accs)
    store.commit({}, [], [])
    writes = faults.record_writes(store)
    for value in ("user-7", "user-new"):  # one seen before, one not
        aggs.add(accs, aggs.extract({"u": value}), None)
        table.put(b"w", accs)
        store.commit({}, [], [])
    sizes = bytes_put(writes)
    assert aggs.results(accs) == {"users": 20_001} and len(sizes) == 2 and max(sizes) < 2_000  # all: ~300 KB
    store.close()
    store = LmdbStore(tmp_path)
    accs = store.table("w").get(b"w")
    assert aggs.results(accs) == {"users": 20_001}
    aggs.add(accs, aggs.extract({"u": "user-new"}), None)
    assert aggs.results(aggs.merge(accs, [{"user-0", "old"}])) == {"users": 20_002}  # as /2 stored it
    store.close()


def test_a_checkpoint_writes_the_counts_a_count_by_changed_and_its_log_stays_within_twice_the_counts(tmp_path):
    aggs = Aggregations({"pages": {"count_by": "p"}, "trending": {"top": "p", "n": 2}})
    store = LmdbStore(tmp_path)
    table = store.table("w")
    accs, expected = aggs.new(), {}
    rng = random.Random(5)

    def add(page: str) -> None:
        aggs.add(accs, aggs.extract({"p": page}), None)
        expected[page] = expected.get(page, 0) + 1

    for i in range(5_000):
        add(f"/p/{i}")
    assert accs[0].changed is None  # nothing tracked before its first checkpoint (a memory store has none)
    table.put(b"w", accs)
    store.commit({}, [], [])
    writes = faults.record_writes(store)
    for _ in range(60):  # a few pages change between checkpoints
        for _ in range(50):
            add(f"/p/{rng.randrange(100)}")
        table.put(b"w", accs)
        store.commit({}, [], [])
    sizes = bytes_put(writes)
    assert sorted(sizes)[len(sizes) // 2] < 4_000  # the whole map: ~60 KB
    assert all(acc.logged <= 2 * len(acc) for acc in accs)
    assert aggs.results(accs)["pages"] == expected
    store.close()
    store = LmdbStore(tmp_path)
    back = store.table("w").get(b"w")
    ranked = sorted(expected.items(), key=lambda item: (-item[1], item[0]))
    assert aggs.results(back) == {"pages": expected, "trending": [list(item) for item in ranked[:2]]}
    small = aggs.merge(aggs.new(), [{"/a": 1}, {"/a": 2}])  # as runner-state/2 stored them
    assert aggs.results(aggs.merge(back, small))["pages"]["/a"] == 1
    store.close()


def test_first_and_last_are_in_event_order_and_skip_nulls():
    spec = {"f": {"first": "x"}, "l": {"last": "x"}}
    events = values([None, "a", [1, 2], ABSENT, 0, None])
    for arrival in ([0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [2, 4, 1, 0, 5, 3]):
        assert aggregate(spec, events, arrival) == {"f": "a", "l": 0}
    assert aggregate(spec, values([None, ABSENT])) == {"f": None, "l": None}
    assert aggregate(spec, values([False])) == {"f": False, "l": False}


# --- processing errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,value", [
    ("count_distinct", {"a": 1}), ("count_distinct", [1]), ("count_by", {"a": 1}), ("count_by", []),
    ("top", {"a": 1}), ("top", [1, 2]),
    ("sum", "12"), ("sum", True), ("sum", False), ("avg", "1"), ("avg", True), ("min", "a"), ("max", False),
    ("min", {"a": 1}), ("sum", [1]),
])
def test_values_an_aggregation_cannot_take_are_processing_errors_naming_the_field(kind, value):
    spec = {"n": "count", "s": {"sum": "ok"}, "bad": {kind: "price", **({"n": 1} if kind == "top" else {})}}
    aggs = Aggregations(spec)
    accs = aggs.new()
    aggs.add(accs, aggs.extract({"ok": 1, "price": None}), order(0))
    before = aggs.results(accs)
    with pytest.raises(ProcessingError, match="price"):
        aggs.extract({"ok": 5, "price": value})
    assert aggs.results(accs) == before  # nothing was changed


def test_objects_and_arrays_are_fine_where_values_are_not_compared():
    spec = {"c": {"collect": "x"}, "f": {"first": "x"}, "l": {"last": "x"}, "n": "count"}
    assert aggregate(spec, values([{"a": 1}, [1]])) == {"c": [{"a": 1}, [1]], "f": {"a": 1}, "l": [1], "n": 2}


# --- merge equivalence (sessions merge accumulators) --------------------------------------------------

ALL_KINDS = {
    "n": "count", "s": {"sum": "num"}, "a": {"avg": "num"}, "lo": {"min": "num"}, "hi": {"max": "num"},
    "d": {"count_distinct": "val"}, "by": {"count_by": "val"}, "t": {"top": "val", "n": 3},
    "c": {"collect": "any"}, "c2": {"collect": "any", "limit": 2}, "f": {"first": "any"}, "l": {"last": "any"},
}
# quarters: exact in binary, so sums do not depend on the order of addition
nums = st.one_of(st.none(), st.integers(-50, 50), st.integers(-400, 400).map(lambda k: k / 4))
# "1" and "true" share their count_by keys with 1 and true (see the test above)
vals = st.one_of(st.none(), st.sampled_from(["a", "b", "é", "", "1", "true", 1, 1.0, 2, 2.5, 0, -0.5, True, False]))
anys = st.one_of(st.none(), st.integers(), st.text(max_size=3), st.booleans(), st.just({"o": 1}), st.just([1]))


@st.composite
def events(draw):
    out = []
    for _ in range(draw(st.integers(0, 14))):
        e = {}
        for name, strategy in (("num", nums), ("val", vals), ("any", anys)):
            if draw(st.booleans()):
                e[name] = draw(strategy)
        out.append(e)
    return out


def _accumulate(aggs, evs, indexes):
    accs = aggs.new()
    for i in indexes:
        aggs.add(accs, aggs.extract(evs[i]), order(i))
    return accs


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(evs=events(), data=st.data())
def test_merge_of_any_two_parts_equals_adding_all_in_any_arrival_order(evs, data):
    expected = reference.aggregate(ALL_KINDS, evs)
    aggs = Aggregations(ALL_KINDS)
    arrival = data.draw(st.permutations(range(len(evs))))
    assert reference.same_value(expected, aggs.results(_accumulate(aggs, evs, arrival))) is None
    # split into two arbitrary (interleaved) parts, each added in its own arrival order
    in_a = data.draw(st.lists(st.booleans(), min_size=len(evs), max_size=len(evs)))
    part_a = [i for i in arrival if in_a[i]]
    part_b = [i for i in arrival if not in_a[i]]
    merged = aggs.merge(_accumulate(aggs, evs, part_a), _accumulate(aggs, evs, part_b))
    assert reference.same_value(expected, aggs.results(merged)) is None
    merged = aggs.merge(_accumulate(aggs, evs, part_b), _accumulate(aggs, evs, part_a))
    assert reference.same_value(expected, aggs.results(merged)) is None
    # three parts, merged left to right, then added to
    cut = data.draw(st.integers(0, len(part_a)))
    tail = part_b[-1:]
    three = aggs.merge(aggs.merge(_accumulate(aggs, evs, part_a[:cut]), _accumulate(aggs, evs, part_a[cut:])),
                       _accumulate(aggs, evs, part_b[:-1]))
    for i in tail:
        aggs.add(three, aggs.extract(evs[i]), order(i))
    assert reference.same_value(expected, aggs.results(three)) is None


# --- the aggregate stage: milestones through the driver -----------------------------------------------

def page_stats_pipeline(milestones: dict, aggregations: dict | None = None, key_by="page_url") -> dict:
    return {
        "name": "agg", "checkpoint": {"every_events": 3, "every_ms": 0}, "state": {"backend": "lmdb"},
        "stages": [{"type": "validate"},
                   {"type": "aggregate", "name": "page_stats", "key_by": key_by,
                    "aggregations": aggregations or {"views": "count", "users": {"count_distinct": "user_id"},
                                                     "points": {"sum": "points"}},
                    "milestones": milestones}],
    }


def click(i, user, page="/a", **extra):
    return {"event_id": f"e{i}", "user_id": user, "page_url": page, "timestamp": T0 + i * 1000, **extra}


MILESTONE_EVENTS = [
    click(0, "u1", points=3),
    click(1, "u1", points=25),  # views 2; points 28: 10 and 20 at once
    click(2, "u2", points=-1),  # a negative value for a sum with milestones: processing error, nothing counted
    click(3, "u2"),  # views 3; users 2
    click(4, "u3", points=2),  # views 4; points 30
    click(5, "u1", "/b", points=None),
    click(6, "u1", points=0.5),  # views 5; points 30.5
    click(7, "u4", points=9.5),  # views 6; users 4; points 40.0
    click(8, "u2", "/b"),  # /b: views 2, users 2
]


def milestones_of(results) -> list[tuple]:
    return [(r["key"], r["milestone"], r["value"]) for r in results]


def test_milestones_each_threshold_once_per_key_ascending():
    p = page_stats_pipeline({"views": 2, "users": 2, "points": 10})
    with tempfile.TemporaryDirectory() as tmp:
        out = Driver(p, tmp).run(MILESTONE_EVENTS, drain=True)
    expected = {("/a", "views", 2), ("/a", "views", 4), ("/a", "views", 6),
                ("/a", "points", 10), ("/a", "points", 20), ("/a", "points", 30), ("/a", "points", 40),
                ("/a", "users", 2), ("/a", "users", 4), ("/b", "views", 2), ("/b", "users", 2)}
    got = milestones_of(out.results)
    assert sorted(got, key=repr) == sorted(expected, key=repr)  # each once
    for key in ("/a", "/b"):
        for metric in ("views", "users", "points"):
            seq = [v for k, m, v in got if (k, m) == (key, metric)]
            assert seq == sorted(seq), f"{key} {metric} not ascending: {seq}"
    for r in out.results:
        assert set(r) == {"id", "stage", "key", "milestone", "value"}
        assert r["stage"] == "page_stats"
        assert r["id"] == f"agg/page_stats/{json.dumps(r['key'])}/milestone/{r['milestone']}/{r['value']}"
    assert [(d["id"], d["error_type"]) for d in out.dead_letters] == [("agg/dlq/events/0/2/page_stats", "processing")]
    assert "points" in out.dead_letters[0]["error"]
    assert out.dump["stages"]["page_stats"] == {"keys": [
        {"key": "/a", "views": 6, "users": 4, "points": 40.0},
        {"key": "/b", "views": 2, "users": 2, "points": 0}]}
    assert out.dump["event_time"] == {"events/0": None} and out.dump["watermark"] is None


def test_milestones_are_exactly_once_across_crashes_and_never_repeat_in_later_runs():
    p = page_stats_pipeline({"views": 2, "users": 2, "points": 10})
    with tempfile.TemporaryDirectory() as clean_dir, tempfile.TemporaryDirectory() as crash_dir:
        clean = Driver(p, clean_dir).run(MILESTONE_EVENTS, drain=True)
        driver = Driver(p, crash_dir)
        driver.add(MILESTONE_EVENTS[:5])
        for n in (2, 0, 1):
            assert driver.run(crash_after=n).dump is None
        driver.add(MILESTONE_EVENTS[5:])
        assert driver.run(crash_after=4).dump is None
        final = driver.run(drain=True)
        reference.assert_same_as_clean_run(clean, final)
        # the same key later: only new thresholds
        again = driver.run([click(9, "u5"), click(10, "u6")])
    assert sorted(milestones_of(again.results), key=repr) == sorted(
        milestones_of(clean.results) + [("/a", "views", 8), ("/a", "users", 6)], key=repr)


def test_an_event_that_would_reach_too_many_milestones_at_once_is_refused_not_hung_on():
    # 1e15 in steps of 100 would be 10^13 results for one event: a processing error instead
    p = page_stats_pipeline({"points": 100}, {"points": {"sum": "points"}})
    with tempfile.TemporaryDirectory() as tmp:
        out = Driver(p, tmp).run(
            [click(0, "u1", points=1e15), click(1, "u1", points=1_000_000), click(2, "u1", points=250)], drain=True)
    assert [(d["offset"], d["error_type"]) for d in out.dead_letters] == [(0, "processing")]
    assert out.dead_letters[0]["error"] == ("value 1e+15 of field points would reach 10,000,000,000,000 milestones "
                                            "of points at once (at most 10,000 an event): raise milestones.points")
    assert len(out.results) == 10_002  # 1,000,000 reaches exactly 10,000; then 250 more reach 2
    assert out.dump["stages"]["page_stats"] == {"keys": [{"key": "/a", "points": 1_000_250}]}


def test_milestones_with_a_fractional_step_and_the_null_key():
    p = page_stats_pipeline({"points": 2.5}, {"points": {"sum": "points"}}, key_by="country")
    events = [click(0, "u1", points=1), click(1, "u1", points=4, country=None), click(2, "u1", points=2.5, country="DE"),
              click(3, "u2", points=0)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Driver(p, tmp).run(events, drain=True)
    got = sorted((r["key"] is None, r["value"]) for r in out.results)
    assert got == [(False, 2.5), (True, 2.5), (True, 5)]  # null: 1, then 5 reaches 2.5 and 5
    assert all(r["key"] in (None, "DE") for r in out.results)
    assert len({r["id"] for r in out.results}) == 3
    assert all("/null/milestone/points/" in r["id"] for r in out.results if r["key"] is None)


def test_a_negative_sum_is_fine_without_milestones_and_fails_only_the_sum_with_them():
    p = page_stats_pipeline({"views": 1}, {"views": "count", "points": {"sum": "points"}})
    with tempfile.TemporaryDirectory() as tmp:
        out = Driver(p, tmp).run([click(0, "u1", points=-2), click(1, "u1", points=1.5)], drain=True)
    assert out.dead_letters == []
    assert out.dump["stages"]["page_stats"]["keys"] == [{"key": "/a", "views": 2, "points": -0.5}]
    assert sorted(milestones_of(out.results)) == [("/a", "views", 1), ("/a", "views", 2)]


def test_processing_errors_in_the_aggregate_stage_change_nothing_and_name_the_field():
    p = page_stats_pipeline({}, {"views": "count", "tags": {"count_distinct": "tag"}, "total": {"sum": "amount"}})
    events = [click(0, "u1", tag="a", amount=1), click(1, "u1", tag={"x": 1}), click(2, "u1", amount="3"),
              click(3, "u1", amount=True), click(4, "u1", tag=[1]), click(5, "u1", tag=1.0, amount=2)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Driver(p, tmp).run(events, drain=True)
    letters = {d["offset"]: d for d in out.dead_letters}
    assert sorted(letters) == [1, 2, 3, 4] and all(d["error_type"] == "processing" for d in letters.values())
    assert "tag" in letters[1]["error"] and "amount" in letters[2]["error"]
    assert "amount" in letters[3]["error"] and "tag" in letters[4]["error"]
    assert out.dump["stages"]["page_stats"]["keys"] == [{"key": "/a", "views": 2, "tags": 2, "total": 3}]


def test_a_sum_that_overflows_a_double_is_never_written_as_null():
    """Found: two revenues of 1.5e308 make the window's sum (and avg) inf, which is written as
    null, a value a sum never has (the sum of nothing is 0), and nothing says why. Whatever the
    runner does (e.g. a processing error for the event that overflows), every result must stay a
    finite number, and equal the sum over the events that were not sent to the DLQ."""
    p = {"name": "agg", "event_time": {"grace": "0s"}, "checkpoint": {"every_events": 10, "every_ms": 0},
         "state": {"backend": "lmdb"},
         "stages": [{"type": "validate"},
                    {"type": "tumbling_window", "name": "m", "size": "1m",
                     "aggregations": {"n": "count", "rev": {"sum": "revenue"}, "avg": {"avg": "revenue"}}}]}
    events = [click(0, "u1", revenue=1.5e308), click(1, "u2", revenue=1.5e308), click(2, "u3", revenue=1)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Driver(p, tmp).run(events, drain=True)
    failed = {d["offset"] for d in out.dead_letters}
    [window] = out.results
    kept = [e["revenue"] for i, e in enumerate(events) if i not in failed]
    assert window["n"] == len(kept)
    assert window["rev"] is not None and window["avg"] is not None, window
    assert window["rev"] == pytest.approx(sum(kept), rel=1e-9)
