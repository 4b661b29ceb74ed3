"""The Kafka source's readers: kafka-python fetching and parsing records in a process of its
own, beside the processing.

kafka-python parses record batches in pure Python, about 7 us a record: as much as a whole
pipeline of stages. Under the interpreter lock a thread cannot overlap that with the
processing, so the source runs the consumer in a child process (``Reader``) and receives
each poll's records as plain columns, which cost the processing process about 1 us a
record. The child needs about 0.4 s to start (importing kafka-python): until it is ready,
the source reads in-process (``LocalReader``), then hands over at the positions reached.

A reader only reads ahead: positions, checkpoints and every decision about where to read
stay in the runner. It is told where to read each partition from (``assign``); in the
child each such order starts a new epoch, and the parent drops data read before it. The
parent kills the child when it is done with it (the child holds nothing to hand back: no group
to leave, no offsets to commit, and a clean close of its consumer took 0.1-0.2 s of every
run); the child exits within ``POLL_MS`` once its parent is gone (a SIGKILL included).

Messages, child to parent (pickled tuples): ``("ready",)`` once connected;
``("data", epoch, parts, status, fetched_at, answering)`` after every poll that returned
records, and whenever the status or ``answering`` changed (``parts``, ``status`` and
``answering`` as ``Fetch.poll`` returns them, ``fetched_at`` the ``time.time()`` the poll returned);
``("assigned", epoch, {partition: position})`` answers an ``assign``; ``("error", text)``
precedes an exit. Parent to child: ``("assign", epoch, {partition: offset or None for the
log start})`` (every partition, each time).
"""

from __future__ import annotations

import os
import time
from itertools import repeat
from multiprocessing.connection import Connection

from kafka.errors import KafkaError

from plugins import kafka_common as kc
from runner.components import Record, RunnerError
from runner.helper import Helper, child_connection, run_child, send_quietly

POLL_MS = 100  # one poll's wait in the child: also how soon it sees that its parent is gone
ANSWERING_EVERY_S = 1.0  # how often an idle reader asks its consumer whether fetches are answered
# the span of kafka-python's fetch rate (its metrics_sample_window_ms, set by the Kafka source;
# the rate covers the last one to two of them): until a consumer is this old, a rate of 0 may
# only mean that its first fetch is not back yet
ANSWERING_SPAN_S = 5.0


class Fetch:
    """A kafka-python consumer with partitions assigned by hand: what a reader runs."""

    def __init__(self, consumer):
        self.consumer = consumer
        self.by_key: dict = {}
        self.answered: bool | None = None  # see ``answering``
        self.asked_at = self.started = time.monotonic()

    def assign(self, offsets: dict[str, int | None]) -> dict[str, int]:
        """Read every partition of ``offsets`` from its offset (None: its log start);
        return the positions."""
        consumer, by_key = self.consumer, {name: kc.parse_key(name) for name in offsets}
        if set(consumer.assignment()) != set(by_key.values()):
            consumer.assign(list(by_key.values()))
        for name, offset in offsets.items():
            if offset is None:
                consumer.seek_to_beginning(by_key[name])
            else:
                consumer.seek(by_key[name], offset)
        self.by_key = by_key
        timeout = kc.CONNECT_TIMEOUT_S * 1000
        return {name: consumer.position(tp, timeout_ms=timeout) for name, tp in by_key.items()}

    def poll(self, timeout_ms: int) -> tuple[list, dict, bool | None]:
        """``(parts, status, answering)``: ``parts`` a list of ``(topic, partition, offsets,
        timestamps, keys, values)`` columns, ``status`` maps ``"topic/partition"`` to the
        consumer's ``(position, high watermark)`` right after the poll, ``answering`` as
        ``answering`` says. A lost broker reads as nothing."""
        consumer = self.consumer
        try:
            batches = consumer.poll(timeout_ms=timeout_ms)
        except KafkaError:
            batches = {}  # kafka-python recovers by itself; the source reports a lost broker
        parts = [(tp.topic, tp.partition, [r.offset for r in rs], [r.timestamp for r in rs],
                  [r.key for r in rs], [r.value for r in rs]) for tp, rs in batches.items() if rs]
        status = {name: (consumer.position(tp, timeout_ms=0), consumer.highwater(tp))
                  for name, tp in self.by_key.items()}
        if parts:  # the broker answers: what ``answering`` says until it looks again
            self.answered = True
            return parts, status, True
        return parts, status, self.answering()

    def answering(self) -> bool | None:
        """False when the broker has answered none of the consumer's fetches for the last 5
        to 10 s (``ANSWERING_SPAN_S``): a broker that takes connections but hangs, which the
        source's connection check cannot see. None while it cannot tell (a consumer younger
        than that, or one that keeps no metrics). Read from kafka-python's fetch rate, at
        most once every ``ANSWERING_EVERY_S``."""
        now = time.monotonic()
        if now - self.asked_at >= ANSWERING_EVERY_S and now - self.started >= ANSWERING_SPAN_S:
            self.asked_at = now
            rate = ((self.consumer.metrics() or {}).get("consumer-fetch-manager-metrics") or {}).get("fetch-rate")
            self.answered = None if rate is None else rate > 0
        return self.answered

    def close(self) -> None:
        self.consumer.close(autocommit=False, timeout_ms=2000)


def records_of(parts: list) -> list[Record]:
    records = []
    for topic, partition, offsets, timestamps, keys, values in parts:
        # tuple.__new__ makes each Record in C (a namedtuple's own __new__ is Python)
        records.extend(map(tuple.__new__, repeat(Record),
                           zip(repeat(topic), repeat(partition), offsets, timestamps, keys, values)))
    return records


class LocalReader:
    """Reads in this process: the source's reader while the reader process starts."""

    def __init__(self, consumer):
        self.fetch = Fetch(consumer)

    def assign(self, offsets: dict[str, int | None], timeout: float | None = None) -> dict[str, int]:
        return self.fetch.assign(offsets)

    def read(self, timeout: float):
        parts, status, answering = self.fetch.poll(max(0, int(timeout * 1000)))
        return records_of(parts), status, time.time(), answering

    def close(self) -> None:
        self.fetch.close()


class Reader(Helper):
    """The reader process, from the parent: gives it orders, hands out what it read."""

    def __init__(self, servers: str, options: dict, client_id: str, settings: dict):
        super().__init__("plugins.sources.kafka_reader", (servers, options, client_id, settings))
        self.servers = servers
        self.epoch = 0
        self.ready = False  # the child is connected and takes orders

    def close(self) -> None:
        """Kill the child at once (see the module's docstring)."""
        super().close(0.0, None)

    def is_ready(self) -> bool:
        """True once the child is connected (without waiting)."""
        while not self.ready and self.waiting(0):
            self._receive()
        return self.ready

    def assign(self, offsets: dict[str, int | None], timeout: float | None = None) -> dict[str, int] | None:
        """Read every partition from its offset in ``offsets`` (None: from its log start); what
        was read before is dropped. With ``timeout``, wait for the positions and return them."""
        self.epoch += 1
        try:
            self.conn.send(("assign", self.epoch, offsets))
        except OSError:
            raise RunnerError(self._gone()) from None
        if timeout is None:
            return None
        deadline = time.monotonic() + timeout
        while self.waiting(deadline - time.monotonic()):
            message = self._receive()
            if message[0] == "assigned" and message[1] == self.epoch:
                return message[2]
        raise RunnerError(f"the Kafka reader of {self.servers} did not move to {offsets} within {timeout:g} s")

    def read(self, timeout: float):
        """``(records, status, fetched_at, answering)`` of the next poll of the current epoch,
        or None if nothing came within ``timeout`` s."""
        if not self.waiting(timeout):
            return None
        message = self._receive()
        if message[0] != "data" or message[1] != self.epoch:
            return None
        return records_of(message[2]), message[3], message[4], message[5]

    def _gone(self) -> str:
        # what it said before it exited is above; a killed one said nothing
        ended = self.how_it_ended()
        return (f"the Kafka reader process of {self.servers} ended unexpectedly ({ended})"
                + ("" if (self.process.returncode or 0) < 0 else "; see its messages above"))

    def _receive(self):
        try:
            message = self.conn.recv()
        except (EOFError, OSError):
            raise RunnerError(self._gone()) from None
        if message[0] == "error":
            raise RunnerError(message[1])
        if message[0] == "ready":
            self.ready = True
        return message


# --- the child ---------------------------------------------------------------------------
def main() -> None:
    conn = child_connection()
    parent = os.getppid()
    try:
        servers, options, client_id, settings = conn.recv()
        _serve(conn, parent, Fetch(kc.consumer(servers, options, client_id, **settings)))
    except RunnerError as exc:
        send_quietly(conn, ("error", str(exc)))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the parent is gone (other errors end the process with their traceback)


def _serve(conn: Connection, parent: int, fetch: Fetch) -> None:
    try:
        conn.send(("ready",))
        epoch, last = 0, None
        while os.getppid() == parent:
            while conn.poll(0 if fetch.by_key else POLL_MS / 1000):
                order = conn.recv()
                epoch, last = order[1], None
                conn.send(("assigned", epoch, fetch.assign(order[2])))
            if not fetch.by_key:
                continue
            parts, status, answering = fetch.poll(POLL_MS)
            if parts or (status, answering) != last:
                conn.send(("data", epoch, parts, status, time.time(), answering))
                last = (status, answering)
    finally:
        fetch.close()


if __name__ == "__main__":
    run_child(main)
