"""Helper processes: a module of this project run in a child process, with a pipe to its parent.

The runner starts one where a thread would compete with the processing for the interpreter
lock (the state writer, the Kafka reader). A helper ignores SIGINT and SIGTERM, which reach
its parent, whose clean stop may still need it; it ends when told, or when the pipe ends
(its parent gone, a SIGKILL included).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])  # where ``runner`` and ``plugins`` are importable from
STOP_WAIT_S = 10.0
BUFFER_BYTES = 4 << 20  # the kernel caps it at net.core.wmem_max / rmem_max


class Helper:
    """The parent's end: ``python -m module`` started with ``first`` as its first message;
    ``conn`` is the pipe, ``process`` the child."""

    def __init__(self, module: str, first):
        self.conn, child = Pipe()
        for end in (self.conn, child):
            _widen(end)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (ROOT, os.environ.get("PYTHONPATH")))))
        self.process = subprocess.Popen([sys.executable, "-m", module, str(child.fileno())],
                                        pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, env=env)
        child.close()
        self.conn.send(first)

    def exit_status(self, wait: float = 1.0) -> int | None:
        try:
            return self.process.wait(wait)
        except subprocess.TimeoutExpired:
            return None

    def close(self, timeout: float = STOP_WAIT_S, message=("stop",)) -> None:
        """Tell the child to stop (``message``) and wait for it; killed after ``timeout`` s."""
        send_quietly(self.conn, message)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.conn.close()


def _widen(conn: Connection) -> None:
    """Let a few checkpoints' or polls' worth of messages wait in the socket (it defaults to
    about 200 KiB, a checkpoint of long sessions can be half of that): a sender blocks only
    when the other side is that far behind."""
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, BUFFER_BYTES)


def child_connection() -> Connection:
    """In the child: the pipe to its parent; SIGINT and SIGTERM are left to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return Connection(int(sys.argv[1]))


def send_quietly(conn: Connection, message) -> None:
    """Send unless the other end is gone."""
    try:
        conn.send(message)
    except OSError:
        pass
