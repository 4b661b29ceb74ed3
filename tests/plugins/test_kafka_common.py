"""What the Kafka source, sink and DLQ share: the settings a user's ``options`` may not change."""

import os
import sys

from kafka import TopicPartition

from plugins import kafka_common as kc
from tests.plugins.sinks.test_kafka_sink import make_sink

SLOW = {"fetch_max_wait_ms": 500}  # a good setting for a source on Apache Kafka


def test_a_consumers_fixed_settings_win_over_the_users_options(broker):
    client = kc.consumer(broker, {**SLOW, "max_poll_records": 9}, "test-fixed", fixed={"fetch_max_wait_ms": 1},
                         max_poll_records=7)
    try:
        assert client.config["fetch_max_wait_ms"] == 1
        assert client.config["max_poll_records"] == 9  # a default, which options change
    finally:
        client.close()


def test_end_probes_and_read_backs_keep_short_waits_under_a_long_one_in_options(broker, topic_factory, monkeypatch):
    # a long wait there would hold every probe of an empty partition, and a read-back's last fetch
    waits = []
    consumer = kc.consumer

    def noting_its_wait(*args, **kwargs):
        client = consumer(*args, **kwargs)
        waits.append(client.config["fetch_max_wait_ms"])
        return client

    monkeypatch.setattr(kc, "consumer", noting_its_wait)
    tp = TopicPartition(topic_factory(), 0)
    assert kc.true_ends(broker, SLOW, "test-probe", [tp]) == {tp: 0}
    sink = make_sink(broker, tp.topic, options=SLOW)
    sink.close()
    assert waits == [1, 50]


def test_a_warning_with_no_reader_on_stderr_is_dropped_and_the_run_goes_on(monkeypatch):
    read, write = os.pipe()
    os.close(read)  # runner run ... 2> >(head -0)
    with os.fdopen(write, "w") as stderr:
        monkeypatch.setattr(sys, "stderr", stderr)
        kc.warn("WARNING: first")  # raised BrokenPipeError before
        kc.warn("WARNING: second")
        assert os.path.samefile(f"/proc/self/fd/{stderr.fileno()}", os.devnull)
