"""The generator source: the Source contract over the click generator."""

from __future__ import annotations

import logging
import time

import jsonschema
import pluggy
import pytest

from plugins.clickstream import UNPACED_EVENT_RATE, ClickGenerator
from plugins.sources import generator as generator_module
from plugins.sources.generator import GeneratorSource
from runner import hookspecs
from runner.components import ConfigError, Context, Record
from runner.times import parse_event_time

KEY = "generator/0"
DEFAULT_START = parse_event_time("2026-11-24T08:00:00Z")


def config(**overrides) -> dict:
    """A config as the runner passes it: the schema's defaults filled in."""
    props = GeneratorSource.config_schema["properties"]
    filled = {name: prop["default"] for name, prop in props.items() if "default" in prop}
    filled.update(overrides)
    jsonschema.validate(filled, GeneratorSource.config_schema)
    return filled


def source(**overrides) -> GeneratorSource:
    return GeneratorSource(config(**overrides), Context("test", "source", {}))


def drain(src: GeneratorSource, polls: int = 100) -> list[Record]:
    records = []
    for _ in range(polls):
        batch = list(src.poll(0.01))
        if not batch:
            break
        records.extend(batch)
    return records


# -- declaration


def test_is_registered_through_the_hook():
    pm = pluggy.PluginManager("runner")
    pm.add_hookspecs(hookspecs)
    pm.register(generator_module)
    registered = [cls for found in pm.hook.runner_register_sources() for cls in found]
    assert GeneratorSource in registered and GeneratorSource.type == "generator"


def test_every_property_is_described_with_a_default_or_required():
    schema = GeneratorSource.config_schema
    assert schema["additionalProperties"] is False
    assert {"rate", "count", "seed", "bad_ratio", "start", "users", "max_record_bytes"} <= set(schema["properties"])
    for name, prop in schema["properties"].items():
        assert prop.get("description"), name
        assert "default" in prop or name in schema.get("required", ()), name
    assert schema["properties"]["start"]["default"] == "2026-11-24T08:00:00Z"


@pytest.mark.parametrize("bad", [
    {"rate": -1}, {"count": 0}, {"count": 1.5}, {"bad_ratio": 1.5}, {"seed": "x"}, {"users": 0}, {"speed": 3},
])
def test_schema_refuses_bad_values(bad):
    with pytest.raises(jsonschema.ValidationError):
        config(**bad)


def test_lint_checks_the_start_time():
    assert GeneratorSource.lint(config()) == []
    assert GeneratorSource.lint(config(start="2026-11-24T09:30:00+01:00")) == []
    problems = GeneratorSource.lint(config(start="tomorrow"))
    assert [path for path, _ in problems] == [("start",)]
    assert "RFC 3339" in problems[0][1]


# -- the Source contract


def test_open_poll_and_end_offsets():
    src = source(rate=0, count=5000, seed=4, bad_ratio=0.1)
    assert src.open({}) == {KEY: 0}
    assert src.end_offsets() == {KEY: 5000}
    first = list(src.poll(0.1))
    assert 0 < len(first) <= 2000
    records = first + drain(src)
    assert [r.offset for r in records] == list(range(5000))
    gen = ClickGenerator(4, DEFAULT_START, UNPACED_EVENT_RATE, bad_ratio=0.1)
    for r in records[:300] + records[-300:]:
        assert (r.topic, r.partition) == ("generator", 0)
        assert r.timestamp == gen.time_ms(r.offset)  # the event time is the record's own timestamp
        assert (r.key, r.value) == gen.record(r.offset)
    assert any(r.value is None for r in records)  # records with no value come from the generator too
    began = time.monotonic()
    assert list(src.poll(0.05)) == []  # at the end: waits out the timeout, returns nothing
    assert time.monotonic() - began >= 0.04
    assert src.caught_up(KEY)


def test_end_offsets_needs_a_count():
    src = source(rate=0)
    src.open({})
    with pytest.raises(ConfigError, match="--until-end needs generator.count"):  # bad usage: exit 2
        src.end_offsets()


def test_unbounded_generator_keeps_going():
    src = source(rate=0)
    src.open({})
    records = [r for _ in range(3) for r in src.poll(0.01)]
    assert [r.offset for r in records] == list(range(6000))
    assert not src.caught_up(KEY)


def test_open_resumes_at_the_stored_offset_with_the_same_records():
    fresh = source(rate=0, count=3000, seed=9)
    fresh.open({})
    everything = drain(fresh)
    resumed = source(rate=0, count=3000, seed=9)
    assert resumed.open({KEY: 1234}) == {KEY: 1234}
    assert drain(resumed) == everything[1234:]


def test_stored_offset_beyond_count_is_reported_and_ends_there(caplog):
    src = source(rate=0, count=100)
    with caplog.at_level(logging.WARNING):
        assert src.open({KEY: 150}) == {KEY: 100}
    assert "beyond" in caplog.text
    assert list(src.poll(0.01)) == []


def test_default_start_and_event_time_spacing():
    src = source(rate=4, count=3)
    src.open({})
    time.sleep(0.6)  # records 0, 1 and 2 are due by now
    records = drain(src)
    assert [r.timestamp for r in records] == [DEFAULT_START, DEFAULT_START + 250, DEFAULT_START + 500]
    unpaced = source(rate=0, count=3)
    unpaced.open({})
    assert [r.timestamp - DEFAULT_START for r in drain(unpaced)] == [0, 1000 // UNPACED_EVENT_RATE, 2000 // UNPACED_EVENT_RATE]


def test_pacing_follows_the_rate():
    src = source(rate=200)
    src.open({})
    began = time.monotonic()
    records = []
    while time.monotonic() - began < 0.5:
        records.extend(src.poll(0.05))
    elapsed = time.monotonic() - began
    assert 60 <= len(records) <= 200 * elapsed + 5  # about 100
    assert [r.offset for r in records] == list(range(len(records)))
    assert records[1].timestamp - records[0].timestamp == 5


def test_paced_poll_waits_at_most_its_timeout():
    src = source(rate=0.5)  # one record every 2 s
    src.open({})
    assert len(list(src.poll(0.01))) == 1  # record 0 is due at once
    began = time.monotonic()
    assert list(src.poll(0.1)) == []
    assert 0.09 <= time.monotonic() - began < 0.5
    assert src.caught_up(KEY)


def test_never_more_than_2000_records_per_poll():
    src = source(rate=0, count=10_000)
    src.open({})
    assert len(list(src.poll(1))) == 2000
