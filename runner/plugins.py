"""The plugin manager: built-ins, entry points and a pipeline's own modules, registered alike."""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import sys
from dataclasses import dataclass, field

import jsonschema
import pluggy

from runner import hookspecs
from runner.components import ConfigError, Sink, Source, Stage
from runner.display import show

BUILTINS = (
    "plugins.sources.kafka",
    "plugins.sources.file",
    "plugins.sources.generator",
    "plugins.stages.validate",
    "plugins.stages.aggregate",
    "plugins.stages.windows",
    "plugins.stages.sessions",
    "plugins.sinks.console",
    "plugins.sinks.jsonl",
    "plugins.sinks.kafka",
    "plugins.sinks.postgres",
    "plugins.commands",
)

KINDS = {"sources": Source, "stages": Stage, "sinks": Sink}
_JSON_TYPES = ("string", "number", "integer", "boolean", "object", "array", "null")
_SCHEMA_CHECKED: set[type] = set()  # classes whose config_schema passed the metaschema (checked once)
_WARNED: set[str] = set()  # warnings about installed plugins already given by this process


class PluginError(ConfigError):
    """A plugin's mistake; ``origins`` names the plugins involved (a pipeline's ``plugins:``
    module, an entry point, a built-in)."""

    def __init__(self, lines: str | list[str], *origins: str):
        super().__init__([lines] if isinstance(lines, str) else lines)
        self.origins = set(origins)


@dataclass
class Registry:
    """Component classes by kind and ``type``, with where each came from."""

    sources: dict[str, type] = field(default_factory=dict)
    stages: dict[str, type] = field(default_factory=dict)
    sinks: dict[str, type] = field(default_factory=dict)
    origins: dict[type, str] = field(default_factory=dict)

    def kind(self, name: str) -> dict[str, type]:
        return getattr(self, name)


def build_manager(extra_modules: list[str] = ()) -> pluggy.PluginManager:
    """A fresh manager: built-ins, then entry points of group ``runner``, then ``extra_modules``."""
    pm = pluggy.PluginManager("runner")
    pm.add_hookspecs(hookspecs)
    for name in BUILTINS:
        pm.register(importlib.import_module(name), name)
    installed = _register_installed(pm)
    for name in extra_modules:
        if pm.get_plugin(name) is None:
            try:
                module = importlib.import_module(name)
            except ImportError as exc:
                raise PluginError(f"plugins: cannot import {name!r}: {exc}", name) from None
            except Exception as exc:  # the module's own code failed: a plugin author's mistake
                raise PluginError(f"plugins: cannot import {name!r}: it raised {_describe(exc)}", name) from None
            try:
                pm.register(module, name)
            except pluggy.PluginValidationError as exc:
                raise PluginError(f"plugin {name}: {exc}", name) from None
            if not pm.get_hookcallers(module):  # (a misspelled hook counts: check_pending names it)
                raise PluginError(f"plugins: module {name!r} has no hooks (functions marked @runner.hookimpl, "
                                  f"named as in runner.hookspecs): name the module that has them", name)
    while True:
        try:
            pm.check_pending()
            return pm
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin)
            if name not in installed:
                raise PluginError(_unknown_hook(pm, exc), name) from None
            warn_plugin(f"{_unknown_hook(pm, exc)}: {installed[name]} is left out")
            pm.unregister(exc.plugin)


def _register_installed(pm: pluggy.PluginManager) -> dict[str, str]:
    """Register the plugins of entry point group ``runner``, as pluggy's
    ``load_setuptools_entrypoints`` does, but one that cannot be imported or registered is
    left out with a warning naming it: an installed package's mistake must not take down
    every command (a pipeline that uses one of its components is refused for the unknown
    type, after the warning). Returns each registered plugin's name and description."""
    installed, tried = {}, set()
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != "runner" or ep.name in tried or pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue  # a name seen first in an earlier distribution on sys.path shadows the later ones
            tried.add(ep.name)
            what = f"installed plugin {ep.name} ({ep.value}, of {dist.metadata['Name']} {dist.version})"
            try:
                pm.register(ep.load(), ep.name)
            except Exception as exc:
                warn_plugin(f"{what} cannot be loaded ({_describe(exc)}): it is left out")
                continue
            installed[ep.name] = what
    return installed


def warn_plugin(line: str) -> None:
    """A warning about a plugin that is left out, on stderr, once a process."""
    if line not in _WARNED:
        _WARNED.add(line)
        show(f"WARNING: {line}", sys.stderr)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _unknown_hook(pm: pluggy.PluginManager, exc: pluggy.PluginValidationError) -> str:
    """``check_pending``'s complaint as one line naming the plugin, the hook and the likely one meant."""
    name = pm.get_name(exc.plugin) or repr(exc.plugin)
    known = sorted(n for n in dir(hookspecs) if n.startswith("runner_"))
    for hook in (h for h in pm.hook.__dict__ if h.startswith("runner_") and h not in known):
        if any(impl.plugin is exc.plugin for impl in getattr(pm.hook, hook).get_hookimpls()):
            close = difflib.get_close_matches(hook, known, n=1)
            hint = f'; did you mean "{close[0]}"?' if close else f" (the hooks are {', '.join(known)})"
            return f'plugin {name}: unknown hook "{hook}"{hint}'
    return f"plugin {name}: {exc}"


def load(extra_modules: list[str] = ()) -> Registry:
    """Build the manager and collect every registered component class."""
    pm = build_manager(extra_modules)
    registry = Registry()
    for kind, base in KINDS.items():
        hook = getattr(pm.hook, f"runner_register_{kind}")
        for impl in hook.get_hookimpls():  # registration order
            origin = pm.get_name(impl.plugin) or impl.plugin_name
            try:
                classes = impl.function() or ()
            except Exception as exc:
                raise PluginError(f"plugin {origin}: runner_register_{kind} raised {_describe(exc)}", origin) from None
            listed = as_list(classes)
            if listed is None:
                raise PluginError(f"plugin {origin}: runner_register_{kind} returned {classes!r}, "
                                  f"not a list of {KINDS[kind].__name__} subclasses", origin)
            for cls in listed:
                _add(registry, kind, base, cls, origin)
    return registry


def as_list(value) -> list | None:
    """What a plugin returned as a list (a list, a tuple, a generator...), or None when it is
    not one (a string, a single class or object)."""
    if isinstance(value, (str, bytes, type)) or not hasattr(value, "__iter__"):
        return None
    return list(value)


def _declaration_problems(schema: dict) -> list[str]:
    """What keeps a component's config schema from being the one declaration that validation,
    ``runner plugins`` and the docs come from (``runner.schema.obj`` builds such schemas)."""
    if schema.get("type") != "object" or schema.get("additionalProperties") is not False:
        return ['must be an object that refuses unknown keys ("type": "object", "additionalProperties": false: '
                'runner.schema.obj builds one), so a misspelled key is an error']
    required = set(schema.get("required", ()))
    problems = []
    for name, prop in schema.get("properties", {}).items():
        if not isinstance(prop, dict) or "description" not in prop:
            problems.append(f"property {name!r} has no description (runner plugins and the docs show it)")
        elif "default" not in prop and name not in required:
            problems.append(f"property {name!r} has neither a default nor a place in required")
    return problems


def _add(registry: Registry, kind: str, base: type, cls: type, origin: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(f"plugin {origin} registered {cls!r} as a {kind[:-1]}, which is not a {base.__name__} subclass", origin)
    where = f"plugin {origin}: {kind[:-1]} class {cls.__module__}.{cls.__qualname__}"
    if not (isinstance(getattr(cls, "type", None), str) and cls.type):
        raise PluginError(f"{where} has no `type` (a string: the name pipelines give it as type:)", origin)
    if origin not in BUILTINS and cls not in _SCHEMA_CHECKED:  # (built-ins: by the tests; 50 ms a start)
        try:
            jsonschema.Draft202012Validator.check_schema(cls.config_schema)
        except jsonschema.SchemaError as exc:
            at = "".join(f"[{p!r}]" for p in exc.absolute_path)
            problem = exc.message
            if list(exc.absolute_path)[-1:] == ["type"]:
                problem = f"{exc.instance!r} is not a JSON Schema type ({', '.join(_JSON_TYPES)})"
            raise PluginError(f"{where}: config_schema{at} is not a valid JSON Schema: {problem}", origin) from None
        problems = _declaration_problems(cls.config_schema)
        if problems:
            raise PluginError([f"{where}: config_schema {problem}" for problem in problems], origin)
        _SCHEMA_CHECKED.add(cls)
    table = registry.kind(kind)
    other = table.get(cls.type)
    if other is not None and other is not cls:
        raise PluginError(
            f"two plugins register the {kind[:-1]} type {cls.type!r}: "
            f"{registry.origins[other]} ({other.__module__}.{other.__qualname__}) and {origin} ({cls.__module__}.{cls.__qualname__})",
            registry.origins[other], origin)
    table[cls.type] = cls
    registry.origins[cls] = origin
