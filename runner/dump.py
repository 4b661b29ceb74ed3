"""``runner state dump`` and ``runner state reset``: the persisted state as CONTRACT section 7 prints it."""

from __future__ import annotations

import json
import math
import shutil
from contextlib import contextmanager
from pathlib import Path

from runner.components import RunnerError
from runner.engine import build_stages, check_state
from runner.state import LmdbStore, foreign_entries, require_directory, take_lock
from runner.times import format_ms, format_watermark

NEVER_RAN = {"checkpoint": 0, "offsets": {}, "event_time": {}, "watermark": None, "stages": {}}


@contextmanager
def _last_checkpoint(pipeline):
    """The pipeline's store, read-only and without a lock (the pipeline may be running); None
    if it holds no checkpoint."""
    path = Path(pipeline.settings["state"]["path"])
    require_directory(path)
    try:
        store = LmdbStore(path, readonly=True)
    except FileNotFoundError:
        yield None
        return
    try:
        yield store if store.meta("checkpoint") is not None else None
    finally:
        store.close()


def state_refusal(pipeline) -> str | None:
    """Why ``runner run`` would refuse the pipeline's stored state (None: it would not)."""
    if pipeline.settings["state"]["backend"] == "memory":
        return None
    try:
        with _last_checkpoint(pipeline) as store:
            if store is not None:
                check_state(store, pipeline.settings, build_stages(pipeline), store.table_sizes())
    except RunnerError as exc:
        return str(exc)
    return None


def dump_state(pipeline) -> dict:
    """The last checkpoint, read without a lock (the pipeline may be running)."""
    settings = pipeline.settings
    with _last_checkpoint(pipeline) as store:
        if store is None:
            return dict(NEVER_RAN)
        built = build_stages(pipeline)
        check_state(store, settings, built, store.table_sizes())  # what run refuses, dump must not misread
        stages = {}
        for stage in built:
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


def dump_text(pipeline) -> str:
    """``dump_state`` as the JSON text ``runner state dump`` prints; a stage whose ``dump``
    returned what is not JSON is named."""
    state = dump_state(pipeline)
    try:
        return json.dumps(state, indent=2, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):
        types = {d["name"]: d["type"] for d in pipeline.settings["stages"]}
        for name, part in state["stages"].items():
            try:
                json.dumps(part, sort_keys=True)
            except (TypeError, ValueError) as exc:
                raise RunnerError(f"stage {name} (type {types[name]}): its dump returned what is not JSON: {exc}") from None
        raise


def reset_state(pipeline) -> bool:
    """Delete the pipeline's state directory; refuses while a runner holds it, and a directory
    that holds anything but a state, or the state of another pipeline. False if none."""
    settings = pipeline.settings
    path = Path(settings["state"]["path"])
    if not path.exists():
        return False
    if not path.is_dir():
        raise RunnerError(f"state.path {path} is not a directory: nothing deleted")
    foreign = foreign_entries(path)
    if foreign:
        raise RunnerError(f"{path} holds more than a runner's state ({foreign}): nothing deleted; "
                          f"is state.path the directory you meant?")
    lock = take_lock(path)  # raises RunnerError while a runner is using it
    try:
        owner = _owner(path)
        if owner is not None and owner != settings["name"]:
            raise RunnerError(f"the state at {path} belongs to pipeline {owner!r}, not {settings['name']!r}: "
                              f"nothing deleted")
        shutil.rmtree(path)
    finally:
        lock.close()
    return True


def _owner(path: Path) -> str | None:
    """The pipeline that wrote the state at ``path`` (None: none was ever committed)."""
    try:
        store = LmdbStore(path, readonly=True)
    except FileNotFoundError:
        return None
    try:
        return store.meta("pipeline")
    finally:
        store.close()
