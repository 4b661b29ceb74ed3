"""Loading a pipeline file: YAML with line marks, ``${VAR}``, ``--set`` overrides, and validation.

``load`` reports every error it finds, one line each, in the form users act on::

    pipelines/x.yaml:14: stages[2].size: expected a duration like 5m, got "five"

The top level is checked against ``top_schema()``; then every source, DLQ, stage and sink
against its own class's ``config_schema`` and ``lint``. Errors are found on plain values and
located afterwards by their path (``("stages", 2, "size")``), so neither jsonschema nor the
plugins need to know about YAML. Reading the YAML is ``runner.yamldoc``'s; putting jsonschema
errors in words is ``runner.schema_errors``'s.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple

import jsonschema

from runner import plugins
from runner.components import ConfigError
from runner.schema import duration, obj
from runner.schema_errors import did_you_mean, explain
from runner.times import duration_ms, parse_event_time
from runner.yamldoc import Document, Finding, format_path, item_name, origin, read_scalar, show

__all__ = ["NAME_PATTERN", "SECTIONS", "ComponentSpec", "Pipeline", "load", "top_schema", "pipeline_schema",
           "read_scalar", "format_path"]  # the last two from runner.yamldoc

NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"

# The keys every component of a section has beside its own config, and its kind in the registry.
SECTIONS = {
    "source": ("sources", ("type",)),
    "dlq": ("sinks", ("type",)),
    "stages": ("stages", ("type", "name", "to")),
    "sinks": ("sinks", ("type", "name")),
}


class ComponentSpec(NamedTuple):
    """One validated component, ready to be built."""

    section: str  # "source", "dlq", "stages" or "sinks"
    path: tuple  # where it is in the document, e.g. ("stages", 2)
    name: str  # unique in the pipeline; "source" and "dlq" for those two
    cls: type
    config: dict  # its own keys (the common ones removed), defaults filled in


@dataclass
class Pipeline:
    """A validated pipeline file."""

    path: str
    settings: dict  # the whole pipeline as plain values, every default filled in
    registry: plugins.Registry
    lines: dict[tuple, int] = field(default_factory=dict, repr=False)
    overrides: dict[tuple, str] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.settings["name"]

    def line(self, path: tuple) -> int | None:
        """The 1-based line of the node at ``path`` (None if ``--set`` made it or it is absent)."""
        return self.lines.get(tuple(path))

    def where(self, path: tuple) -> str:
        """``FILE:LINE`` of the deepest existing node of ``path``, or the ``--set`` that made it."""
        return origin(self.path, self.lines, self.overrides, tuple(path))

    def components(self) -> list[ComponentSpec]:
        """Source, DLQ, stages and sinks in this order, each with its class and own config."""
        specs = []
        for section, at, item in _components(self.settings):
            kind, common = SECTIONS[section]
            name = item["name"] if "name" in common else section  # a source's own "name" is its config
            config = {k: v for k, v in item.items() if k not in common}
            specs.append(ComponentSpec(section, at, name, self.registry.kind(kind)[item["type"]], config))
        return specs


def load(path: str, overrides: list[str] = (), registry: plugins.Registry | None = None) -> Pipeline:
    """Read, override and validate a pipeline file; raise ``ConfigError`` with every error found.

    ``overrides`` are ``PATH=VALUE`` texts from ``--set``, applied in order. Without a
    ``registry``, one is built from the built-ins, entry points and the file's ``plugins:``.
    """
    doc = Document(path)
    for text in overrides:
        doc.override(text)
    data = doc.data
    if not isinstance(data, dict):
        doc.findings.append(Finding((), f"expected a mapping of pipeline settings, got {show(data)}"))
        raise ConfigError(doc.format(doc.findings))

    findings = doc.findings + _schema_findings(top_schema(), data, ())
    if registry is None:
        modules = _plugin_modules(data)
        try:
            registry = plugins.load(modules)
        except plugins.PluginError as exc:
            # Components cannot be checked without their classes: report what we have. A
            # mistake of an installed plugin is none of this file's lines.
            where = origin(path, doc.lines, doc.overrides, ("plugins",)) + ": " if exc.origins & set(modules) else ""
            raise ConfigError(doc.format(findings) + [f"{where}{line}" for line in exc.lines]) from None
    settings, more = _check_components(data, registry)
    lines = doc.format(findings + more)
    if lines:
        raise ConfigError(lines)
    return Pipeline(path, settings, registry, doc.lines, doc.overrides)


# --- schemas ------------------------------------------------------------------------------------


def _section(description: str, common: dict) -> dict:
    """A component placeholder: its ``type`` and common keys here, the rest checked per class."""
    return {
        "type": "object",
        "description": description,
        "properties": {"type": {"type": "string", "description": "the registered type name"}, **common},
        "required": ["type"],
    }


def _name() -> dict:
    return {
        "type": "string", "pattern": NAME_PATTERN,
        "x-expected": "a name of letters, digits, _, . or -",
        "description": "unique in the pipeline; default: its type",
    }


def _defaults_to_empty(schema: dict) -> dict:
    """A settings section that may be left out: its keys' defaults still apply."""
    return {**schema, "default": {}}


def top_schema() -> dict:
    """The pipeline's own keys; components are only sketched (type, name, to) here."""
    to = {"type": "array", "items": {"type": "string"}, "description": "sink names to send results to; default: every sink"}
    return obj(
        {
            "name": {**_name(), "description": "the pipeline's name: the first part of every id"},
            "plugins": {"type": "array", "items": {"type": "string"}, "default": [], "description": "modules to load by import path, beside entry points"},
            "source": _section("where input records come from", {}),
            "state": _defaults_to_empty(obj({
                "backend": {"enum": ["lmdb", "memory"], "default": "lmdb", "description": "memory persists nothing"},
                "path": {"type": "string", "minLength": 1, "description": "LMDB directory; default: state_store/<name>"},
            }, description="where state and checkpoints live")),
            "checkpoint": _defaults_to_empty(obj({
                "every_events": {"type": "integer", "minimum": 1, "default": 100, "description": "at most this many input records per checkpoint"},
                "every_ms": {"type": "integer", "minimum": 0, "default": 100, "description": "at most this long after the first uncommitted change; 0 = no timer"},
                "when_quiet": {"type": "boolean", "default": False, "description": "also as soon as the source has no record ready: lower latency under light load, more checkpoints"},
            }, description="how often state, offsets and outputs are committed")),
            "event_time": _defaults_to_empty(obj({
                "field": {"type": "string", "minLength": 1, "default": "timestamp", "description": "the event field holding the event time"},
                "grace": duration("allowed lateness", default=0),
                "idle_timeout": duration("a caught-up partition silent this long is left out of the watermark; 0 = never", default=0),
                "late": {"enum": ["dlq", "drop"], "default": "dlq", "description": "what happens to late events"},
                "min": {"type": "string", "x-expected": "an RFC 3339 time like 2026-01-01T00:00:00Z",
                        "description": "events before this time are invalid"},
                "max_ahead": duration("events this far ahead of their Kafka record's timestamp are invalid"),
            }, description="event time, watermarks and lateness; required with a window stage")),
            "dlq": _section("where invalid, failed and late events go (a sink type)", {}),
            "stages": {"type": "array", "default": [], "description": "the chain of stages", "items": _section("a stage", {"name": _name(), "to": to})},
            "sinks": {"type": "array", "default": [], "description": "where results go", "items": _section("a sink", {"name": _name()})},
        },
        required=("name", "source", "dlq"),
        description="a runner pipeline",
    )


def _variant(cls: type, common: dict) -> dict:
    """One ``oneOf`` branch of a section: the class's config schema plus its ``type`` and common keys."""
    schema = copy.deepcopy(cls.config_schema)
    schema["properties"] = {"type": {"const": cls.type}, **common, **schema.get("properties", {})}
    schema["required"] = ["type", *schema.get("required", [])]
    schema.setdefault("additionalProperties", False)
    if cls.__doc__:
        schema.setdefault("description", cls.__doc__.strip().splitlines()[0])
    return schema


def pipeline_schema(registry: plugins.Registry) -> dict:
    """The whole pipeline as one JSON Schema: the top level and every registered component."""
    schema = top_schema()
    props = schema["properties"]
    stage_common = {k: props["stages"]["items"]["properties"][k] for k in ("name", "to")}
    sink_common = {"name": props["sinks"]["items"]["properties"]["name"]}

    def one_of(kind: str, common: dict, description: str) -> dict:
        classes = sorted(registry.kind(kind).values(), key=lambda c: c.type)
        return {"description": description, "oneOf": [_variant(cls, common) for cls in classes]}

    props["source"] = one_of("sources", {}, props["source"]["description"])
    props["dlq"] = one_of("sinks", {}, props["dlq"]["description"])
    props["stages"]["items"] = one_of("stages", stage_common, "a stage")
    props["sinks"]["items"] = one_of("sinks", sink_common, "a sink")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "runner pipeline", **schema}


# --- validation ---------------------------------------------------------------------------------


def _x_duration(validator, mode, instance, schema):
    """Durations must be whole milliseconds, and > 0 where the schema says ``positive``."""
    rest = {k: v for k, v in schema.items() if k != "x-duration"}
    if not validator.evolve(schema=rest).is_valid(instance):
        return  # the rest of the schema reports this value
    try:
        ms = duration_ms(instance)
    except ValueError as exc:
        if "whole number" in str(exc):
            yield jsonschema.ValidationError(f"a duration must be a whole number of milliseconds, got {show(instance)}")
        else:
            yield jsonschema.ValidationError(f"expected a duration like 5m, got {show(instance)}")
        return
    if mode == "positive" and ms == 0:
        yield jsonschema.ValidationError(f"must be > 0, got {show(instance)}")


_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"x-duration": _x_duration})


def _schema_findings(schema: dict, instance: Any, base: tuple) -> list[Finding]:
    """Every way ``instance`` fails ``schema``, as findings with paths under ``base``."""
    findings = []
    for error in _Validator(schema).iter_errors(instance):
        for path, message in explain(error, schema):
            findings.append(Finding(base + path, message))
    return findings


def _lint(cls, config: dict, path: tuple, registry: plugins.Registry) -> list[Finding]:
    """The component's own findings (``Component.lint``); what is not a list of (path, message)
    pairs is a mistake of its plugin, said as one."""
    returned = cls.lint(config)
    problems = plugins.as_list(returned)
    if problems is not None and all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], (tuple, list))
                                    and isinstance(p[1], str) for p in problems):
        return [Finding(path + tuple(at), message) for at, message in problems]
    where = f"plugin {registry.origins.get(cls, cls.__module__)}: {cls.__module__}.{cls.__qualname__}.lint"
    return [Finding(path, f"{where} returned {problems if problems is not None else returned!r}, "
                          f"not a list of (path, message) pairs")]


def _plugin_modules(data: dict) -> list[str]:
    modules = data.get("plugins")
    if isinstance(modules, list):
        return [m for m in modules if isinstance(m, str)]
    return []  # the top-level schema reports it


def _components(data: dict) -> Iterator[tuple[str, tuple, dict]]:
    """(section, path, item) of every component whose ``type`` can be looked up."""
    for section in ("source", "dlq"):
        if isinstance(data.get(section), dict):
            yield section, (section,), data[section]
    for section in ("stages", "sinks"):
        items = data.get(section)
        for i, item in enumerate(items if isinstance(items, list) else ()):
            if isinstance(item, dict):
                yield section, (section, i), item


def _fill_defaults(schema: dict, value: Any) -> Any:
    """``value`` with the ``default`` of every absent property filled in, recursively."""
    if not isinstance(value, dict) or not isinstance(schema, dict):
        return value
    result = dict(value)
    for key, sub in schema.get("properties", {}).items():
        if key not in result and isinstance(sub, dict) and "default" in sub:
            result[key] = copy.deepcopy(sub["default"])
        if key in result:
            result[key] = _fill_defaults(sub, result[key])
    return result


def _check_components(data: dict, registry: plugins.Registry) -> tuple[dict, list[Finding]]:
    """Each component against its class; names, ``to:`` and ``event_time``; the filled settings."""
    findings: list[Finding] = []
    settings = _fill_defaults(top_schema(), copy.deepcopy(data))
    if isinstance(settings["state"], dict):
        settings["state"].setdefault("path", f"state_store/{data.get('name')}")
    windowed, targets = [], {}
    for section, path, item in _components(data):
        kind, common = SECTIONS[section]
        cls = _lookup(registry, kind, item.get("type"), path, findings)
        if cls is None:
            continue
        windowed += [path] if getattr(cls, "windowed", False) else []
        config = {k: v for k, v in item.items() if k not in common}
        errors = _schema_findings(cls.config_schema, config, path)
        findings += errors
        if errors:
            continue  # lint is promised a config that matches the schema
        config = _fill_defaults(cls.config_schema, config)
        findings += _lint(cls, config, path, registry)
        findings += _check_target(cls, config, path, targets)
        filled = {k: item[k] for k in common if k in item}
        if section in ("stages", "sinks"):
            filled.setdefault("name", item["type"])
        _put(settings, path, {**filled, **config})
    findings += _check_names(data) + _check_event_time(data)
    if windowed and "event_time" not in data:
        stage = item_name(_get(data, windowed[0]))
        findings.append(Finding((), f'missing required key "event_time" (window stage "{stage}" needs it)'))
    return settings, findings


def _check_target(cls: type, config: dict, path: tuple, targets: dict) -> list[Finding]:
    """A sink's ``target`` (what it alone may write) is not another sink's of the pipeline."""
    target = cls.target(config) if hasattr(cls, "target") else None
    if target is None:
        return []
    other = targets.setdefault(target, path)
    if other == path:
        return []
    return [Finding(path, f"writes {target}, as {format_path(other)} does: a sink of this type must be the only "
                          f"one writing it, to deliver exactly once after a crash; point one of them elsewhere")]


def _lookup(registry, kind: str, type_name: Any, path: tuple, findings: list) -> type | None:
    if not isinstance(type_name, str):
        return None  # the top-level schema reports it
    classes = registry.kind(kind)
    if type_name in classes:
        return classes[type_name]
    word = kind[:-1]
    known = ", ".join(sorted(classes)) or "none registered"
    message = f'unknown {word} type "{type_name}" (known {word} types: {known})'
    findings.append(Finding(path + ("type",), message + did_you_mean(type_name, classes)))
    return None


def _check_names(data: dict) -> list[Finding]:
    """Stage and sink names are unique (beside "source" and "dlq"); ``to:`` names sinks."""
    findings, taken = [], {"source": ("source",), "dlq": ("dlq",)}
    sinks = []
    for section, path, item in _components(data):
        if section not in ("stages", "sinks"):
            continue
        name = item_name(item)
        if not isinstance(name, str):
            continue
        at = path + ("name",) if "name" in item else path
        if name in taken:
            hint = "" if "name" in item else f" (a {section[:-1]}'s name defaults to its type: give it a name)"
            findings.append(Finding(at, f'name "{name}" is already used by {format_path(taken[name])}{hint}'))
        else:
            taken[name] = path
        if section == "sinks":
            sinks.append(name)
    for section, path, item in _components(data):
        if section == "stages" and isinstance(item.get("to"), list):
            for j, target in enumerate(item["to"]):
                if isinstance(target, str) and target not in sinks:
                    listed = ", ".join(sinks) or "none"
                    findings.append(Finding(path + ("to", j), f'no sink named "{target}" (sinks: {listed})'))
    return findings


def _check_event_time(data: dict) -> list[Finding]:
    """``event_time.min`` must be a time the engine can compare event times with."""
    section = data.get("event_time")
    earliest = section.get("min") if isinstance(section, dict) else None
    if isinstance(earliest, str):
        try:
            parse_event_time(earliest)
        except ValueError as exc:
            return [Finding(("event_time", "min"), str(exc))]
    return []


def _get(data: Any, path: tuple) -> Any:
    for part in path:
        data = data[part]
    return data


def _put(data: Any, path: tuple, value: Any) -> None:
    _get(data, path[:-1])[path[-1]] = value
