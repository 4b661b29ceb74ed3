"""Loading and validating pipeline files: every error, with its line, in words a user acts on."""

import textwrap
from pathlib import Path

import jsonschema
import pytest

from runner import aggregations, plugins
from runner.components import ConfigError, Sink, Source, Stage
from runner.config import load, pipeline_schema, read_scalar
from runner.schema import duration, obj
from runner.times import duration_ms


# --- a tiny registry of fake components --------------------------------------------------------


class FakeSource(Source):
    """Reads nothing; has the shape of a Kafka source."""

    type = "fake"
    config_schema = obj({
        "topics": {"type": "array", "items": {"type": "string"}, "minItems": 1, "description": "topics"},
        "bootstrap_servers": {"type": "string", "default": "localhost:9092", "description": "brokers"},
        "count": {"type": "integer", "minimum": 1, "description": "records to make"},
    }, required=("topics",))


class Validate(Stage):
    """Checks events."""

    type = "validate"
    config_schema = obj({"schema": {"type": "string", "default": "click.schema.json", "description": "schema file"}})


class Aggregate(Stage):
    """Running values per key."""

    type = "aggregate"
    config_schema = obj({
        "key_by": {"type": "string", "description": "key field"},
        "aggregations": aggregations.schema(),
    }, required=("aggregations",))


class Tumbling(Stage):
    """Fixed windows."""

    type = "tumbling_window"
    windowed = True
    config_schema = obj({
        "size": duration("window length", positive=True),
        "aggregations": aggregations.schema(),
    }, required=("size", "aggregations"))


class Hopping(Stage):
    """Overlapping windows."""

    type = "hopping_window"
    windowed = True
    config_schema = obj({
        "size": duration("window length", positive=True),
        "advance": duration("step", positive=True),
        "aggregations": aggregations.schema(),
    }, required=("size", "advance", "aggregations"))

    @classmethod
    def lint(cls, config):
        if duration_ms(config["size"]) % duration_ms(config["advance"]):
            return [(("advance",), f"must divide size ({config['size']})")]
        return []


class Console(Sink):
    """Prints."""

    type = "console"


class Jsonl(Sink):
    """Appends lines to a file."""

    type = "jsonl"
    config_schema = obj({"path": {"type": "string", "description": "file"}}, required=("path",))


def registry():
    r = plugins.Registry()
    r.sources["fake"] = FakeSource
    for cls in (Validate, Aggregate, Tumbling, Hopping):
        r.stages[cls.type] = cls
    for cls in (Console, Jsonl):
        r.sinks[cls.type] = cls
    return r


# --- helpers ------------------------------------------------------------------------------------

GOOD = """\
name: demo
source:
  type: fake
  topics: [clicks]
event_time:
  grace: 30s
dlq:
  type: jsonl
  path: out/dlq.jsonl
stages:
  - type: validate
  - type: aggregate
    name: page_stats
    key_by: page_url
    aggregations: {views: count, revenue: {sum: revenue}}
  - type: tumbling_window
    size: 5m
    aggregations: {events: count, trending: {top: page_url, n: 1}}
sinks:
  - type: console
  - type: jsonl
    path: out/results.jsonl
"""


@pytest.fixture
def pipeline_file(tmp_path, monkeypatch):
    """Write YAML (dedented) to ``tmp_path/p.yaml``; return the relative path errors will name."""
    monkeypatch.chdir(tmp_path)

    def write(text: str, name: str = "p.yaml") -> str:
        (tmp_path / name).write_text(textwrap.dedent(text))
        return name

    return write


def errors(path, overrides=()):
    with pytest.raises(ConfigError) as info:
        load(path, overrides, registry=registry())
    return info.value.lines


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the first line containing ``needle``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# --- a good file --------------------------------------------------------------------------------


def test_valid_file_gets_every_default(pipeline_file):
    p = load(pipeline_file(GOOD), registry=registry())
    s = p.settings
    assert s["name"] == "demo"
    assert s["plugins"] == []
    assert s["state"] == {"backend": "lmdb", "path": "state_store/demo"}
    assert s["checkpoint"] == {"every_events": 100, "every_ms": 100, "when_quiet": False}
    assert s["event_time"] == {"field": "timestamp", "grace": "30s", "idle_timeout": 0, "late": "dlq"}
    assert s["source"] == {"type": "fake", "topics": ["clicks"], "bootstrap_servers": "localhost:9092"}
    assert s["stages"][0] == {"type": "validate", "name": "validate", "schema": "click.schema.json"}
    assert [st["name"] for st in s["stages"]] == ["validate", "page_stats", "tumbling_window"]
    assert [sk["name"] for sk in s["sinks"]] == ["console", "jsonl"]
    assert p.line(("stages", 2, "size")) == line_of(GOOD, "size: 5m")


def test_components_come_with_their_class_and_own_config(pipeline_file):
    p = load(pipeline_file(GOOD), registry=registry())
    specs = {spec.name: spec for spec in p.components()}
    assert list(specs) == ["source", "dlq", "validate", "page_stats", "tumbling_window", "console", "jsonl"]
    assert specs["dlq"].cls is Jsonl and specs["dlq"].config == {"path": "out/dlq.jsonl"}
    assert specs["page_stats"].cls is Aggregate and "name" not in specs["page_stats"].config
    assert specs["tumbling_window"].path == ("stages", 2)


def test_a_source_of_its_own_name_key_keeps_it_as_config_and_is_still_called_source(pipeline_file):
    class Named(FakeSource):
        type = "named"
        config_schema = obj({"name": {"type": "string", "description": "a name the source itself uses"}})

    reg = registry()
    reg.sources["named"] = Named
    p = load(pipeline_file(GOOD.replace("  type: fake\n  topics: [clicks]", "  type: named\n  name: clicks")),
             registry=reg)
    source = p.components()[0]
    assert (source.name, source.config) == ("source", {"name": "clicks"})


def test_sinks_and_stages_may_be_left_out(pipeline_file):
    path = pipeline_file("""\
        name: tiny
        source: {type: fake, topics: [a]}
        dlq: {type: console}
        state: {backend: memory}
    """)
    s = load(path, registry=registry()).settings
    assert s["stages"] == [] and s["sinks"] == []
    assert s["state"] == {"backend": "memory", "path": "state_store/tiny"}


# --- errors: where and how many -----------------------------------------------------------------


def test_error_names_file_line_and_path(pipeline_file):
    text = GOOD.replace("size: 5m", 'size: "five"')
    assert errors(pipeline_file(text)) == [
        f'p.yaml:{line_of(text, "five")}: stages[2].size: expected a duration like 5m, got "five"'
    ]


def test_every_error_is_reported_in_file_order(pipeline_file):
    text = (GOOD.replace("name: demo", "name: de mo")
            .replace("grace: 30s", "grace: -1")
            .replace("size: 5m", "size: 0")
            .replace("path: out/results.jsonl", "path: 7"))
    got = errors(pipeline_file(text))
    assert got == [
        'p.yaml:1: name: expected a name of letters, digits, _, . or -, got "de mo"',
        f'p.yaml:{line_of(text, "grace")}: event_time.grace: expected a duration like 5m, got -1',
        f'p.yaml:{line_of(text, "size: 0")}: stages[2].size: must be > 0, got 0',
        f'p.yaml:{line_of(text, "path: 7")}: sinks[1].path: expected a string, got 7',
    ]


def test_missing_key_points_at_the_mapping_that_misses_it(pipeline_file):
    text = GOOD.replace("  topics: [clicks]\n", "")
    assert errors(pipeline_file(text)) == ['p.yaml:2: source: missing required key "topics"']
    text = GOOD.replace("name: demo\n", "")
    assert errors(pipeline_file(text)) == ['p.yaml:1: (root): missing required key "name"']


def test_unknown_key_with_did_you_mean(pipeline_file):
    text = GOOD.replace("  topics: [clicks]", "  topic: [clicks]")
    got = errors(pipeline_file(text))
    assert f'p.yaml:{line_of(text, "topic:")}: source.topic: unknown key "topic"; did you mean "topics"?' in got
    assert 'p.yaml:2: source: missing required key "topics"' in got

    text = GOOD + "sinkz: []\nfoo: 1\n"
    got = errors(pipeline_file(text))
    assert got == [
        f'p.yaml:{line_of(text, "sinkz")}: sinkz: unknown key "sinkz"; did you mean "sinks"?',
        f'p.yaml:{line_of(text, "foo")}: foo: unknown key "foo"',
    ]


def test_unknown_stage_type_lists_the_known_ones(pipeline_file):
    text = GOOD.replace("type: tumbling_window", "type: tumbling")
    (line,) = errors(pipeline_file(text))
    assert line == (
        f'p.yaml:{line_of(text, "type: tumbling")}: stages[2].type: unknown stage type "tumbling" '
        '(known stage types: aggregate, hopping_window, tumbling_window, validate); did you mean "tumbling_window"?'
    )


def test_unknown_dlq_type_lists_sink_types(pipeline_file):
    text = GOOD.replace("  type: jsonl\n  path: out/dlq.jsonl", "  type: kafka\n  topic: dlq")
    (line,) = errors(pipeline_file(text))
    assert line.startswith(f'p.yaml:{line_of(text, "type: kafka")}: dlq.type: unknown sink type "kafka" (known sink types: console, jsonl)')


def test_duplicate_yaml_keys(pipeline_file):
    text = GOOD.replace("  topics: [clicks]", "  topics: [clicks]\n  topics: [other]")
    assert errors(pipeline_file(text)) == [f'p.yaml:{line_of(text, "[other]")}: source.topics: duplicate key "topics"']


def test_yaml_syntax_error_has_a_line(pipeline_file):
    (line,) = errors(pipeline_file("name: x\nsource: [a\ndlq: {}\n"))
    assert line.startswith("p.yaml:3: ") and line.endswith("(in a flow sequence that begins on line 2)")


def test_a_key_without_its_colon_is_pointed_at(pipeline_file):
    # PyYAML sees the problem on the next line: the message names the line before too
    (line,) = errors(pipeline_file("name: x\ncheckpoint:\n  every_events 100\n  every_ms: 100\n"))
    assert line == ("p.yaml:4: mapping values are not allowed here "
                    "(is a ': ' missing after a key on line 3, or is line 4 indented wrongly?)")


def test_a_file_that_is_not_a_mapping(pipeline_file):
    assert errors(pipeline_file("- a\n")) == ['p.yaml:1: (root): expected a mapping of pipeline settings, got ["a"]']


# --- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value, message", [
    ('"five"', 'expected a duration like 5m, got "five"'),
    ("0", "must be > 0, got 0"),
    ("0s", 'must be > 0, got "0s"'),
    ("0.0001s", 'a duration must be a whole number of milliseconds, got "0.0001s"'),
    ("true", "expected a duration like 5m, got true"),
])
def test_bad_durations(pipeline_file, value, message):
    text = GOOD.replace("size: 5m", f"size: {value}")
    assert errors(pipeline_file(text)) == [f"p.yaml:{line_of(text, 'size:')}: stages[2].size: {message}"]


@pytest.mark.parametrize("value", ["500ms", "1.5m", "1h", "30", "0.5"])
def test_good_durations(pipeline_file, value):
    load(pipeline_file(GOOD.replace("size: 5m", f"size: {value}")), registry=registry())


def test_zero_is_a_fine_grace(pipeline_file):
    assert load(pipeline_file(GOOD.replace("grace: 30s", "grace: 0s")), registry=registry()).settings["event_time"]["grace"] == "0s"


def test_lint_findings_are_reported_at_their_path(pipeline_file):
    text = GOOD + "  # unused\n"
    text = text.replace("  - type: tumbling_window\n    size: 5m\n", "  - type: hopping_window\n    size: 10m\n    advance: 3m\n")
    assert errors(pipeline_file(text)) == [f"p.yaml:{line_of(text, 'advance')}: stages[2].advance: must divide size (10m)"]


# --- aggregations (oneOf) -----------------------------------------------------------------------


@pytest.mark.parametrize("aggs, path, message", [
    ("{t: {top: page_url}}", "aggregations.t", 'missing required key "n"'),
    ("{t: {top: page_url, n: 0}}", "aggregations.t.n", "must be >= 1, got 0"),
    ("{t: {sum: revenue, n: 3}}", "aggregations.t.n", 'unknown key "n"'),
    ("{t: {summ: revenue}}", "aggregations.t", 'expected an aggregation such as count or {sum: field}, got {"summ":"revenue"}'),
    ("{t: counts}", "aggregations.t", 'expected an aggregation such as count or {sum: field}, got "counts"'),
    ("{id: count}", "aggregations.id", '"id" is not allowed as a name here (it is reserved)'),
    ("{}", "aggregations", "must not be empty"),
])
def test_aggregation_errors(pipeline_file, aggs, path, message):
    text = GOOD.replace("aggregations: {views: count, revenue: {sum: revenue}}", f"aggregations: {aggs}")
    line = line_of(text, "aggregations: " + aggs)
    assert errors(pipeline_file(text)) == [f"p.yaml:{line}: stages[1].{path}: {message}"]


# --- names, to: and event_time ------------------------------------------------------------------


def test_duplicate_names(pipeline_file):
    text = GOOD.replace("    name: page_stats\n", "    name: validate\n") + "  - type: console\n"
    got = errors(pipeline_file(text))
    assert got == [
        f'p.yaml:{line_of(text, "name: validate")}: stages[1].name: name "validate" is already used by stages[0]',
        f'p.yaml:{len(text.splitlines())}: sinks[2]: name "console" is already used by sinks[0] '
        "(a sink's name defaults to its type: give it a name)",
    ]


def test_a_stage_may_not_take_the_dlq_name(pipeline_file):
    text = GOOD.replace("    name: page_stats\n", "    name: dlq\n")
    assert errors(pipeline_file(text)) == [f'p.yaml:{line_of(text, "name: dlq")}: stages[1].name: name "dlq" is already used by dlq']


def test_to_must_name_existing_sinks(pipeline_file):
    text = GOOD.replace("    name: page_stats\n", "    name: page_stats\n    to: [console, postgres]\n")
    assert errors(pipeline_file(text)) == [
        f'p.yaml:{line_of(text, "to: [")}: stages[1].to[1]: no sink named "postgres" (sinks: console, jsonl)'
    ]


def test_window_stage_needs_event_time(pipeline_file):
    text = GOOD.replace("event_time:\n  grace: 30s\n", "")
    assert errors(pipeline_file(text)) == [
        'p.yaml:1: (root): missing required key "event_time" (window stage "tumbling_window" needs it)'
    ]
    text = text.replace("  - type: tumbling_window\n    size: 5m\n    aggregations: {events: count, trending: {top: page_url, n: 1}}\n", "")
    assert load(pipeline_file(text), registry=registry()).settings["event_time"]["late"] == "dlq"


def test_event_time_min_must_be_a_time(pipeline_file):
    text = GOOD.replace("grace: 30s", "grace: 30s\n  min: 2026-13-01T00:00:00Z\n  late: keep")
    got = errors(pipeline_file(text))
    assert got == [
        f'p.yaml:{line_of(text, "min:")}: event_time.min: \'2026-13-01T00:00:00Z\' has no such date',
        f'p.yaml:{line_of(text, "late:")}: event_time.late: expected one of dlq, drop, got "keep"',
    ]


# --- ${VAR} -------------------------------------------------------------------------------------


def test_environment_variables(pipeline_file, monkeypatch):
    monkeypatch.delenv("RUNNER_TEST_N", raising=False)
    monkeypatch.setenv("RUNNER_TEST_SERVERS", "kafka:9093")
    text = GOOD.replace("  topics: [clicks]", (
        "  topics: [clicks]\n"
        "  count: ${RUNNER_TEST_N:-100}\n"
        "  bootstrap_servers: ${RUNNER_TEST_SERVERS:-localhost:9092}"))
    source = load(pipeline_file(text), registry=registry()).settings["source"]
    assert source["count"] == 100
    assert source["bootstrap_servers"] == "kafka:9093"

    monkeypatch.setenv("RUNNER_TEST_N", "7")
    assert load(pipeline_file(text), registry=registry()).settings["source"]["count"] == 7


def test_quoted_and_embedded_variables_stay_strings(pipeline_file, monkeypatch):
    monkeypatch.setenv("RUNNER_TEST_PORT", "9092")
    text = GOOD.replace("  topics: [clicks]", '  topics: ["${RUNNER_TEST_PORT}", "t-${RUNNER_TEST_PORT:-1}"]')
    assert load(pipeline_file(text), registry=registry()).settings["source"]["topics"] == ["9092", "t-9092"]


def test_unset_variable_is_one_error_naming_the_path(pipeline_file, monkeypatch):
    monkeypatch.delenv("RUNNER_TEST_UNSET", raising=False)
    text = GOOD.replace("  topics: [clicks]", "  topics: [clicks]\n  count: ${RUNNER_TEST_UNSET}")
    assert errors(pipeline_file(text)) == [
        f"p.yaml:{line_of(text, 'count:')}: source.count: environment variable RUNNER_TEST_UNSET is not set "
        "(write ${RUNNER_TEST_UNSET:-default} for a default)"
    ]


def test_read_scalar():
    assert read_scalar("500") == 500
    assert read_scalar("true") is True
    assert read_scalar("5m") == "5m"
    assert read_scalar("1.5") == 1.5
    assert read_scalar("2026-01-01T00:00:00Z") == "2026-01-01T00:00:00Z"
    assert read_scalar("") == ""


# --- --set --------------------------------------------------------------------------------------


def test_set_by_index_and_by_name(pipeline_file):
    p = load(pipeline_file(GOOD), [
        "stages.2.size=10m",
        "stages.page_stats.key_by=user_id",
        "checkpoint.every_events=500",
        "state.backend=memory",
        "sinks.jsonl.path=elsewhere.jsonl",
        "source.topics=[a, b]",
    ], registry=registry())
    s = p.settings
    assert s["stages"][2]["size"] == "10m"
    assert s["stages"][1]["key_by"] == "user_id"
    assert s["checkpoint"]["every_events"] == 500
    assert s["state"]["backend"] == "memory"
    assert s["sinks"][1]["path"] == "elsewhere.jsonl"
    assert s["source"]["topics"] == ["a", "b"]
    assert p.line(("stages", 2, "size")) is None
    assert p.where(("stages", 2, "size")) == "--set stages.2.size=10m"


def test_a_quoted_set_value_is_the_string_inside_its_quotes(pipeline_file):
    """CONTRACT section 2: the value is read as a YAML scalar; quoted, a template that starts
    with a brace is text, not a flow mapping, and '500' is not a number."""
    s = load(pipeline_file(GOOD), ['sinks.jsonl.path="{events:ranked 3 views}.jsonl"',
                                   "stages.page_stats.key_by='500'"], registry=registry()).settings
    assert s["sinks"][1]["path"] == "{events:ranked 3 views}.jsonl"
    assert s["stages"][1]["key_by"] == "500"


def test_set_applies_in_order_and_can_add_a_section(pipeline_file):
    text = GOOD.replace("event_time:\n  grace: 30s\n", "")
    s = load(pipeline_file(text), ["event_time.grace=5s", "event_time.grace=7s"], registry=registry()).settings
    assert s["event_time"]["grace"] == "7s"


def test_set_unknown_path(pipeline_file):
    path = pipeline_file(GOOD)
    assert errors(path, ["stages.nope.gap=5m"]) == [
        '--set stages.nope.gap=5m: no stage named "nope" (stages: validate, page_stats, tumbling_window)'
    ]
    assert errors(path, ["stages.9.size=5m"]) == ["--set stages.9.size=5m: no stages[9] (stages has 3 items)"]
    assert errors(path, ["name.x=1"]) == ['--set name.x=1: name is "demo", not a mapping or a list']
    assert errors(path, ["source.topics.first=x"]) == ['--set source.topics.first=x: source.topics is a list: expected an index, got "first"']
    assert errors(path, ["stages.validate.shema=x"]) == [
        '--set stages.validate.shema=x: stages[0].shema: unknown key "shema"; did you mean "schema"?'
    ]
    assert errors(path, ["nothing"]) == ["--set nothing: expected PATH=VALUE"]


def test_a_section_a_set_made_is_blamed_on_the_set_not_the_file(pipeline_file):
    path = pipeline_file(GOOD)
    assert errors(path, ["event_tme.grace=5s"]) == [
        '--set event_tme.grace=5s: event_tme: unknown key "event_tme"; did you mean "event_time"?'
    ]
    assert errors(path, ["stages.validate.options.strict=true"]) == [
        '--set stages.validate.options.strict=true: stages[0].options: unknown key "options"'
    ]


def test_set_takes_paths_as_error_messages_print_them(pipeline_file):
    path = pipeline_file(GOOD)
    p = load(path, ["stages[2].size=10m", "sinks[1].path=elsewhere.jsonl"], registry=registry())
    assert p.settings["stages"][2]["size"] == "10m"
    assert p.settings["sinks"][1]["path"] == "elsewhere.jsonl"
    assert p.where(("stages", 2, "size")) == "--set stages[2].size=10m"
    assert errors(path, ["stages[2].size=five"]) == [
        '--set stages[2].size=five: stages[2].size: expected a duration like 5m, got "five"'
    ]
    assert errors(path, ["stages[9].size=5m"]) == ["--set stages[9].size=5m: no stages[9] (stages has 3 items)"]


def test_errors_in_set_values_name_the_set(pipeline_file):
    path = pipeline_file(GOOD)
    assert errors(path, ["stages.tumbling_window.size=five", "checkpoint.every_ms=-1"]) == [
        "--set stages.tumbling_window.size=five: stages[2].size: expected a duration like 5m, got \"five\"",
        "--set checkpoint.every_ms=-1: checkpoint.every_ms: must be >= 0, got -1",
    ]


def test_set_replaces_a_bad_value_from_the_file(pipeline_file, monkeypatch):
    monkeypatch.delenv("RUNNER_TEST_UNSET", raising=False)
    text = GOOD.replace("  topics: [clicks]", "  topics: [clicks]\n  count: ${RUNNER_TEST_UNSET}")
    assert load(pipeline_file(text), ["source.count=3"], registry=registry()).settings["source"]["count"] == 3


# --- plugins through pluggy ---------------------------------------------------------------------

PLUGIN_MODULE = '''
from runner import hookimpl
from runner.components import Sink, Source, Stage
from runner.schema import duration, obj


class Gen(Source):
    type = "gen"
    config_schema = obj({"count": {"type": "integer", "minimum": 1, "default": 10, "description": "how many"}})


class Sessions(Stage):
    type = "session_window"
    windowed = True
    config_schema = obj({"gap": duration("inactivity gap", positive=True)}, required=("gap",))


class Out(Sink):
    type = "out"


@hookimpl
def runner_register_sources():
    return [Gen]


@hookimpl
def runner_register_stages():
    return [Sessions]


@hookimpl
def runner_register_sinks():
    return [Out]
'''


def test_plugins_listed_in_the_file_are_loaded(pipeline_file, tmp_path, monkeypatch):
    monkeypatch.setattr(plugins, "BUILTINS", ())  # only the pipeline's own module
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "config_test_plugin.py").write_text(PLUGIN_MODULE)
    path = pipeline_file("""\
        name: plugged
        plugins: [config_test_plugin]
        source: {type: gen}
        event_time: {}
        dlq: {type: out}
        stages:
          - {type: session_window, name: sessions, gap: 10m}
    """)
    p = load(path)
    assert p.settings["source"] == {"type": "gen", "count": 10}
    assert p.settings["stages"][0]["gap"] == "10m"
    assert set(p.registry.stages) == {"session_window"}

    with pytest.raises(ConfigError) as info:
        load(path, ["stages.sessions.gap=0"])
    assert info.value.lines == ["--set stages.sessions.gap=0: stages[0].gap: must be > 0, got 0"]


def test_a_plugin_that_cannot_be_imported(pipeline_file, monkeypatch):
    monkeypatch.setattr(plugins, "BUILTINS", ())
    path = pipeline_file("name: x\nplugins: [no_such_module_here]\nsource: {type: gen}\ndlq: {type: out}\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    (line,) = info.value.lines
    assert line.startswith("p.yaml:2: plugins: cannot import 'no_such_module_here'")


# --- the generated schema -----------------------------------------------------------------------


def test_pipeline_schema_accepts_good_files_and_rejects_bad_ones(pipeline_file):
    schema = pipeline_schema(registry())
    jsonschema.Draft202012Validator.check_schema(schema)
    stages = schema["properties"]["stages"]["items"]["oneOf"]
    assert [v["properties"]["type"] for v in stages] == [
        {"const": t} for t in ("aggregate", "hopping_window", "tumbling_window", "validate")
    ]
    validator = jsonschema.Draft202012Validator(schema)
    settings = load(pipeline_file(GOOD), registry=registry()).settings
    assert list(validator.iter_errors(settings)) == []
    settings["stages"][0]["shema"] = "x"
    assert not validator.is_valid(settings)


@pytest.mark.parametrize("stage", ["page_stats", "traffic_5m", "sessions"])
def test_an_empty_key_by_is_refused(stage):
    with pytest.raises(ConfigError, match=rf"--set stages.{stage}.key_by=: stages\[\d\].key_by: must not be empty"):
        load(str(Path(__file__).parents[2] / "pipelines" / "fault_tolerant.yaml"), [f"stages.{stage}.key_by="])
