"""Recovery: how long a new process takes to process its first event over a large state.

The state is that of an ``aggregate`` stage keyed by ``event_id`` after ``keys`` events of a
``generator`` source: every event goes through the stage's own processor into the LMDB store,
committed in chunks by the runner's own ``Checkpoint`` with the meta a run writes (format,
pipeline, fingerprints, offsets, event time), so it is the state such a run leaves (only the
events are reduced to the fields the stage reads). The restart is real: a new Python process
loads the pipeline and starts a ``Runner`` over that state with ``--until-end`` semantics; it
resumes at offset ``keys`` and processes ``EXTRA`` more events.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import yaml

from plugins.bench.common import Interrupted, QuietLog, say
from plugins.sources.generator import KEY, PARTITION, TOPIC
from runner import config
from runner.checkpoint import Checkpoint
from runner.codec import compact
from runner.components import Event, Record, RunnerError
from runner.engine import build_stages
from runner.outputs import Emitter
from runner.state import FORMAT, LmdbStore

EXTRA = 100  # events processed by the restarted runner
CHUNK = 50_000  # events per checkpoint while the state is built
STAGE = "per_event"

# The restarted process: its own clock readings (CLOCK_MONOTONIC is system-wide on Linux).
CHILD = r"""
import time
started = time.monotonic()
import json, sys
from runner import config
from runner.engine import Runner
imported = time.monotonic()
first, lines = [], []
class Observer:
    def on_first_event(self):
        first.append(time.monotonic())
    def on_checkpoint(self, number, commit_ms, write, batches):
        pass
pipeline = config.load(sys.argv[1])
loaded = time.monotonic()
runner = Runner(pipeline, until_end=True, observer=Observer(),
                log=lambda *args, **kwargs: lines.append(" ".join(map(str, args))))
runner.run()
print(json.dumps({"started": started, "imported": imported, "loaded": loaded,
                  "first_event": first[0] if first else None, "processed": runner.processed, "log": lines}))
"""


def pipeline_file(workdir: Path, tag: str, count: int) -> str:
    doc = {
        "name": "bench_recovery",
        "source": {"type": "generator", "rate": 0, "count": count},
        "state": {"backend": "lmdb", "path": str(workdir / f"{tag}-state")},
        "checkpoint": {"every_events": 100, "every_ms": 100},
        "dlq": {"type": "jsonl", "path": str(workdir / f"{tag}-dlq.jsonl")},
        "stages": [{"type": "aggregate", "name": STAGE, "key_by": "event_id",
                    "aggregations": {"views": "count", "duration": {"sum": "duration"}}}],
        "sinks": [],
    }
    path = workdir / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return str(path)


def event_id(i: int) -> str:
    return f"evt-0-{i}"  # the generator source's event ids (seed 0)


def build_state(pipeline, keys: int) -> None:
    """The state after generator events 0..keys-1, through the stage's processor, in chunks."""
    settings = pipeline.settings
    stages = build_stages(pipeline)
    fingerprints = {st.name: st.fingerprint() for st in stages if st.fingerprint() is not None}
    store = LmdbStore(settings["state"]["path"])
    try:
        emit = Emitter(settings["name"], {st.name: None for st in stages})
        processors = [st.build(store.table(st.name), emit) for st in stages]
        checkpoint = Checkpoint(store, {}, (), 0, 0, log=QuietLog())
        for lo in range(0, keys, CHUNK):
            hi = min(keys, lo + CHUNK)
            events = [Event(Record(TOPIC, PARTITION, i, None, None, None), {"event_id": event_id(i), "duration": 1.5})
                      for i in range(lo, hi)]
            for processor in processors:
                events = processor.process(events)
            if emit.pending:
                raise RunnerError(f"building the recovery state produced outputs: {emit.pending[0].value[:200]!r}")
            checkpoint.commit([], {"format": FORMAT, "pipeline": settings["name"], "fingerprints": fingerprints,
                                   "offsets": {KEY: hi}, "event_time": {KEY: None}, "watermark": -math.inf})
            if hi % (CHUNK * 4) == 0 or hi == keys:
                say(f"recovery: state of {hi}/{keys} keys written")
    finally:
        store.close()


def restart(path: str) -> dict:
    """Spawn a process that runs the pipeline at ``path`` to its end; when was its first event?"""
    spawned = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, path], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=600)
    except KeyboardInterrupt:
        raise Interrupted() from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0 or not out.strip():
        if proc.returncode in (-2, 130):
            raise Interrupted()
        raise RunnerError(f"the restarted runner failed (exit {proc.returncode}): {err.strip()[-2000:]}")
    child = json.loads(out.strip().splitlines()[-1])
    if child["first_event"] is None:
        raise RunnerError("the restarted runner processed no event")
    return {
        "first_event_s": child["first_event"] - spawned,
        "interpreter_s": child["started"] - spawned,
        "imports_s": child["imported"] - child["started"],
        "load_s": child["loaded"] - child["imported"],
        "open_to_first_event_s": child["first_event"] - child["loaded"],
        "processed": child["processed"],
        "log": child["log"][0] if child["log"] else "",
    }


def recovery(workdir: Path, keys: int) -> dict:
    """Build the state of ``keys`` keys, restart over it, and restart over no state for comparison."""
    path = pipeline_file(workdir, "recovery", keys + EXTRA)
    pipeline = config.load(path)
    say(f"recovery: writing a state of {keys} keys")
    started = time.perf_counter()
    build_state(pipeline, keys)
    built_s = time.perf_counter() - started
    store = LmdbStore(pipeline.settings["state"]["path"], readonly=True)
    try:
        state_bytes = store.size_bytes()
    finally:
        store.close()
    say("recovery: restarting over it")
    restarted = restart(path)
    _check(pipeline, keys)
    say(f"recovery: first event {restarted['first_event_s']:.3f} s after the process started; "
        f"over no state for comparison")
    fresh = restart(pipeline_file(workdir, "fresh", EXTRA))
    return {"keys": keys, "build_s": built_s, "state_bytes": state_bytes, **restarted,
            "fresh_first_event_s": fresh["first_event_s"], "fresh_open_to_first_event_s": fresh["open_to_first_event_s"]}


def _check(pipeline, keys: int) -> None:
    """The restart resumed over the state: it kept the old keys, added the new ones, moved on."""
    store = LmdbStore(pipeline.settings["state"]["path"], readonly=True)
    try:
        table = store.table(STAGE)
        missing = [i for i in (0, keys - 1, keys + EXTRA - 1) if table.get(compact(event_id(i)).encode()) is None]
        offsets = store.meta("offsets", {})
    finally:
        store.close()
    if missing or offsets.get(KEY) != keys + EXTRA:
        raise RunnerError(f"the restart did not resume over the built state: keys {missing} missing, "
                          f"offsets {offsets}")
