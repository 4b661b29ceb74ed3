"""Reading a pipeline file's YAML: plain values with the line of every node by its path.

``Document`` reads a file with PyYAML's node marks, substitutes ``${VAR}`` and
``${VAR:-default}`` from the environment, applies ``--set PATH=VALUE`` overrides, and turns
``Finding``s (a path and a message) into ``FILE:LINE: PATH: message`` lines, naming the
``--set`` that made a value where one did. It knows nothing of schemas: ``runner.config``
validates the plain values and reports through it; ``read_scalar``, ``format_path`` and
``show`` are how values and paths are read and written in those messages.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, NamedTuple

import yaml

from runner.components import ConfigError


# PyYAML's words for a key without its ': ' on the line before (it finds out one line late)
_LATE_COLON = "mapping values are not allowed here"


def _syntax_error(filename: str, exc: yaml.MarkedYAMLError) -> str:
    """``FILE:LINE: problem`` for YAML that cannot be parsed, with where the structure it was
    in began and what usually causes the problem."""
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else 1
    message = exc.problem or exc.context
    if exc.problem and exc.context and exc.context_mark is not None and exc.context_mark.line + 1 != line:
        message += f" ({exc.context.replace('while parsing ', 'in ')} that begins on line {exc.context_mark.line + 1})"
    if exc.problem == _LATE_COLON:
        message += f" (is a ': ' missing after a key on line {line - 1}, or is line {line} indented wrongly?)"
    return f"{filename}:{line}: {message}"


class Finding(NamedTuple):
    """One error: where it is (a path into the document) and what is wrong."""

    path: tuple
    message: str
    line: int | None = None  # when it is not the path's line (a duplicate key, a bad key)
    set_text: str | None = None  # the --set whose path leads nowhere


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
    """A ``--set`` value: a YAML scalar, or a flow list or mapping (``[a, b]``, ``{k: v}``); a
    quoted scalar is the string inside its quotes (``"{events} events"``, ``'500'``)."""
    if text[:1] in ("'", '"') and text[-1:] == text[:1] and len(text) > 1:
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            return text
        if isinstance(value, str):
            return value
    if text.startswith(("[", "{")):
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            return text
        if isinstance(value, (list, dict)):
            return value
    return read_scalar(text)


class Document:
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
            raise ConfigError([_syntax_error(filename, exc)]) from None
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
            container, key, path = self._resolve(_split_path(target))
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
                raise LookupError(f"{format_path(path)} is {show(node)}, not a mapping or a list")
            if i == len(parts) - 1:
                return node, key, path + (key,)
            if isinstance(node, dict) and node.get(key) is None:
                node[key] = {}  # `--set event_time.grace=5s` works without an event_time section
                self.overrides[path + (key,)] = self.applied[-1]  # an error about it is the --set's
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
            raise LookupError(f"{format_path(path)} is a list: expected an index, got {show(part)}")
        names = [item_name(item) for item in items]
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
                where = origin(self.filename, self.lines, self.overrides, finding.path)
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


_INDEXED = re.compile(r"([^\[\]]+)((?:\[\d+\])+)")


def _split_path(target: str) -> list[str]:
    """``stages.2.size`` or, as error messages print it, ``stages[2].size``: the parts to resolve."""
    parts = []
    for piece in target.split("."):
        match = _INDEXED.fullmatch(piece)
        if match:
            parts += [match.group(1), *re.findall(r"\d+", match.group(2))]
        else:
            parts.append(piece)
    return parts


def item_name(item: Any) -> Any:
    if isinstance(item, dict):
        return item.get("name", item.get("type"))
    return None


def _deepest(table: dict, path: tuple) -> tuple:
    """The longest prefix of ``path`` present in ``table`` (the root at least)."""
    for n in range(len(path), -1, -1):
        if path[:n] in table:
            return path[:n]
    return ()


def origin(filename: str, lines: dict, overrides: dict, path: tuple) -> str:
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


def show(value: Any) -> str:
    """A value as compact JSON, shortened: how error messages quote what the user wrote."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
