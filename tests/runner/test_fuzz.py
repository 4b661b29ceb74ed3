"""Fuzzing the decode -> validate -> aggregate -> window path with hypothesis.

Arbitrary bytes, arbitrary JSON, and valid click events broken in every way (wrong types,
missing fields, extreme numbers, odd unicode, raw tokens such as NaN) go through a pipeline
run in-process by the Driver (drained). Whatever comes in, the run never raises, and every
input record is accounted for exactly once per stage, as an independent model of CONTRACT
sections 3, 4 and 6 (decode, then the JSON Schema and the event-time parser, then the
aggregations' type rules, then lateness on one partition) says it should be.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections import Counter
from pathlib import Path

import jsonschema
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from runner.codec import DecodeError, decode
from runner.testing import Driver
from runner.times import InvalidTime, format_ms, parse_event_time

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schemas" / "click_event.schema.json").read_text())
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)  # formats unchecked: the time is checked below

BASE_MS = 1795507200000  # 2026-11-24T08:00:00.000Z
SIZE_MS = 5 * 60_000
GRACE_MS = 30_000
PIPELINE = {
    "name": "fuzz",
    "source": {"type": "file", "path": "replaced-by-the-driver"},
    "state": {"backend": "lmdb", "path": "replaced-by-the-driver"},
    "checkpoint": {"every_events": 7, "every_ms": 0},
    "event_time": {"field": "timestamp", "grace": "30s"},
    "dlq": {"type": "jsonl", "path": "replaced-by-the-driver"},
    "stages": [
        {"type": "validate"},
        {"type": "aggregate", "name": "pages", "key_by": "page_url", "aggregations": {
            "views": "count", "total_duration": {"sum": "duration"}, "avg_revenue": {"avg": "revenue"},
            "users": {"count_distinct": "user_id"}, "top_users": {"top": "user_id", "n": 3},
            "best": {"max": "score"}}},
        {"type": "tumbling_window", "name": "traffic", "size": "5m", "aggregations": {
            "events": "count", "types": {"count_by": "event_type"}, "tags": {"count_by": "tag"},
            "pages": {"collect": "page_url", "limit": 5}}},
    ],
    "sinks": [{"type": "jsonl", "path": "replaced-by-the-driver"}],
}
ERROR_TYPES = {"deserialization", "validation", "processing", "late"}


def read_jsonl(path: Path) -> list[dict]:
    # JSON text may hold U+2028, U+0085... raw: split on b"\n" only (Driver._read uses
    # str.splitlines(), which also breaks there; see tests/runner/test_hostile_input.py)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line.strip()]


class LinesDriver(Driver):
    _read = staticmethod(read_jsonl)


# --- strategies ------------------------------------------------------------------------------

ODD_TEXT = st.sampled_from([
    "", "/", "/café", "/cafe\u0301", "/日本", "/😀", "/\u0000", "/a\u2028b", "/\u0085", "/\u202eevil",
    "/\ufeff", "/\uffff", "/" + "x" * 300, "\u0000", "NaN", "Infinity", "null", "/NaN", " /home",
    "/\\", '/"', "1795507200000", "１２３", "/\t", "/\r",
])
TEXT = st.one_of(st.text(max_size=12), ODD_TEXT)
EXTREME_NUMBERS = st.sampled_from([
    0, -0.0, 1, -1, 0.5, 2**53, 2**53 + 1, 2**63 - 1, -(2**63 - 1), 1.7976931348623157e308,
    -1.7976931348623157e308, 5e-324, 1e-320, 1e308, 12.25, 99999999999999999999.0,
])
NUMBERS = st.one_of(
    st.integers(min_value=-(2**63 - 1), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    EXTREME_NUMBERS,
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)


def rfc3339(ms: int, sep: str = "T", zulu: str = "Z", offset_min: int | None = None, digits: int = 3) -> str:
    if offset_min is not None:
        local = format_ms(ms + offset_min * 60_000)
        sign = "+" if offset_min >= 0 else "-"
        zone = f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    else:
        local, zone = format_ms(ms), zulu
    fraction = (local[20:23] + "987654")[:digits]
    return local[:10] + sep + local[11:19] + ("." + fraction if digits else "") + zone


NEAR_MS = st.integers(BASE_MS - 2 * 3_600_000, BASE_MS + 2 * 3_600_000)
# valid all the same: the ends of the range of section 4
EDGE_TIMES = st.sampled_from([0, "1970-01-01T00:00:00.000Z", 253402300799999, "9999-12-31T23:59:59.999Z",
                              "9999-12-31T23:58:00+00:00"])
TIMESTAMPS = st.one_of(
    NEAR_MS,
    NEAR_MS.map(format_ms),
    st.builds(rfc3339, NEAR_MS, st.sampled_from("Tt "), st.sampled_from("Zz"),
              st.one_of(st.none(), st.integers(-23 * 60 - 59, 23 * 60 + 59)), st.integers(0, 9)),
    NEAR_MS.map(float),
    st.sampled_from([
        -1, 253402300799999 - 3_600_000, 253402300800000, 1e20, 1.5, True, False, None, "",
        "1970-01-01T00:00:00Z", "1969-12-31T23:59:59.999Z", "2026-02-30T00:00:00Z",
        "2026-11-24T23:59:60Z", "2026-11-24T08:00:00", "2026-11-24T08:00:00+24:00",
        "２０２６-11-24T08:00:00Z", "1795507200000", "2026-11-24T08:00:00.123456789Z",
        "0000-01-01T00:00:00Z", "2026-11-24T08:00:00+01:00\n", [], {},
    ]),
    JSON,
)
USERS = st.one_of(st.sampled_from(["u1", "u2", "u3", "ü", ""]), TEXT)
PAGES = st.one_of(st.sampled_from(["/home", "/cart", "/日本", "/café"]), TEXT)
OPTIONAL = {
    "event_type": st.sampled_from(["page_view", "click", "add_to_cart", "purchase", None, "hover"]),
    "session_id": st.one_of(st.none(), TEXT),
    "referrer": st.one_of(st.none(), TEXT),
    "device": st.sampled_from(["desktop", "mobile", None]),
    "country": st.sampled_from(["US", "JP", None]),
    "duration": st.one_of(st.none(), st.floats(0, 600), EXTREME_NUMBERS),
    "revenue": st.one_of(st.none(), st.floats(0, 1000), st.integers(0, 10**6)),
    "score": st.one_of(st.none(), NUMBERS, SCALARS, JSON),  # {max: score}: numbers only
    "tag": st.one_of(st.none(), st.sampled_from(["a", "b", 1, 2.0, True, None]), JSON),  # {count_by: tag}: no objects or arrays
}
FIELDS = ["event_id", "user_id", "page_url", "timestamp", *OPTIONAL]


@st.composite
def click(draw) -> dict:
    event = {"event_id": draw(st.text(max_size=8)), "user_id": draw(USERS),
             "page_url": draw(PAGES), "timestamp": draw(st.one_of(NEAR_MS.map(format_ms), NEAR_MS, EDGE_TIMES))}
    for name, values in OPTIONAL.items():
        if draw(st.booleans()):
            event[name] = draw(values)
    return event


@st.composite
def mutated_click(draw) -> dict:
    event = draw(click())
    for _ in range(draw(st.integers(0, 3))):
        field = draw(st.one_of(st.sampled_from(FIELDS), TEXT))
        action = draw(st.sampled_from(["delete", "json", "number", "text", "time"]))
        if action == "delete":
            event.pop(field, None)
        elif action == "json":
            event[field] = draw(JSON)
        elif action == "number":
            event[field] = draw(NUMBERS)
        elif action == "text":
            event[field] = draw(TEXT)
        else:
            event["timestamp"] = draw(TIMESTAMPS)
    return event


RAW_TOKENS = st.sampled_from([
    b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"9223372036854775808", b"-9223372036854775808",
    b"9223372036854775807", b"-9223372036854775807", b"18446744073709551616", b"1E999", b"-0", b"01",
    b"[" * 64 + b"]" * 64, b"[" * 63 + b"]" * 63, b'"\\u0000"', b'"\\ud800"', b'"\x00"', b"\x00", b"tru",
    b'"\xff"', b'"\xc3\xa9"', b"{}", b"[]", b"1.0e+2", b".5", b"+1", b"0x10",
])


def serialize(value, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=False).encode("utf-8", "surrogatepass")


@st.composite
def record(draw) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "click", "mutated", "mutated", "raw_token", "byte_edit"]))
    ascii_only = draw(st.booleans())
    if kind == "bytes":
        raw = draw(st.binary(max_size=120))
    elif kind == "json":
        raw = serialize(draw(JSON), ascii_only)
    elif kind == "click":
        raw = serialize(draw(click()), ascii_only)
    elif kind == "mutated":
        raw = serialize(draw(mutated_click()), ascii_only)
    elif kind == "raw_token":
        event = draw(click())
        field = draw(st.sampled_from(FIELDS))
        event.pop(field, None)
        body = serialize(event, ascii_only)
        raw = body[:-1] + (b"," if event else b"") + b'"' + field.encode() + b'":' + draw(RAW_TOKENS) + b"}"
    else:
        body = bytearray(serialize(draw(click()), ascii_only))
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(body)))
            op = draw(st.sampled_from(["insert", "delete", "replace"]))
            byte = draw(st.integers(0, 255))
            if op == "insert":
                body[at:at] = bytes([byte])
            elif body and at < len(body):
                if op == "delete":
                    del body[at]
                else:
                    body[at] = byte
        raw = bytes(body)
    return raw.replace(b"\n", b" ")  # one record is one line


# --- the model ---------------------------------------------------------------------------------

def not_number(value) -> bool:
    return value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)))


def model(records: list[bytes]) -> dict:
    """What CONTRACT sections 3, 4 and 6 say happens to these lines (one partition, grace 30 s)."""
    letters, views, high = {}, Counter(), -math.inf
    sums: dict = {}  # (page, field) -> running sum: {sum: duration} and {avg: revenue} of "pages"
    invalid = late = windowed = 0
    for offset, raw in enumerate(records):
        if not raw.strip():
            continue  # a blank line counts as an offset but is no record
        try:
            data = decode(raw, 1 << 20)
        except DecodeError:
            letters[(offset, "source")] = "deserialization"
            continue
        valid = isinstance(data, dict) and VALIDATOR.is_valid(data)
        if valid:
            try:
                t = parse_event_time(data["timestamp"])
            except InvalidTime:
                valid = False
        if not valid:
            letters[(offset, "validate")] = "validation"
            invalid += 1
            continue
        if not_number(data.get("score")):  # {max: score}
            letters[(offset, "pages")] = "processing"
            continue
        page = data["page_url"]
        added = {f: sums.get((page, f), 0) + data[f] for f in ("duration", "revenue") if data.get(f) is not None}
        if any(abs(total) == math.inf for total in added.values()):  # a sum that overflows a double
            letters[(offset, "pages")] = "processing"
            continue
        sums.update({(page, f): total for f, total in added.items()})
        views[page] += 1
        high = max(high, t)
        if t // SIZE_MS * SIZE_MS + SIZE_MS <= high - GRACE_MS:
            letters[(offset, "traffic")] = "late"
            late += 1
            continue
        if isinstance(data.get("tag"), (dict, list)):  # {count_by: tag}
            letters[(offset, "traffic")] = "processing"
            continue
        windowed += 1
    return {"letters": letters, "views": views, "invalid": invalid, "late": late, "windowed": windowed}


# --- the property ------------------------------------------------------------------------------

@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(record(), min_size=1, max_size=25))
@example([b'{"event_id": "", "user_id": "u1", "page_url": "/home", "timestamp": "2026-11-24T06:00:00.000Z", '
          b'"duration": 1.7976931348623157e+308}'] * 2)  # the second one's sum overflows
def test_every_record_is_accounted_for_exactly_once(records):
    with tempfile.TemporaryDirectory(prefix="fuzz-") as work:
        driver = LinesDriver(PIPELINE, work)
        out = driver.run(records, drain=True)  # must not raise, whatever the input
    want = model(records)
    for kind in sorted(set(want["letters"].values())):
        event(f"has {kind} dead letters")
    if want["windowed"]:
        event("has windowed events")
    total = sum(1 for raw in records if raw.strip())

    seen: dict[tuple, dict] = {}
    for letter in out.dead_letters:
        where = (letter["offset"], letter["stage"])
        assert where not in seen, f"two dead letters for record {where}: {seen.get(where)} and {letter}"
        seen[where] = letter
        assert letter["id"] == f"fuzz/dlq/events/0/{letter['offset']}/{letter['stage']}"
        assert letter["error_type"] in ERROR_TYPES
        assert letter["error"] and "Traceback" not in letter["error"] and "Error(" not in letter["error"]
        assert letter["payload_b64"] is not None
    got = {where: letter["error_type"] for where, letter in seen.items()}
    assert got == want["letters"], "dead letters differ from the model"
    for (offset, stage), letter in seen.items():
        if letter["error_type"] == "processing":
            fields = "score|duration|revenue" if stage == "pages" else "tag"
            assert re.search(rf"\b({fields})\b", letter["error"]), f"{letter['error']!r} does not name {fields}"

    dump = out.dump
    accepted = {k["key"]: k["views"] for k in dump["stages"]["pages"]["keys"]}
    deserialization = sum(1 for l in out.dead_letters if l["error_type"] == "deserialization")
    processing_pages = sum(1 for l in out.dead_letters if l["stage"] == "pages")
    assert dump["stages"]["validate"]["invalid"] + deserialization + processing_pages + sum(accepted.values()) == total
    assert accepted == dict(want["views"])
    assert dump["stages"]["validate"]["invalid"] == want["invalid"]
    assert dump["stages"]["traffic"]["late"] == want["late"]
    assert dump["stages"]["traffic"]["open"] == [] and dump["watermark"] == "+inf"
    assert dump["offsets"] == {"events/0": len(records)}
    windows = [r for r in out.results if r["stage"] == "traffic"]
    assert sum(r["events"] for r in windows) == want["windowed"]
    assert len({r["id"] for r in out.results}) == len(out.results), "duplicate results"
