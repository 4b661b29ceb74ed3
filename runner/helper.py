"""Helper processes: a module of this project run in a child process, with a pipe to its parent.

The runner starts one where a thread would compete with the processing for the interpreter
lock (the state writer, the Kafka reader, the Kafka producer of a sink). A helper ignores
SIGINT and SIGTERM, which reach its parent, whose clean stop may still need it; it ends when
told, and is killed with its parent (Linux: the parent-death signal), a SIGKILL included, so
nothing the parent queued for it is acted on after the parent is gone. Linux sends that
signal when the *thread* that started the helper ends: start helpers from the thread that
runs the pipeline (the runner opens sources and sinks there), not from a passing one.
"""

from __future__ import annotations

import ctypes
import math
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import weakref
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])  # where ``runner`` and ``plugins`` are importable from
STOP_WAIT_S = 10.0
# Socket buffers asked for each way (the kernel caps them at net.core.wmem_max / rmem_max):
# a few checkpoints' or polls' worth of messages may wait (the default, about 200 KiB, is half
# a checkpoint of long sessions), so a sender blocks only when the other side is that far behind.
BUFFER_BYTES = 4 << 20
_PR_SET_PDEATHSIG = 1
_open_helpers: "weakref.WeakSet[Helper]" = weakref.WeakSet()


def open_helper_pids() -> list[int]:
    """The process ids of this process's helpers that were started and not closed yet (for
    measurements: ``runner bench`` sums their memory)."""
    return [helper.process.pid for helper in list(_open_helpers)]


class Helper:
    """The parent's end: ``python -m module`` started with ``first`` as its first message;
    ``conn`` is the pipe, ``process`` the child. ``keep`` are more file descriptors the child
    holds for as long as it lives (the state writer keeps the state's lock)."""

    SEND_WAIT_S = 120.0  # a send the child takes nothing of for this long fails (BlockingIOError)

    def __init__(self, module: str, first, keep: tuple = ()):
        self.conn, child = Pipe()
        for end in (self.conn, child):
            _set_options(end, {socket.SO_SNDBUF: BUFFER_BYTES, socket.SO_RCVBUF: BUFFER_BYTES})
        wait = self.SEND_WAIT_S  # a stuck child must not hang the runner in a send
        _set_options(self.conn, {socket.SO_SNDTIMEO: struct.pack("ll", int(wait), int(wait % 1 * 1_000_000))})
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (ROOT, os.environ.get("PYTHONPATH")))))
        self.process = subprocess.Popen([sys.executable, "-m", module, str(child.fileno()), str(os.getpid())],
                                        pass_fds=(child.fileno(), *keep), stdin=subprocess.DEVNULL, env=env)
        child.close()
        _open_helpers.add(self)
        self._poller = select.poll()
        self._poller.register(self.conn.fileno(), select.POLLIN)
        try:
            self.conn.send(first)
        except OSError:
            self.close()
            raise

    def post(self, message) -> None:
        """Send ``message`` to the child as ``conn.send`` does, pickled by the plain C pickler:
        multiprocessing's own pickler costs some 40 us more a message, and the runner posts
        at every checkpoint."""
        self.conn.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))

    def waiting(self, timeout: float) -> bool:
        """A message from the child (or its end of the pipe closing) is there within ``timeout``
        s: ``conn.poll`` without its cost (it builds a selector at every call: 3 us against
        0.4, and the runner asks at every checkpoint and poll)."""
        return bool(self._poller.poll(math.ceil(max(0.0, timeout) * 1000)))

    def exit_status(self, wait: float = 1.0) -> int | None:
        try:
            return self.process.wait(wait)
        except subprocess.TimeoutExpired:
            return None

    def how_it_ended(self) -> str:
        """For a message: ``killed by SIGKILL`` or ``exit status 1`` (waiting for it as
        ``exit_status`` does, once)."""
        status = self.exit_status()
        if status is None or status >= 0:
            return f"exit status {status}"
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"

    def close(self, timeout: float = STOP_WAIT_S, message=("stop",)) -> None:
        """Tell the child to stop (``message``; None: kill it) and wait for it, reading (and
        dropping) what it still sends, so a child blocked on a full pipe sees the order;
        killed after ``timeout`` s."""
        try:
            if message is not None:
                send_quietly(self.conn, message)
            deadline = time.monotonic() + timeout
            while self.process.poll() is None and time.monotonic() < deadline:
                try:
                    if self.waiting(0.05):
                        self.conn.recv()
                except (EOFError, OSError):
                    self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        finally:
            _open_helpers.discard(self)
            if self.process.poll() is None:
                self.process.kill()
                try:
                    self.process.wait(STOP_WAIT_S)
                except subprocess.TimeoutExpired:  # stuck in the kernel (a hung disk): not ours to wait for
                    pass
            self.conn.close()


def _set_options(conn: Connection, options: dict) -> None:
    """Set SOL_SOCKET options (option: value) on ``conn``'s socket."""
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        for option, value in options.items():
            sock.setsockopt(socket.SOL_SOCKET, option, value)


def child_connection() -> Connection:
    """In the child: the pipe to its parent; SIGINT and SIGTERM are left to the parent, and
    the parent's death kills it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the pipe's end stops it instead
    if os.getppid() != int(sys.argv[2]):  # the parent died before the signal was asked for
        os._exit(0)
    return Connection(int(sys.argv[1]))


def run_child(main) -> None:
    """A helper module's entry point: run ``main``, then end the process at once. The
    interpreter's own ending (joining kafka-python's threads, freeing every module) took 15 to
    50 ms of every stop, and a helper that returned has nothing left to save. An exception
    from ``main`` ends the process as usual, with its traceback."""
    main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def send_quietly(conn: Connection, message) -> None:
    """Send unless the other end is gone."""
    try:
        conn.send(message)
    except OSError:
        pass
