"""The processing loop: poll, decode, run the chain, checkpoint, deliver; and recovery."""

from __future__ import annotations

import gc
import math
import signal
import sys
import time
import traceback
from itertools import groupby
from operator import attrgetter

from runner import signals, yamldoc
from runner.checkpoint import Checkpoint, SinkWatch, Stopped, committable
from runner.codec import DecodeError, decode
from runner.components import NO_RECORD, Context, Event, Record, RunnerError
from runner.display import show
from runner.eventtime import EventTime
from runner.outputs import Emitter, Output
from runner.sink_states import sink_states
from runner.state import FORMAT, READS, LmdbStore, MemoryStore, Store
from runner.times import duration_ms, format_duration, format_watermark

_TOPIC_PARTITION = attrgetter("topic", "partition")
PROGRESS_EVERY_S = 10.0  # how often a bounded run says on stderr how far it got
# the same stop signal again within this many seconds is the first one, not a second stop:
# `timeout` sends its SIGTERM to the command and then to the whole process group
SAME_SIGNAL_S = 0.1
GC_THRESHOLDS = (10_000, 10, 10)  # the collector's, while a pipeline runs (Python's: 700, 10, 10)


def build(pipeline, section: str) -> list:
    """The components of ``section`` ("source", "dlq", "stages" or "sinks"), built, in order."""
    name = pipeline.settings["name"]
    return [spec.cls(spec.config, Context(name, spec.name, pipeline.settings)) for spec in pipeline.components()
            if spec.section == section]


def build_stages(pipeline) -> list:
    return build(pipeline, "stages")


def build_sinks(pipeline) -> dict:
    """Result sinks by name, and the DLQ under ``dlq``."""
    sinks = {sink.name: sink for sink in build(pipeline, "sinks")}
    sinks["dlq"], = build(pipeline, "dlq")
    return sinks


def open_store(settings: dict, readonly: bool = False) -> Store:
    state = settings["state"]
    if state["backend"] == "memory":
        return MemoryStore()
    return LmdbStore(state["path"], readonly=readonly)


def fingerprints_of(stages: list) -> dict:
    return {stage.name: stage.fingerprint() for stage in stages if stage.fingerprint() is not None}


def check_state(store: Store, settings: dict, stages: list, sizes: dict) -> None:
    """Refuse a state written by another pipeline, another format or other stage definitions
    (``sizes``: the store's ``table_sizes``)."""
    fmt = store.meta("format")
    if fmt is None:
        return
    where = settings["state"]["path"]
    if fmt not in READS:
        raise RunnerError(f"the state at {where} has format {fmt!r}, this runner reads {' and '.join(map(repr, READS))}: "
                          f"reset it with 'runner state reset' or give state.path another directory")
    owner = store.meta("pipeline")
    if owner != settings["name"]:
        raise RunnerError(f"the state at {where} belongs to pipeline {owner!r}, not {settings['name']!r}: "
                          f"give this pipeline its own state.path")
    stored = store.meta("fingerprints") or {}
    for stage in stages:
        now, before = stage.fingerprint(), stored.get(stage.name)
        if now is not None and before is not None and before != now and _holds_state(store, stage, sizes):
            keys = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
            if before.get("type") == now.get("type"):  # else every key of either type counts
                keys = [k for k in keys if _written(stage, k)] or keys
            changed = ", ".join(_change(before, now, k) for k in keys)
            raise RunnerError(f"stage {stage.name} was checkpointed with another definition ({changed}); "
                              f"its state cannot be read with the new one: run 'runner state reset' "
                              f"to start over, or restore the old definition")


def _change(before: dict, now: dict, key: str) -> str:
    """One changed key of a stage's definition, as its YAML says it (``size_ms`` as ``size``,
    in a duration's units)."""
    def shown(definition: dict) -> str:
        if key not in definition:
            return "(none)"
        value = definition[key]
        return format_duration(value) if key.endswith("_ms") and isinstance(value, int) else yamldoc.show(value)
    return f"{key.removesuffix('_ms')}: {shown(before)} -> {shown(now)}"


def _written(stage, key: str) -> bool:
    """A definition key the stage's YAML can hold (a tumbling window's advance is its size)."""
    return not key.endswith("_ms") or key.removesuffix("_ms") in stage.config_schema.get("properties", {})


def _holds_state(store: Store, stage, sizes: dict) -> bool:
    """The stage's table holds entries its definition is needed to read (nothing stored, or
    only its ``definition_free_keys``: a new definition is safe)."""
    free = sum(1 for key in stage.definition_free_keys if store.read(stage.name, key) is not None)
    return sizes.get(stage.name, 0) > free


def orphaned_state(sizes: dict, stages: list) -> list[str]:
    """Warnings for tables of the state (``sizes``: the store's ``table_sizes``) that no stage
    of the pipeline reads (a stage renamed or removed): their state is kept, unused, and the
    stage under the new name starts empty."""
    names = {stage.name for stage in stages}
    orphans = {name: count for name, count in sizes.items() if name not in names and count}
    return [f"WARNING: the state holds {count:,} entr{'y' if count == 1 else 'ies'} of stage {name!r}, which this pipeline no longer has: "
            f"a renamed stage starts empty under its new name (rename it back to go on from its state); "
            f"the old state stays unused until 'runner state reset'" for name, count in sorted(orphans.items())]


def plugin_failure(component, method: str, exc: Exception) -> RunnerError:
    """What a source's or sink's ``method`` raised, as the RunnerError that stops the run:
    naming the component and where it raised (a RunnerError is already one). Such a
    component retries what may pass on its own, as the Kafka source does."""
    if isinstance(exc, RunnerError):
        return exc
    frames = traceback.extract_tb(exc.__traceback__)
    own = getattr(sys.modules.get(type(component).__module__), "__file__", None)
    frame = next((f for f in reversed(frames) if f.filename == own), frames[-1])  # the plugin's line, not a library's
    return RunnerError(f"{component.name} ({component.type}): {method} raised {type(exc).__name__}: {exc} "
                       f"(at {frame.filename}:{frame.lineno})")


def _passed(proc, events) -> list:
    """What ``proc.process`` returned, as the list of events that go on (None: none); a
    RunnerError if it holds something else than events (checked by its ends: a stage's bug
    is systematic, and the check stays off the per-event path)."""
    try:
        events = [] if events is None else list(events)
    except TypeError:
        raise RunnerError(f"stage {proc.name} ({_where(proc)}) returned {type(events).__name__}, not a list of the "
                          f"Event objects that go on: a bug of the stage's plugin") from None
    wrong = [e for e in events[:1] + events[-1:] if not isinstance(e, Event)]
    if wrong:
        raise RunnerError(f"stage {proc.name} ({_where(proc)}) returned a list holding {type(wrong[0]).__name__}, "
                          f"not a list of the Event objects that go on: a bug of the stage's plugin")
    return events


def _where(proc) -> str:
    return f"{type(proc).__module__}.{type(proc).__qualname__}.process"


class Runner:
    """Runs one pipeline until stopped, until the end of its input, or drained."""

    def __init__(self, pipeline, until_end: bool = False, drain: bool = False, log=None, observer=None):
        self.pipeline = pipeline
        self.settings = s = pipeline.settings
        self.bounded = until_end or drain
        self.drain = drain
        self._log = log  # status lines go there (None: printed; see ``log``)
        self.every_events = s["checkpoint"]["every_events"]
        self.every_s = s["checkpoint"]["every_ms"] / 1000
        self.when_quiet = s["checkpoint"]["when_quiet"]
        self.stop_requested = False
        self.signalled: int | None = None  # the signal (SIGINT, SIGTERM) that asked for the stop, if one did
        self.output_closed = False  # a sink's or the log's reader is gone: it asked for the stop
        self.stopped = False  # all is closed; only the last status line is left
        self.opened = False  # sources, state and sinks are open: a stop is a clean one from here
        self._pkeys: dict = {}
        self._partitions_seen: set[str] = set()  # processed since the last ``_idle`` (unbounded runs)
        self.processed = 0
        # observer.on_checkpoint(number, commit_ms, write, batches) once each checkpoint is on
        # disk (see Checkpoint.on_durable), with batches = [(time.time() the source's poll
        # returned them, its fetched_at, [record timestamp, ...]), ...] of the records it holds;
        # observer.on_first_event() once: for benchmarks, off the hot path when None
        self.observer = observer
        self._batches: list = []
        self._polled_at = 0.0
        self._fetched_at: float | None = None
        self._advanced_to = None  # the watermark window stages last saw
        self._next_recheck = 0.0  # bounded runs: when to look for lost input again

    # --- set up -------------------------------------------------------------------------
    def _open(self) -> None:
        """Open state, source, stages and sinks, in this order, and deliver the outbox again."""
        started = time.perf_counter()
        number = self._open_state()
        # the source first: it may start reading ahead while the rest is set up
        stored_offsets = self.store.meta("offsets", {}) or {}
        self._open_source(stored_offsets)
        self._build_processors()
        outbox = [(seq, Output.from_tuple(item)) for seq, item in self.store.outbox()]  # read once, for all below
        restarted = self._open_sinks(number, outbox)
        self._start_event_time()
        if outbox and restarted:
            self._commit()  # the sinks' new states on disk before the outbox reaches them
            self.checkpoint.settle()
        self.checkpoint.redeliver()
        self.opened = True  # before the start line: a stop asked for once it is out is a clean one
        self._report_start(number, stored_offsets, len(outbox), (time.perf_counter() - started) * 1000)

    def _open_state(self) -> int:
        """Build the source and stages, open the store and check that this pipeline may read
        it; return the stored checkpoint's number (0: none)."""
        s = self.settings
        self.source, = build(self.pipeline, "source")
        self.max_bytes = s["source"].get("max_record_bytes", 1 << 20)
        self.stages = build_stages(self.pipeline)
        self.store = open_store(s)
        sizes = self.store.table_sizes()
        check_state(self.store, s, self.stages, sizes)
        for warning in orphaned_state(sizes, self.stages):
            self.log(warning, file=sys.stderr)
        # a stage renamed or removed keeps its stored definition while its state is there: it
        # must not be read under the old name with another definition later
        stored = self.store.meta("fingerprints") or {}
        fingerprints = {**{name: fp for name, fp in stored.items() if sizes.get(name)}, **fingerprints_of(self.stages)}
        self.meta_fixed = {"format": FORMAT, "pipeline": s["name"], "fingerprints": fingerprints}
        return self.store.meta("checkpoint", 0)

    def _open_source(self, stored_offsets: dict) -> None:
        try:
            self.positions = dict(self.source.open(dict(stored_offsets)))
        except Exception as exc:
            raise plugin_failure(self.source, "open", exc) from None
        self._check_positions(stored_offsets, reported=self.source.lost())
        self.stop = self.source.end_offsets() if self.bounded else None
        self._started_at = {p: min(self.positions.get(p, 0), end) for p, end in (self.stop or {}).items()}

    def _build_processors(self) -> None:
        """Each stage's running logic, over its table of the store."""
        routes = {d["name"]: tuple(d["to"]) if d.get("to") else None for d in self.settings["stages"]}
        self.emit = Emitter(self.settings["name"], routes)
        self.processors = [st.build(self.store.table(st.name), self.emit) for st in self.stages]
        windowed = [i for i, st in enumerate(self.stages) if st.windowed]
        self.first_windowed = windowed[0] if windowed else None
        self.windowed = [self.processors[i] for i in windowed]

    def _open_sinks(self, number: int, outbox: list) -> bool:
        """Open every sink from its committed state and set up the checkpoint; True when a
        sink starts from another state than the stored one (new, or restated by its ``open``),
        which must be committed before the outbox reaches it."""
        s = self.settings
        self.sinks = build_sinks(self.pipeline)
        self.result_sinks = tuple(d["name"] for d in s["sinks"])  # where a result without ``to:`` goes
        formatters = {st.name: st.format_result for st in self.stages}
        for sink in self.sinks.values():
            sink.context.formatters = formatters
        states, new, renames = sink_states(self.store, self.sinks, self.result_sinks, s["name"], number,
                                           outbox, self.log)
        restated = []  # sinks that start from another state than the stored one (see Sink.open)
        for name, sink in self.sinks.items():
            try:
                begins_from = sink.open(states[name])
            except Exception as exc:
                raise plugin_failure(sink, "open", exc) from None
            if begins_from is not None:
                states[name] = committable(sink, "open", begins_from)
                restated.append(name)
        for name in new:
            if name not in restated:
                states[name] = committable(self.sinks[name], "fresh_start", self.sinks[name].fresh_start())
        self.meta_fixed["sink_types"] = {name: sink.type for name, sink in self.sinks.items()}
        next_seq = outbox[-1][0] + 1 if outbox else 0
        self.checkpoint = Checkpoint(self.store, self.sinks, self.result_sinks, number,
                                     next_seq, should_stop=lambda: self.stop_requested, log=self.log,
                                     output_closed=self._output_closed)
        self.checkpoint.sink_states = dict(states)
        self.checkpoint.restore(outbox, renames)
        if self.observer is not None:
            self.checkpoint.on_durable = self._durable
        return bool(new or restated)

    def _start_event_time(self) -> None:
        """With window stages: event time and the watermark as stored, and the windows that
        are final under them emitted."""
        self.tracker = None
        if self.first_windowed is None:
            return
        s = self.settings
        et = s["event_time"]
        self.tracker = EventTime(
            self.stages[0].context, self.stages[self.first_windowed].name,
            duration_ms(et["grace"]), duration_ms(et["idle_timeout"]) if not self.bounded else 0,
            # the partitions of the source's topics at start only (CONTRACT section 6): one
            # that is no longer read would hold the watermark back for good
            {p: h for p, h in (self.store.meta("event_time", {}) or {}).items() if p in self.positions},
            self.store.meta("watermark", -math.inf))
        self.tracker.add_partitions(self.positions)
        if self.tracker.watermark == math.inf:
            self.log(f"WARNING: the state at {s['state']['path']} was drained (watermark +inf): every event "
                     f"is late for the window stages from now on (CONTRACT section 6: the watermark never goes "
                     f"back); 'runner state reset' starts over", file=sys.stderr)
        # windows final under the stored event time with today's grace (or a stage back
        # under its old name) are emitted now, not only once a record comes
        self._advance(self.tracker.recompute())

    def _check_positions(self, stored: dict, reported: dict) -> None:
        """Say so where the source starts a partition before its checkpointed offset, unless
        it ``reported`` the partition's data lost: a source whose ``open`` ignores the offsets
        it is given would count records twice."""
        for partition, offset in sorted(stored.items()):
            position = self.positions.get(partition)
            if position is not None and position < offset and partition not in reported:
                self.log(f"WARNING: source {self.source.type} starts {partition} at offset {position}, before the "
                         f"checkpoint's {offset}: its data was lost (a file replaced by a shorter one, a broker "
                         f"restarted empty), or the source does not start where it is told and records "
                         f"{position}..{offset - 1} are counted again (a source's open must return the offsets it "
                         f"is given)", file=sys.stderr)

    def _report_start(self, number, offsets, outbox, elapsed_ms) -> None:
        name = self.settings["name"]
        if not self.store.persistent:
            self.log(f"[{name}] state is in memory: nothing is restored or persisted")
        elif number == 0:
            reset = self.settings["source"].get("auto_offset_reset")  # a Kafka source's: where it starts
            self.log(f"[{name}] no checkpoint in {self.settings['state']['path']}: starting fresh"
                     + (f" (auto_offset_reset={reset})" if reset else ""))
        else:
            where = ", ".join(f"{p}={o}" for p, o in sorted(offsets.items()))
            size = self.store.size_bytes() / (1 << 20)
            self.log(f"[{name}] restored checkpoint {number} in {elapsed_ms:.0f} ms: offsets {where}; "
                     f"state {size:.1f} MiB; {outbox} outputs redelivered")

    # --- the loop -----------------------------------------------------------------------
    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in signals.STOPS}
        thresholds = gc.get_threshold()
        watch = SinkWatch(lambda: getattr(self, "checkpoint", None), self.log)
        watch.start()
        try:
            try:
                for signum in signals.take():  # came while the command started
                    self._on_signal(signum, None)
                self._open()
                # Fewer young collections, so fewer objects reach the old generations and full
                # collections (28-ms pauses) stop: over 200k events of fault_tolerant the
                # collector's time fell from 140 to 13 ms. The thresholds are restored at the end.
                gc.set_threshold(*GC_THRESHOLDS)
                self._loop()
                self._finish()
            except Stopped:
                if not self.opened:  # nothing was read: nothing to checkpoint
                    self._abort()
                    self.log(f"[{self.settings['name']}] stopped while starting; nothing was read", file=sys.stderr)
                    return 0
                if not self.output_closed:  # which said what stays
                    self.log(f"[{self.settings['name']}] stopped while a sink was not confirming: what it had not "
                             f"confirmed {self._kept()}", file=sys.stderr)
            except KeyboardInterrupt:  # a second stop signal
                self._abort()
                self.log(f"[{self.settings['name']}] stopped at once by a second signal, without a checkpoint: "
                         f"the last one on disk stands", file=sys.stderr)
                raise
            except BaseException:
                self._abort()
                raise
            self._close()
        finally:
            watch.stop()
            gc.set_threshold(*thresholds)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _on_signal(self, signum, frame) -> None:
        now = time.monotonic()
        if self.signalled is not None:  # a second Ctrl+C: the last checkpoint stands
            if self.stopped or (signum == self.signalled and now - self._signalled_at < SAME_SIGNAL_S):
                return  # the stop is done, or this is the first one again (timeout sends it twice)
            raise KeyboardInterrupt(signum)
        self.stop_requested = True
        self.signalled, self._signalled_at = signum, now
        checkpoint = getattr(self, "checkpoint", None)
        if not self.opened or (checkpoint is not None and checkpoint.in_sink):
            # starting (a broker that does not answer is waited for 10 s), or a sink that hangs:
            # neither must keep us; what a sink did not take stays in the outbox
            raise Stopped()

    def _loop(self) -> None:
        self.uncommitted = 0
        self.dirty_since = None
        last_display = last_progress = began = time.monotonic()
        while not self.stop_requested and not self._reached_end():
            records = self._poll(0.1 if self.every_s == 0 else min(0.1, self.every_s))
            if self.observer is not None:
                self._polled_at, self._fetched_at = time.time(), self.source.fetched_at
            self.checkpoint.settle(wait=not records)  # outputs of a checkpoint on disk go out now
            if records:
                self._consume(records)
            for partition, (position, end) in self.source.lost().items():
                self.positions[partition] = position
                if self.stop is not None:  # what was there at start is gone: stop at what is there now
                    self.stop[partition] = end
            if not records and self.stop is not None:
                self._recheck_ends(now=time.monotonic())
            now = time.monotonic()
            if self.tracker is not None and not self.bounded:
                self._idle(now)
            if self.dirty_since is None and (self.emit.pending or self.checkpoint.pending()):
                self.dirty_since = now
            if self.every_s and self.dirty_since is not None and now - self.dirty_since >= self.every_s:
                self._commit()
            if now - last_display >= 1.0:
                self._display()
                last_display = now
            if self.stop is not None and now - last_progress >= PROGRESS_EVERY_S:
                self._progress(now - began)
                last_progress = now

    def _poll(self, timeout: float) -> list:
        if self.when_quiet and self.dirty_since is not None:
            records = self._source_poll(0)
            if records:
                return records
            self._commit()  # nothing more is ready: what was read need not wait for more input
        return self._source_poll(timeout)

    def _source_poll(self, timeout: float) -> list:
        try:
            records = self.source.poll(timeout)
        except Exception as exc:
            raise plugin_failure(self.source, "poll", exc) from None
        if records.__class__ is not list:  # any iterable will do, and None for none
            records = [] if records is None else list(records)
        if records and records[0].__class__ is not Record and not all(hasattr(records[0], f) for f in Record._fields):
            # checked by the first (a source's mistake is systematic): a Record, or one with its attributes
            raise RunnerError(f"{self.source.name} ({self.source.type}): poll returned {type(records[0]).__name__} "
                              f"records, without the attributes of runner.components.Record")
        return records

    def _recheck_ends(self, now: float) -> None:
        """A bounded run with nothing to read: if the input present at start was lost (a
        partition's end went back below its stop offset), stop at the new end, never hang."""
        if now < self._next_recheck or self._reached_end():
            return
        self._next_recheck = now + 2.0
        try:
            ends = self.source.end_offsets()
        except Exception:  # the broker is away: try again later
            return
        for partition, end in ends.items():
            if end < self.stop.get(partition, 0):
                self.log(f"WARNING: {partition} now ends at {end}, before the stop offset "
                         f"{self.stop[partition]} fixed at start: its data was lost; stopping at {end}",
                         file=sys.stderr)
                self.stop[partition] = end
                if self.positions.get(partition, 0) > end:
                    self.positions[partition] = self.source.restart(partition, self.positions[partition], end)

    def _progress(self, seconds: float) -> None:
        """A bounded run's way to its stop offsets (records are counted by offsets), on stderr."""
        start, stop = self._started_at, self.stop
        total = sum(max(0, end - start.get(p, 0)) for p, end in stop.items())
        done = sum(max(0, min(self.positions.get(p, 0), end) - start.get(p, 0)) for p, end in stop.items())
        if total:
            shown = self._watermark()
            watermark = f"; watermark {shown}" if shown else ""
            self.log(f"[{self.settings['name']}] {done:,} of {total:,} records ({done / total:.1%}), "
                     f"{done / seconds:,.0f}/s{watermark}", file=sys.stderr)

    def _watermark(self) -> str | None:
        """The pipeline watermark as status lines show it; None without window stages, or
        before the first event."""
        return format_watermark(self.tracker.watermark) if self.tracker else None

    def _reached_end(self) -> bool:
        if self.stop is None:
            return False
        return all(self.positions.get(p, 0) >= end for p, end in self.stop.items())

    def _consume(self, records) -> None:
        if self.stop is not None:
            records = self._before_stop(records)
        i, n = 0, len(records)
        while i < n and not self.stop_requested:
            room = self.every_events - self.uncommitted
            chunk = records[i:i + room]
            i += len(chunk)
            if self.dirty_since is None:
                self.dirty_since = time.monotonic()
            self._process(chunk)
            self.uncommitted += len(chunk)
            if self.uncommitted >= self.every_events:
                self._commit()

    def _before_stop(self, records: list) -> list:
        """The records before their partition's stop offset. Records come in runs per partition,
        in offset order: a run whose last record is before the stop is kept whole."""
        kept = []
        for _, run in groupby(records, key=_TOPIC_PARTITION):
            run = list(run)
            limit = self.stop.get(self._partition(run[0]), 0)
            kept += run if run[-1].offset < limit else [r for r in run if r.offset < limit]
        return kept

    def _partition(self, record) -> str:
        key = (record.topic, record.partition)
        name = self._pkeys.get(key)
        if name is None:
            name = self._pkeys[key] = f"{record.topic}/{record.partition}"
        return name

    def _process(self, records) -> None:
        emit, positions, max_bytes, seen = self.emit, self.positions, self.max_bytes, self._partitions_seen
        events = []
        last_topic = last_partition = name = None
        for r in records:
            if r.partition != last_partition or r.topic != last_topic:  # records come in runs per partition
                last_topic, last_partition, name = r.topic, r.partition, self._partition(r)
                seen.add(name)
            positions[name] = r.offset + 1
            if r.value is NO_RECORD:
                continue
            try:
                data = decode(r.value, max_bytes)
            except DecodeError as exc:
                emit.dead_letter(r, "source", "deserialization", str(exc))
                continue
            events.append(Event(r, data, name))
        if self.observer is not None:
            if not self.processed:
                self.observer.on_first_event()
            self._batches.append((self._polled_at, self._fetched_at, [r.timestamp for r in records]))
        self.processed += len(records)
        for i, proc in enumerate(self.processors):
            if i == self.first_windowed:
                events = self.tracker.observe(events, emit)
            if events:
                events = proc.process(events)
                if events.__class__ is not list or (events and not (events[0].__class__ is events[-1].__class__ is Event)):
                    events = _passed(proc, events)
        if self.tracker is not None:
            self._advance(self.tracker.recompute())

    def _advance(self, watermark: float) -> None:
        if watermark != self._advanced_to:
            self._advanced_to = watermark
            for proc in self.windowed:
                proc.advance(watermark)

    def _idle(self, now: float) -> None:
        if self._partitions_seen:
            self.tracker.seen(self._partitions_seen, now)
            self._partitions_seen.clear()
        self.tracker.update_idle(self.source.caught_up, now)
        self._advance(self.tracker.recompute())

    def _commit(self, confirm: bool = False) -> None:
        meta = {"offsets": dict(self.positions)}
        if self.meta_fixed:  # the same at every checkpoint of a process: written by its first
            meta.update(self.meta_fixed)
            self.meta_fixed = None
        if self.tracker is not None:
            meta["event_time"] = {p: (None if h == -math.inf else h) for p, h in self.tracker.high.items()}
            meta["watermark"] = self.tracker.watermark
        else:
            meta["event_time"] = {p: None for p in self.positions}
            meta["watermark"] = -math.inf
        self.checkpoint.commit(self.emit.take(), meta, confirm, note=self._batches)
        self._batches = []
        self.uncommitted = 0
        self.dirty_since = None

    def _durable(self, number: int, commit_ms: float, write, batches: list) -> None:
        self.observer.on_checkpoint(number, commit_ms, write, batches)

    def _finish(self) -> None:
        if self.drain and self.tracker is not None and self._reached_end():
            self._advance(self.tracker.drain())
        self._commit()
        self.checkpoint.settle()
        if self.checkpoint.unconfirmed_count():  # confirm the last deliveries: the outbox is left empty
            self._commit(confirm=True)
            self.checkpoint.settle()
        self._display(final=True)

    def _display(self, final: bool = False) -> None:
        if not self.checkpoint.displays:
            return
        lines = [line for proc in self.processors for line in (proc.final_report() if final else proc.report())]
        if lines:
            self.checkpoint.display(lines)

    def _output_closed(self) -> None:
        """A sink's reader is gone for good (``runner run ... | head``): stop cleanly, as
        SIGPIPE would stop a command, but as a SIGTERM stop does."""
        if not self.output_closed and not self.stopped:
            self.output_closed = self.stop_requested = True
            self.log(f"[{self.settings['name']}] an output was closed by its reader: stopping; what a sink "
                     f"did not take {self._kept()}", file=sys.stderr)

    def _kept(self) -> str:
        store = getattr(self, "store", None)
        if store is None or store.persistent:
            return "stays in the outbox and is delivered at the next start"
        return "is dropped with the in-memory state"

    def log(self, line: str, file=None) -> None:
        """A status line, to the ``log`` given, or shown (``runner.display.show``). A reader
        gone from standard output (``runner run ... | head``) stops the run as a sink's does;
        one gone from stderr only silences it."""
        if self._log is not None:
            self._log(line, file=file)
        elif not show(line, file) and file in (None, sys.stdout):
            self._output_closed()

    def _abort(self) -> None:
        """Leave without a checkpoint, as a crash would: the last checkpoint stands. What was
        opened is closed (sinks and sources may run helper processes)."""
        parts = [*getattr(self, "sinks", {}).values(), getattr(self, "source", None), getattr(self, "store", None)]
        for part in parts:
            try:
                if part is not None:
                    part.close()
            except Exception:  # it may not be open, or be what failed
                pass

    def _close(self) -> None:
        for name, sink in self.sinks.items():
            try:
                sink.close()
            except Exception as exc:  # its unconfirmed outputs are in the outbox: nothing is lost
                self.log(f"[{self.settings['name']}] sink {name} did not close cleanly: {exc}", file=sys.stderr)
        self.source.close()
        self.store.close()
        self.stopped = True
        shown = self._watermark()
        watermark = f", watermark {shown}" if shown else ""
        self.log(f"[{self.settings['name']}] stopped cleanly after {self.processed} records; "
                 f"checkpoint {self.checkpoint.number}{watermark}")
