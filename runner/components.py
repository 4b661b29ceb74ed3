"""Base classes of sources, stages and sinks: what the runner promises them and asks of them.

Every component class carries ``type`` (its YAML name) and ``config_schema`` (a JSON Schema
object of its YAML keys, each with a ``description`` and a ``default`` or a place in
``required``). The runner validates a pipeline against these schemas before it builds
anything, fills the defaults in, and passes the resulting dict as ``config``.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any, ClassVar, Iterable, NamedTuple

from runner.display import show
from runner.times import InvalidTime, parse_event_time


class Record(NamedTuple):
    """One record read from a source. Kafka's ``ConsumerRecord`` has the same attributes."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None  # the record's own timestamp (ms), not the event time
    key: bytes | None
    value: bytes | None


NO_RECORD = object()
"""A source's ``Record.value`` for an offset that holds no record (a blank line of a file):
it moves the partition's position and is otherwise ignored."""


class Event:
    """A decoded record on its way down the chain of stages."""

    __slots__ = ("record", "data", "partition", "time", "wp")

    def __init__(self, record: Record, data: Any, partition: str = ""):
        self.record = record
        self.data = data  # the decoded JSON value; a stage may replace it
        self.partition = partition  # "topic/partition"
        self.time: int | None = None  # event time (ms) once a stage has read it
        self.wp: float | None = None  # its partition's watermark when it reached the first window stage

    def order(self) -> tuple:
        """Event order: (event time, topic, partition, offset), total and independent of arrival."""
        r = self.record
        return (self.time, r.topic, r.partition, r.offset)


class ProcessingError(Exception):
    """Raised by a stage for one event: that stage's changes for the event are discarded,
    the event goes to the DLQ as ``processing`` and no further down the chain."""


class ConfigError(Exception):
    """A pipeline file that cannot run; ``lines`` are ``FILE:LINE: PATH: message`` lines."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


class RunnerError(Exception):
    """A failure while running that a person must act on (exit 1); the message says how."""


class Context:
    """What a component learns about the pipeline it is built into."""

    def __init__(self, pipeline: str, name: str, settings: dict):
        self.pipeline = pipeline  # the pipeline's name (first part of every id)
        self.name = name  # this component's name, unique in the pipeline
        self.settings = settings  # the whole validated pipeline (read only)
        self.time_field = (settings.get("event_time") or {}).get("field", "timestamp")
        self.formatters: dict = {}  # stage name -> its console formatter (filled by the runner)
        # set by the runner before sinks open: the run starts with no checkpoint (a first run,
        # after a state reset, every start of a memory state); no output of the outbox is for
        # this sink, or the sink is new to the state: nothing of ours waits unconfirmed there
        self.fresh_state = True
        self.nothing_waiting = True

    def time_of(self, event: Event) -> int:
        """The event's time (ms) from ``event_time.field``, read once and kept on the event."""
        if event.time is None:
            data = event.data
            if data.__class__ is not dict:
                raise ProcessingError("event is not a JSON object")
            value = data.get(self.time_field)
            if value is None:  # absent, or null: the same (CONTRACT section 4)
                raise ProcessingError(f"missing event-time field: {self.time_field}")
            try:
                event.time = parse_event_time(value)
            except InvalidTime as exc:
                raise ProcessingError(f"invalid timestamp for field {self.time_field}: {exc}") from None
        return event.time


class Component:
    type: ClassVar[str]
    config_schema: ClassVar[dict] = {"type": "object", "properties": {}, "additionalProperties": False}

    @classmethod
    def lint(cls, config: dict) -> list[tuple[tuple, str]]:
        """Cross-field rules the schema cannot say: a list of (path inside config, message).

        Called by ``runner validate`` and before every run, on a config that already
        matches ``config_schema`` and has its defaults filled in.
        """
        return []

    def __init__(self, config: dict, context: Context):
        self.config = config
        self.context = context
        self.name = context.name


class Source(Component):
    """Where input records come from. One instance reads every partition of its topics."""

    fetched_at: float | None = None
    """``time.time()`` when the records of the last ``poll`` were fetched, for a source that
    reads ahead of its polls (the Kafka source's reader process); None if it does not know.
    Only measurements read it (``runner bench`` splits a record's latency at it)."""

    def open(self, offsets: dict[str, int]) -> dict[str, int]:
        """Called once before the first ``poll``.

        ``offsets`` maps ``"topic/partition"`` to the next offset to read, as restored
        from the last checkpoint (empty on a first run). Assign every partition and
        return the position of every partition: the offset given, where there is one (a
        position before it is reported at start, as records would be counted twice). A
        partition without a stored offset, or whose stored offset lies beyond its end,
        starts where the source's own configuration says (the Kafka source's
        ``auto_offset_reset``); the second case must be reported loudly, never waited on.
        Raising ``RunnerError`` stops the runner with exit 1 (e.g. no broker).
        """
        raise NotImplementedError

    def end_offsets(self) -> dict[str, int]:
        """Called right after ``open`` by ``--until-end`` and ``--drain``: return the stop offset
        of every partition, the end as it is now (an end ``open`` has just measured will do).
        While such a run has nothing to read it asks again every 2 s, to stop at a lower end
        if input present at start was lost."""
        raise NotImplementedError

    def poll(self, timeout: float) -> Iterable[Record]:
        """Return the records available within ``timeout`` seconds (possibly none), in
        offset order within each partition. Records of different partitions may come in
        any interleaving: results never depend on it. ``poll(0)`` must not wait: with
        ``checkpoint.when_quiet`` the runner asks it whether a record is ready now."""
        raise NotImplementedError

    def caught_up(self, partition: str) -> bool:
        """True when the partition's position equals its end at the last fetch. An
        unbounded run lets a caught-up partition that has had no event for ``idle_timeout``
        stop holding the watermark back: the default, always True, suits a source whose
        records are all there at once (a file); a source that waits for new input must
        tell."""
        return True

    def lost(self) -> dict[str, tuple[int, int]]:
        """Called after ``open`` and after every poll: partitions the source moved back on
        its own since the last call, because the broker lost their data, as ``{partition:
        (position, end)}`` (after ``open``: those it started before their stored offset, and
        said so).
        The runner goes on from ``position``; a bounded run then stops at ``end``."""
        return {}

    def restart(self, partition: str, position: int, end: int) -> int:
        """The runner found ``partition`` ending at ``end``, before its ``position``: the
        data it was reading is gone. Report it, go on from where the source's reset rule
        says, and return the new position. Sources that cannot lose data keep the default."""
        raise RunnerError(f"{partition} ends at {end}, before the position {position}")

    def close(self) -> None:
        """Called at a clean stop; not called after SIGKILL."""


class Stage(Component):
    """One link of the chain. The class is the validated, immutable definition; ``build``
    makes the running logic from it with its restored state passed in, so recovery is
    the normal code path.

    A stage's state lives in a ``runner.state.Table`` (keys are bytes, values any
    picklable object). Every ``put`` and ``delete`` since the last checkpoint is written
    in the next checkpoint's transaction, together with source offsets and outputs.
    """

    windowed: ClassVar[bool] = False  # True: takes part in event time (watermarks, lateness)
    # keys of the stage's table whose values its definition is not needed to read (a window
    # stage's late counter): holding only those, it takes a changed definition
    definition_free_keys: ClassVar[tuple[bytes, ...]] = ()

    def fingerprint(self) -> dict | None:
        """Parameters a stored state must have been made with (window sizes...). A state
        made with others is refused at start, while the stage's table holds entries (but its
        ``definition_free_keys``), instead of being read wrongly; an empty one takes them."""
        return None

    def build(self, table, emit) -> "Processor":
        """Return the running logic over ``table`` (this stage's restored state).
        ``emit`` is the pipeline's ``runner.outputs.Emitter``: results and DLQ records go
        through it, into the outbox of the next checkpoint."""
        raise NotImplementedError

    def format_result(self, result: dict) -> str | None:
        """How the console shows one of this stage's results (None: as JSON)."""
        return None

    def dump(self, table) -> Any:
        """The stage's part of ``runner state dump``: JSON-able, from a read-only table."""
        return None


class Processor:
    """A stage's running logic, built by ``Stage.build``."""

    def __init__(self, stage: Stage, table, emit):
        self.stage = stage
        self.name = stage.name
        self.table = table
        self.emit = emit

    def process(self, events: list[Event]) -> list[Event]:
        """Handle a batch of events in order; return those that go on down the chain, as a
        list of ``Event`` objects (None: none; a list that holds something else, at either
        end, stops the run with an error naming the stage).

        The default calls ``process_one`` for each event and sends an event whose call
        raises to the DLQ as a processing error, after taking back what the call put in
        or deleted from the table and the results it emitted (CONTRACT section 4: a failed
        event leaves no trace). Batches are cut at checkpoints: never rely on their size.
        """
        passed, table, emit = [], self.table, self.emit
        try:
            for event in events:
                table.journal, emitted = [], len(emit.pending)
                try:
                    out = self.process_one(event)
                    if out is not None and not isinstance(out, Event):
                        raise TypeError(f"process_one returned {type(out).__name__}, not an Event or None")
                except Exception as exc:
                    table.undo(table.journal)
                    del emit.pending[emitted:]
                    if not isinstance(exc, ProcessingError):
                        self._report_bug(exc)
                        exc = ProcessingError(f"{type(exc).__name__}: {exc}")
                    self.fail(event, exc)
                    continue
                if out is not None:
                    passed.append(out)
        finally:
            table.journal = None
        return passed

    def _report_bug(self, exc: Exception) -> None:
        """An exception that is not a ``ProcessingError`` may be a bug of the stage's rather
        than bad input: its first one is shown with its traceback on stderr, so a stage that
        fails every event is not mistaken for bad data (each such event still goes to the DLQ)."""
        if getattr(self, "_bug_reported", False):
            return
        self._bug_reported = True
        trace = "".join(traceback.format_exception(exc)).rstrip()
        show(f"WARNING: stage {self.name} raised {type(exc).__name__}, not a ProcessingError: the event goes to "
             f"the DLQ as a processing error, as will others like it (only this first one is shown here):\n{trace}",
             sys.stderr)

    def fail(self, event: Event, error: ProcessingError) -> None:
        """Send ``event`` to the DLQ as this stage's processing error (it goes no further)."""
        self.emit.dead_letter(event.record, self.name, "processing", str(error))

    def process_one(self, event: Event) -> Event | None:
        """Return the event (changed or not) to pass it on, None to drop it; raise
        ``ProcessingError`` to send it to the DLQ. Its ``table.put``/``delete`` calls and
        results are then taken back; a value changed in place is not: change a copy, or
        raise before changing it."""
        return event

    def advance(self, watermark: float) -> None:
        """Window stages only: the pipeline watermark is now ``watermark`` (ms; ``-math.inf``
        before any event, ``math.inf`` when draining); emit and forget every window that is
        final."""

    def report(self) -> list[str]:
        """Display lines for the console (not results: never written to other sinks)."""
        return []

    def final_report(self) -> list[str]:
        """Display lines at a clean stop, whatever ``report``'s own pace (default: ``report``'s)."""
        return self.report()


class Sink(Component):
    """Where results (or dead letters) go. A sink sees an output only after the checkpoint
    that holds it has committed; until the sink confirms it with ``flush``, the output
    stays in the outbox and is delivered again after a restart."""

    exactly_once: ClassVar[bool] = False  # True: redelivery after a crash never duplicates (`runner plugins` shows it)
    shows_display: ClassVar[bool] = False  # True: ``display`` shows lines (they are made only for such sinks)

    @classmethod
    def target(cls, config: dict) -> str | None:
        """What this sink writes that no other sink (or DLQ) of the pipeline may write too,
        as a string two configs can be compared by (a file's real path); None: shareable.
        Two sinks of one pipeline with the same target are refused by ``runner validate``."""
        return None

    def open(self, state: Any) -> Any:
        """Called once before anything is delivered, with what ``flush`` last returned
        as committed in a checkpoint (None on a first run). An exactly-once sink uses it
        to find what a crash left behind (a file's committed length, Kafka end offsets).
        A sink that starts from another state than ``state`` (the jsonl sink pointed at
        another file) returns it: it is committed before anything is delivered, as a
        ``fresh_start`` state is. None: ``state`` stands."""

    def fresh_start(self) -> Any:
        """Called after ``open(None)`` when no run of this state gave this sink anything (a
        first run, a state reset, a new or retyped sink, or any sink without a state while
        the outbox is empty); ``context.nothing_waiting`` is true then already in ``open``. An
        exactly-once sink may then skip looking for earlier deliveries (``context.fresh_state``
        tells a first run from a sink new to an existing state). The return value (None:
        nothing) is committed like ``flush``'s, in a checkpoint on disk before anything is
        delivered."""
        return None

    def deliver(self, outputs: list) -> None:
        """Hand over ``runner.outputs.Output`` objects; may return before they are
        durable. After it raised, the sink's next confirmation fails whatever ``flush``
        returns: the runner calls ``recover`` and delivers every output not yet confirmed
        again, as after a failed ``flush``. A ``BrokenPipeError``
        from ``deliver``, ``flush`` or ``display`` says that the sink's reader is gone for
        good (a closed pipe): the runner then stops cleanly, as on SIGTERM, instead of
        retrying; raise another error for what may pass."""
        raise NotImplementedError

    def flush(self) -> Any:
        """Block until everything delivered is durable at the target; return the state to
        commit with the next checkpoint (picklable; None for none). Raising keeps the
        outputs in the outbox: the runner calls this sink's ``recover`` and delivers every
        output of it not yet confirmed again, with backoff, until a flush succeeds (the
        other sinks, whose flush succeeded, are left alone)."""
        return None

    def recover(self) -> None:
        """Called after a failed ``flush`` or ``deliver``, before the outputs not yet
        confirmed are delivered again: forget, or look up, what reached the target since
        the last successful flush, so that nothing is written twice, and forget the failure.
        Raising retries it later (a ``RunnerError`` stops the run instead)."""

    def display(self, lines: list[str]) -> None:
        """Console-like sinks (``shows_display``) show display lines (stage reports, DLQ
        notices); it is not called on others. A line may hold several, to be shown
        together (a dead letter's notice: its error, then where it was sent)."""

    def close(self) -> None:
        """Called at a clean stop after the last flush; not called after SIGKILL."""
