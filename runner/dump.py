"""``runner state dump`` and ``runner state reset``: the persisted state as CONTRACT section 7 prints it."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from runner.components import RunnerError
from runner.engine import build_stages
from runner.state import LmdbStore, take_lock
from runner.times import format_ms, format_watermark

NEVER_RAN = {"checkpoint": 0, "offsets": {}, "event_time": {}, "watermark": None, "stages": {}}


def dump_state(pipeline) -> dict:
    """The last checkpoint, read without a lock (the pipeline may be running)."""
    settings = pipeline.settings
    path = Path(settings["state"]["path"])
    try:
        store = LmdbStore(path, readonly=True)
    except FileNotFoundError:
        return dict(NEVER_RAN)
    try:
        if store.meta("checkpoint") is None:
            return dict(NEVER_RAN)
        if store.meta("pipeline") != settings["name"]:
            raise RunnerError(f"the state at {path} belongs to pipeline {store.meta('pipeline')!r}, not {settings['name']!r}")
        stages = {}
        for stage in build_stages(pipeline):
            part = stage.dump(store.table(stage.name))
            if part is not None:
                stages[stage.name] = part
        highs = store.meta("event_time", {}) or {}
        return {
            "checkpoint": store.meta("checkpoint"),
            "offsets": store.meta("offsets", {}),
            "event_time": {p: None if h is None or h == -math.inf else format_ms(int(h)) for p, h in highs.items()},
            "watermark": format_watermark(store.meta("watermark", -math.inf)),
            "stages": stages,
        }
    finally:
        store.close()


def reset_state(pipeline) -> bool:
    """Delete the pipeline's state directory; refuses while a runner holds it. False if none."""
    path = Path(pipeline.settings["state"]["path"])
    if not path.exists():
        return False
    lock = take_lock(path)  # raises RunnerError while a runner is using it
    try:
        shutil.rmtree(path)
    finally:
        lock.close()
    return True
