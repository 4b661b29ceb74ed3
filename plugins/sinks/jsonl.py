"""The ``jsonl`` sink: one JSON record per line, exactly once by its committed length."""

from __future__ import annotations

import fcntl
import os
import stat
import sys

from runner import hookimpl
from runner.components import RunnerError, Sink
from runner.display import show
from runner.schema import obj


class JsonlSink(Sink):
    """Appends outputs to a file. Each checkpoint commits the file's real path and its length
    after the outputs it confirmed; on start (and after a failed write) the file is cut back
    to that length and the outbox is written again, so a crash neither loses nor repeats a
    line. A start with no checkpoint empties the file; a new sink keeps what its file holds,
    and outputs follow it. While it runs, the sink holds a lock on the file: two runners
    never write one file.
    Also a DLQ type: ``dlq: {type: jsonl, path: ...}``."""

    type = "jsonl"
    exactly_once = True
    config_schema = obj({
        "path": {"type": "string", "minLength": 1, "description": "the file to write (its directory is created); emptied by a start with no checkpoint (a first run, after a state reset, every start with state.backend memory); a file the state has no length of is kept and appended to"},
    }, required=("path",), description="Writes results (or dead letters) as JSON lines, exactly once across crashes.")

    @classmethod
    def target(cls, config):
        # on start each sink cuts the file back to its own committed length: a second writer's
        # lines would be cut away
        return os.path.realpath(config["path"])

    def __init__(self, config, context):
        super().__init__(config, context)
        self.path = config["path"]
        self.file = None
        self.committed = 0
        self.failure: OSError | None = None  # a write that failed since the last recover

    def open(self, state):
        directory = os.path.dirname(self.path)
        try:
            if directory:
                os.makedirs(directory, exist_ok=True)
            # unbuffered: a write that fails (a full disk) leaves nothing behind in a buffer that
            # a later cut or write would try to write again
            self.file = open(self.path, "ab", buffering=0)
        except OSError as exc:
            raise RunnerError(f"cannot write {self.path}: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(self.file.fileno()).st_mode):  # a device or a pipe cannot be cut back
            self.close()
            raise RunnerError(f"cannot write {self.path}: not a regular file (a jsonl sink needs a regular file, which it "
                              f"cuts back to its committed length after a crash)")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise RunnerError(f"{self.path} is being written by another runner (a sink or DLQ of another "
                              f"pipeline?): give this sink a file of its own") from None
        except OSError as exc:  # a file system without locks (some network ones)
            show(f"WARNING: sink {self.name}: cannot lock {self.path} ({exc.strerror}): a second runner "
                 f"writing it would not be noticed", sys.stderr)
        self.real = os.path.realpath(self.path)
        size = os.fstat(self.file.fileno()).st_size
        committed = self._length(state)
        restated = committed is None or state.__class__ is int
        if committed is None:
            committed = self._start_length(state, size)
        elif size < committed:
            show(f"WARNING: {self.path} is shorter ({size} bytes) than its committed length "
                 f"({committed}): was it edited? appending from its end", sys.stderr)
            committed = size
        self.committed = committed
        try:
            self.recover()
        except OSError as exc:
            raise RunnerError(f"cannot write {self.path}: {exc.strerror}") from None
        # where it starts, with this file's path, committed before any output reaches it: a
        # crash before its first confirmation must not find the old file's state
        return self._state() if restated else None

    def _length(self, state) -> int | None:
        """The committed length of this sink's file in ``state``; None if it holds none."""
        if state.__class__ is int:
            # kept by runners before paths were, for whatever path the sink had then: taken
            # for this file only while outputs wait that it may hold (a start after a crash)
            return None if self.context.nothing_waiting else state
        if isinstance(state, dict) and state.get("path") == self.real and state.get("length").__class__ is int:
            return state["length"]
        return None

    def _start_length(self, state, size: int) -> int:
        """Where a file the state holds no length of starts: empty on a first run; whole, with
        outputs after it, when no output of this state waits at this sink. Otherwise outputs
        of ours may be in a file the state knows by another name: refused, rather than cutting
        a file that may not be ours or writing those outputs twice."""
        if self.context.fresh_state:
            return 0
        # another type's state (a state of a runner before sink types were kept): not of this file either
        foreign = state is not None and not (isinstance(state, dict) and "length" in state)
        if self.context.nothing_waiting or foreign:
            if size and state.__class__ is not int:  # (an older runner's length of this file: nothing to say)
                show(f"sink {self.name}: the state holds no length of {self.path} (a new sink, or another "
                     f"file): its {size} bytes are kept and outputs follow them", sys.stderr)
            return size
        if state is None:  # given outputs before its first confirmation, by a runner that kept no lengths then
            return 0
        raise RunnerError(f"sink {self.name}: the state holds the committed length of {state.get('path')}, not of "
                          f"{self.path}, and outputs wait that were written there: start once as the pipeline "
                          f"was (its old sinks and paths) to deliver them, then change it")

    def fresh_start(self):
        return self._state()

    def _state(self) -> dict:
        return {"path": self.real, "length": self.committed}

    def recover(self):
        """Cut the file back to its committed length: what follows is in the outbox again
        (an OSError here is retried: cutting needs no free space)."""
        self.file.truncate(self.committed)
        self.file.seek(self.committed)
        self.failure = None

    def deliver(self, outputs):
        data = memoryview(b"".join(out.value + b"\n" for out in outputs))
        try:
            while data:  # an unbuffered write may take part of it
                data = data[self.file.write(data):]
        except OSError as exc:  # a full disk: part of them may be in the file, and none is confirmed
            self.failure = exc
            raise

    def flush(self):
        if self.failure is not None:
            raise RunnerError(f"an earlier write to {self.path} failed ({self.failure}): "
                              f"its outputs are written again")
        # synced here only: the runner confirms deliveries about once a second, not at every
        # checkpoint (a sync per delivery cost more than this one)
        end = self.file.tell()
        if end != self.committed:
            os.fdatasync(self.file.fileno())
            self.committed = end
        return self._state()

    def close(self):
        if self.file:
            self.file.close()


@hookimpl
def runner_register_sinks():
    return [JsonlSink]
