"""Loading a pipeline file: YAML with line marks, ``${VAR}``, ``--set`` overrides, and validation.

``load`` reports every error it finds, one line each, in the form users act on::

    pipelines/x.yaml:14: stages[2].size: expected a duration like 5m, got "five"

The top level is checked against ``top_schema()``; then every source, DLQ, stage and sink
against its own class's ``config_schema`` and ``lint``. Errors are found on plain values and
located afterwards by their path (``("stages", 2, "size")``), so neither jsonschema nor the
plugins need to know about YAML.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple

import jsonschema
import yaml

from runner import plugins
from runner.components import ConfigError
from runner.schema import duration, obj
from runner.times import duration_ms, parse_event_time

NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"

# The keys every component of a section has beside its own config, and its kind in the registry.
SECTIONS = {
    "source": ("sources", ("type",)),
    "dlq": ("sinks", ("type",)),
    "stages": ("stages", ("type", "name", "to")),
    "sinks": ("sinks", ("type", "name")),
}


class Finding(NamedTuple):
    """One error: where it is (a path into the document) and what is wrong."""

    path: tuple
    message: str
    line: int | None = None  # when it is not the path's line (a duplicate key, a bad key)
    set_text: str | None = None  # the --set whose path leads nowhere


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
        return _where(self.path, self.lines, self.overrides, tuple(path))

    def components(self) -> list[ComponentSpec]:
        """Source, DLQ, stages and sinks in this order, each with its class and own config."""
        specs = []
        for section, at, item in _components(self.settings):
            kind, common = SECTIONS[section]
            name = item.get("name", section)
            config = {k: v for k, v in item.items() if k not in common}
            specs.append(ComponentSpec(section, at, name, self.registry.kind(kind)[item["type"]], config))
        return specs


def load(path: str, overrides: list[str] = (), registry: plugins.Registry | None = None) -> Pipeline:
    """Read, override and validate a pipeline file; raise ``ConfigError`` with every error found.

    ``overrides`` are ``PATH=VALUE`` texts from ``--set``, applied in order. Without a
    ``registry``, one is built from the built-ins, entry points and the file's ``plugins:``.
    """
    doc = _Document(path)
    for text in overrides:
        doc.override(text)
    data = doc.data
    if not isinstance(data, dict):
        doc.findings.append(Finding((), f"expected a mapping of pipeline settings, got {_show(data)}"))
        raise ConfigError(doc.format(doc.findings))

    findings = doc.findings + _schema_findings(top_schema(), data, ())
    if registry is None:
        try:
            registry = plugins.load(_plugin_modules(data))
        except ConfigError as exc:
            # Components cannot be checked without their classes: report what we have.
            where = _where(path, doc.lines, doc.overrides, ("plugins",))
            raise ConfigError(doc.format(findings) + [f"{where}: {line}" for line in exc.lines]) from None
    settings, more = _check_components(data, registry)
    lines = doc.format(findings + more)
    if lines:
        raise ConfigError(lines)
    return Pipeline(path, settings, registry, doc.lines, doc.overrides)


# --- reading YAML -------------------------------------------------------------------------------

_KEY_WORDS = {"int": "a number", "float": "a number", "bool": "true or false", "null": "null", "timestamp": "a time"}
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")
_TAG = "tag:yaml.org,2002:"
_RESOLVER = yaml.resolver.Resolver()


def _constructor() -> yaml.constructor.SafeConstructor:
    # A fresh one each time: a constructor keeps every node it has seen.
    return yaml.constructor.SafeConstructor()


def read_scalar(text: str) -> Any:
    """``text`` as an unquoted YAML scalar: ``500`` an int, ``true`` a bool, ``5m`` a string."""
    if text == "":
        return ""  # YAML would say null; an empty variable or --set value is an empty string
    tag = _RESOLVER.resolve(yaml.ScalarNode, text, (True, False))
    if tag in (_TAG + "str", _TAG + "timestamp"):
        return text  # times stay text: schemas and the engine parse RFC 3339 themselves
    return _constructor().construct_object(yaml.ScalarNode(tag, text))


def _read_value(text: str) -> Any:
    """A ``--set`` value: a YAML scalar, or a flow list or mapping (``[a, b]``, ``{k: v}``)."""
    if text.startswith(("[", "{")):
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            return text
        if isinstance(value, (list, dict)):
            return value
    return read_scalar(text)


class _Document:
    """A pipeline file as plain values, with the line of every node by its path.

    ``findings`` collects what is wrong with the text itself (duplicate keys, unset
    variables, bad ``--set``); validation comes later, on ``data``.
    """

    def __init__(self, filename: str):
        self.filename = filename
        self.lines: dict[tuple, int] = {}
        self.overrides: dict[tuple, str] = {}  # path -> the --set text that made its value
        self.applied: list[str] = []  # every --set text, in order
        self.findings: list[Finding] = []
        self.reported: set[tuple] = set()  # paths whose value is known bad: no second error
        try:
            with open(filename, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{filename}: cannot read the pipeline file: {exc}"]) from None
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else 1
            raise ConfigError([f"{filename}:{line}: {exc.problem or exc.context}"]) from None
        except yaml.YAMLError as exc:
            raise ConfigError([f"{filename}: {exc}"]) from None
        self.lines[()] = 1  # an empty file has no root node
        self.data = None if node is None else self._value(node, (), node.start_mark.line + 1)

    def _error(self, path: tuple, message: str) -> None:
        """A bad value: its own error, and no second one from validation."""
        self.findings.append(Finding(path, message))
        self.reported.add(path)

    def _value(self, node: yaml.Node, path: tuple, line: int) -> Any:
        self.lines[path] = line
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self._value(item, path + (i,), item.start_mark.line + 1) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _mapping(self, node: yaml.MappingNode, path: tuple) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag != _TAG + "merge" and key_node.value in seen:
                self._duplicate(path + (key_node.value,), key_node.start_mark.line + 1)
            seen.add(key_node.value)
        try:
            _constructor().flatten_mapping(node)  # resolve `<<: *anchor` merges, as PyYAML does
        except yaml.constructor.ConstructorError as exc:
            self.findings.append(Finding(path, str(exc.problem)))
        result = {}
        for key_node, value_node in node.value:  # merged keys first: the mapping's own win
            key = self._key(key_node, path)
            if key is not None:
                # The key's line, not the value's: a block value starts on the next line.
                result[key] = self._value(value_node, path + (key,), key_node.start_mark.line + 1)
        return result

    def _duplicate(self, path: tuple, line: int) -> None:
        self.findings.append(Finding(path, f'duplicate key "{path[-1]}"', line))

    def _key(self, node: yaml.Node, path: tuple) -> str | None:
        line = node.start_mark.line + 1
        if not isinstance(node, yaml.ScalarNode):
            self.findings.append(Finding(path, "a key must be a string", line))
            return None
        if node.style is None and node.tag != _TAG + "str":
            # `on:`, `yes:` or `1:` would silently become true or 1: ask for quotes instead.
            kind = _KEY_WORDS.get(node.tag.rsplit(":", 1)[-1], node.tag)
            message = f'key {node.value} is read as {kind}: quote it ("{node.value}") to use it as a name'
            self.findings.append(Finding(path + (node.value,), message, line))
            return None
        return node.value

    def _scalar(self, node: yaml.ScalarNode, path: tuple) -> Any:
        if node.tag == _TAG + "str" and "${" in node.value:
            return self._substitute(node, path)
        if node.tag == _TAG + "timestamp":
            return node.value
        try:
            return _constructor().construct_object(node)
        except yaml.YAMLError as exc:
            self._error(path, str(getattr(exc, "problem", exc)))
            return None

    def _substitute(self, node: yaml.ScalarNode, path: tuple) -> Any:
        """``${VAR}`` and ``${VAR:-default}`` from the environment (the default also when empty,
        as in the shell). An unquoted scalar that is wholly one variable is re-read as YAML,
        so ``${N:-100}`` is the int 100."""
        unset = []

        def replace(match: re.Match) -> str:
            name, has_default, default = match.groups()
            value = os.environ.get(name)
            if has_default and not value:
                return default
            if value is None:
                unset.append(name)
                return ""
            return value

        text = _VARIABLE.sub(replace, node.value)
        for name in unset:
            self._error(path, f"environment variable {name} is not set (write ${{{name}:-default}} for a default)")
        if node.style is None and _VARIABLE.fullmatch(node.value):
            return read_scalar(text)
        return text

    # --- --set --------------------------------------------------------------------------------

    def override(self, text: str) -> None:
        """Apply one ``--set PATH=VALUE``; a path that leads nowhere is an error."""
        self.applied.append(text)
        target, sep, raw = text.partition("=")
        if not sep or not target:
            self.findings.append(Finding(("--set",), f"--set {text}: expected PATH=VALUE", set_text=text))
            return
        try:
            container, key, path = self._resolve(target.split("."))
        except LookupError as exc:
            self.findings.append(Finding(("--set",), f"--set {text}: {exc.args[0]}", set_text=text))
            return
        container[key] = _read_value(raw)
        # The old value's lines and overrides no longer describe anything.
        for table in (self.lines, self.overrides):
            for old in [p for p in table if p[: len(path)] == path]:
                del table[old]
        self.findings = [f for f in self.findings if f.path[: len(path)] != path]
        self.reported = {p for p in self.reported if p[: len(path)] != path}
        self.overrides[path] = text

    def _resolve(self, parts: list[str]) -> tuple[Any, Any, tuple]:
        """The container and key that ``parts`` name; missing mappings on the way are created."""
        if not isinstance(self.data, dict):
            raise LookupError("the pipeline file is not a mapping")
        node, path = self.data, ()
        for i, part in enumerate(parts):
            if isinstance(node, dict):
                key = part
            elif isinstance(node, list):
                key = self._index(node, path, part)
            else:
                raise LookupError(f"{format_path(path)} is {_show(node)}, not a mapping or a list")
            if i == len(parts) - 1:
                return node, key, path + (key,)
            if isinstance(node, dict) and node.get(key) is None:
                node[key] = {}  # `--set event_time.grace=5s` works without an event_time section
            node, path = node[key], path + (key,)
        raise AssertionError("unreachable")

    @staticmethod
    def _index(items: list, path: tuple, part: str) -> int:
        """A list item by index, or for ``stages`` and ``sinks`` by its name (default: its type)."""
        if part.isdigit():
            if int(part) >= len(items):
                raise LookupError(f"no {format_path(path)}[{part}] ({format_path(path)} has {len(items)} items)")
            return int(part)
        if path not in (("stages",), ("sinks",)):
            raise LookupError(f"{format_path(path)} is a list: expected an index, got {_show(part)}")
        names = [_item_name(item) for item in items]
        found = [i for i, name in enumerate(names) if name == part]
        if len(found) != 1:
            what = "no" if not found else "more than one"
            listed = ", ".join(str(n) for n in names) or "none"
            raise LookupError(f'{what} {path[0][:-1]} named "{part}" ({path[0]}: {listed})')
        return found[0]

    # --- reporting ----------------------------------------------------------------------------

    def format(self, findings: list[Finding]) -> list[str]:
        """``FILE:LINE: PATH: message`` lines, each error once: the file's in line order,
        then those of ``--set`` values in the order they were given."""
        out, seen = [], set()
        for finding in findings:
            if finding.path[:1] == ("--set",):
                text, rank = finding.message, (1, self._set_rank(finding.set_text))
            elif finding.path in self.reported and finding not in self.findings:
                continue  # e.g. an unset variable: the empty value it left is not a second error
            else:
                where = _where(self.filename, self.lines, self.overrides, finding.path)
                if finding.line is not None:
                    where = f"{self.filename}:{finding.line}"
                text = f"{where}: {format_path(finding.path)}: {finding.message}"
                if where.startswith("--set "):
                    rank = (1, self._set_rank(where[len("--set "):]))
                else:
                    rank = (0, finding.line or self.lines.get(_deepest(self.lines, finding.path), 0))
            if text not in seen:
                seen.add(text)
                out.append((rank, len(out), text))
        return [text for *_, text in sorted(out)]

    def _set_rank(self, text: str) -> int:
        return self.applied.index(text) if text in self.applied else len(self.applied)


def _item_name(item: Any) -> Any:
    if isinstance(item, dict):
        return item.get("name", item.get("type"))
    return None


def _deepest(table: dict, path: tuple) -> tuple:
    """The longest prefix of ``path`` present in ``table`` (the root at least)."""
    for n in range(len(path), -1, -1):
        if path[:n] in table:
            return path[:n]
    return ()


def _where(filename: str, lines: dict, overrides: dict, path: tuple) -> str:
    """Where a path's value came from: ``FILE:LINE``, or the ``--set`` that made it."""
    for n in range(len(path), -1, -1):
        if path[:n] in overrides:
            return f"--set {overrides[path[:n]]}"
        if path[:n] in lines:
            return f"{filename}:{lines[path[:n]]}"
    return filename


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def format_path(path: tuple) -> str:
    """``("stages", 2, "size")`` -> ``stages[2].size``; the document itself is ``(root)``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(str(part)):
            text += f".{part}" if text else str(part)
        else:
            text += f"[{json.dumps(part, ensure_ascii=False)}]"
    return text or "(root)"


def _show(value: Any) -> str:
    """A value as compact JSON, shortened: how error messages quote what the user wrote."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


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
            yield jsonschema.ValidationError(f"a duration must be a whole number of milliseconds, got {_show(instance)}")
        else:
            yield jsonschema.ValidationError(f"expected a duration like 5m, got {_show(instance)}")
        return
    if mode == "positive" and ms == 0:
        yield jsonschema.ValidationError(f"must be > 0, got {_show(instance)}")


_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"x-duration": _x_duration})


def _schema_findings(schema: dict, instance: Any, base: tuple) -> list[Finding]:
    """Every way ``instance`` fails ``schema``, as findings with paths under ``base``."""
    findings = []
    for error in _Validator(schema).iter_errors(instance):
        for path, message in _explain(error, schema):
            findings.append(Finding(base + path, message))
    return findings


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
    windowed = []
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
        findings += [Finding(path + tuple(at), message) for at, message in cls.lint(config)]
        filled = {k: item[k] for k in common if k in item}
        if section in ("stages", "sinks"):
            filled.setdefault("name", item["type"])
        _put(settings, path, {**filled, **config})
    findings += _check_names(data) + _check_event_time(data)
    if windowed and "event_time" not in data:
        stage = _item_name(_get(data, windowed[0]))
        findings.append(Finding((), f'missing required key "event_time" (window stage "{stage}" needs it)'))
    return settings, findings


def _lookup(registry, kind: str, type_name: Any, path: tuple, findings: list) -> type | None:
    if not isinstance(type_name, str):
        return None  # the top-level schema reports it
    classes = registry.kind(kind)
    if type_name in classes:
        return classes[type_name]
    word = kind[:-1]
    known = ", ".join(sorted(classes)) or "none registered"
    message = f'unknown {word} type "{type_name}" (known {word} types: {known})'
    findings.append(Finding(path + ("type",), message + _did_you_mean(type_name, classes)))
    return None


def _check_names(data: dict) -> list[Finding]:
    """Stage and sink names are unique (beside "source" and "dlq"); ``to:`` names sinks."""
    findings, taken = [], {"source": ("source",), "dlq": ("dlq",)}
    sinks = []
    for section, path, item in _components(data):
        if section not in ("stages", "sinks"):
            continue
        name = _item_name(item)
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


def _did_you_mean(word: str, known) -> str:
    # 0.6 is difflib's own default: "tumbling" still finds "tumbling_window", "foo" finds nothing.
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f'; did you mean "{close[0]}"?' if close else ""


# --- jsonschema errors in words -----------------------------------------------------------------

_TYPE_WORDS = {
    "string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
    "object": "a mapping", "array": "a list", "null": "null",
}
# Errors about a mapping's keys, not its value as a whole: an x-expected would hide them.
_STRUCTURAL = {"required", "additionalProperties", "unevaluatedProperties", "dependentRequired",
               "minProperties", "maxProperties", "propertyNames"}
_SAME_VALUE = {"anyOf", "oneOf", "allOf", "not", "if", "then", "else"}  # subschemas of the same value


def _explain(error: jsonschema.ValidationError, root: dict) -> Iterator[tuple[tuple, str]]:
    """(path, message) pairs for one jsonschema error, in the words of section 2 of the contract."""
    path, kind, value = tuple(error.absolute_path), error.validator, error.instance
    if "propertyNames" in error.absolute_schema_path:
        # The instance is the offending key; the path is its mapping's.
        yield path + (value,), f'"{value}" is not allowed as a name here' + (
            " (it is reserved)" if kind == "not" else f": {_plain(error)}")
    elif kind in ("additionalProperties", "unevaluatedProperties"):
        known = list(error.schema.get("properties", {}))
        patterns = list(error.schema.get("patternProperties", {}))
        for key in value:
            if key not in known and not any(re.search(p, key) for p in patterns):
                yield path + (key,), f'unknown key "{key}"' + _did_you_mean(str(key), known)
    elif kind == "required":
        for key in error.validator_value:
            if key not in value:
                yield path, f'missing required key "{key}"'
    elif kind == "x-duration":
        yield path, error.message
    elif kind in ("anyOf", "oneOf"):
        best = _best_variant(error)
        if best:
            for sub in best:
                yield from _explain(sub, root)
        elif not error.context:  # a oneOf that more than one branch accepts
            yield path, f"{_show(value)} matches more than one of the allowed forms"
        else:
            yield path, _expected_message(error, root) or _no_variant_message(error)
    elif kind not in _STRUCTURAL and _expected(error, root):
        yield path, _expected_message(error, root)
    else:
        yield path, _plain(error)


def _best_variant(error: jsonschema.ValidationError) -> list | None:
    """The errors of the one anyOf/oneOf branch the value plainly meant, if there is one.

    A branch is meant when the value has its shape (no type, const, pattern... error on
    the value itself, only missing or unknown keys or errors deeper down); among those, the
    one with the fewest errors, if it alone has that few. ``{top: page_url}`` means the
    ``top`` branch (only ``n`` is missing); ``"five"`` for a duration means none.
    """
    branches: dict[int, list] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    meant = [errs for errs in branches.values()
             if all(e.relative_path or e.validator in _STRUCTURAL - {"minProperties", "maxProperties"} for e in errs)]
    if not meant:
        return None
    fewest = min(len(errs) for errs in meant)
    best = [errs for errs in meant if len(errs) == fewest]
    return best[0] if len(best) == 1 else None


def _expected(error: jsonschema.ValidationError, root: dict) -> str | None:
    """The ``x-expected`` of the outermost schema that applies to the error's own value.

    Walks the error's schema path from ``root``; keywords like ``properties`` move to a
    child value (forgetting what applied to the parent), ``anyOf`` and the like do not.
    """
    keys = list(error.absolute_schema_path)[:-1]  # the last one is the failing keyword
    schema, level, i = root, [root], 0
    while i < len(keys):
        keyword = keys[i]
        if not isinstance(schema, dict):
            return None
        if keyword in ("properties", "patternProperties", "prefixItems", "anyOf", "oneOf", "allOf"):
            schema, i = schema[keyword][keys[i + 1]], i + 2
        elif keyword in ("items", "additionalProperties", "unevaluatedItems", "unevaluatedProperties",
                         "contains", "propertyNames", "not", "if", "then", "else"):
            schema, i = schema[keyword], i + 1
        else:
            return None  # $ref and friends: not followed, so no claim about what applies
        level = level + [schema] if keyword in _SAME_VALUE else [schema]
    for sub in level:
        if isinstance(sub, dict) and "x-expected" in sub:
            return sub["x-expected"]
    return None


def _expected_message(error: jsonschema.ValidationError, root: dict) -> str | None:
    expected = _expected(error, root)
    return f"expected {expected}, got {_show(error.instance)}" if expected else None


def _describe(schema: Any) -> str | None:
    """A short phrase for what a schema accepts, when it has an obvious one."""
    if not isinstance(schema, dict):
        return None
    if "x-expected" in schema:
        return schema["x-expected"]
    if "const" in schema:
        return _show(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(_choice(c) for c in schema["enum"])
    types = schema.get("type")
    if types:
        return " or ".join(_TYPE_WORDS.get(t, t) for t in (types if isinstance(types, list) else [types]))
    return None


def _no_variant_message(error: jsonschema.ValidationError) -> str:
    words = [_describe(s) for s in error.validator_value]
    if all(words):
        return f"expected {' or '.join(dict.fromkeys(words))}, got {_show(error.instance)}"
    return f"{_show(error.instance)} matches none of the allowed forms"


def _choice(value: Any) -> str:
    return value if isinstance(value, str) else _show(value)


def _plain(error: jsonschema.ValidationError) -> str:
    """The message for one failed keyword without an ``x-expected``."""
    kind, limit, got = error.validator, error.validator_value, _show(error.instance)
    count = {"minItems": "items", "maxItems": "items", "minProperties": "keys", "maxProperties": "keys",
             "minLength": "characters", "maxLength": "characters"}
    if kind == "type":
        types = limit if isinstance(limit, list) else [limit]
        return f"expected {' or '.join(_TYPE_WORDS.get(t, t) for t in types)}, got {got}"
    if kind == "enum":
        return f"expected one of {', '.join(_choice(c) for c in limit)}, got {got}"
    if kind == "const":
        return f"expected {_show(limit)}, got {got}"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[kind]
        return f"must be {op} {limit}, got {got}"
    if kind == "multipleOf":
        return f"must be a multiple of {limit}, got {got}"
    if kind == "pattern":
        return f"expected a string matching {limit}, got {got}"
    if kind in count:
        if kind.startswith("min"):
            return "must not be empty" if limit == 1 else f"must have at least {limit} {count[kind]}"
        return f"must have at most {limit} {count[kind]}"
    if kind == "uniqueItems":
        return f"must not repeat items, got {got}"
    if kind == "not":
        return f"{got} is not allowed here"
    return error.message
