"""The validate stage decides with a compiled validator: its verdict must be jsonschema's, and
the first failing rule it names for a rejected event the one jsonschema's errors give."""

import json
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugins.clickstream import BAD_KINDS, ClickGenerator, bad_record
from plugins.stages.validate import CONSTRAINT, MISSING, WRONG_TYPE, Validate, compile_schema
from runner import config
from runner.codec import DecodeError, decode
from runner.components import ConfigError, Context
from runner.outputs import Emitter
from runner.state import MemoryStore

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = json.loads((ROOT / "schemas" / "click_event.schema.json").read_text())
FAST = compile_schema(SCHEMA)
FULL = jsonschema.Draft7Validator(SCHEMA)


def fast_ok(value) -> bool:
    return FAST.is_valid(value)


PROCESSOR = Validate({"schema": None}, Context("p", "validate", {})).build(MemoryStore().table("v"), Emitter("p", {}))


def first_problem(value: dict):
    """The (rule, field) the stage reports first for ``value``, from the compiled validator."""
    problems = list(PROCESSOR._schema_problems(value))
    return min(problems, key=lambda p: (p[0], PROCESSOR.stage.fields.get(p[1], 99), p[1]))[:2] if problems else None


def jsonschema_first_problem(value: dict):
    """The same, read off jsonschema's own errors (the oracle)."""
    problems = []
    for err in FULL.iter_errors(value):
        if err.validator == "required":
            problems += [(MISSING, name) for name in err.validator_value if name not in err.instance]
        elif err.absolute_path and err.validator != "format":
            name = str(err.absolute_path[0])
            if err.validator == "type" and len(err.absolute_path) == 1:
                problems.append((MISSING if value.get(name) is None and name in SCHEMA["required"] else WRONG_TYPE, name))
            else:
                problems.append((CONSTRAINT, name))
    return min(problems, key=lambda p: (p[0], PROCESSOR.stage.fields.get(p[1], 99), p[1])) if problems else None


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
        if isinstance(value, dict):
            assert first_problem(value) == jsonschema_first_problem(value), raw
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
    if isinstance(value, dict):
        assert first_problem(value) == jsonschema_first_problem(value)


def test_messages_name_the_rule_and_the_field():
    base = {"event_id": "e", "user_id": "u", "page_url": "/", "timestamp": "2026-11-24T08:00:00Z"}
    cases = [
        ({"page_url": None}, "missing required field: page_url"),
        ({"user_id": 7, "page_url": "x"}, "wrong type for field user_id: expected string"),
        ({"duration": "5"}, "wrong type for field duration: expected number"),
        ({"revenue": -0.5}, "negative value for field revenue"),
        ({"event_type": "buy"}, "invalid value for field event_type: \"buy\" is not one of page_view, click, add_to_cart, purchase"),
        ({"page_url": "home"}, "invalid value for field page_url: \"home\" does not match ^/"),
    ]
    for change, message in cases:
        value = {**base, **change}
        problems = list(PROCESSOR._schema_problems(value))
        assert min(problems, key=lambda p: (p[0], PROCESSOR.stage.fields[p[1]]))[2] == message


@pytest.mark.parametrize("content,message", [
    (None, "cannot read click.schema.json: No such file or directory (a relative path is taken from the "
           "current directory, {cwd})"),
    ("nope", "click.schema.json is not JSON: Expecting value"),
    ('{"type": 5}', "click.schema.json is not a JSON Schema: 5 is not valid under any of the schemas"),
])
def test_a_schema_file_that_cannot_serve_is_a_config_error_naming_it(tmp_path, monkeypatch, content, message):
    monkeypatch.chdir(tmp_path)
    if content is not None:
        (tmp_path / "click.schema.json").write_text(content)
    with pytest.raises(ConfigError) as info:
        config.load(str(ROOT / "pipelines" / "fault_tolerant.yaml"), ["stages.0.schema=click.schema.json"])
    assert any(f"stages[0].schema: {message.format(cwd=tmp_path)}" in line for line in info.value.lines)
