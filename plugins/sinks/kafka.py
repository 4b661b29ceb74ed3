"""The Kafka sink (and Kafka DLQ): exactly once by reading back, without broker transactions.

Each output becomes one record: header ``runner-id`` = the output's id, key = its key
(results: compact JSON of the result key; DLQ: the original record key), value = its JSON,
partitioned by the default partitioner. Before anything unconfirmed is sent (after a start,
a failed send or a ``recover``), every partition of the topic is read from its last
confirmed end offset up to its true end, and outputs whose id is found there are skipped; a
start with nothing of ours to find (``fresh_start``) takes the ends instead. The design and
its limits are in ``docs/kafka-exactly-once.md``. The records are sent by a producer process
(``plugins.sinks.kafka_producer``), beside the processing.
"""

from __future__ import annotations

import time

from kafka.errors import KafkaError

from plugins import kafka_common as kc
from plugins.sinks.kafka_producer import HEADER, RemoteProducer
from runner import hookimpl
from runner.components import RunnerError, Sink
from runner.schema import obj

FLUSH_MARGIN_S = 5.0  # a flush waits delivery_timeout_ms + this: no send is left in flight
STALL_S = 10.0  # a read-back that makes no progress for this long fails (and is retried)


class KafkaSink(Sink):
    """Writes each output once to ``topic``; also the Kafka dead letter queue."""

    type = "kafka"
    exactly_once = True
    config_schema = obj({
        "topic": {"type": "string", "minLength": 1, "description": "the topic to write to"},
        "bootstrap_servers": {
            "type": ["string", "null"], "default": None,
            "description": "comma-separated host:port list of the Kafka brokers; null: the source's "
                           "bootstrap_servers and options when the source is kafka, else localhost:9092",
        },
        "options": kc.connection_properties()["options"],
    }, required=("topic",), description="write results (or dead letters) to a Kafka topic, exactly once")

    producer = reader = None

    def open(self, state) -> None:
        """Connect, check the topic exists, and take ``state`` ({"topic/partition": confirmed
        end offset}, None on a first run) as the start of the first read-back (unless
        ``fresh_start`` follows).
        Raises ``RunnerError`` when no broker answers within 10 s or the topic is missing."""
        self.topic = self.config["topic"]
        self.servers, self.options = self._connection()
        self.client_id = f"runner-{self.context.pipeline}-{self.name}"
        # a read-back knows where it ends: a longer wait (a source's, in shared options) would
        # only hold its last fetch
        self.reader = kc.consumer(self.servers, self.options, self.client_id + "-reader",
                                  fixed={"fetch_max_wait_ms": 50}, auto_offset_reset="earliest",
                                  max_partition_fetch_bytes=4 << 20)
        try:
            kc.partitions_of(self.reader, [self.topic], self.servers)
            self.producer = self._new_producer()
        except RunnerError:
            self.close()
            raise
        # offsets below which no unconfirmed output of ours can be, as last committed
        # (a state that is not a dict is another sink type's, of a runner before sink types were kept)
        self.base = {int(k.rpartition("/")[2]): v for k, v in (state if isinstance(state, dict) else {}).items()
                     if k.rpartition("/")[0] == self.topic}
        self.candidate = None  # what the last successful flush returned; committed once deliveries go on
        self.checked: dict[int, int] = {}  # partition -> true end at the last read-back
        self.sent: dict[int, int] = {}  # partition -> end of our acknowledged sends since the last flush
        self.seen: set[str] = set()  # ids found by the last read-back, and ids sent since
        self.pending = False  # records sent since the last flush
        self.failure: Exception | None = None
        self.needs_read = True

    def fresh_start(self) -> dict | None:
        """Nothing of ours can be in the topic: take its ends as confirmed, so the first
        delivery reads nothing back (it would read the whole topic). If the broker does not
        tell them, the first delivery reads back from the start as after any start."""
        try:
            ends = self._true_ends()
        except RunnerError:
            return None
        self.base = {tp.partition: end for tp, end in ends.items()}
        self.needs_read = False
        return {f"{self.topic}/{p}": end for p, end in sorted(self.base.items())}

    def deliver(self, outputs: list) -> None:
        """Send every output whose id is not already in the topic; returns before the sends
        are acknowledged. After a start (but a fresh one) or a failure, reads the topic back
        first."""
        if self.candidate is not None:  # deliveries after a successful flush: it was committed
            self.base, self.candidate = self.candidate, None
        try:
            if self.needs_read:
                self._read_back()
            if self.producer is None:
                self.producer = self._new_producer()
            records = []
            for out in outputs:
                if out.id not in self.seen:
                    self.seen.add(out.id)
                    records.append((out.value, out.key, out.id.encode()))
            if records:
                self.producer.send(self.topic, records)
                self.pending = True
        except Exception as exc:
            self._fail()
            self.failure = exc  # the next flush must fail: these outputs are not all sent
            raise

    def flush(self) -> dict:
        """Wait (at most ~20 s) for every send; return {"topic/partition": confirmed end}.

        Raises if any send or delivery since the last flush failed: the runner then calls
        ``recover`` and delivers again, and the next ``deliver`` reads the topic back first.
        """
        try:
            failure, self.failure = self.failure, None
            if failure is not None:
                raise failure
            if self.pending:
                for partition, end in self.producer.flush(self._flush_s()).items():
                    self.sent[partition] = max(self.sent.get(partition, 0), end)
        except Exception as exc:
            self._fail()
            raise RunnerError(f"sending to Kafka topic {self.topic} at {self.servers} failed: {exc}") from exc
        # a flush with nothing new returns the last state again; a read-back replaces it
        state = {**(self.base if self.candidate is None else self.candidate), **self.checked}
        for partition, end in self.sent.items():
            # ours land after all that was there: below the confirmed end, that log is gone
            if end < state.get(partition, 0):
                kc.warn(f"WARNING: records sent to {self.topic}/{partition} landed below its confirmed end "
                        f"{state[partition]} (was the broker restarted empty?): confirming {end} instead")
            state[partition] = end
        self.pending, self.sent, self.checked, self.seen = False, {}, {}, set()
        self.candidate = state
        return {f"{self.topic}/{p}": end for p, end in sorted(state.items())}

    def recover(self) -> None:
        """Everything delivered since the last commit is to be delivered again: read the
        topic back from the committed offsets first (a flush that succeeded may not have
        been committed, when another sink failed)."""
        self.candidate = None
        self.needs_read = True
        self.failure = None  # a failed deliver's, which the runner did not ask a flush to raise

    def close(self) -> None:
        """Close the clients; unacknowledged sends are found by the read-back at the next start."""
        self._drop_producer(wait=2)
        if self.reader is not None:
            self.reader.close(autocommit=False, timeout_ms=2000)
            self.reader = None

    # --- internals -------------------------------------------------------------------------
    def _connection(self) -> tuple[str, dict]:
        servers, options = self.config["bootstrap_servers"], self.config["options"]
        if servers is not None:
            return servers, options
        source = self.context.settings.get("source") or {}
        if source.get("type") == "kafka":  # same cluster, same credentials
            return source.get("bootstrap_servers") or kc.DEFAULT_SERVERS, {**(source.get("options") or {}), **options}
        return kc.DEFAULT_SERVERS, options

    def _new_producer(self) -> RemoteProducer:
        return RemoteProducer(self.servers, self.options, self.client_id, {"max_request_size": 16 << 20})

    def _fail(self) -> None:
        """Forget every unconfirmed send: their fate is learnt by reading the topic back."""
        self.needs_read = True
        self.candidate = None
        self.pending, self.sent, self.checked, self.seen = False, {}, {}, set()
        self._drop_producer(wait=self._flush_s())  # a fresh one later: nothing of this one lands after the read-back

    def _flush_s(self) -> float:
        """How long a flush may wait: every send is acknowledged or failed by then."""
        delivery_ms = self.options.get("delivery_timeout_ms", kc.PRODUCER_DELIVERY_TIMEOUT_MS)
        return delivery_ms / 1000 + FLUSH_MARGIN_S

    def _drop_producer(self, wait: float) -> None:
        """Let sends in flight finish (at most ``wait`` s), then close the producer."""
        if self.producer is not None:
            self.producer.stop(wait)
            self.producer = None

    def _true_ends(self) -> dict:
        """{TopicPartition: true end} of every partition of the topic."""
        tps = kc.partitions_of(self.reader, [self.topic], self.servers)
        return kc.true_ends(self.servers, self.options, self.client_id + "-probe", tps)

    def _read_back(self) -> None:
        """Collect the ids in every partition from its base offset up to its true end.

        A base beyond the end (the broker lost its data) is reported, and that partition
        is read from 0. Raises ``RunnerError`` when a read makes no progress for 10 s.
        """
        ends = self._true_ends()
        tps = list(ends)
        self.reader.assign(tps)
        todo = {}
        for tp in tps:
            start = self.base.get(tp.partition, 0)
            if start > ends[tp]:
                kc.warn(f"WARNING: confirmed offset {start} of {kc.key(tp)} is beyond its end {ends[tp]} "
                        f"(was the broker restarted empty?): reading it back from 0")
                start = 0
            if start < ends[tp]:
                self.reader.seek(tp, start)
                todo[tp] = ends[tp]
        seen = set()
        last_progress = time.monotonic()
        while todo:
            try:
                batches = self.reader.poll(timeout_ms=200, max_records=10000)
            except KafkaError:
                batches = {}  # retried until STALL_S without progress
            for tp, records in batches.items():
                end = todo.get(tp, 0)
                for r in records:
                    if r.offset < end:
                        seen.update(v.decode("utf-8", "replace") for k, v in r.headers if k == HEADER)
                last_progress = time.monotonic()
            for tp in [tp for tp, end in todo.items() if (self.reader.position(tp, timeout_ms=0) or 0) >= end]:
                del todo[tp]
            if todo and time.monotonic() - last_progress > STALL_S:
                raise RunnerError(f"reading back {', '.join(kc.key(tp) for tp in todo)} from {self.servers} "
                                  f"made no progress for {STALL_S:g} s")
        self.seen = seen
        self.checked = {tp.partition: end for tp, end in ends.items()}
        self.needs_read = False


@hookimpl
def runner_register_sinks():
    return [KafkaSink]
