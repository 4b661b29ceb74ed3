"""The validate stage decides with a compiled validator: its verdict must be jsonschema's."""

import json
from pathlib import Path

import jsonschema
from hypothesis import given, settings
from hypothesis import strategies as st

from plugins.clickstream import BAD_KINDS, ClickGenerator, bad_record
from plugins.stages.validate import compile_schema
from runner.codec import DecodeError, decode

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "click_event.schema.json").read_text())
FAST = compile_schema(SCHEMA)
FULL = jsonschema.Draft7Validator(SCHEMA)


def fast_ok(value) -> bool:
    return FAST(value)


def corpus():
    gen = ClickGenerator(seed=2, start_ms=1795507200000, rate=10, bad_ratio=0.2)
    for i in range(3000):
        yield gen.record(i)[1]
    for kind in BAD_KINDS:
        yield bad_record(kind, 1)[1]


def test_compiled_verdict_equals_jsonschema_on_the_generated_corpus():
    checked = rejected = 0
    for raw in corpus():
        try:
            value = decode(raw, 1 << 20)
        except DecodeError:
            continue
        assert fast_ok(value) == FULL.is_valid(value), raw
        checked += 1
        rejected += not FULL.is_valid(value)
    assert checked > 2500 and rejected > 100


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**63 + 1, 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=8)
FIELDS = ["event_id", "user_id", "page_url", "timestamp", "event_type", "session_id", "duration", "revenue"]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), JSON | st.sampled_from(["/home", "home", "click", "purchase", 0, -1]),
                       max_size=8) | JSON)
def test_compiled_verdict_equals_jsonschema_on_arbitrary_values(value):
    assert fast_ok(value) == FULL.is_valid(value)
