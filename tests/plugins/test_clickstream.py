"""The click generator: deterministic, realistic valid events, and bad records of every kind."""

from __future__ import annotations

import argparse
import collections
import time
from fractions import Fraction

import pytest

from plugins import clickstream, generate
from plugins.clickstream import BAD_KINDS, DEFAULT_START_MS, FILE_BAD_KINDS, OVERSIZED, ClickGenerator, bad_record
from plugins.generate import add_command
from runner.codec import DecodeError, decode
from runner.times import InvalidTime, format_ms, parse_event_time

START = parse_event_time("2026-11-24T08:00:00Z")
REQUIRED = ("event_id", "user_id", "page_url", "timestamp")
EVENT_TYPES = {"page_view", "click", "add_to_cart", "purchase"}


def violation(value: bytes | None, max_bytes: int = 1 << 20):
    """The first rule of CONTRACT section 4 a record breaks, as (rule, field), or None.

    Written from the contract, independently of the runner's validate stage.
    """
    try:
        data = decode(value, max_bytes)
    except DecodeError:
        return ("deserialization", None)
    if not isinstance(data, dict):
        return ("not_object", None)
    for field in REQUIRED:
        if data.get(field) is None:
            return ("missing", field)
    for field in ("event_id", "user_id", "page_url"):
        if not isinstance(data[field], str):
            return ("type", field)
    if data.get("event_type") is not None and not isinstance(data["event_type"], str):
        return ("type", "event_type")
    for field in ("session_id", "referrer", "device", "country"):
        if data.get(field) is not None and not isinstance(data[field], str):
            return ("type", field)
    for field in ("duration", "revenue"):
        number = data.get(field)
        if number is not None and (isinstance(number, bool) or not isinstance(number, (int, float))):
            return ("type", field)
    if not data["page_url"].startswith("/"):
        return ("constraint", "page_url")
    if data.get("event_type") is not None and data["event_type"] not in EVENT_TYPES:
        return ("constraint", "event_type")
    for field in ("duration", "revenue"):
        if data.get(field) is not None and data[field] < 0:
            return ("constraint", field)
    try:
        parse_event_time(data["timestamp"])
    except InvalidTime:
        return ("timestamp", "timestamp")
    return None


# What each kind must break. Also the list of every invalid kind of CONTRACT section 4 that
# the generator has to cover: a kind missing from BAD_KINDS fails test_every_contract_kind_is_generated.
EXPECTED = {
    "not_utf8": ("deserialization", None),
    "not_json": ("deserialization", None),
    "truncated_json": ("deserialization", None),
    "bom": ("deserialization", None),
    "nan": ("deserialization", None),
    "infinity": ("deserialization", None),
    "double_overflow": ("deserialization", None),
    "int_overflow": ("deserialization", None),
    "too_deep": ("deserialization", None),
    "no_value": ("deserialization", None),
    "json_array": ("not_object", None),
    "json_string": ("not_object", None),
    **{f"missing_{f}": ("missing", f) for f in REQUIRED},
    **{f"null_{f}": ("missing", f) for f in REQUIRED},
    "event_id_number": ("type", "event_id"),
    "user_id_number": ("type", "user_id"),
    "page_url_number": ("type", "page_url"),
    "event_type_number": ("type", "event_type"),
    "session_id_number": ("type", "session_id"),
    "referrer_bool": ("type", "referrer"),
    "duration_string": ("type", "duration"),
    "duration_bool": ("type", "duration"),
    "revenue_string": ("type", "revenue"),
    "page_url_relative": ("constraint", "page_url"),
    "unknown_event_type": ("constraint", "event_type"),
    "negative_duration": ("constraint", "duration"),
    "negative_revenue": ("constraint", "revenue"),
    **{f"timestamp_{k}": ("timestamp", "timestamp") for k in (
        "not_rfc3339", "no_offset", "digit_string", "fractional_ms", "before_1970", "after_9999",
        "impossible_date", "leap_second", "bool")},
}


# -- determinism and event time


def test_same_arguments_give_the_same_bytes_in_any_order():
    a = ClickGenerator(7, START, 10, bad_ratio=0.1)
    b = ClickGenerator(7, START, 10, bad_ratio=0.1)
    forward = [a.record(i) for i in range(3000)]
    backward = [b.record(i) for i in reversed(range(3000))][::-1]  # random access, fresh caches
    assert forward == backward
    assert any(value is None for _, value in forward)  # the bad kinds are in there too


def test_another_seed_gives_other_events():
    a = [ClickGenerator(1, START, 10).record(i) for i in range(200)]
    b = [ClickGenerator(2, START, 10).record(i) for i in range(200)]
    assert a != b
    assert sum(x == y for x, y in zip(a, b)) < 5


@pytest.mark.parametrize("rate", [10, 3, 0.5, 7.3, 1000, 0.1])
def test_event_i_is_at_start_plus_floor_i_1000_over_rate(rate):
    gen = ClickGenerator(0, START, rate)
    exact = Fraction(str(rate))
    for i in list(range(200)) + [10_007, 123_456]:
        expected = START + int(Fraction(i * 1000) / exact)  # floor, exactly
        assert gen.time_ms(i) == expected
        assert gen.event(i)["timestamp"] == format_ms(expected)


def test_timestamps_are_rfc3339_utc_with_milliseconds():
    gen = ClickGenerator(0, START + 123, 3)
    stamps = [gen.event(i)["timestamp"] for i in range(5)]
    assert stamps == ["2026-11-24T08:00:00.123Z", "2026-11-24T08:00:00.456Z", "2026-11-24T08:00:00.789Z",
                      "2026-11-24T08:00:01.123Z", "2026-11-24T08:00:01.456Z"]


# -- valid events


def test_valid_events_follow_the_contract():
    gen = ClickGenerator(11, START, 10)
    ids = set()
    for i in range(5000):
        key, value = gen.record(i)
        assert violation(value) is None, value
        event = decode(value, 1 << 20)
        assert key == event["user_id"].encode()
        assert event["user_id"] in {f"user_{n:04d}" for n in range(1, 101)}
        assert isinstance(event["session_id"], str)
        assert event["event_type"] in EVENT_TYPES
        assert parse_event_time(event["timestamp"]) == gen.time_ms(i)
        assert isinstance(event["duration"], (int, float)) and event["duration"] >= 0
        assert ("revenue" in event) == (event["event_type"] == "purchase")
        ids.add(event["event_id"])
    assert len(ids) == 5000


def test_events_look_like_a_real_shop():
    gen = ClickGenerator(5, START, 10)
    events = [gen.event(i) for i in range(20_000)]
    pages = collections.Counter(e["page_url"] for e in events)
    types = collections.Counter(e["event_type"] for e in events)
    assert pages["/home"] > pages["/products"] > pages["/about"] > 0
    assert any(p.startswith("/products/") for p in pages) and {"/cart", "/checkout", "/search"} <= set(pages)
    assert types["page_view"] > types["click"] > types["add_to_cart"] > types["purchase"] > 0
    assert all(e["revenue"] >= 0 for e in events if e["event_type"] == "purchase")
    for field in ("referrer", "device", "country"):
        values = [e.get(field, "absent") for e in events]
        assert "absent" in values and None in values and any(isinstance(v, str) and v != "absent" for v in values)


def test_users_browse_in_sessions_separated_by_quiet_spells():
    gen = ClickGenerator(3, START, 10)
    times = collections.defaultdict(list)  # user -> [(time, session_id)]
    for i in range(36_000):  # one hour of event time
        event = gen.event(i)
        times[event["user_id"]].append((gen.time_ms(i), event["session_id"]))
    sessions = 0
    owners = collections.defaultdict(set)
    for user, seq in times.items():
        sessions += 1
        for (t0, s0), (t1, s1) in zip(seq, seq[1:]):
            owners[s1].add(user)
            if s0 == s1:
                assert t1 - t0 <= 10 * 60_000  # one session: no 10-minute silence inside
            else:
                assert t1 - t0 > 10 * 60_000  # a new session after a quiet spell
                sessions += 1
    assert all(len(users) == 1 for users in owners.values())
    assert len(times) >= 80 and sessions > len(times) * 1.3  # users come back for more sessions
    assert 36_000 / sessions >= 3  # several pages per session


# -- bad records


def test_every_contract_kind_is_generated():
    assert sorted(BAD_KINDS) == sorted(EXPECTED)
    assert FILE_BAD_KINDS == [k for k in BAD_KINDS if k != "no_value"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_every_bad_kind_breaks_its_rule(kind):
    for i in (0, 17, 4321):
        base = ClickGenerator(9, START, 10).event(i)
        key, value = bad_record(kind, i, base)
        assert key == base["user_id"].encode()
        assert violation(value) == EXPECTED[kind]
        if value is not None:
            assert b"\n" not in value and b"\r" not in value  # one JSONL line each
    assert violation(bad_record(kind, 3)[1]) == EXPECTED[kind]  # with the default base event


def test_too_deep_is_just_past_the_limit():
    value = bad_record("too_deep", 1)[1]
    assert value.count(b"[") == 64  # with the object around it: 65 levels
    with pytest.raises(DecodeError, match="nested"):
        decode(value, 1 << 20)


def test_oversized_record_is_over_one_mib_and_otherwise_valid():
    value = bad_record(OVERSIZED, 1)[1]
    assert len(value) == (1 << 20) + 1
    with pytest.raises(DecodeError, match="max_record_bytes"):
        decode(value, 1 << 20)
    assert violation(value, max_bytes=1 << 30) is None


def test_unknown_bad_kind_is_refused():
    with pytest.raises(ValueError, match="unknown bad record kind"):
        bad_record("sideways", 1)
    with pytest.raises(ValueError, match="unknown bad record kind"):
        ClickGenerator(0, START, 10, bad_ratio=0.1, bad_kinds=["sideways"])


def test_bad_ratio_five_percent_covers_every_kind():
    gen = ClickGenerator(21, START, 10, bad_ratio=0.05)
    kinds = collections.Counter()
    for i in range(10_000):
        key, value = gen.record(i)
        kind = gen.bad_kind(i)
        if kind is None:
            assert violation(value) is None
        else:
            assert violation(value) == EXPECTED[kind]
            kinds[kind] += 1
    assert 400 <= sum(kinds.values()) <= 600
    assert set(kinds) == set(BAD_KINDS)


def test_bad_positions_depend_on_the_seed():
    one, two = ClickGenerator(1, START, 10, bad_ratio=0.05), ClickGenerator(2, START, 10, bad_ratio=0.05)
    a = [i for i in range(2000) if one.bad_kind(i)]
    b = [i for i in range(2000) if two.bad_kind(i)]
    assert a != b
    gaps = {y - x for x, y in zip(a, a[1:])}
    assert len(gaps) > 5  # not every 20th record


@pytest.mark.parametrize("ratio, low, high", [(0, 0, 0), (1, 1000, 1000), (0.3, 299, 301), (0.001, 0, 2)])
def test_bad_ratio_extremes(ratio, low, high):
    gen = ClickGenerator(4, START, 10, bad_ratio=ratio)
    assert low <= sum(gen.bad_kind(i) is not None for i in range(1000)) <= high


def test_generator_arguments_are_checked():
    with pytest.raises(ValueError):
        ClickGenerator(0, START, 0)
    with pytest.raises(ValueError):
        ClickGenerator(0, START, 10, bad_ratio=1.5)
    with pytest.raises(ValueError):
        ClickGenerator(0, START, 10, users=0)


# -- runner generate


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="runner")
    add_command(p.add_subparsers(dest="command"))
    return p


def run_generate(argv: list[str]) -> int:
    args = parser().parse_args(["generate", *argv])
    return args.func(args)


def test_generate_out_writes_the_generators_records(tmp_path, capsys):
    out = tmp_path / "sub" / "events.jsonl"
    argv = ["--count", "700", "--bad-ratio", "0.1", "--seed", "3", "--start", "2026-11-24T08:00:00Z",
            "--rate", "4", "--out", str(out)]
    assert run_generate(argv) == 0
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 701
    gen = ClickGenerator(3, START, 4, bad_ratio=0.1, bad_kinds=FILE_BAD_KINDS)
    assert lines[:-1] == [gen.record(i)[1] for i in range(700)]
    bad = sum(gen.bad_kind(i) is not None for i in range(700))
    assert 69 <= bad <= 71
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"generated 700 events ({bad} bad) to {out}"
    first = out.read_bytes()
    assert run_generate(argv) == 0
    assert out.read_bytes() == first  # reproducible from run to run


def test_generate_out_is_never_paced(tmp_path):
    began = time.monotonic()
    assert run_generate(["--count", "200", "--rate", "1", "--seed", "1", "--out", str(tmp_path / "e.jsonl")]) == 0
    assert time.monotonic() - began < 5  # 200 s if paced at 1 event/s


def test_generate_defaults_to_now_and_a_random_seed(tmp_path, capsys):
    before = int(time.time()) * 1000
    assert run_generate(["--count", "3", "--out", str(tmp_path / "e.jsonl")]) == 0
    first = decode((tmp_path / "e.jsonl").read_bytes().split(b"\n")[0], 1 << 20)
    stamp = parse_event_time(first["timestamp"])
    assert before <= stamp <= int(time.time()) * 1000 and stamp % 1000 == 0
    assert "--seed " in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--bad-ratio", "1.5"], ["--rate", "-1"], ["--count", "-3"], ["--start", "yesterday"],
    ["--topic", "t", "--out", "f.jsonl"],
])
def test_generate_rejects_bad_usage(argv):
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(["generate", *argv])
    assert exc.value.code == 2


def test_generate_without_a_broker_fails_fast_and_says_what_to_do(monkeypatch, capsys):
    monkeypatch.setattr(generate, "BOOTSTRAP_TIMEOUT_MS", 1500)
    began = time.monotonic()
    code = run_generate(["--count", "5", "--topic", "clickstream-events", "--bootstrap-servers", "127.0.0.1:1"])
    assert code == 1
    assert time.monotonic() - began < 10
    err = capsys.readouterr().err
    assert "127.0.0.1:1" in err and "runner broker" in err


def test_default_start_is_the_documented_one():
    assert format_ms(DEFAULT_START_MS) == "2026-11-24T08:00:00.000Z"


def test_generate_to_kafka_keys_by_user_and_reads_back(broker, topic_factory, capsys):
    from kafka import KafkaConsumer, TopicPartition

    topic = topic_factory(3)
    argv = ["--count", "200", "--rate", "0", "--bad-ratio", "0.1", "--seed", "8",
            "--start", "2026-11-24T08:00:00Z", "--topic", topic, "--bootstrap-servers", broker]
    assert run_generate(argv) == 0
    gen = ClickGenerator(8, START, clickstream.UNPACED_EVENT_RATE, bad_ratio=0.1)
    expected = [gen.record(i) for i in range(200)]
    bad = sum(gen.bad_kind(i) is not None for i in range(200))
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"generated 200 events ({bad} bad) to {topic}"

    consumer = KafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False, group_id=None)
    try:
        partitions = [TopicPartition(topic, p) for p in range(3)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        got = collections.defaultdict(list)
        deadline = time.monotonic() + 20
        while sum(map(len, got.values())) < 200 and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                got[tp.partition].extend((r.key, r.value) for r in records)
    finally:
        consumer.close()
    def order(record):
        return record[0], record[1] is not None, record[1] or b""

    assert sorted((r for rs in got.values() for r in rs), key=order) == sorted(expected, key=order)
    for records in got.values():  # one user's records share a partition, in generation order
        users = {key for key, _ in records}
        mine = [r for r in expected if r[0] in users]
        assert records == mine
    assert len(got) > 1


def test_generate_to_kafka_is_paced_and_stops_cleanly_on_ctrl_c(broker, topic_factory, monkeypatch, capsys):
    topic = topic_factory(1)
    record = ClickGenerator.record

    def interrupted_at_60(self, i):
        if i == 60:
            raise KeyboardInterrupt
        return record(self, i)

    monkeypatch.setattr(ClickGenerator, "record", interrupted_at_60)
    began = time.monotonic()
    assert run_generate(["--rate", "100", "--seed", "1", "--topic", topic, "--bootstrap-servers", broker]) == 0
    elapsed = time.monotonic() - began
    assert 0.5 <= elapsed < 8  # 60 events at 100/s: about 0.6 s, plus connecting
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"generated 60 events (0 bad) to {topic}"
