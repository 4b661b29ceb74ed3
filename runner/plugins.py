"""The plugin manager: built-ins, entry points and a pipeline's own modules, registered alike."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import pluggy

from runner import hookspecs
from runner.components import ConfigError, Sink, Source, Stage

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
    pm.load_setuptools_entrypoints("runner")
    for name in extra_modules:
        if pm.get_plugin(name) is None:
            try:
                module = importlib.import_module(name)
            except ImportError as exc:
                raise ConfigError([f"plugins: cannot import {name!r}: {exc}"]) from None
            pm.register(module, name)
    pm.check_pending()
    return pm


def load(extra_modules: list[str] = ()) -> Registry:
    """Build the manager and collect every registered component class."""
    pm = build_manager(extra_modules)
    registry = Registry()
    for kind, base in KINDS.items():
        hook = getattr(pm.hook, f"runner_register_{kind}")
        for impl in hook.get_hookimpls():  # registration order
            for cls in impl.function() or ():
                _add(registry, kind, base, cls, pm.get_name(impl.plugin) or impl.plugin_name)
    return registry


def _add(registry: Registry, kind: str, base: type, cls: type, origin: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError([f"plugin {origin} registered {cls!r} as a {kind[:-1]}, which is not a {base.__name__} subclass"])
    table = registry.kind(kind)
    other = table.get(cls.type)
    if other is not None and other is not cls:
        raise ConfigError([
            f"two plugins register the {kind[:-1]} type {cls.type!r}: "
            f"{registry.origins[other]} ({other.__module__}.{other.__qualname__}) and {origin} ({cls.__module__}.{cls.__qualname__})"
        ])
    table[cls.type] = cls
    registry.origins[cls] = origin
