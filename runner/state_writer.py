"""The state writer: a process of its own that writes and syncs one LMDB store's checkpoints.

A writer thread would share the interpreter lock with the processing: py-lmdb gives the lock
up and takes it back a dozen times in a transaction, and each time the thread waited for
the processing thread's switch interval (5 ms), so a 0.6 ms checkpoint took 5 to 100 ms.
In a process of its own it takes the time the disk takes, beside the processing.

``runner.state.LmdbStore`` opens the environment to read and starts this process to write
it; nothing else writes. Messages over a pipe, in order:

- parent to child: ``(path, map_size)`` first, then ``("write", [(database name, puts,
  deletes), ...])`` for each checkpoint (one transaction, synced before it commits), and
  ``("stop",)``;
- child to parent: ``("done", ms, synced_at)`` for each write, in order, or
  ``("error", message)``, after which it writes nothing more and exits.

A write that finds the map full grows it (doubling) and is written again; the parent maps
the new size when its next read transaction finds it. The child exits when told, when its parent is gone
(the pipe ends: a SIGKILL of the parent included), or after an error; it ignores SIGINT
and SIGTERM, which reach the parent, whose clean stop still needs it.
"""

from __future__ import annotations

import shutil
import time
from multiprocessing.connection import Connection
from pathlib import Path

import lmdb

from runner.helper import STOP_WAIT_S, Helper, child_connection, run_child, send_quietly

FULL_BYTES = 64 << 20  # free space below which an error message asks whether the disk is full
ANSWER_S = 120.0  # a checkpoint not on disk after this long is a stuck disk, not a slow one


class Writer(Helper):
    """The parent's end. The child keeps ``lock`` (the state's lock file) open for as long as
    it lives: no other runner can open the store while it may still write."""

    def __init__(self, path: Path, map_size: int, lock):
        super().__init__("runner.state_writer", (str(path), map_size), keep=(lock.fileno(),))
        self.path = path
        self.failure: str | None = None  # once it failed, every call fails at once with this

    def write(self, writes: list) -> None:
        """Hand over one checkpoint's writes; raises ``OSError`` if the child is gone."""
        if self.failure is not None:
            raise OSError(self.failure)
        try:
            self.post(("write", writes))
        except BlockingIOError:
            raise OSError(self._failed(self._stuck(f"took no checkpoint for {self.SEND_WAIT_S:g} s"))) from None
        except OSError:
            raise OSError(self._failed(self._last_word() or self._gone())) from None

    def ready(self) -> bool:
        """A reply is waiting."""
        return self.waiting(0)

    def done(self) -> tuple[float, float]:
        """Wait for the reply to the oldest write: (ms writing it, time.time() synced); raises
        ``OSError`` with the child's message if it failed, if the child is gone, or if it
        did not answer within ``ANSWER_S``."""
        if self.failure is not None:
            raise OSError(self.failure)
        try:
            answered = self.waiting(ANSWER_S)
            message = self.conn.recv() if answered else None
        except (EOFError, OSError):
            raise OSError(self._failed(self._gone())) from None
        if message is None:
            raise OSError(self._failed(self._stuck(f"wrote nothing for {ANSWER_S:g} s")))
        if message[0] == "error":
            raise OSError(self._failed(message[1]))
        return message[1:]

    def close(self, timeout: float = STOP_WAIT_S, message=("stop",)) -> None:
        """As ``Helper.close``; a writer that failed is killed at once (its pipe may hold half a
        message, and a stop order could wait behind it)."""
        if self.failure is not None:
            timeout, message = 0.0, None
        super().close(timeout, message)

    def _last_word(self) -> str | None:
        """The error the child sent before it exited (a full disk when it opened the store),
        which a write to its closed pipe would hide; None if it sent none."""
        try:
            while self.waiting(0):
                message = self.conn.recv()
                if message[0] == "error":
                    return message[1]
        except (EOFError, OSError):
            pass
        return None

    def _failed(self, message: str) -> str:
        self.failure = message
        return message

    def _stuck(self, what: str) -> str:
        return f"the state writer process of {self.path} {what}: is the disk stuck? the last checkpoint on disk stands"

    def _gone(self) -> str:
        return (f"the state writer process of {self.path} ended unexpectedly ({self.how_it_ended()}); "
                f"the last checkpoint on disk stands: run the pipeline again to go on from it")


# --- the child ---------------------------------------------------------------------------
def main() -> None:
    conn = child_connection()
    try:
        path, map_size = conn.recv()
        env = lmdb.open(path, map_size=map_size, max_dbs=256, sync=True, metasync=True, lock=True, readahead=False)
    except lmdb.Error as exc:
        send_quietly(conn, ("error", f"the state writer cannot open {path}: {exc}{_space(path)}"))
        return
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return
    try:
        _serve(conn, env)
    except lmdb.Error as exc:
        send_quietly(conn, ("error", f"a checkpoint could not be written to {path}: {exc}{_space(path)}"))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the parent is gone: what was committed stands
    finally:
        env.close()


def _space(path: str) -> str:
    """A note for an error message when the disk of ``path`` is (nearly) full: LMDB reports a
    full disk as an I/O error at commit."""
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return ""
    return f" (its disk has {free:,} bytes free: is it full?)" if free < FULL_BYTES else ""


def _serve(conn: Connection, env) -> None:
    dbs: dict = {}
    while True:
        message = conn.recv()
        if message[0] == "stop":
            return
        started = time.perf_counter()
        while True:
            try:
                _write(env, dbs, message[1])
                break
            except lmdb.MapFullError:  # nothing of it was written: grow the map, write it again
                env.set_mapsize(env.info()["map_size"] * 2)
        conn.send(("done", (time.perf_counter() - started) * 1000, time.time()))


def _write(env, dbs: dict, writes: list) -> None:
    for name, _, _ in writes:
        if name not in dbs:
            dbs[name] = env.open_db(name.encode(), create=True)
    with env.begin(write=True) as txn:  # commits (synced) on leaving, aborts on an exception
        for name, puts, deletes in writes:
            db = dbs[name]
            for key in deletes:
                txn.delete(key, db=db)
            if puts:
                txn.cursor(db=db).putmulti(puts)


if __name__ == "__main__":
    run_child(main)
