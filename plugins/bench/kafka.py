"""The Kafka side of ``runner bench``: the broker and its topics, the backlog, the consumer's
ceiling, and a producer at a steady rate.

Ends are measured by the high watermark of fetches, never by ListOffsets (``end_offsets``),
which the embedded broker answers wrongly (see ``plugins.kafka_common``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import uuid

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from plugins import broker
from plugins import kafka_common as kc
from plugins.bench.common import Latencies, Progress, say, stop_if_interrupted
from plugins.clickstream import DEFAULT_START_MS, ClickGenerator
from plugins.sources.kafka import CONSUMER as KAFKA_SOURCE
from runner.components import RunnerError

SEED = 7
BAD_RATIO = 0.03
CEILING_TIMEOUT_S = 120.0
# The latency phases' topics: a record's timestamp is when the broker appended it, as the
# latency is defined, where the broker honours this; where it keeps the producer's timestamp
# (Tansu), the record's send time (see SteadyProducer).
BROKER_TIMESTAMPS = {"message.timestamp.type": "LogAppendTime"}
LOG_APPEND_TIME = 1  # a record's timestamp_type (kafka-python) when the broker stamped it


class Cluster:
    """The broker of a bench run (the embedded one on a free port, or ``bootstrap``) and the
    topics made on it: ``close`` stops the embedded broker, or deletes them on the user's."""

    def __init__(self, bootstrap: str | None = None):
        self.proc = None
        self.topics: list[str] = []
        if bootstrap:
            if not kc.reachable(bootstrap, timeout=5.0):
                raise RunnerError(f"no Kafka broker at {bootstrap}: start one, or leave --bootstrap out "
                                  f"to use the embedded broker")
            self.bootstrap = bootstrap
        else:
            self._start()

    def _start(self) -> None:
        port = broker.free_port()
        self.proc = broker.start_broker(port, {})
        self.bootstrap = f"{broker.HOST}:{port}"
        say(f"embedded broker on {self.bootstrap}")

    def renew(self) -> None:
        """The embedded broker only: replace it with an empty one. Its latency grows with what
        it holds (kafka-python alone at 5,000/s for 30 s: p99 394 ms on a new broker, 922 ms
        on the one that had served the throughput phases), so each latency phase gets a
        broker of its own. A user's Kafka is left as it is."""
        if self.proc is not None:
            broker.stop_broker(self.proc)
            self.proc, self.topics = None, []
            self._start()

    def topic(self, purpose: str, partitions: int, configs: dict[str, str] | None = None) -> str:
        """A new topic named after ``purpose``, with topic ``configs``."""
        name = f"bench-{purpose}-{uuid.uuid4().hex[:8]}"
        broker.create_topics(self.bootstrap, {name: partitions}, configs)
        self.topics.append(name)
        return name

    def close(self) -> None:
        if self.proc is not None:
            broker.stop_broker(self.proc)
            self.proc = None
        elif self.topics:
            try:
                client = kc.admin(self.bootstrap)
                try:
                    client.delete_topics(self.topics, timeout_ms=10_000)
                finally:
                    client.close()
            except Exception as exc:  # the figures stand; say what is left behind
                say(f"could not delete the topics {', '.join(self.topics)}: {exc}")
            self.topics = []


def generator(start_ms: int = DEFAULT_START_MS, rate: float = 10) -> ClickGenerator:
    """The bench's click stream: seed 7, 3% bad records of every kind, keyed by user."""
    return ClickGenerator(SEED, start_ms, rate=rate, bad_ratio=BAD_RATIO)


def fill(bootstrap: str, topic: str, events: int) -> dict:
    """Send ``events`` generated clicks to ``topic`` (big batches, linger); a progress line per 10%."""
    gen = generator()
    producer = KafkaProducer(bootstrap_servers=bootstrap, client_id="runner-bench-fill", acks=1,
                             linger_ms=50, batch_size=512 << 10)
    failures: list = []
    bad, step = 0, max(1, events // 10)
    started = time.perf_counter()
    try:
        for i in range(events):
            key, value = gen.record(i)
            producer.send(topic, key=key, value=value).add_errback(failures.append)
            bad += gen.bad_kind(i) is not None
            if (i + 1) % step == 0 or i + 1 == events:
                say(f"fill: {i + 1}/{events} events ({(i + 1) * 100 // events}%)")
                stop_if_interrupted()
            if failures:
                break
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=10)
    if failures:
        raise RunnerError(f"sending the backlog to {topic} failed: {failures[0]}")
    seconds = time.perf_counter() - started
    return {"topic": topic, "events": events, "bad": bad, "seconds": seconds, "events_per_s": events / seconds}


def _reader(bootstrap: str, client_id: str, topic: str, partitions: int):
    """A consumer with the Kafka source's settings, every partition assigned from the start."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id=client_id, group_id=None,
                             enable_auto_commit=False, **KAFKA_SOURCE)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    return consumer, tps


def ceiling(bootstrap: str, topic: str, partitions: int) -> dict:
    """kafka-python alone reading the whole backlog and doing nothing with it: the most a
    pipeline on this machine can read. Settings as the Kafka source's (manual assignment,
    max_poll_records 2000, 4 MiB partition fetches, no deserializer); timed from the
    consumer's construction, as a pipeline's run is timed from its start."""
    started = time.perf_counter()
    consumer, tps = _reader(bootstrap, "runner-bench-ceiling", topic, partitions)
    try:
        count, first = 0, None
        while True:
            stop_if_interrupted()
            for records in consumer.poll(timeout_ms=100).values():
                count += len(records)
            if first is None and count:
                first = time.perf_counter()
            if all(_at_end(consumer, tp) for tp in tps):
                break
            if time.perf_counter() - started > CEILING_TIMEOUT_S:
                raise RunnerError(f"the ceiling consumer did not reach the end of {topic} within "
                                  f"{CEILING_TIMEOUT_S:g} s ({count} records read)")
        seconds = time.perf_counter() - started
        ends = sum(consumer.highwater(tp) for tp in tps)
    finally:
        consumer.close(autocommit=False)
    return {"events": count, "end_offsets": ends, "seconds": seconds, "events_per_s": count / seconds,
            "first_record_s": (first or started) - started}


def _at_end(consumer: KafkaConsumer, tp: TopicPartition) -> bool:
    high = consumer.highwater(tp)
    position = consumer.position(tp, timeout_ms=0)
    return high is not None and position is not None and position >= high


# The producer of the latency phases: a process of its own, as producers are (a thread would
# take the pipeline's interpreter lock and slow it down), and librdkafka's (confluent-kafka),
# not kafka-python's: the load must not take the cores the pipeline is measured on. Sending
# 5,000 records/s took kafka-python 0.7-0.9 of this machine's two cores, librdkafka 0.14
# (sending what is due each millisecond; a sleep per record cost more than the send). It
# makes its records, connects, says "ready", sends at the rate once told "go", and reports
# what it sent. murmur2: the partitions Java clients and kafka-python choose for a key.
PRODUCER = r"""
import json, sys, time
from confluent_kafka import Producer
from plugins.bench.kafka import generator
bootstrap, topic, rate, count, linger = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
gen = generator(start_ms=int(time.time() * 1000), rate=rate)
records = [gen.record(i) for i in range(count)]
failures = []
def delivered(err, msg):
    if err is not None:
        failures.append(str(err))
producer = Producer({"bootstrap.servers": bootstrap, "client.id": "runner-bench-steady", "acks": 1,
                     "linger.ms": linger, "partitioner": "murmur2_random", "on_delivery": delivered})
if producer.list_topics(topic, timeout=10).topics[topic].error is not None:
    sys.exit(f"topic {topic} is not there")
print("ready", flush=True)
if sys.stdin.readline().strip() != "go":
    sys.exit(0)
began, sent = time.monotonic(), 0
while sent < count:  # each turn (1 ms at least), the records due by now
    due = min(count, int((time.monotonic() - began) * rate) + 1)
    stamp = int(time.time() * 1000)
    for key, value in records[sent:due]:
        try:
            producer.produce(topic, key=key, value=value, timestamp=stamp)
        except BufferError:  # librdkafka's queue is full: the broker is behind; 60 s to drain it
            producer.flush(60)
            producer.produce(topic, key=key, value=value, timestamp=stamp)
    sent = due
    producer.poll(0)
    time.sleep(max(0.001, began + sent / rate - time.monotonic()))
seconds = time.monotonic() - began
left = producer.flush(60)
if left or failures:
    sys.exit(f"{left} records still queued after 60 s, {len(failures)} failed: {failures[:3]}")
print(json.dumps({"sent": count, "send_seconds": seconds}), flush=True)
"""


class SteadyProducer:
    """``count`` clicks to ``topic`` at ``rate`` per second from another process, once ``go`` is
    called; each record's timestamp is its send time (a topic with LogAppendTime replaces it
    with the broker's)."""

    # librdkafka's default, and the Java client's since Kafka 4.0 (KIP-1030). With 2 ms (more,
    # smaller batches) the embedded broker's fetches slowed as its topic filled (Tansu's memory
    # store lists every batch of a partition at each fetch): kafka-python alone at 5,000/s over
    # 30 s had p99 120 ms, against 30 ms at 5 ms and 28 ms at 10 ms. Where the broker keeps
    # the producer's timestamp, the linger is part of every latency measured.
    LINGER_MS = 5

    def __init__(self, bootstrap: str, topic: str, rate: float, count: int):
        self.count = count
        self.errors = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PRODUCER, bootstrap, topic, repr(rate), str(count), str(self.LINGER_MS)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors, text=True,
            start_new_session=True)  # Ctrl+C reaches the bench, which stops it
        if self.proc.stdout.readline().strip() != "ready":
            raise RunnerError(f"the steady producer did not start: {self._failure()}")

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def wait(self) -> dict:
        """Once all are sent and acknowledged: {"sent", "send_seconds"}."""
        line = self.proc.stdout.readline()
        if self.proc.wait() != 0 or not line.strip():
            raise RunnerError(f"the steady producer failed: {self._failure()}")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.errors):
            stream.close()

    def _failure(self) -> str:
        self.errors.seek(0)
        return self.errors.read().strip()[-2000:] or f"exit code {self.proc.poll()}"


def latency_floor(bootstrap: str, topic: str, partitions: int, rate: float, seconds: float, warmup: float) -> dict:
    """kafka-python alone, with the Kafka source's settings, reading ``rate`` events/s as they
    come for ``warmup`` + ``seconds``: receive time - record timestamp, the latency below which
    no pipeline can go (records sent in the warm-up apart, as in the pipeline's phase);
    ``timestamps`` says who stamped the records: the broker, or the producer at its send."""
    count = max(1, int(rate * (seconds + warmup)))
    producer = SteadyProducer(bootstrap, topic, rate, count)
    consumer, tps = _reader(bootstrap, "runner-bench-floor", topic, partitions)
    try:
        consumer.poll(timeout_ms=100)  # connected and positioned before the first send
        latencies = Latencies()
        latencies.warmup_until_ms = (time.time() + warmup) * 1000
        producer.go()
        stamped_by: set[str] = set()
        deadline = time.monotonic() + warmup + seconds + 60
        progress = Progress("latency floor", count)
        while len(latencies) < count and time.monotonic() < deadline:
            stop_if_interrupted()
            progress.show(len(latencies))
            for records in consumer.poll(timeout_ms=100).values():
                now_ms = time.time() * 1000
                for r in records:
                    stamped_by.add("broker" if r.timestamp_type == LOG_APPEND_TIME else "producer")
                    latencies.add(r.timestamp, now_ms - r.timestamp)
        sent = producer.wait()
    finally:
        consumer.close(autocommit=False)
        producer.close()
    return {"rate": rate, "seconds": seconds, "warmup_seconds": warmup, "sent": sent["sent"],
            **latencies.summary(), "timestamps": "/".join(sorted(stamped_by)) or None}
