"""SIGINT and SIGTERM that arrive while the process starts (imports, plugins and the pipeline
file take 0.1-0.3 s), before a runner handles them: held, then handed to it, so a stop asked
for at once is as clean as one asked for later (CONTRACT section 2)."""

from __future__ import annotations

import os
import signal

STOPS = (signal.SIGINT, signal.SIGTERM)
_pending: list[int] = []


def hold() -> None:
    """From now on, record SIGINT and SIGTERM instead of dying of them, until ``take`` or
    ``release``."""
    for sig in STOPS:
        signal.signal(sig, _record)


def take() -> list[int]:
    """The signals held so far (their new handler takes over from here)."""
    taken = list(_pending)
    _pending.clear()
    return taken


def release() -> None:
    """Python's own handlers again, for a command that has none of its own; a signal held
    meanwhile acts now, as it would have."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for sig in take():
        os.kill(os.getpid(), sig)


def _record(signum, frame) -> None:
    _pending.append(signum)
