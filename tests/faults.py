"""Helpers for fault tests: a TCP proxy that makes a server "go down" without touching it,
a second embedded broker that can be stopped and started again (empty), runner processes
whose stderr is read while they run, and the readers and comparisons the tests share.

Every wait here is bounded, and every server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from plugins import broker as embedded
from runner.state import LmdbStore

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"  # the machine's server (see tests/conftest.py)
REL = 1e-9  # CONTRACT section 7: numbers are equal when they agree to a relative 1e-9


def wait_until(predicate, timeout: float, interval: float = 0.2):
    """Call ``predicate`` until it returns something true or ``timeout`` s pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# --- a TCP proxy ------------------------------------------------------------------------------
class Proxy:
    """Forwards connections to ``127.0.0.1:PORT`` on to ``target`` (host, port).

    ``close()`` is the server going down: every connection is cut and new ones are refused
    (nothing listens). ``open()`` listens again on the same port. ``pause()`` stalls the
    data of every connection (a hung server: connections stay up, nothing is answered)
    until ``resume()``; ``stalled`` is set once a client has sent something meanwhile.
    """

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = embedded.free_port()
        self._lock = threading.Lock()
        self._conns: set[tuple[socket.socket, socket.socket]] = set()
        self._threads: list[threading.Thread] = []
        self._paused = threading.Event()
        self.stalled = threading.Event()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self.accepted = 0
        self.open()

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def open(self) -> None:
        if self._listener is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 10
        while True:
            try:
                sock.bind((HOST, self.port))
                break
            except OSError:
                if time.monotonic() >= deadline:
                    sock.close()
                    raise
                time.sleep(0.1)
        sock.listen(64)
        sock.settimeout(0.1)
        self._listener, self._stop = sock, threading.Event()
        thread = threading.Thread(target=self._accept, args=(sock, self._stop), daemon=True)
        thread.start()
        self._accept_thread = thread

    def close(self) -> None:
        """Stop listening and cut every connection (both ends see it closed)."""
        sock, self._listener = self._listener, None
        if sock is None:
            return
        self._stop.set()
        self._accept_thread.join(5)
        sock.close()
        with self._lock:
            conns = list(self._conns)
        for pair in conns:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for thread in list(self._threads):
            thread.join(5)
        self._threads = [t for t in self._threads if t.is_alive()]

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()
        self.stalled.clear()

    def _accept(self, sock: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                client, _ = sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if stop.is_set():
                client.close()
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            self.accepted += 1
            pair = (client, upstream)
            with self._lock:
                self._conns.add(pair)
            thread = threading.Thread(target=self._pump, args=(pair,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _pump(self, pair) -> None:
        client, upstream = pair
        try:
            while True:
                readable, _, _ = select.select(pair, [], [], 0.2)
                if self._paused.is_set():
                    if client in readable:
                        self.stalled.set()
                    time.sleep(0.05)
                    if self._stop.is_set():
                        return
                    continue
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    (upstream if s is client else client).sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(pair)
            for s in pair:
                try:
                    s.close()
                except OSError:
                    pass


# --- a broker of the test's own -----------------------------------------------------------------
class OwnBroker:
    """A Tansu broker on a fixed free port, stopped and started at will; it restarts empty."""

    def __init__(self):
        self.port = embedded.free_port()
        self.proc = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self, topics: dict[str, int]) -> None:
        deadline = time.monotonic() + 20
        while True:  # the port may still be held for a moment by the broker just stopped
            try:
                self.proc = embedded.start_broker(self.port, topics)
                return
            except Exception:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None:
            embedded.stop_broker(self.proc)
            self.proc = None


# --- runner processes ---------------------------------------------------------------------------
class Runner:
    """``python -m runner.cli ARGS`` from the project root; its stderr is collected as it comes."""

    def __init__(self, *args: str):
        self.args = args
        self.proc = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=ROOT,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, text: str, timeout: float, count: int = 1) -> bool:
        """True once ``text`` is in ``count`` lines of stderr (False after ``timeout`` s or an exit)."""
        def seen():
            n = sum(text in line for line in list(self.lines))
            return n >= count or (not self.alive() and not self._reader.is_alive())
        wait_until(seen, timeout)
        return sum(text in line for line in list(self.lines)) >= count

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise
        self._reader.join(10)
        return code

    def stop(self) -> None:
        """Kill it if still running (test clean-up)."""
        if self.alive():
            self.proc.kill()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


def helper_outlives_parent(script: str, *args: str) -> bool:
    """Run ``python -c script ARGS`` from the project root (it prints the pid of a helper
    process it started, then waits), kill it with SIGKILL, and tell whether that helper
    is still running 10 s later."""
    parent = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        helper = int(parent.stdout.readline())
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        return not wait_until(lambda: not _running(helper), 10, interval=0.05)
    finally:
        parent.kill()
        parent.wait(10)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


# --- input ----------------------------------------------------------------------------------------
def produce_range(bootstrap: str, topic: str, start: int, stop: int, seed: int, bad_ratio: float,
                  rate: float = 10) -> tuple[int, dict[int, int]]:
    """Send generated records ``start`` to ``stop`` - 1 (as ``tests.e2e.produce`` numbers them),
    keyed by user; return how many of them are bad, and how many went to each partition."""
    from kafka import KafkaProducer

    from plugins.clickstream import ClickGenerator

    gen = ClickGenerator(seed=seed, start_ms=1795507200000, rate=rate, bad_ratio=bad_ratio)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024)
    futures, bad = [], 0
    for i in range(start, stop):
        key, value = gen.record(i)
        bad += gen.bad_kind(i) is not None
        futures.append(producer.send(topic, key=key, value=value))
    producer.flush(timeout=60)
    partitions: dict[int, int] = {}
    for future in futures:
        meta = future.get(timeout=30)
        partitions[meta.partition] = partitions.get(meta.partition, 0) + 1
    producer.close()
    return bad, partitions


# --- state, read in-process -------------------------------------------------------------------
def stored(state_path: str | os.PathLike) -> dict:
    """The last checkpoint's offsets, checkpoint number, outbox size and sink states (read-only,
    no lock)."""
    try:
        store = LmdbStore(state_path, readonly=True)
    except FileNotFoundError:
        return {"offsets": {}, "checkpoint": 0, "outbox": 0, "sinks": {}}
    try:
        return {"offsets": store.meta("offsets", {}) or {}, "checkpoint": store.meta("checkpoint", 0),
                "outbox": len(store.outbox()), "sinks": store.meta("sinks", {}) or {}}
    finally:
        store.close()


# --- outputs ----------------------------------------------------------------------------------
def record_writes(store: LmdbStore) -> list:
    """From now on, each checkpoint ``store`` hands its writer, as [(database, puts, deletes), ...]."""
    seen, write = [], store._writer.write

    def recording(writes):
        seen.append(writes)
        write(writes)

    store._writer.write = recording
    return seen


def jsonl_records(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def kafka_records(broker: str, topic: str) -> list[tuple[str, dict]]:
    """(runner-id header, JSON value) of every record of ``topic``."""
    from tests import e2e

    out = []
    for r in e2e.read_topic(broker, topic):
        headers = dict(r.headers)
        out.append((headers["runner-id"].decode(), json.loads(r.value)))
    return out


def written_by_another(servers: str, topic: str, outputs: list) -> None:
    """``outputs`` (``runner.outputs.Output``) in ``topic``, written and confirmed by a Kafka
    sink of another pipeline, since closed."""
    from plugins.sinks.kafka import KafkaSink
    from runner.components import Context

    other = KafkaSink({"topic": topic, "bootstrap_servers": servers, "options": {}}, Context("other", "out", {}))
    other.open(None)
    try:
        other.deliver(outputs)
        other.flush()
    finally:
        other.close()


def pg_rows(dsn: str, table: str) -> list[tuple[str, dict]]:
    """(id, record) of every row of ``table``; [] when it does not exist."""
    import psycopg

    with psycopg.connect(dsn, connect_timeout=5) as conn:
        if conn.execute("SELECT to_regclass(%s)", [table]).fetchone()[0] is None:
            return []
        return [(row[0], row[1]) for row in conn.execute(f'SELECT id, record FROM "{table}"')]


def drop_tables(dsn: str, tables) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        for table in tables:
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')


def by_id(pairs, drop=()) -> dict:
    """{id: record minus ``drop`` fields} of (id, record) pairs; duplicates are the caller's to count."""
    return {i: {k: v for k, v in record.items() if k not in drop} for i, record in pairs}


def approx_equal(a, b, rel: float = REL) -> bool:
    """JSON values equal, numbers to a relative ``rel`` (float sums depend on arrival order)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b if isinstance(a, bool) and isinstance(b, bool) else False
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or math.isclose(a, b, rel_tol=rel)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(approx_equal(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(approx_equal(x, y, rel) for x, y in zip(a, b))
    return a == b


def differences(want: dict, got: dict, limit: int = 5) -> list[str]:
    """What differs between two {id: record} maps (for assertion messages)."""
    out = [f"missing {i}" for i in sorted(want.keys() - got.keys())[:limit]]
    out += [f"unexpected {i}" for i in sorted(got.keys() - want.keys())[:limit]]
    out += [f"{i}: {want[i]} != {got[i]}" for i in sorted(want.keys() & got.keys())
            if not approx_equal(want[i], got[i])][:limit]
    return out


# --- pipelines ----------------------------------------------------------------------------------
def write_pipeline(path: str | os.PathLike, settings: dict) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(settings, sort_keys=False))
    return str(path)


def file_pipeline(workdir: Path, events: Path, topic: str, **settings) -> str:
    """``workdir/pipeline.yaml``: ``events`` read as ``topic``, the state and a JSONL DLQ in
    ``workdir``, and ``settings`` (name, stages, sinks, checkpoint...) as they are."""
    return _pipeline(workdir, {"type": "file", "path": str(events), "topic": topic}, settings)


def kafka_pipeline(workdir: Path, servers: str, topic: str, source: dict | None = None, **settings) -> str:
    """As ``file_pipeline``, reading ``topic`` from Kafka at ``servers`` (``source``: more of
    the source's keys)."""
    return _pipeline(workdir, {"type": "kafka", "topics": [topic], "bootstrap_servers": servers, **(source or {})},
                     settings)


def _pipeline(workdir: Path, source: dict, settings: dict) -> str:
    return write_pipeline(workdir / "pipeline.yaml", {
        "source": source,
        "state": {"path": str(workdir / "state")},
        "dlq": {"type": "jsonl", "path": str(workdir / "dlq.jsonl")},
        **settings,
    })


def fault_tolerant(workdir: Path, *, broker: str, topic: str, results_topic: str, dlq_topic: str,
                   dsn: str, table: str) -> str:
    """pipelines/fault_tolerant.yaml with everything it writes under ``workdir`` or fresh:
    sinks jsonl + kafka + postgres (no console), the Kafka DLQ on ``dlq_topic``."""
    settings = yaml.safe_load((ROOT / "pipelines" / "fault_tolerant.yaml").read_text())
    settings["source"].update(bootstrap_servers=broker, topics=[topic])
    settings["state"]["path"] = str(workdir / "state")
    settings["dlq"] = {"type": "kafka", "topic": dlq_topic}
    for stage in settings["stages"]:
        if stage["type"] == "validate":
            stage["schema"] = str(ROOT / stage["schema"])
    settings["sinks"] = [
        {"type": "jsonl", "name": "results_jsonl", "path": str(workdir / "results.jsonl")},
        {"type": "kafka", "name": "results_kafka", "topic": results_topic},
        {"type": "postgres", "name": "results_pg", "dsn": dsn, "table": table},
    ]
    return write_pipeline(workdir / "pipeline.yaml", settings)
