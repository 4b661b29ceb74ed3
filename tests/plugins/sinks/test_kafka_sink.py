"""The Kafka sink against a real (Tansu) broker: every id once, across crashes and send errors."""

from __future__ import annotations

import re
import time
from collections import Counter

import pytest
from kafka.partitioner.default import DefaultPartitioner

from plugins import broker as embedded
from plugins import kafka_common as kc
from plugins.sinks.kafka import KafkaSink
from runner.components import Context, RunnerError
from runner.outputs import Output
from tests import faults


def make_sink(servers: str, topic: str, state=None, source_servers: str | None = None, **config) -> KafkaSink:
    """A sink opened like the runner does; with ``source_servers`` its servers come from the source."""
    settings = {"source": {"type": "kafka", "topics": ["in"], "bootstrap_servers": source_servers or servers,
                           "options": {}}}
    config = {"topic": topic, "bootstrap_servers": None if source_servers else servers, "options": {}, **config}
    sink = KafkaSink(config, Context("test", "out", settings))
    sink.open(state)
    return sink


def outputs(ids, key: bytes | None = b'"k"') -> list[Output]:
    return [Output(f"test/stage/{i}", "result", "stage", key, b'{"n":%d}' % i, None) for i in ids]


def read_topic(servers: str, topic: str) -> list:
    """Every record of ``topic``, read up to the true end of each partition."""
    client = kc.consumer(servers, {}, "test-reader", auto_offset_reset="earliest")
    try:
        tps = kc.partitions_of(client, [topic], servers)
        ends = kc.true_ends(servers, {}, "test-probe", tps)
        client.assign(tps)
        for tp in tps:
            client.seek(tp, 0)
        records, deadline = [], time.monotonic() + 10
        while sum(1 for tp in tps if client.position(tp, timeout_ms=0) < ends[tp]) and time.monotonic() < deadline:
            records.extend(r for batch in client.poll(timeout_ms=200).values() for r in batch)
        return records
    finally:
        client.close()


def ids_in(records) -> Counter:
    return Counter(dict(r.headers)["runner-id"].decode() for r in records)


def test_deliver_and_flush_write_each_output_once_with_id_header_and_key(broker, topic_factory):
    topic = topic_factory(3)
    sink = make_sink(broker, topic, source_servers=broker)  # servers default to the source's
    try:
        sink.deliver(outputs(range(40)) + outputs(range(40, 50), key=None))  # DLQ records may have no key
        state = sink.flush()
        assert sink.flush() == state  # nothing new: the same confirmed ends
    finally:
        sink.close()
    records = read_topic(broker, topic)
    assert ids_in(records) == Counter(f"test/stage/{i}" for i in range(50))
    by_id = {dict(r.headers)["runner-id"].decode(): r for r in records}
    assert (by_id["test/stage/7"].key, by_id["test/stage/7"].value) == (b'"k"', b'{"n":7}')
    assert by_id["test/stage/45"].key is None
    assert len({r.partition for r in records if r.key == b'"k"'}) == 1  # one key, one partition
    ends = Counter(r.partition for r in records)
    assert state == {f"{topic}/{p}": ends[p] for p in range(3)}  # every partition read back


def test_a_restart_with_stale_state_writes_nothing_twice(broker, topic_factory):
    topic = topic_factory(2)
    first = make_sink(broker, topic)
    first.deliver(outputs(range(30)))
    committed = first.flush()  # the state the last checkpoint holds
    first.deliver(outputs(range(30, 60)))
    first.flush()  # written and confirmed, then a crash before that checkpoint committed
    first.deliver(outputs(range(60, 70)))  # sent, never confirmed
    first.producer.flush(timeout=10)
    first.close()

    second = make_sink(broker, topic, state=committed)
    try:
        second.deliver(outputs(range(30, 80)))  # the outbox since the committed checkpoint, and new ones
        state = second.flush()
    finally:
        second.close()
    records = read_topic(broker, topic)
    assert ids_in(records) == Counter(f"test/stage/{i}" for i in range(80))
    assert sum(state.values()) == 80


def test_a_first_run_reads_the_topic_from_the_start(broker, topic_factory):
    topic = topic_factory(1)
    crashed = make_sink(broker, topic)
    crashed.deliver(outputs(range(5)))
    crashed.producer.flush(timeout=10)  # reached Kafka, but no checkpoint ever held a state
    crashed.close()
    again = make_sink(broker, topic, state=None)
    try:
        again.deliver(outputs(range(8)))
        assert again.flush() == {f"{topic}/0": 8}
    finally:
        again.close()
    assert ids_in(read_topic(broker, topic)) == Counter(f"test/stage/{i}" for i in range(8))


def test_a_fresh_start_takes_the_ends_and_reads_nothing_back(broker, topic_factory):
    topic = topic_factory(1)
    faults.written_by_another(broker, topic, outputs(range(5)))  # ids like ours among them
    fresh = make_sink(broker, topic, state=None)
    try:
        assert fresh.fresh_start() == {f"{topic}/0": 5}
        fresh.deliver(outputs(range(8)))
        assert fresh.flush() == {f"{topic}/0": 13}
    finally:
        fresh.close()
    # not read back: ids 0-4 of the other writer did not keep ours from being written
    assert ids_in(read_topic(broker, topic)) == Counter({f"test/stage/{i}": 2 if i < 5 else 1 for i in range(8)})


def test_a_fresh_start_without_the_ends_leaves_the_read_back_to_the_first_delivery(broker, topic_factory,
                                                                                     monkeypatch):
    topic = topic_factory(1)
    faults.written_by_another(broker, topic, outputs(range(3)))
    fresh = make_sink(broker, topic, state=None)
    try:
        def no_answer():
            raise RunnerError("no fetch answered")  # as from a broker gone between open and here
        monkeypatch.setattr(fresh, "_true_ends", no_answer)
        assert fresh.fresh_start() is None
        monkeypatch.undo()
        fresh.deliver(outputs(range(5)))  # read back from the start: 0-2 are there
        assert fresh.flush() == {f"{topic}/0": 5}
    finally:
        fresh.close()
    assert ids_in(read_topic(broker, topic)) == Counter(f"test/stage/{i}" for i in range(5))


def too_large(sink):
    return [Output("test/stage/huge", "result", "stage", b"k", b"x" * 10000, None)], "MessageSizeTooLarge"


def producer_killed(sink):
    sink.producer.process.kill()
    sink.producer.process.wait(10)
    return [], "Kafka producer process of .* ended unexpectedly"


@pytest.mark.parametrize("failure", [too_large, producer_killed])
def test_a_send_error_makes_the_next_delivery_read_back_first(broker, topic_factory, failure):
    topic = topic_factory(2)
    sink = make_sink(broker, topic, options={"max_request_size": 4000})
    errors = []
    try:
        sink.deliver(outputs(range(10)))
        sink.flush()
        sink.deliver(outputs(range(10, 30)))  # sent
        extra, error = failure(sink)
        unconfirmed = outputs(range(10, 30)) + extra + outputs(range(30, 40))
        for _ in range(3):  # as the runner does: deliver what is unconfirmed until a flush succeeds
            try:
                sink.deliver(unconfirmed[20:] if not errors else unconfirmed)
                state = sink.flush()
                break
            except RunnerError as exc:
                errors.append(str(exc))
                sink.recover()
                unconfirmed = [out for out in unconfirmed if out not in extra]
    finally:
        sink.close()
    assert errors and re.search(error, errors[0]), errors
    assert ids_in(read_topic(broker, topic)) == Counter(f"test/stage/{i}" for i in range(40))
    assert sum(state.values()) == 40


def test_a_failed_delivery_is_forgotten_by_recover_and_the_redelivery_confirms_at_once(broker, topic_factory):
    topic = topic_factory(1)
    sink = make_sink(broker, topic)
    try:
        sink.deliver(outputs(range(5)))
        producer_killed(sink)
        with pytest.raises(RunnerError):
            sink.deliver(outputs(range(5, 10)))
        sink.recover()  # as the runner does after a failed deliver: no flush in between
        sink.deliver(outputs(range(10)))
        state = sink.flush()  # the failed delivery's error is not raised again
    finally:
        sink.close()
    assert ids_in(read_topic(broker, topic)) == Counter(f"test/stage/{i}" for i in range(10))
    assert sum(state.values()) == 10


def test_a_flush_that_another_sink_undid_is_read_back(broker, topic_factory):
    """Sink A flushed, sink B failed: the runner calls ``recover`` and redelivers to both."""
    topic = topic_factory(1)
    sink = make_sink(broker, topic)
    try:
        sink.deliver(outputs(range(10)))
        sink.flush()
        sink.recover()
        sink.deliver(outputs(range(10)))
        assert sink.flush() == {f"{topic}/0": 10}
    finally:
        sink.close()
    assert ids_in(read_topic(broker, topic)) == Counter(f"test/stage/{i}" for i in range(10))


def test_a_lost_broker_fails_the_flush_and_an_emptied_one_is_read_from_zero(capfd):
    port = embedded.free_port()
    servers, topic = f"127.0.0.1:{port}", "results"
    proc = embedded.start_broker(port, {topic: 1})
    fast = {"request_timeout_ms": 1000, "delivery_timeout_ms": 1500, "max_block_ms": 1500}
    sink = make_sink(servers, topic, options=fast)
    try:
        sink.deliver(outputs(range(5)))
        committed = sink.flush()
        assert committed == {f"{topic}/0": 5}
        embedded.stop_broker(proc)
        with pytest.raises(Exception):
            sink.deliver(outputs(range(5, 8)))
            sink.flush()
        proc = embedded.start_broker(port, {topic: 1})  # back, and empty
        sink.recover()
        deadline = time.monotonic() + 10
        while True:  # the runner retries with backoff until a flush succeeds
            try:
                sink.deliver(outputs(range(5, 8)))
                state = sink.flush()
                break
            except Exception:
                assert time.monotonic() < deadline
                sink.recover()
                time.sleep(0.2)
        # a client that reconnects before the topic is made again can have the broker make it
        # with its default partitions: those are empty
        assert {p: end for p, end in state.items() if end} == {f"{topic}/0": 3}
        sink.close()

        # a crash before that state was committed: the next start has offset 5, beyond the end 3
        sink = make_sink(servers, topic, state=committed, options=fast)
        sink.deliver(outputs(range(5, 9)))
        assert {p: end for p, end in sink.flush().items() if end} == {f"{topic}/0": 4}
        assert "confirmed offset 5 of results/0 is beyond its end 3" in capfd.readouterr().err
        assert ids_in(read_topic(servers, topic)) == Counter(f"test/stage/{i}" for i in range(5, 9))
    finally:
        sink.close()
        embedded.stop_broker(proc)



def test_a_broker_emptied_between_two_deliveries_lowers_the_confirmed_end_to_ours(capfd):
    # no send fails (the broker is back before the next one), so no read-back corrects the
    # state: the flush must not keep the old log's end above records of ours in the new one
    port = embedded.free_port()
    servers, topic = f"127.0.0.1:{port}", "results"
    proc = embedded.start_broker(port, {topic: 1})
    sink = make_sink(servers, topic)
    try:
        sink.deliver(outputs(range(5)))
        assert sink.flush() == {f"{topic}/0": 5}
        embedded.stop_broker(proc)
        proc = embedded.start_broker(port, {topic: 1})
        sink.deliver(outputs(range(5, 8)))
        assert sink.flush() == {f"{topic}/0": 3}
        assert f"records sent to {topic}/0 landed below its confirmed end 5" in capfd.readouterr().err
    finally:
        sink.close()
        embedded.stop_broker(proc)


def test_missing_topic_or_broker_fails_open_naming_it(broker):
    with pytest.raises(RunnerError, match="topic 'nowhere' does not exist"):
        make_sink(broker, "nowhere")
    address = f"127.0.0.1:{embedded.free_port()}"
    started = time.monotonic()
    with pytest.raises(RunnerError, match=f"no Kafka broker at {address} within 1.5 s"):
        make_sink(address, "results", options={"bootstrap_timeout_ms": 1500})
    assert time.monotonic() - started < 4


class Cluster:
    """What a partitioner reads of kafka-python's cluster metadata: one topic of n partitions."""

    def __init__(self, n: int):
        self.n = n

    def topics(self):
        return {"t"}

    def partitions_for_topic(self, topic):
        return set(range(self.n))

    def available_partitions_for_topic(self, topic):
        return set(range(self.n))


def test_remembered_key_hashes_partition_as_kafkas_default_partitioner():
    cache, default = kc.KeyHashCache(), DefaultPartitioner()
    keys = [b"", b"a", b"user_0001", "é".encode(), b'"/products/1001"', bytes(range(256))]
    for n in (1, 2, 3, 7, 12):
        for key in keys * 2:  # the second time from the cache
            assert cache.partition("t", None, key, None, None, Cluster(n)) == \
                default.partition("t", None, key, None, None, Cluster(n))
    assert set(cache.hashes) == set(keys)
