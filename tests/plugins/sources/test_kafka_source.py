"""The Kafka source against a real (Tansu) broker: positions, true end offsets, lost brokers,
and its reader process."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaProducer

from plugins import broker as embedded
from plugins.sources import kafka as source_module
from plugins.sources.kafka import KafkaSource
from runner.components import Context, RunnerError
from tests import faults


def make_source(servers: str, topics: list[str], **config) -> KafkaSource:
    config = {"topics": topics, "bootstrap_servers": servers, "group_id": None,
              "auto_offset_reset": "earliest", "options": {}, "max_record_bytes": 1 << 20, **config}
    return KafkaSource(config, Context("test", "source", {}))


def produce(servers: str, topic: str, partition: int, count: int, one_batch: bool = False) -> None:
    """``count`` records ``{"i": n}``; with ``one_batch`` they go out as a single record batch."""
    settings = {"linger_ms": 1000, "batch_size": 1 << 22} if one_batch else {"linger_ms": 0}
    producer = KafkaProducer(bootstrap_servers=servers, **settings)
    for n in range(count):
        future = producer.send(topic, value=b'{"i":%d}' % n, key=b"k%d" % n, partition=partition,
                               headers=[("h", b"v")])
        if not one_batch:
            future.get(timeout=10)
    producer.flush(timeout=10)
    producer.close(timeout=5)


def read(source: KafkaSource, want: int, seconds: float = 10.0) -> list:
    records, deadline = [], time.monotonic() + seconds
    while len(records) < want and time.monotonic() < deadline:
        records.extend(source.poll(0.2))
    return records


def test_the_first_end_offsets_after_open_are_the_ends_open_measured_later_ones_are_measured_again(
        broker, topic_factory):
    topic = topic_factory(1)
    produce(broker, topic, 0, 10)
    source = make_source(broker, [topic])
    try:
        source.open({})
        produce(broker, topic, 0, 5)  # after the start: not input present at start
        assert source.end_offsets() == {f"{topic}/0": 10}  # what a bounded run stops at
        assert source.end_offsets() == {f"{topic}/0": 15}  # a later look (a recheck) sees the 5
    finally:
        source.close()


def test_reads_every_partition_from_stored_offsets_and_fixes_true_ends(broker, topic_factory):
    topic = topic_factory(3)
    produce(broker, topic, 0, 1000, one_batch=True)  # Tansu's ListOffsets would say 1 here
    produce(broker, topic, 1, 10)
    # partition 2 stays empty
    source = make_source(broker, [topic])
    try:
        positions = source.open({f"{topic}/0": 250, f"{topic}/1": 3})
        assert positions == {f"{topic}/0": 250, f"{topic}/1": 3, f"{topic}/2": 0}
        assert source.end_offsets() == {f"{topic}/0": 1000, f"{topic}/1": 10, f"{topic}/2": 0}
        assert not source.caught_up(f"{topic}/0")

        records = read(source, 750 + 7)
        by_partition: dict[int, list[int]] = {}
        for r in records:
            by_partition.setdefault(r.partition, []).append(r.offset)
        assert by_partition == {0: list(range(250, 1000)), 1: list(range(3, 10))}
        first = next(r for r in records if r.partition == 1)
        assert (first.topic, first.key, first.value) == (topic, b"k3", b'{"i":3}')
        assert isinstance(first.timestamp, int) and first.timestamp > 0
        assert read(source, 1, seconds=0.5) == []
        assert all(source.caught_up(f"{topic}/{p}") for p in range(3))

    finally:
        source.close()


def test_stored_offset_beyond_the_end_is_reported_and_reset(broker, topic_factory, capfd):
    topic = topic_factory(2)
    produce(broker, topic, 0, 5)
    earliest = make_source(broker, [topic])
    try:
        positions = earliest.open({f"{topic}/0": 2, f"{topic}/1": 500})
        lost = earliest.lost()  # the runner then says nothing more of it
    finally:
        earliest.close()
    assert positions == {f"{topic}/0": 2, f"{topic}/1": 0}
    assert lost == {f"{topic}/1": (0, 0)}
    err = capfd.readouterr().err
    assert (f"WARNING: stored offset 500 of {topic}/1 is beyond its end 0 (was the broker restarted empty?): "
            f"starting from earliest per auto_offset_reset") in err
    assert f"{topic}/0" not in err

    latest = make_source(broker, [topic], auto_offset_reset="latest")
    try:
        assert latest.open({f"{topic}/0": 99}) == {f"{topic}/0": 5, f"{topic}/1": 0}
        assert "starting from latest" in capfd.readouterr().err
        assert read(latest, 1, seconds=0.5) == []
    finally:
        latest.close()


def test_missing_topic_is_named(broker, topic_factory):
    topic = topic_factory(1)
    source = make_source(broker, [topic, "no-such-topic"])
    with pytest.raises(RunnerError, match="topic 'no-such-topic' does not exist"):
        source.open({})


def test_a_misspelt_topic_is_given_the_close_one(broker, topic_factory):
    topic = topic_factory(1)
    source = make_source(broker, [topic[:-1] + "x"])
    with pytest.raises(RunnerError, match=f"does not exist on {broker} \\(did you mean '{topic}'\\?\\)"):
        source.open({})


def test_a_host_that_does_not_resolve_is_said_so():
    source = make_source("nosuchhost.invalid:9092", ["clickstream-events"])
    with pytest.raises(RunnerError) as caught:
        source.open({})
    assert str(caught.value) == ("no Kafka broker at nosuchhost.invalid:9092: the host nosuchhost.invalid is not "
                                 "known (DNS): check bootstrap_servers (or KAFKA_BOOTSTRAP_SERVERS)")


def test_no_broker_fails_within_10_seconds_naming_the_address():
    address = f"127.0.0.1:{embedded.free_port()}"
    source = make_source(address, ["clickstream-events"])
    started = time.monotonic()
    with pytest.raises(RunnerError) as caught:
        source.open({})
    assert time.monotonic() - started < 12
    assert f"no Kafka broker at {address} within 10 s" in str(caught.value)
    assert "runner broker" in str(caught.value)


def test_lost_broker_is_reported_and_reading_resumes_when_it_returns(monkeypatch, capfd):
    monkeypatch.setattr(source_module, "STATUS_EVERY_S", 0.3)
    port = embedded.free_port()
    servers, topic = f"127.0.0.1:{port}", "events"
    proc = embedded.start_broker(port, {topic: 1})
    source = make_source(servers, [topic])
    try:
        produce(servers, topic, 0, 5)
        source.open({})
        assert len(read(source, 5)) == 5

        embedded.stop_broker(proc)
        started, polled = time.monotonic(), []
        while time.monotonic() - started < 1.5:
            polled.extend(source.poll(0.1))  # must not raise
        assert polled == []
        assert f"[KAFKA] broker {servers} unreachable; retrying..." in capfd.readouterr().err

        # the in-memory broker comes back empty: position 5 is beyond its end
        proc = embedded.start_broker(port, {topic: 1})
        produce(servers, topic, 0, 3)
        records = read(source, 3, seconds=15)
        assert [r.offset for r in records] == [0, 1, 2]
        err = capfd.readouterr().err
        assert f"WARNING: offset 5 of {topic}/0 is beyond its end 3" in err
    finally:
        source.close()
        embedded.stop_broker(proc)


def test_a_broker_that_takes_connections_but_answers_no_fetch_is_reported_and_so_is_its_return(monkeypatch, capfd):
    """A hung broker (connections are taken, requests never answered) passes a connection
    check; the reader's fetch rate tells it, and reading resumes when it answers again."""
    monkeypatch.setattr(source_module, "STATUS_EVERY_S", 0.3)
    port, topic = embedded.free_port(), "events"
    proxy = faults.Proxy(("127.0.0.1", port))
    proc = embedded.start_broker(port, {topic: 1}, advertised_port=proxy.port)  # clients go through the proxy
    source = make_source(proxy.address, [topic])
    try:
        produce(proxy.address, topic, 0, 5)
        source.open({})
        assert len(read(source, 5)) == 5
        hung = f"[KAFKA] broker {proxy.address} takes connections but has answered no fetch for 5 s or more; waiting..."
        deadline = time.monotonic() + 10
        while source.local is not None and time.monotonic() < deadline:  # the reader process reads
            source.poll(0.1)
        assert source.local is None
        assert hung not in capfd.readouterr().err  # an idle broker that answers is not hung

        proxy.pause()
        err, deadline = "", time.monotonic() + 30
        while hung not in err and time.monotonic() < deadline:
            assert source.poll(0.1) == []
            err += capfd.readouterr().err
        assert hung in err
        assert f"[KAFKA] broker {proxy.address} unreachable" not in err

        proxy.resume()
        produce(embedded.HOST + f":{port}", topic, 0, 3)  # straight to the broker, past the proxy's stall
        records = read(source, 3, seconds=30)
        assert [r.offset for r in records] == [5, 6, 7]
        err, deadline = "", time.monotonic() + 5
        while f"[KAFKA] broker {proxy.address} is back" not in err and time.monotonic() < deadline:
            source.poll(0.1)
            err += capfd.readouterr().err
        assert f"[KAFKA] broker {proxy.address} is back" in err
    finally:
        source.close()
        embedded.stop_broker(proc)
        proxy.close()


def test_a_partition_left_beyond_its_end_is_rewound_while_others_deliver_and_its_end_moves(monkeypatch, capfd):
    """The broker restarts empty and producers go on writing: the end of a partition that
    was past its old position moves, and other partitions deliver; it must still be rewound."""
    monkeypatch.setattr(source_module, "STATUS_EVERY_S", 0.3)
    port = embedded.free_port()
    servers, topic = f"127.0.0.1:{port}", "events"
    proc = embedded.start_broker(port, {topic: 2})
    source = make_source(servers, [topic])
    producer = None
    try:
        produce(servers, topic, 0, 5)
        source.open({})
        assert len(read(source, 5)) == 5
        embedded.stop_broker(proc)
        proc = embedded.start_broker(port, {topic: 2})  # empty: partition 0 is now beyond its end
        producer = KafkaProducer(bootstrap_servers=servers, linger_ms=0)
        got, sent, deadline = [], 0, time.monotonic() + 20
        while sorted(r.offset for r in got if r.partition == 0) != [0, 1, 2, 3] and time.monotonic() < deadline:
            producer.send(topic, value=b'{"i":1}', partition=1).get(timeout=10)  # partition 1 delivers
            if sent < 4 and len(got) % 5 == 0:  # partition 0's end moves, short of position 5
                producer.send(topic, value=b'{"i":0}', partition=0).get(timeout=10)
                sent += 1
            got.extend(source.poll(0.05))
        assert sorted(r.offset for r in got if r.partition == 0) == [0, 1, 2, 3]
        assert f"WARNING: offset 5 of {topic}/0 is beyond its end" in capfd.readouterr().err
    finally:
        if producer is not None:
            producer.close(timeout=5)
        source.close()
        embedded.stop_broker(proc)


# --- the reader process ------------------------------------------------------------------------

def test_the_reader_process_takes_over_where_this_process_got_to(broker, topic_factory):
    topic = topic_factory(2)
    produce(broker, topic, 0, 3000, one_batch=True)
    produce(broker, topic, 1, 40)
    source = make_source(broker, [topic])
    try:
        source.open({})
        records = []
        while not records:
            records = source.poll(0.2)  # read here: the process is still starting
        assert source.local is not None and len(records) < 3040
        deadline = time.monotonic() + 10
        while not source.reader.is_ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        records += read(source, 3040 - len(records))
        assert source.local is None and source.reader.is_ready()  # handed over
        offsets = sorted((r.partition, r.offset) for r in records)
        assert offsets == [(0, n) for n in range(3000)] + [(1, n) for n in range(40)]  # none twice, none skipped
        produce(broker, topic, 1, 5)
        assert [(r.partition, r.offset) for r in read(source, 5)] == [(1, n) for n in range(40, 45)]
    finally:
        source.close()


def test_a_dead_reader_process_is_an_error_naming_it(broker, topic_factory):
    topic = topic_factory(1)
    produce(broker, topic, 0, 10)
    source = make_source(broker, [topic])
    try:
        source.open({})
        read(source, 10)
        deadline = time.monotonic() + 10
        while source.local is not None and time.monotonic() < deadline:
            source.poll(0.1)
        source.reader.process.kill()
        with pytest.raises(RunnerError, match=r"Kafka reader process of \S+ ended unexpectedly \(killed by SIGKILL\)$"):
            for _ in range(50):
                source.poll(0.1)
    finally:
        source.close()


READER_PARENT = """
import sys, time
from tests.plugins.sources.test_kafka_source import make_source
source = make_source(sys.argv[1], [sys.argv[2]])
source.open({})
print(source.reader.process.pid, flush=True)
time.sleep(60)
"""


def test_the_reader_process_goes_with_its_parent_killed(broker, topic_factory):
    assert not faults.helper_outlives_parent(READER_PARENT, broker, topic_factory(1)), \
        "the reader process outlived its parent"
