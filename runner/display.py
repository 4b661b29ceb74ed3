"""Console display: templates from YAML turned into lines (display is never a result).

Templates are Python format strings over a result's fields, with a few extra specs for
the shapes results have: ``{window_start:hm}`` (08:10), ``{duration_s:minutes}`` (26.6),
``{path:arrows 5}`` (a -> b -> ... for a list), ``{page_views:ranked 3 views}``
(1. /search: 42 views  2. ... for a count_by object or a top list), and
``{trending:first views}`` (/cart (210 views)).
"""

from __future__ import annotations

import os
import string
import sys


def _pairs(value) -> list:
    if isinstance(value, dict):
        return sorted(value.items(), key=lambda kv: (-kv[1], str(kv[0])))
    return [tuple(item) for item in value or ()]


class Formatter(string.Formatter):
    def format_field(self, value, spec):
        kind, _, arg = spec.partition(" ")
        if kind == "hm":
            return value[11:16] if isinstance(value, str) else "-"
        if kind == "minutes":
            return "-" if value is None else f"{value / 60:.1f}"
        if kind == "arrows":
            items = [str(v) for v in value or ()]
            limit = int(arg) if arg else len(items)
            return " -> ".join(items[:limit]) + (" -> ..." if len(items) > limit else "")
        if kind == "ranked":
            count, _, unit = arg.partition(" ")
            pairs = _pairs(value)[: int(count or 3)]
            return "  ".join(f"{i}. {v}: {c} {unit}".rstrip() for i, (v, c) in enumerate(pairs, 1)) or "-"
        if kind == "first":
            pairs = _pairs(value)
            return f"{pairs[0][0]} ({pairs[0][1]} {arg})".replace(" )", ")") if pairs else "-"
        if value is None:
            return "-"
        try:
            return super().format_field(value, spec)
        except (ValueError, TypeError):
            return str(value)


_formatter = Formatter()


def render(template: str, fields: dict) -> str:
    """The template filled from ``fields``; a missing field shows as ``{name?}``."""
    try:
        return _formatter.vformat(template, (), _Fields(fields))
    except (IndexError, ValueError, AttributeError) as exc:
        return f"{template} (cannot display: {exc})"


class _Fields(dict):
    def __missing__(self, key):
        return "{" + key + "?}"


def template_problems(template: str | None, fields) -> list[str]:
    """What would keep ``template`` from showing results with these ``fields``: its syntax,
    and the names it uses that no result has (they would show as ``{name?}``)."""
    if not template:
        return []
    try:
        names = [name for _, name, _, _ in _formatter.parse(template) if name is not None]
    except ValueError as exc:
        return [f"cannot be displayed: {exc}"]
    unknown = sorted({_head(name) for name in names} - set(fields))
    if not unknown:
        return []
    return [f"no field {', '.join(map(repr, unknown))} in its results (they have {', '.join(sorted(fields))})"]


def _head(name: str) -> str:
    """The field a replacement names (``{a.b}`` and ``{a[0]}`` name ``a``)."""
    for i, char in enumerate(name):
        if char in ".[":
            return name[:i]
    return name


def template_schema(description: str) -> dict:
    return {"type": ["string", "null"], "default": None, "description": description}


def show(text: str, file=None) -> bool:
    """Print ``text`` at once (flushed: seen through a pipe too). False, with ``file``
    (standard output by default) silenced, when its reader is gone."""
    try:
        print(text, file=file, flush=True)
    except BrokenPipeError:
        silence(file)
        return False
    return True


def silence(stream=None) -> None:
    """Point ``stream`` (standard output by default) at /dev/null once its reader is gone
    (``runner run ... | head``): every later write, Python's last flush at exit included,
    would fail again. A stream with no file descriptor of its own is left as it is."""
    stream = stream or sys.stdout
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
