"""The checkpoint: state, offsets and outputs committed together, outputs delivered after."""

from __future__ import annotations

import pickle
import sys
import threading
import time
from collections import deque

from runner.components import RunnerError
from runner.outputs import Output
from runner.state import Store


CONFIRM_EVERY_S = 1.0
# a sink's deliver, flush or recover that has not returned for this long is said on stderr,
# and again each time as long again (see SinkWatch)
SLOW_SINK_S = 30.0


class Stopped(BaseException):
    """A stop was asked for while waiting on a sink; the outbox keeps what was not delivered.
    Not an ``Exception``: no sink's error handling may swallow it."""


class Checkpoint:
    """Takes checkpoints of one pipeline and delivers their outputs to its sinks.

    ``sinks`` maps sink names to opened sinks, with the DLQ under ``dlq``.
    """

    def __init__(self, store: Store, sinks: dict, result_sinks: tuple, number: int, next_seq: int,
                 should_stop=lambda: False, log=print, output_closed=lambda: None):
        self.store = store
        self.sinks = sinks
        self.result_sinks = result_sinks  # where a result without ``to:`` goes
        self.displays = [sink for sink in sinks.values() if sink.shows_display]
        self.number = number
        self.next_seq = next_seq
        self.should_stop = should_stop
        self.log = log
        # called when a sink raises BrokenPipeError: its reader is gone (``runner run ... |
        # head``), for good; the runner stops as SIGTERM stops it
        self.output_closed = output_closed
        self.sink_states: dict = {}
        # sink name -> the error its last ``deliver`` raised: its next confirmation counts as a
        # failed flush (whatever its flush says), so it recovers and is given its outputs again
        self.undelivered: dict[str, Exception] = {}
        self.unconfirmed: list[tuple[int, Output]] = []  # handed to sinks, not yet flushed
        self.restored: list[tuple[int, Output]] = []  # the outbox found at start, until redelivered
        self.rewrite: list[tuple[int, Output]] = []  # outbox rows to write again (see ``restore``)
        self.last_ms = 0.0  # the processing thread's time in the last commit
        # (number, outputs, ms, note) of each checkpoint being written: handed to sinks once on disk
        self.writing: deque[tuple[int, list[tuple[int, Output]], float, object]] = deque()
        # on_durable(number, ms, write, note) once a checkpoint is on disk, if set (ms: its
        # last_ms; write: (ms writing it, time.time() synced) or None where commit wrote it)
        self.on_durable = None
        self.in_sink = False  # waiting on a sink: a stop must interrupt it (see Runner._on_signal)
        # (sink name, method, time.monotonic() of the call) while a sink's method runs
        self.calling: tuple[str, str, float] | None = None
        self.confirmed_at = time.monotonic()

    def restore(self, outbox: list[tuple[int, Output]], renames: dict) -> None:
        """On start: take the restored outbox, to ``redeliver``. An output meant for a sink
        renamed since (``renames``: {old: new}) is meant for its new name, and is written so
        in the next checkpoint, which also records the new names."""
        self.restored = list(outbox)
        for seq, out in self.restored:
            if out.targets and any(name in renames for name in out.targets):
                out.targets = tuple(renames.get(name, name) for name in out.targets)
                self.rewrite.append((seq, out))

    def redeliver(self) -> None:
        """On start: hand every output of the restored outbox to its sinks again."""
        outputs, self.restored = self.restored, []
        self._deliver(outputs)

    def commit(self, outputs: list[Output], meta: dict, confirm: bool = False, note=None) -> None:
        """Commit everything since the last checkpoint; its outputs are delivered once it is on disk.

        1. Confirm the outputs handed to sinks after earlier checkpoints, when ``confirm``
           or once a second (a flush waits on every sink, so not at every checkpoint):
           flush every sink (retrying with backoff while one fails). Each sink's state joins
           this checkpoint, and the confirmed outputs leave the outbox in it. Until then
           they stay in the outbox, to be delivered again after a crash.
        2. Number the new outputs into the outbox.
        3. Capture, for one transaction: every table's changes, ``meta`` (offsets, event
           time, watermark), sink states, the checkpoint number and the outbox changes.
        4. The store writes and syncs the transaction while processing goes on (waiting
           only while ``MAX_IN_FLIGHT`` are in flight): once it is on disk, all of it is committed.
        5. ``settle`` hands the new outputs to their sinks once on disk; step 1 of a later
           checkpoint confirms them. The runner settles once per poll, so the checkpoints
           of one poll's records reach each sink in one hand-over, not one each.
        """
        started = time.perf_counter()  # last_ms: what the checkpoint itself costs the processing
        # 1. confirm earlier deliveries
        confirmed = self._confirm() if confirm or self.pending() else []
        # 2. number new outputs
        added = [(self.next_seq + i, out) for i, out in enumerate(outputs)]
        self.next_seq += len(added)
        # 3 + 4. one synced transaction, written beside the processing
        self.number += 1
        meta = dict(meta, checkpoint=self.number, sinks=self.sink_states)
        gone = set(confirmed)  # (a row written again and deleted in one transaction would stay)
        rewritten = [(seq, out.to_tuple()) for seq, out in self.rewrite if seq not in gone]
        self.rewrite = []
        self.store.commit(meta, [(seq, out.to_tuple()) for seq, out in added] + rewritten, confirmed)
        self.last_ms = (time.perf_counter() - started) * 1000
        self.writing.append((self.number, added, self.last_ms, note))

    def settle(self, wait: bool = True) -> bool:
        """5. Hand the outputs of every checkpoint now on disk to their sinks, in order;
        with ``wait``, once all are. False while some are still being written."""
        on_disk = len(self.writing) - self.store.in_flight(wait)
        written = self.store.written
        outputs: list[tuple[int, Output]] = []
        for _ in range(on_disk):
            number, added, ms, note = self.writing.popleft()
            write = written.popleft() if written else None
            if self.on_durable is not None:
                self.on_durable(number, ms, write, note)
            outputs += added
        self._deliver(outputs)  # one hand-over to each sink for all of them
        return not self.writing

    def pending(self) -> bool:
        """Outputs wait for a confirmation that is due."""
        return bool(self.unconfirmed) and time.monotonic() - self.confirmed_at >= CONFIRM_EVERY_S

    def unconfirmed_count(self) -> int:
        return len(self.unconfirmed)

    def _deliver(self, items: list[tuple[int, Output]]) -> None:
        if not items:
            return
        self.unconfirmed.extend(items)
        self.in_sink = True
        try:
            failures = self._hand_over(items)
        finally:
            self.in_sink = False
        for name, exc in failures.items():  # confirmed (with retries) in step 1 of a later checkpoint
            if isinstance(exc, BrokenPipeError):  # its reader is gone for good
                self.output_closed()
            else:
                self.log(f"[SINK] {name}: delivery failed ({exc}); retrying at its next confirmation",
                         file=sys.stderr)

    def _hand_over(self, items: list[tuple[int, Output]], only=None) -> dict[str, Exception]:
        """Deliver ``items`` to their sinks (with ``only``: to those of these sink names). A
        sink that raises does not keep the others from theirs: it is noted in ``undelivered``,
        its next confirmation fails whatever its flush says, and only the sinks whose
        confirmation fails are given their outputs again. Returns the errors, by sink name."""
        by_sink: dict[str, list[Output]] = {}
        for _, out in items:
            for name in out.targets or self.result_sinks:
                # a sink whose delivery failed gets nothing until its confirmation delivers it all again
                if name in self.sinks and (name in only if only is not None else name not in self.undelivered):
                    by_sink.setdefault(name, []).append(out)
        failures = {}
        for name, outs in by_sink.items():
            try:
                self._call(name, "deliver", outs)
            except Exception as exc:
                self.undelivered[name] = failures[name] = exc
        if self.displays and only is None:
            notices = [_notice(out) for _, out in items if out.kind == "dlq"]
            if notices:
                self.display(notices)
        return failures

    def _call(self, name: str, method: str, *args):
        """The sink's ``method``; while it runs, ``calling`` says which, for ``SinkWatch``."""
        self.calling = (name, method, time.monotonic())
        try:
            return getattr(self.sinks[name], method)(*args)
        finally:
            self.calling = None

    def display(self, lines: list[str]) -> None:
        """Show ``lines`` (stage reports, dead-letter notices) on every sink that shows them."""
        for sink in self.displays:
            try:
                sink.display(lines)
            except BrokenPipeError:
                self.output_closed()

    def _confirm(self) -> list[int]:
        if not self.unconfirmed:
            return []
        self.in_sink = True
        try:
            self._flush_all()
        finally:
            self.in_sink = False
        confirmed = [seq for seq, _ in self.unconfirmed]
        self.unconfirmed = []
        self.confirmed_at = time.monotonic()
        return confirmed

    def _flush_all(self) -> None:
        """Flush every sink; while some fail, recover them and deliver to them again, with
        backoff. A sink whose flush succeeded is left alone: its outputs are in (a file sink
        given them again after its flush would hold them twice)."""
        delay = 0.5
        failing, failed = list(self.sinks), []
        while True:
            failure = None
            for name in list(failing):
                try:
                    if name in self.undelivered:  # it may not hold all of its outputs: a flush cannot tell
                        raise self.undelivered[name]
                    state = self._call(name, "flush")
                except BrokenPipeError as exc:
                    failure = failure or exc
                    self.output_closed()
                except Exception as exc:
                    failure = failure or exc
                else:
                    self.sink_states[name] = committable(self.sinks[name], "flush", state)
                    failing.remove(name)
            if not failing:
                if failed:
                    self.log(f"[SINK] {', '.join(failed)}: confirmed again; processing goes on", file=sys.stderr)
                return
            if self.should_stop() or isinstance(failure, BrokenPipeError):  # its reader is gone for good
                raise Stopped() from failure
            failed = failed or list(failing)
            waiting = sum(1 for _, out in self.unconfirmed if set(out.targets or self.result_sinks) & set(failing))
            self.log(f"[SINK] {', '.join(failing)}: {waiting} outputs not confirmed ({failure}); "
                     f"processing waits; retrying in {delay:g}s", file=sys.stderr)
            time.sleep(delay)
            delay = min(delay * 2, 10)
            for name in failing:
                self._redeliver(name)

    def _redeliver(self, name: str) -> None:
        """A failing sink's ``recover``, then its unconfirmed outputs again. Until both have
        succeeded it stays in ``undelivered``: its next flush is not asked (it might confirm
        what it dropped). A RunnerError from ``recover`` is one that no retry mends."""
        try:
            self._call(name, "recover")
        except RunnerError:
            raise
        except Exception as exc:
            self.undelivered[name] = exc
            return
        self.undelivered.pop(name, None)
        self._hand_over(self.unconfirmed, only=(name,))  # a failure is noted in undelivered


class SinkWatch:
    """Says on stderr when a sink's method has not returned for ``SLOW_SINK_S`` s, and again
    every ``SLOW_SINK_S`` s while it has not: a sink that hangs without raising (a database
    connection that stops answering) would otherwise stop the pipeline without a word. The
    processing waits for it; a stop signal still stops the run (``Runner._on_signal``).
    A thread of its own that wakes once a second, from ``start`` to ``stop``."""

    def __init__(self, checkpoint, log):
        self.checkpoint = checkpoint  # () -> the Checkpoint, or None before there is one
        self.log = log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="sink-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        said = None  # the call last said, and how long it had run then
        while not self._stop.wait(min(1.0, SLOW_SINK_S)):
            checkpoint = self.checkpoint()
            calling = checkpoint.calling if checkpoint is not None else None
            if calling is None:
                continue
            name, method, since = calling
            waited = time.monotonic() - since
            if waited >= SLOW_SINK_S and (said is None or said[0] is not calling or waited - said[1] >= SLOW_SINK_S):
                said = (calling, waited)
                self.log(f"[SINK] {name}: its {method} has not returned for {waited:.0f} s; processing waits "
                         f"(a stop signal stops the run, and what is not confirmed stays in the outbox)",
                         file=sys.stderr)


def committable(sink, method: str, state):
    """``state``, which ``sink.method`` returned to be committed, if it can be (pickled); else
    RunnerError naming the sink: a plugin's mistake, not one to retry."""
    try:
        pickle.dumps(state, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise RunnerError(f"sink {sink.name} ({type(sink).__module__}.{type(sink).__qualname__}.{method}) returned "
                          f"a state that cannot be committed (pickled): {type(exc).__name__}: {exc}") from None
    return state


def _notice(out: Output) -> str:
    """A dead letter's two lines, as one display line: shown together or not at all."""
    letter = out.data()
    return (f"[{letter['error_type'].upper()} ERROR] {letter['error']}\n"
            f"[DLQ] sent {letter['topic']}/{letter['partition']}@{letter['offset']} to the dead letter queue "
            f"(stage {letter['stage']})")
