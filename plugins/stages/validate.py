"""The ``validate`` stage: JSON Schema validation with messages a person can act on.

A compiled validator (jsonschema-rs, Rust) decides; for a rejected event its full list of
errors is ranked by the rules of CONTRACT section 4 (not an object, missing fields, wrong
types, constraints, timestamp; fields in schema order) so the message names the first
failing rule's field. Fields with ``"format": "event-time"`` are
checked as event times by the runner's own parser, which also stamps the event's time.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema_rs

from runner import hookimpl
from runner.components import Processor, Stage
from runner.schema import obj
from runner.times import InvalidTime, WrongTimeType, duration_ms, format_ms, parse_event_time

DEFAULT_SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "click_event.schema.json"
NOT_OBJECT, MISSING, WRONG_TYPE, CONSTRAINT, TIMESTAMP = range(1, 6)


class Validate(Stage):
    type = "validate"
    config_schema = obj({
        "schema": {"type": "string", "default": None,
                   "description": "path of the JSON Schema events must match (default: the click event schema that ships with the runner)"},
    }, description="Sends events that do not match a JSON Schema to the DLQ; fills in defaults of absent or null fields.")

    @classmethod
    def lint(cls, config):
        path = schema_path(config)
        try:
            compile_schema(load_schema(path))
        except SchemaFileError as exc:
            return [(("schema",), str(exc))]
        except ValueError as exc:  # jsonschema-rs: the file is JSON but not a JSON Schema
            return [(("schema",), f"{path} is not a JSON Schema: {str(exc).splitlines()[0]}")]
        return []

    def __init__(self, config, context):
        super().__init__(config, context)
        self.schema = load_schema(schema_path(config))
        props = self.schema.get("properties", {})
        self.fields = {name: i for i, name in enumerate(props)}
        self.required = set(self.schema.get("required", ()))
        self.time_fields = [name for name, p in props.items() if p.get("format") == "event-time"]
        self.defaults = [(name, p["default"]) for name, p in props.items() if "default" in p]
        et = context.settings.get("event_time") or {}
        self.min_ms = parse_event_time(et["min"]) if et.get("min") else None
        self.max_ahead_ms = duration_ms(et["max_ahead"]) if et.get("max_ahead") is not None else None

    def build(self, table, emit):
        return ValidateProcessor(self, table, emit)

    def dump(self, table):
        return {"invalid": table.get(b"invalid", 0)}


class SchemaFileError(ValueError):
    """A schema file that cannot be read as JSON; the message says why."""


def schema_path(config) -> str | Path:
    """The stage's schema file: its ``schema``, or the click event schema."""
    return config.get("schema") or DEFAULT_SCHEMA


def load_schema(path) -> dict:
    """The JSON of the schema file at ``path`` (relative paths from the current directory)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        where = "" if Path(path).is_absolute() else f" (a relative path is taken from the current directory, {Path.cwd()})"
        raise SchemaFileError(f"cannot read {path}: {exc.strerror}{where}") from None
    except ValueError as exc:
        raise SchemaFileError(f"{path} is not JSON: {exc}") from None


def compile_schema(schema: dict):
    """The validator of ``schema``, compiled: its ``is_valid(value)`` is jsonschema's verdict
    (formats are not asserted, as jsonschema does not by default; event times are checked
    by ``_times``)."""
    return jsonschema_rs.validator_for(schema, validate_formats=False)


class ValidateProcessor(Processor):
    def __init__(self, stage: Validate, table, emit):
        super().__init__(stage, table, emit)
        self.validator = compile_schema(stage.schema)
        self.is_valid = self.validator.is_valid
        self.invalid = table.get(b"invalid", 0)
        self.stamp = stage.context.time_field
        # the usual schema: one event-time field, the one that stamps events, no other bound
        self.stamp_only = (stage.time_fields == [self.stamp] and stage.min_ms is None
                           and stage.max_ahead_ms is None)

    def process(self, events):
        passed, is_valid, stage, failures = [], self.is_valid, self.stage, 0
        stamp, stamp_only = self.stamp, self.stamp_only
        for ev in events:
            data = ev.data
            if data.__class__ is dict and is_valid(data):
                if stamp_only:  # _times, inlined for the usual schema
                    try:
                        value = data.get(stamp)
                        if value is not None:
                            ev.time = parse_event_time(value)
                        ok = True
                    except InvalidTime:
                        ok = False
                else:
                    ok = self._times(ev) is None
            else:
                ok = False
            if not ok:
                failures += 1
                self.emit.dead_letter(ev.record, self.name, "validation", self._explain(ev))
                continue
            for name, default in stage.defaults:
                if data.get(name) is None:
                    data[name] = default
            passed.append(ev)
        if failures:
            self.invalid += failures
            self.table.put(b"invalid", self.invalid)
        return passed

    def _times(self, ev):
        """The first problem with the event-time fields as (rank, field, message), or None."""
        stage = self.stage
        for name in stage.time_fields:
            value = ev.data.get(name)
            if value is None:
                continue
            try:
                t = parse_event_time(value)
            except WrongTimeType as exc:
                return (WRONG_TYPE, name, f"wrong type for field {name}: {exc}")
            except InvalidTime as exc:
                return (TIMESTAMP, name, f"invalid timestamp for field {name}: {exc}")
            if name == self.stamp:
                ev.time = t
                if stage.min_ms is not None and t < stage.min_ms:
                    return (TIMESTAMP, name, f"invalid timestamp for field {name}: {format_ms(t)} is before "
                                             f"event_time.min {format_ms(stage.min_ms)}")
                ts = ev.record.timestamp
                if stage.max_ahead_ms is not None and ts is not None and t > ts + stage.max_ahead_ms:
                    return (TIMESTAMP, name, f"invalid timestamp for field {name}: {format_ms(t)} is more than "
                                             f"event_time.max_ahead ahead of the record's timestamp {format_ms(ts)}")
        return None

    def _explain(self, ev) -> str:
        data = ev.data
        if data.__class__ is not dict:
            return f"not a JSON object: got {_json_kind(data)}"
        problems = list(self._schema_problems(data))
        times = self._times(ev)
        if times is not None:
            problems.append(times)
        if not problems:
            return "does not match the schema"
        order = self.stage.fields
        rank, field, message = min(problems, key=lambda p: (p[0], order.get(p[1], len(order)), p[1]))
        return message

    def _schema_problems(self, data: dict):
        required = self.stage.required
        for err in self.validator.iter_errors(data):
            kind, path = err.kind, err.instance_path
            if kind.name == "required":
                yield (MISSING, kind.property, f"missing required field: {kind.property}")
                continue
            if not path or kind.name == "format":
                continue
            name = str(path[0])
            if kind.name == "type" and len(path) == 1:
                if data.get(name) is None and name in required:
                    yield (MISSING, name, f"missing required field: {name}")
                else:
                    declared = (self.stage.schema.get("properties", {}).get(name) or {}).get("type")
                    yield (WRONG_TYPE, name, f"wrong type for field {name}: expected {_type_words(declared or kind.types)}")
            else:
                yield (CONSTRAINT, name, _constraint(name, err))


def _type_words(types) -> str:
    types = [types] if isinstance(types, str) else [t for t in types if t != "null"]
    return " or ".join(types)


def _json_kind(value) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def _constraint(name: str, err) -> str:
    kind, value = err.kind, err.instance
    shown = json.dumps(value, ensure_ascii=False)[:80]
    if kind.name in ("minimum", "exclusiveMinimum") and kind.limit == 0 and value < 0:
        return f"negative value for field {name}"
    if kind.name == "enum":
        allowed = ", ".join(str(v) for v in kind.options if v is not None)
        return f"invalid value for field {name}: {shown} is not one of {allowed}"
    if kind.name == "pattern":
        return f"invalid value for field {name}: {shown} does not match {kind.pattern}"
    return f"invalid value for field {name}: {err.message}"


@hookimpl
def runner_register_stages():
    return [Validate]
