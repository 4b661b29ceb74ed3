"""Hostile input (CONTRACT section 4): every bad record becomes exactly one DLQ record whose
``error`` says precisely what is wrong, nothing stops the runner, and the valid records after
it are still counted. File cases run in-process with the Driver; Kafka-only cases (record
timestamps, keys, tombstones) run the real ``runner run --until-end`` against the broker."""

from __future__ import annotations

import base64
import json
import re

import pytest
import yaml
from kafka import KafkaProducer

from runner.codec import compact
from runner.testing import Driver
from tests import e2e

PIPELINE = {
    "name": "hostile",
    "source": {"type": "file", "path": "replaced-by-the-driver"},
    "state": {"backend": "lmdb", "path": "replaced-by-the-driver"},
    "checkpoint": {"every_events": 100, "every_ms": 0},
    "event_time": {"field": "timestamp", "grace": "0s", "min": "2000-01-01T00:00:00Z", "max_ahead": "1h"},
    "dlq": {"type": "jsonl", "path": "replaced-by-the-driver"},
    "stages": [
        {"type": "validate"},
        {"type": "aggregate", "name": "page_stats", "key_by": "page_url",
         "aggregations": {"views": "count", "avg_duration": {"avg": "duration"}}, "milestones": {"views": 1}},
        {"type": "tumbling_window", "name": "traffic", "size": "5m",
         "aggregations": {"events": "count", "pages": {"count_by": "page_url"}}},
    ],
    "sinks": [{"type": "jsonl", "path": "replaced-by-the-driver"}],
}
T0 = "2026-01-01T00:00:00Z"
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def event(n: int, **fields) -> dict:
    return {"event_id": f"e{n}", "user_id": "u1", "page_url": "/home", "timestamp": T0, **fields}


def raw_event(n: int, field: bytes = b"", **fields) -> bytes:
    """A valid event as bytes, with ``field`` (raw bytes such as ``"x":NaN``) spliced in last."""
    body = json.dumps(event(n, **fields), ensure_ascii=False).encode()
    return body[:-1] + b"," + field + b"}" if field else body


def padded(size: int) -> bytes:
    """A valid event of exactly ``size`` bytes."""
    base = raw_event(0, b'"pad":""')
    return raw_event(0, b'"pad":"' + b"x" * (size - len(base)) + b'"')


def nested(levels: int) -> bytes:
    """A valid event whose ``tags`` field makes ``levels`` levels with the object itself."""
    return raw_event(0, b'"tags":' + b"[" * (levels - 1) + b"]" * (levels - 1))


def nested_objects(levels: int) -> bytes:
    return raw_event(0, b'"meta":' + b'{"a":' * (levels - 2) + b"{}" + b"}" * (levels - 2))


NUL_BEFORE = b"\x00" + raw_event(0)
NUL_BETWEEN = raw_event(0, b'"x":\x001')
NUL_AFTER = raw_event(0) + b"\x00"
NUL_IN_STRING = raw_event(0, b'"x":"a\x00b"')
LATIN1 = raw_event(0).replace(b'"/home"', b'"/caf\xe9"')

# (id, raw record, max_record_bytes or None, expected: None = accepted, or (stage, error_type, regex))
CASES = [
    # size
    ("over_max_record_bytes", padded(301), 300,
     ("source", "deserialization", r"^record of 301 bytes is over max_record_bytes \(300\)$")),
    ("at_max_record_bytes", padded(300), 300, None),
    # nesting
    ("65_levels_arrays", nested(65), None, ("source", "deserialization", r"^more than 64 nested arrays and objects$")),
    ("65_levels_objects", nested_objects(65), None,
     ("source", "deserialization", r"^more than 64 nested arrays and objects$")),
    ("64_levels_arrays", nested(64), None, None),
    ("64_levels_objects", nested_objects(64), None, None),
    ("5000_levels", nested(5000), None, ("source", "deserialization", r"nested|depth")),
    ("brackets_in_a_string", raw_event(0, b'"note":"' + b"[" * 200 + b'"'), None, None),
    # NaN and Infinity
    ("nan", raw_event(0, b'"duration":NaN'), None,
     ("source", "deserialization", r"^not JSON: NaN is not a JSON number$")),
    ("infinity", raw_event(0, b'"duration":Infinity'), None,
     ("source", "deserialization", r"^not JSON: Infinity is not a JSON number$")),
    ("minus_infinity", raw_event(0, b'"duration":-Infinity'), None,
     ("source", "deserialization", r"^not JSON: -Infinity is not a JSON number$")),
    ("nan_as_a_string", raw_event(0, page_url="/NaN", referrer="Infinity"), None, None),
    # huge numbers
    ("1e400", raw_event(0, b'"duration":1e400'), None, ("source", "deserialization", r"1e400|overflows a double")),
    ("-1e400", raw_event(0, b'"x":-1e400'), None, ("source", "deserialization", r"overflows a double")),
    ("1e308", raw_event(0, b'"x":1e308'), None, None),
    ("1e-400_underflows_to_zero", raw_event(0, b'"x":1e-400'), None, None),
    ("2^63", raw_event(0, b'"x":9223372036854775808'), None,
     ("source", "deserialization", r"^integer 9223372036854775808 is outside \+-\(2\^63-1\)$")),
    ("-2^63", raw_event(0, b'"x":-9223372036854775808'), None,
     ("source", "deserialization", r"^integer -9223372036854775808 is outside \+-\(2\^63-1\)$")),
    ("10^30", raw_event(0, b'"x":1000000000000000000000000000000'), None,
     ("source", "deserialization", r"^integer 1000000000000000000000000000000 is outside")),
    ("2^63-1", raw_event(0, b'"x":9223372036854775807'), None, None),
    ("-(2^63-1)", raw_event(0, b'"x":-9223372036854775807'), None, None),
    ("2^63_as_a_string", raw_event(0, b'"x":"9223372036854775808"'), None, None),
    ("20_digit_float", raw_event(0, b'"x":12345678901234567890.5'), None, None),
    # NUL bytes and other raw bytes
    ("nul_before", NUL_BEFORE, None, ("source", "deserialization", r"^not JSON: .*\b0\b")),
    ("nul_between_tokens", NUL_BETWEEN, None,
     ("source", "deserialization", rf"^not JSON: .*\b{NUL_BETWEEN.index(0)}\b")),
    ("nul_after", NUL_AFTER, None, ("source", "deserialization", rf"^not JSON: .*\b{NUL_AFTER.index(0)}\b")),
    ("nul_raw_in_string", NUL_IN_STRING, None,
     ("source", "deserialization", rf"^not JSON: a NUL byte at position {NUL_IN_STRING.index(0)}$")),
    ("escaped_nul_in_string", raw_event(0, b'"note":"a\\u0000b"'), None, None),
    ("latin1", LATIN1, None,
     ("source", "deserialization", rf"^not UTF-8: invalid byte at position {LATIN1.index(0xE9)}$")),
    ("bom", b"\xef\xbb\xbf" + raw_event(0), None, ("source", "deserialization", r"byte order mark")),
    # a broken document whose strings happen to hold the words NaN / Infinity: the reason
    # must be what is really wrong (it is cut short), not NaN or Infinity
    ("truncated_with_nan_in_a_string", raw_event(0, page_url="/NaN")[:-1], None,
     ("source", "deserialization", r"^not JSON: (?!NaN and Infinity)")),
    ("truncated_with_infinity_in_a_string", raw_event(0, referrer="Infinity")[:-1], None,
     ("source", "deserialization", r"^not JSON: (?!NaN and Infinity)")),
    # timestamps: event_time.min 2000-01-01T00:00:00Z
    ("before_min", raw_event(0, timestamp="1999-12-31T23:59:59.999Z"), None,
     ("validate", "validation", r"^invalid timestamp for field timestamp: 1999-12-31T23:59:59\.999Z is before "
                                r"event_time\.min 2000-01-01T00:00:00\.000Z$")),
    ("before_min_epoch_ms", raw_event(0, timestamp=946684799999), None,
     ("validate", "validation", r"^invalid timestamp for field timestamp: .*before event_time\.min")),
    ("before_min_by_offset", raw_event(0, timestamp="2000-01-01T00:59:59.999+01:00"), None,
     ("validate", "validation", r"^invalid timestamp for field timestamp: 1999-12-31T23:59:59\.999Z is before")),
    ("epoch", raw_event(0, timestamp="1970-01-01T00:00:00Z"), None,
     ("validate", "validation", r"^invalid timestamp for field timestamp: .*before event_time\.min")),
    ("at_min", raw_event(0, timestamp="2000-01-01T00:00:00Z"), None, None),
    ("at_min_by_offset", raw_event(0, timestamp="2000-01-01T01:00:00+01:00"), None, None),
    ("year_10000", raw_event(0, timestamp="10000-01-01T00:00:00Z"), None,
     ("validate", "validation", r"^invalid timestamp for field timestamp: ")),
    ("after_9999_epoch_ms", raw_event(0, timestamp=253402300800000), None,
     ("validate", "validation", r"^invalid timestamp for field timestamp: ")),
    # max_ahead is measured against the record's own timestamp, never the wall clock: a file
    # record has none, so a time far ahead of now is fine
    ("far_ahead_of_the_wall_clock", raw_event(0, timestamp="2999-01-01T00:00:00Z"), None, None),
]


def check_letter(letter: dict, raw: bytes, offset: int, stage: str, error_type: str) -> None:
    assert letter["id"] == f"hostile/dlq/events/0/{offset}/{stage}"
    assert (letter["stage"], letter["error_type"]) == (stage, error_type)
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("events", 0, offset)
    assert letter["key"] is None and letter["key_b64"] is None
    assert base64.b64decode(letter["payload_b64"]) == raw
    assert letter["payload"] == raw.decode("utf-8", "replace")
    assert RFC3339.match(letter["failed_at"]), letter["failed_at"]
    assert "Traceback" not in letter["error"]


def views(dump: dict) -> dict:
    return {k["key"]: k["views"] for k in dump["stages"]["page_stats"]["keys"]}


@pytest.mark.parametrize("raw,max_bytes,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_record_gets_one_precise_dead_letter_and_the_run_goes_on(tmp_path, raw, max_bytes, expected):
    overrides = [f"source.max_record_bytes={max_bytes}"] if max_bytes else []
    driver = Driver(PIPELINE, tmp_path, overrides)
    after = [json.dumps(event(n, page_url="/after", timestamp=f"2026-01-01T00:00:0{n}Z")).encode() for n in (1, 2)]
    assert b"\n" not in raw
    out = driver.run([raw, *after])
    first = [d for d in out.dead_letters if d["offset"] == 0]
    rejected_later = [d for d in out.dead_letters if d["offset"] > 0 and d["stage"] in ("source", "validate")]
    assert rejected_later == [], "a valid record after the hostile one was rejected"
    assert views(out.dump).get("/after") == 2, "the valid records after the hostile one were not counted"
    assert out.dump["offsets"] == {"events/0": 3}
    if expected is None:
        assert first == [], f"an acceptable record was rejected: {first}"
        assert sum(views(out.dump).values()) == 3
        assert out.dump["stages"]["validate"]["invalid"] == 0
        return
    stage, error_type, pattern = expected
    assert len(first) == 1, f"expected exactly one dead letter for the record, got {first}"
    letter = first[0]
    check_letter(letter, raw, 0, stage, error_type)
    assert re.search(pattern, letter["error"]), f"error {letter['error']!r} does not match {pattern!r}"
    assert sum(views(out.dump).values()) == 2
    assert out.dump["stages"]["validate"]["invalid"] == (1 if stage == "validate" else 0)


def test_all_hostile_records_in_one_stream(tmp_path):
    """The cases one after another in one run: one dead letter each, every valid one counted."""
    driver = Driver(PIPELINE, tmp_path, ["source.max_record_bytes=300"])
    cases = [c for c in CASES if len(c[1]) <= 300 or c[1] == padded(301)]
    records, rejected = [], {}
    for n, (name, raw, _, expected) in enumerate(cases):
        if expected is not None:
            rejected[len(records)] = (name, raw, expected)
        records.append(raw)
        records.append(json.dumps(event(n, page_url="/after", timestamp="2026-01-01T00:00:00Z")).encode())
    out = driver.run(records)
    by_offset: dict[int, list] = {}
    for letter in out.dead_letters:
        if letter["stage"] in ("source", "validate"):
            by_offset.setdefault(letter["offset"], []).append(letter)
    assert set(by_offset) == set(rejected)
    for offset, (name, raw, (stage, error_type, _)) in rejected.items():  # messages: checked one by one above
        assert len(by_offset[offset]) == 1, name
        check_letter(by_offset[offset][0], raw, offset, stage, error_type)
    assert views(out.dump)["/after"] == len(cases)
    assert sum(views(out.dump).values()) == len(records) - len(rejected)
    assert out.dump["stages"]["validate"]["invalid"] == sum(e[2][0] == "validate" for e in rejected.values())


UNICODE_PAGES = ["/café", "/cafe\u0301", "/日本", "/😀", "/עברית", "/a\u0000b", "/tab\tand\\slash\"quote", "/\u00a0nbsp"]
# characters Python's str.splitlines() takes for line breaks, though JSON text may hold them raw
LINE_BREAKING_PAGES = ["/line\u2028separator", "/para\u2029separator", "/next\u0085line", "/file\u001cseparator"]


@pytest.mark.parametrize("pages", [UNICODE_PAGES, LINE_BREAKING_PAGES], ids=["unicode", "line_breaking"])
def test_unicode_page_names_are_carried_exactly(tmp_path, pages):
    driver = Driver(PIPELINE, tmp_path)
    records = []
    for n, url in enumerate(pages):
        # each page twice: once as raw UTF-8, once \u-escaped; both are the same string
        records.append(json.dumps(event(2 * n, page_url=url), ensure_ascii=False).encode())
        records.append(json.dumps(event(2 * n + 1, page_url=url), ensure_ascii=True).encode())
    out = driver.run(records, drain=True)
    assert out.dead_letters == []
    assert views(out.dump) == {url: 2 for url in pages}, "page names were altered or merged"
    milestones = {r["id"]: r for r in out.results if r["stage"] == "page_stats"}
    expected = {f"hostile/page_stats/{compact(url)}/milestone/views/{v}" for url in pages for v in (1, 2)}
    assert set(milestones) == expected
    assert {r["key"] for r in milestones.values()} == set(pages)
    (window,) = [r for r in out.results if r["stage"] == "traffic"]
    assert window["pages"] == {url: 2 for url in pages}
    assert window["events"] == 2 * len(pages)
    if pages is UNICODE_PAGES:
        assert 'hostile/page_stats/"/café"/milestone/views/1' in milestones
        assert 'hostile/page_stats/"/日本"/milestone/views/2' in milestones
        assert "/cafe\u0301" in views(out.dump), "no Unicode normalization: NFD stays apart from NFC"
        # the sink wrote UTF-8 JSON, unescaped
        assert "/日本" in (tmp_path / "results.jsonl").read_text(encoding="utf-8")


@pytest.mark.parametrize("stage", [
    {"type": "tumbling_window", "name": "w", "size": "5m", "aggregations": {"events": "count"}},
    {"type": "hopping_window", "name": "w", "size": "10m", "advance": "5m", "aggregations": {"events": "count"}},
    {"type": "session_window", "name": "w", "key_by": "user_id", "gap": "10m", "aggregations": {"events": "count"}},
], ids=["tumbling", "hopping", "session"])
def test_the_last_valid_event_time_does_not_stop_a_window_stage(tmp_path, stage):
    """9999-12-31T23:59:59.999Z is a valid event time (section 4): its window may end in year
    10000, but that must neither crash the run nor the state dump. The event either counts
    in a result or gets one DLQ record; the valid events around it count either way."""
    settings = dict(PIPELINE, name="hostile", stages=[
        {"type": "validate"},
        {"type": "aggregate", "name": "page_stats", "key_by": "page_url", "aggregations": {"views": "count"}},
        stage])
    driver = Driver(settings, tmp_path)
    first = driver.run([json.dumps(event(0, timestamp="9999-12-31T23:57:00Z")).encode()])  # --until-end
    assert first.dump["offsets"] == {"events/0": 1}
    out = driver.run([json.dumps(event(1, timestamp="9999-12-31T23:59:59.999Z")).encode(),
                      json.dumps(event(2, page_url="/after")).encode()], drain=True)
    assert views(out.dump) == {"/home": 2, "/after": 1}
    letters = [d for d in out.dead_letters if d["offset"] in (0, 1)]
    assert len({d["id"] for d in letters}) == len(letters)
    counted = sum(r["events"] for r in out.results if r["stage"] == "w")
    assert counted or letters, "the events went neither into a result nor into the DLQ"
    for letter in letters:
        assert letter["error"] and "Traceback" not in letter["error"]


# --- the real broker: record timestamps, keys and tombstones ----------------------------------

T0_MS = 1767225600000  # 2026-01-01T00:00:00.000Z
HOUR = 3_600_000


def kafka_pipeline(tmp_path, broker, topic, dlq_topic) -> str:
    settings = {
        "name": "hostile",
        "source": {"type": "kafka", "topics": [topic], "bootstrap_servers": broker, "group_id": "hostile",
                   "auto_offset_reset": "earliest"},
        "state": {"backend": "lmdb", "path": str(tmp_path / "state")},
        "checkpoint": {"every_events": 100, "every_ms": 100},
        "event_time": {"field": "timestamp", "min": "2000-01-01T00:00:00Z", "max_ahead": "1h"},
        "dlq": {"type": "kafka", "topic": dlq_topic},
        "stages": [
            {"type": "validate"},
            {"type": "aggregate", "name": "page_stats", "key_by": "page_url", "aggregations": {"views": "count"}},
        ],
        "sinks": [{"type": "jsonl", "path": str(tmp_path / "results.jsonl")}],
    }
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return str(path)


def test_kafka_record_timestamps_keys_and_tombstones(broker, topic_factory, tmp_path):
    topic, dlq_topic = topic_factory(1), topic_factory(1)

    def value(n, t_ms, **fields):
        return json.dumps(event(n, timestamp=t_ms, **fields), ensure_ascii=False).encode()

    # (key, value, record timestamp, expected None or (stage, error_type, regex))
    plan = [
        (b"u1", value(0, T0_MS), T0_MS, None),
        (b"u1", value(1, T0_MS + 2 * HOUR), T0_MS,
         ("validate", "validation", r"^invalid timestamp for field timestamp: 2026-01-01T02:00:00\.000Z is more "
                                    r"than event_time\.max_ahead ahead of the record's timestamp "
                                    r"2026-01-01T00:00:00\.000Z$")),
        (b"u1", value(2, T0_MS + HOUR), T0_MS, None),  # exactly max_ahead ahead: fine
        (b"u1", value(3, T0_MS - 24 * HOUR), T0_MS, None),  # behind the record: fine
        (b"u1", value(4, "2999-01-01T00:00:00Z"), 32472144000000 - HOUR, None),  # far ahead of now: fine
        (b"u1", value(5, "1999-12-31T23:59:59Z"), T0_MS,
         ("validate", "validation", r"^invalid timestamp for field timestamp: 1999-12-31T23:59:59\.000Z is before "
                                    r"event_time\.min")),
        (b"\xff\xfe", value(6, T0_MS), T0_MS, None),  # a key is never decoded: valid
        (b"\xff\xfe", value(7, T0_MS, page_url="home"), T0_MS,
         ("validate", "validation", r"^invalid value for field page_url: ")),
        (b"\xff\xfe", b"\xff not json", T0_MS, ("source", "deserialization", r"^not UTF-8: invalid byte at position 0$")),
        (b"gone", None, T0_MS, ("source", "deserialization", r"^record has no value$")),
        (b"u1", value(11, T0_MS + 1000, page_url="/after"), T0_MS, None),
    ]
    producer = KafkaProducer(bootstrap_servers=broker)
    for key, val, ts, _ in plan:
        producer.send(topic, key=key, value=val, timestamp_ms=ts, partition=0).get(timeout=30)
    producer.close(timeout=10)

    pipeline = kafka_pipeline(tmp_path, broker, topic, dlq_topic)
    proc = e2e.run("run", pipeline, "--until-end")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr

    letters = e2e.read_topic(broker, dlq_topic)
    by_offset: dict[int, list] = {}
    for record in letters:
        letter = json.loads(record.value)
        assert dict(record.headers)["runner-id"].decode() == letter["id"]
        by_offset.setdefault(letter["offset"], []).append((record, letter))
    expected = {n: e for n, (_, _, _, e) in enumerate(plan) if e is not None}
    assert set(by_offset) == set(expected), {o: [l["error"] for _, l in v] for o, v in by_offset.items()}
    for offset, (stage, error_type, pattern) in expected.items():
        key, val, _, _ = plan[offset]
        assert len(by_offset[offset]) == 1, f"offset {offset}: {by_offset[offset]}"
        record, letter = by_offset[offset][0]
        assert letter["id"] == f"hostile/dlq/{topic}/0/{offset}/{stage}"
        assert (letter["stage"], letter["error_type"]) == (stage, error_type)
        assert re.search(pattern, letter["error"]), f"offset {offset}: {letter['error']!r} !~ {pattern!r}"
        assert record.key == key, "the Kafka DLQ must keep the original key bytes"
        if key is None:
            assert letter["key"] is None and letter["key_b64"] is None
        else:
            assert letter["key"] == key.decode("utf-8", "replace")
            assert base64.b64decode(letter["key_b64"]) == key
        if val is None:
            assert letter["payload"] is None and letter["payload_b64"] is None
        else:
            assert base64.b64decode(letter["payload_b64"]) == val
            assert letter["payload"] == val.decode("utf-8", "replace")
    record, letter = by_offset[7][0]
    assert letter["key"] == "\ufffd\ufffd" and letter["key_b64"] == "//4="

    state = e2e.dump(pipeline)
    assert state["offsets"] == {f"{topic}/0": len(plan)}
    counted = {k["key"]: k["views"] for k in state["stages"]["page_stats"]["keys"]}
    assert counted == {"/home": 5, "/after": 1}
    assert state["stages"]["validate"]["invalid"] == 3


def test_sums_beyond_64_bits_are_written_exactly(tmp_path):
    """Each revenue fits in 64 bits, their sum does not: still an integer (CONTRACT section 3),
    written in full, as a top value past 2^64 and a milestone is."""
    pipeline = {**PIPELINE, "stages": [
        {"type": "validate"},
        {"type": "aggregate", "name": "big", "aggregations": {"revenue": {"sum": "revenue"}},
         "milestones": {"revenue": 10**19}},
        {"type": "tumbling_window", "name": "traffic", "size": "5m",
         "aggregations": {"revenue": {"sum": "revenue"}, "top": {"top": "duration", "n": 1}}},
    ]}
    driver = Driver(pipeline, tmp_path)
    most = 2**63 - 1
    out = driver.run([event(n, revenue=most, duration=2e19) for n in range(3)], drain=True)
    assert out.dead_letters == []
    (window,) = [r for r in out.results if r["stage"] == "traffic"]
    assert window["revenue"] == 3 * most and window["top"] == [[2 * 10**19, 3]]
    milestones = sorted(r["value"] for r in out.results if r["stage"] == "big")
    assert milestones == [k * 10**19 for k in range(1, 3 * most // 10**19 + 1)]
    assert str(3 * most) in (tmp_path / "results.jsonl").read_text()


def test_an_event_without_its_event_time_field_is_told_so(tmp_path):
    """With event_time.field outside the schema, the first window stage finds it absent or
    null (the same, section 4): a processing error naming the field."""
    pipeline = {**PIPELINE, "event_time": {"field": "ts", "grace": "0s"}, "stages": [
        {"type": "tumbling_window", "name": "traffic", "size": "5m", "aggregations": {"events": "count"}}]}
    out = Driver(pipeline, tmp_path).run([event(0, ts=T0), event(1), event(2, ts=None)], drain=True)
    assert [(d["offset"], d["error_type"], d["error"]) for d in out.dead_letters] == [
        (1, "processing", "missing event-time field: ts"), (2, "processing", "missing event-time field: ts")]


def test_big_integers_in_tuples_are_written_too():
    from runner.codec import dumps  # a plugin stage may put tuples in its results
    assert dumps({"t": (2**70, float("nan"))}) == b'{"t":[1180591620717411303424,null]}'
