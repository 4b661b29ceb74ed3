"""Issue 3, replay equals live: with 3 partitions, consuming a large backlog in one go (one
partition's records far ahead of another's) gives the same window results as consuming the
same records slowly, while they arrive (CONTRACT section 6: the results, the late events and
the state at the end of a bounded run depend only on each partition's own records).

Each topic gets ~20k generated clicks keyed by user (2% bad), and about 3% of each partition's
records are sent minutes after their neighbours, so every window stage sees late events.
``pipelines/windowed.yaml`` reads the topic twice, each time with its own state, results file
and DLQ topic: once as a backlog, and once slowly, in one of two ways:

- live: an unbounded ``runner run`` with a checkpoint every 10 records consumes the topic
  while it is written partition by partition in chunks of very different sizes, then a
  ``--drain`` run closes the windows. (The live run also sets ``event_time.idle_timeout=0``:
  idleness of a caught-up partition is the one documented exception to this equality, and
  the pauses of this test would otherwise trigger it.)
- one partition first: one partition is written whole, then the other two in chunks, with an
  ``--until-end`` run after each step and a final ``--drain``.

Compared: the sets of window results, the DLQ records (ids and types; the late ones above
all), and the state dumps (but ``checkpoint``) at the end of the input and after the drain.
"""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import time

from kafka import KafkaProducer
from kafka.partitioner.default import murmur2

from plugins.clickstream import ClickGenerator
from runner import config
from runner.dump import dump_state
from tests import e2e

PIPELINE = "pipelines/windowed.yaml"
COUNT = 20_000
PARTITIONS = 3
START_MS = 1795507200000  # 2026-11-24T08:00:00.000Z
RATE = 5  # events per second of event time: 20k events span about 67 minutes
DELAYED = 0.03  # the share of each partition's records sent late, 1 to 30 minutes of time behind


def partition_of(key: bytes) -> int:
    """The default partitioner's choice (murmur2), so records are keyed by user as usual."""
    return (murmur2(key) & 0x7FFFFFFF) % PARTITIONS


def plan(seed: int) -> dict[int, list[tuple[bytes, bytes | None]]]:
    """Each partition's records in the order they are sent: generator order, but with some
    records moved 100 to 3000 places later (at ~100 records per minute per partition)."""
    gen = ClickGenerator(seed=seed, start_ms=START_MS, rate=RATE, bad_ratio=0.02)
    rng = random.Random(seed)
    per_partition: dict[int, list] = {p: [] for p in range(PARTITIONS)}
    for i in range(COUNT):
        key, value = gen.record(i)
        per_partition[partition_of(key)].append((key, value))
    for p, records in per_partition.items():
        slots = [(float(n), r) for n, r in enumerate(records)]
        for n in range(len(slots)):
            if rng.random() < DELAYED:
                slots[n] = (n + rng.randint(100, 3000) + 0.5, slots[n][1])
        per_partition[p] = [r for _, r in sorted(slots, key=lambda s: s[0])]
    return per_partition


class Writer:
    """Sends each partition's planned records in order, in chunks the test chooses."""

    def __init__(self, broker: str, topic: str, records: dict[int, list]):
        self.topic, self.records = topic, records
        self.sent = {p: 0 for p in records}
        self.producer = KafkaProducer(bootstrap_servers=broker, linger_ms=5, batch_size=256 * 1024,
                                      max_in_flight_requests_per_connection=1)

    def send(self, partition: int, count: int) -> int:
        start = self.sent[partition]
        chunk = self.records[partition][start:start + count]
        for key, value in chunk:
            self.producer.send(self.topic, key=key, value=value, partition=partition)
        self.producer.flush(timeout=60)
        self.sent[partition] += len(chunk)
        return len(chunk)

    def left(self, partition: int) -> int:
        return len(self.records[partition]) - self.sent[partition]

    def total(self) -> int:
        return sum(self.sent.values())

    def close(self) -> None:
        self.producer.close(timeout=10)


def args(broker: str, topic: str, dlq_topic: str, tmp_path, name: str) -> list[str]:
    return ["--set", f"source.bootstrap_servers={broker}", "--set", f"source.topics=[{topic}]",
            "--set", f"dlq.topic={dlq_topic}", "--set", f"state.path={tmp_path / name / 'state'}",
            "--set", f"sinks.jsonl.path={tmp_path / name / 'results.jsonl'}"]


def run(*arguments: str) -> None:
    proc = e2e.run("run", PIPELINE, *arguments, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def state(arguments: list[str]) -> dict:
    dumped = e2e.dump(PIPELINE, *arguments)
    dumped.pop("checkpoint")
    return dumped


def read_offsets(arguments: list[str]) -> int:
    """The records the last checkpoint has consumed (read in-process: it is called often)."""
    overrides = [arguments[i + 1] for i in range(0, len(arguments), 2)]
    return sum(dump_state(config.load(PIPELINE, overrides))["offsets"].values())


def wait_for(arguments: list[str], proc, log, total: int, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the live runner exited early: {log.read_text()[-3000:]}"
        if read_offsets(arguments) >= total:
            return
        time.sleep(0.1)
    raise AssertionError(f"the live runner did not consume {total} records within {seconds} s")


def results(tmp_path, name: str) -> dict[str, dict]:
    lines = (tmp_path / name / "results.jsonl").read_bytes().split(b"\n")
    records = [json.loads(line) for line in lines if line.strip()]
    by_id = {r["id"]: r for r in records}
    assert len(by_id) == len(records), f"{name}: duplicate results"
    return by_id


def letters(broker: str, dlq_topic: str) -> dict[str, str]:
    found = {}
    for record in e2e.read_topic(broker, dlq_topic, timeout=60):
        letter = json.loads(record.value)
        assert letter["id"] not in found, f"duplicate dead letter {letter['id']}"
        found[letter["id"]] = letter["error_type"]
    return found


def same(a, b) -> bool:
    """Equal JSON values, numbers to a relative 1e-9 (float sums may differ in their last bits)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def backlog(broker, topic, dlq_topic, tmp_path) -> tuple[dict, dict, dict, dict]:
    """The whole topic in one go (--until-end), then a drain: (open state, drained state,
    results, dead letters)."""
    arguments = args(broker, topic, dlq_topic, tmp_path, "backlog")
    run("--until-end", *arguments)
    at_end = state(arguments)
    run("--drain", *arguments)
    return at_end, state(arguments), results(tmp_path, "backlog"), letters(broker, dlq_topic)


def compare(backlog_run, slow_run, topic: str) -> None:
    (end_a, drained_a, results_a, letters_a), (end_b, drained_b, results_b, letters_b) = backlog_run, slow_run
    total = sum(end_a["offsets"].values())
    assert total == COUNT and sum(end_b["offsets"].values()) == COUNT
    # the state at the end of the input: the same open windows and sessions, late counters, marks
    assert same(end_b, end_a), "the state at the end of the input differs"
    assert sum(len(s["open"]) for s in end_a["stages"].values() if "open" in s) > 0
    assert same(drained_b, drained_a), "the drained state differs"

    assert results_b.keys() == results_a.keys(), (
        f"results only in the backlog run: {sorted(results_a.keys() - results_b.keys())[:5]}; "
        f"only in the slow run: {sorted(results_b.keys() - results_a.keys())[:5]}")
    differing = [i for i in results_a if not same(results_a[i], results_b[i])]
    assert not differing, f"{len(differing)} results differ, e.g. {results_a[differing[0]]} vs {results_b[differing[0]]}"
    stages = {r["stage"] for r in results_a.values()}
    assert stages == {"traffic_5m", "sessions", "trending_10m"}

    assert letters_b == letters_a, (
        f"dead letters only in the backlog run: {sorted(letters_a.keys() - letters_b.keys())[:5]}; "
        f"only in the slow run: {sorted(letters_b.keys() - letters_a.keys())[:5]}")
    late = {i for i, kind in letters_a.items() if kind == "late"}
    late_stages = {i.rsplit("/", 1)[1] for i in late}
    assert late_stages == {"traffic_5m", "sessions", "trending_10m"}, late_stages
    for stage in ("traffic_5m", "sessions", "trending_10m"):
        assert drained_a["stages"][stage]["late"] == sum(1 for i in late if i.endswith("/" + stage))
    print(f"{topic}: {len(results_a)} results, {len(letters_a)} dead letters ({len(late)} late), "
          f"{sum(len(s['open']) for s in end_a['stages'].values() if 'open' in s)} windows open at the end: equal")


def test_live_consumption_while_partitions_fill_in_chunks_equals_the_backlog(broker, topic_factory, tmp_path):
    topic, dlq_topic = topic_factory(PARTITIONS), topic_factory(1)
    records = plan(seed=31)
    arguments = args(broker, topic, dlq_topic, tmp_path, "live") + [
        "--set", "checkpoint.every_events=10", "--set", "event_time.idle_timeout=0"]
    writer = Writer(broker, topic, records)
    log = tmp_path / "live.log"  # a file, not a pipe: a full pipe would block the runner
    with open(log, "w") as out:
        proc = subprocess.Popen(e2e.runner_cmd("run", PIPELINE, *arguments), cwd=e2e.ROOT,
                                stdout=subprocess.DEVNULL, stderr=out)
    rng = random.Random(5)
    rounds = 0
    try:
        while any(writer.left(p) for p in range(PARTITIONS)):
            rounds += 1
            # one or two partitions per round, chunks from 20 to 1500 records: partitions run
            # far ahead of each other, then fall behind
            for p in rng.sample(range(PARTITIONS), rng.choice((1, 1, 2))):
                writer.send(p, rng.choice((20, 100, 400, 1500)))
            wait_for(arguments, proc, log, writer.total())
        assert rounds < 200
    finally:
        writer.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, log.read_text()[-3000:]
    at_end = state(arguments)
    run("--drain", *arguments)
    live = (at_end, state(arguments), results(tmp_path, "live"), letters(broker, dlq_topic))
    print(f"live: {rounds} rounds of writing")
    compare(backlog(broker, topic, topic_factory(1), tmp_path), live, topic)


def test_one_partition_written_first_then_the_others_equals_the_backlog(broker, topic_factory, tmp_path):
    topic, dlq_topic = topic_factory(PARTITIONS), topic_factory(1)
    records = plan(seed=47)
    arguments = args(broker, topic, dlq_topic, tmp_path, "slow")
    writer = Writer(broker, topic, records)
    try:
        first, *others = random.Random(2).sample(range(PARTITIONS), PARTITIONS)
        writer.send(first, writer.left(first))
        run("--until-end", *arguments)
        before = state(arguments)
        assert before["watermark"] is None, "two partitions have no events yet: no watermark"
        for step in range(4):
            for p in others if step % 2 == 0 else reversed(others):
                writer.send(p, (len(records[p]) + 3) // 4)
            run("--until-end", *arguments)
        assert writer.total() == COUNT
    finally:
        writer.close()
    at_end = state(arguments)
    run("--drain", *arguments)
    slow = (at_end, state(arguments), results(tmp_path, "slow"), letters(broker, dlq_topic))
    compare(backlog(broker, topic, topic_factory(1), tmp_path), slow, topic)
