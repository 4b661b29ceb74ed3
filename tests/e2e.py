"""Helpers for end-to-end tests: produce generated clicks to the broker, run the real
``runner`` as a process, and read topics back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from plugins.clickstream import ClickGenerator

ROOT = Path(__file__).resolve().parents[1]


def produce(bootstrap: str, topic: str, count: int, seed: int = 7, bad_ratio: float = 0.05,
            rate: float = 10) -> list[dict]:
    """Send ``count`` generated records (keyed by user); return each one's coordinates."""
    gen = ClickGenerator(seed=seed, start_ms=1795507200000, rate=rate, bad_ratio=bad_ratio)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024)
    sent = []
    for i in range(count):
        key, value = gen.record(i)
        sent.append({"i": i, "key": key, "value": value, "bad": gen.bad_kind(i),
                     "future": producer.send(topic, key=key, value=value)})
    producer.flush(timeout=60)
    for item in sent:
        meta = item.pop("future").get(timeout=30)
        item["partition"], item["offset"] = meta.partition, meta.offset
    producer.close()
    return sent


def runner_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "runner", *args]


def run(*args: str, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(runner_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    return proc


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(runner_cmd(*args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def read_topic(bootstrap: str, topic: str, timeout: float = 30) -> list:
    """Every record of every partition of ``topic`` (ends found by a fetch's high watermark)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=1000)
    deadline = time.monotonic() + timeout
    partitions = None
    while partitions is None and time.monotonic() < deadline:
        partitions = consumer.partitions_for_topic(topic)
    tps = [TopicPartition(topic, p) for p in sorted(partitions or ())]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    records, idle = [], 0
    while time.monotonic() < deadline and idle < 3:
        batch = consumer.poll(timeout_ms=500)
        got = [r for rs in batch.values() for r in rs]
        records.extend(got)
        idle = 0 if got else idle + 1
    consumer.close()
    return records


def dump(pipeline: str, *overrides: str) -> dict:
    proc = run("state", "dump", pipeline, *overrides)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
