"""jsonschema errors in words: each ``ValidationError`` as the (path, message) pairs users act on.

``explain`` turns one error into lines like ``unknown key "sise"; did you mean "size"?``,
``missing required key "name"`` or ``expected a duration like 5m, got "five"``: it uses the
``x-expected`` of the outermost schema that applies to the value, picks the one ``anyOf`` /
``oneOf`` branch a value plainly meant, and otherwise words the failed keyword itself. Paths
are tuples into the plain values (``("stages", 2, "size")``); ``runner.config`` locates them
in the file.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Iterator

import jsonschema

from runner.yamldoc import show

_TYPE_WORDS = {
    "string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
    "object": "a mapping", "array": "a list", "null": "null",
}
# Errors about a mapping's keys, not its value as a whole: an x-expected would hide them.
_STRUCTURAL = {"required", "additionalProperties", "unevaluatedProperties", "dependentRequired",
               "minProperties", "maxProperties", "propertyNames"}
_SAME_VALUE = {"anyOf", "oneOf", "allOf", "not", "if", "then", "else"}  # subschemas of the same value


def did_you_mean(word: str, known) -> str:
    """``; did you mean "x"?`` with the known word closest to ``word``, or nothing."""
    # 0.6 is difflib's own default: "tumbling" still finds "tumbling_window", "foo" finds nothing.
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f'; did you mean "{close[0]}"?' if close else ""


def explain(error: jsonschema.ValidationError, root: dict) -> Iterator[tuple[tuple, str]]:
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
                yield path + (key,), f'unknown key "{key}"' + did_you_mean(str(key), known)
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
                yield from explain(sub, root)
        elif not error.context:  # a oneOf that more than one branch accepts
            yield path, f"{show(value)} matches more than one of the allowed forms"
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
    return f"expected {expected}, got {show(error.instance)}" if expected else None


def _describe(schema: Any) -> str | None:
    """A short phrase for what a schema accepts, when it has an obvious one."""
    if not isinstance(schema, dict):
        return None
    if "x-expected" in schema:
        return schema["x-expected"]
    if "const" in schema:
        return show(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(_choice(c) for c in schema["enum"])
    types = schema.get("type")
    if types:
        return " or ".join(_TYPE_WORDS.get(t, t) for t in (types if isinstance(types, list) else [types]))
    return None


def _no_variant_message(error: jsonschema.ValidationError) -> str:
    words = [_describe(s) for s in error.validator_value]
    if all(words):
        return f"expected {' or '.join(dict.fromkeys(words))}, got {show(error.instance)}"
    return f"{show(error.instance)} matches none of the allowed forms"


def _choice(value: Any) -> str:
    return value if isinstance(value, str) else show(value)


def _plain(error: jsonschema.ValidationError) -> str:
    """The message for one failed keyword without an ``x-expected``."""
    kind, limit, got = error.validator, error.validator_value, show(error.instance)
    count = {"minItems": "items", "maxItems": "items", "minProperties": "keys", "maxProperties": "keys",
             "minLength": "characters", "maxLength": "characters"}
    if kind == "type":
        types = limit if isinstance(limit, list) else [limit]
        return f"expected {' or '.join(_TYPE_WORDS.get(t, t) for t in types)}, got {got}"
    if kind == "enum":
        return f"expected one of {', '.join(_choice(c) for c in limit)}, got {got}"
    if kind == "const":
        return f"expected {show(limit)}, got {got}"
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
