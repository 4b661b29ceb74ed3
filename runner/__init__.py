"""A config-driven stream runner: YAML pipelines of pluggy-registered stages over LMDB state."""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("runner")
"""Decorator for plugin hook implementations: ``from runner import hookimpl``."""
