"""The Kafka source: every partition of its topics, assigned by hand, positions owned by the runner.

No consumer group is joined and no offset is committed to Kafka: the runner keeps the
offsets in its own checkpoints and passes them to ``open``. End offsets are measured by
the high watermark of a fetch (see ``plugins.kafka_common``). The records are fetched and
parsed by a reader process (``plugins.sources.kafka_reader``), beside the processing; until
it is ready, in this process.
"""

from __future__ import annotations

import time

from kafka.errors import KafkaError

from plugins import kafka_common as kc
from plugins.sources.kafka_reader import ANSWERING_SPAN_S, LocalReader, Reader
from runner import hookimpl
from runner.components import RunnerError, Source
from runner.schema import obj, source_common

STATUS_EVERY_S = 5.0  # at most one "unreachable" line, and one health check, per this long
CONSUMER = dict(max_poll_records=2000, max_partition_fetch_bytes=4 << 20,
                # a short fetch wait: some brokers (Tansu) do not answer a waiting fetch when data
                # arrives, but look again after sleeping half of the wait that is left
                fetch_max_wait_ms=20,
                # the fetch rate, by which a reader tells a hung broker (Fetch.answering), covers
                # the last 5 to 10 s (kafka-python's default: 30 to 60 s)
                metrics_sample_window_ms=int(ANSWERING_SPAN_S * 1000))


class KafkaSource(Source):
    """Reads all partitions of ``topics``; records are ``runner.components.Record`` tuples."""

    type = "kafka"
    config_schema = obj({
        "topics": {
            "type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1,
            "description": "topics to read; every partition of each is read by this one runner",
        },
        **kc.connection_properties(),
        "group_id": {
            "type": ["string", "null"], "default": None,
            "description": "a name for this reader (used as the Kafka client id); no group is joined "
                           "and offsets live in the runner's state, not in Kafka",
        },
        "auto_offset_reset": {
            "enum": ["earliest", "latest"], "default": "earliest",
            "description": "where a partition starts with no stored offset, or when its stored "
                           "offset is outside the partition (the broker lost or deleted data)",
        },
        **source_common(),
    }, required=("topics",), description="read records from Kafka topics")

    reader = local = ends_at_open = None

    def open(self, offsets: dict[str, int]) -> dict[str, int]:
        """Assign every partition of ``topics`` and seek each to its start; return the positions.

        A stored offset (``"topic/partition"`` -> next offset) inside the partition is used
        as it is. With none, or one outside [log start, true end] (reported on stderr), the
        partition starts at its log start (``earliest``) or its true end (``latest``).
        Raises ``RunnerError`` when no broker answers within 10 s or a topic is missing.
        """
        cfg = self.config
        self.servers, self.options = cfg["bootstrap_servers"], cfg["options"]
        self.client_id = cfg["group_id"] or f"runner-{self.context.pipeline}"
        settings = dict(CONSUMER, auto_offset_reset=cfg["auto_offset_reset"])
        # started first: it starts up while this process looks the start offsets up and reads
        self.reader = Reader(self.servers, self.options, self.client_id, settings)
        self.rewound: dict = {}  # partition -> (new position, end) after a reset, for lost()
        try:
            consumer = kc.consumer(self.servers, self.options, self.client_id, **settings)
            self.local = LocalReader(consumer)
            positions = self._start_positions(consumer, offsets)
            self.local.assign(positions)
        except BaseException:
            self.close()
            raise
        self.status = {name: (offset, None) for name, offset in positions.items()}  # (position, high watermark)
        self.down = False
        self.answering: bool | None = None  # the reader's last word on the broker's answers to fetches
        self.last_check = time.monotonic()
        self.suspects: dict = {}  # partition -> its position, seen beyond its end at the last check
        return positions

    def _start_positions(self, client, offsets: dict[str, int]) -> dict[str, int]:
        cfg = self.config
        try:
            self.tps = kc.partitions_of(client, cfg["topics"], self.servers)
            self.by_key = {kc.key(tp): tp for tp in self.tps}
            ends = kc.true_ends(self.servers, self.options, self.client_id, self.tps)
            starts = client.beginning_offsets(self.tps, timeout_ms=kc.CONNECT_TIMEOUT_S * 1000)
            self.ends_at_open = {kc.key(tp): end for tp, end in ends.items()}
        except KafkaError as exc:
            raise RunnerError(f"cannot read the start offsets of {', '.join(cfg['topics'])}: {exc}") from None

        reset = cfg["auto_offset_reset"]
        positions = {}
        for name, tp in self.by_key.items():
            offset = offsets.get(name)
            if offset is not None and offset > ends[tp]:
                kc.warn(f"WARNING: stored offset {offset} of {name} is beyond its end {ends[tp]} "
                        f"(was the broker restarted empty?): starting from {reset} per auto_offset_reset")
                self.rewound[name] = (starts[tp] if reset == "earliest" else ends[tp], ends[tp])  # said: see lost()
                offset = None
            elif offset is not None and offset < starts[tp]:
                kc.warn(f"WARNING: stored offset {offset} of {name} is before its start {starts[tp]} "
                        f"(deleted by retention?): starting from {reset} per auto_offset_reset")
                offset = None
            if offset is None:
                offset = starts[tp] if reset == "earliest" else ends[tp]
            positions[name] = offset
        return positions

    def end_offsets(self) -> dict[str, int]:
        """The true end (fetch high watermark) of every partition, measured now. The first call
        after ``open`` gets the ends ``open`` measured a moment before (a bounded run asks at
        once): another probe consumer would cost its start 20-40 ms later."""
        ends, self.ends_at_open = self.ends_at_open, None
        if ends is None:
            ends = {kc.key(tp): end for tp, end in kc.true_ends(self.servers, self.options, self.client_id,
                                                                  self.tps).items()}
        return ends

    def poll(self, timeout: float) -> list:
        """Records fetched within ``timeout`` s, in offset order per partition.

        Never raises for a lost broker: returns [] and says so on stderr at most every
        5 s, and goes on where it was once the broker is back. Raises ``RunnerError`` if
        the reader process died after it took over.
        """
        if self.local is not None and self.reader is not None:
            self._hand_over()
        got = (self.local or self.reader).read(timeout)
        records, self.fetched_at = [], None
        if got is not None:
            records, status, fetched_at, self.answering = got
            self.fetched_at = fetched_at if records else None
            for name, (position, high) in status.items():
                # a position kafka-python does not know (a reset pending) stays the last known
                self.status[name] = (self.status[name][0] if position is None else position, high)
        if time.monotonic() - self.last_check >= STATUS_EVERY_S:
            if records:  # the broker answers; a partition may still be stuck beyond its end
                self.last_check = time.monotonic()
                self._back()
                self._reset_beyond_end()
            else:
                self._check_health()
        return records

    def _hand_over(self) -> None:
        """Once the reader process is ready, it reads on from the positions reached here:
        nothing is read twice, nothing skipped. If it failed to start, this process reads on."""
        try:
            if not self.reader.is_ready():
                return
            self.reader.assign({name: position for name, (position, _) in self.status.items()})
        except RunnerError as exc:
            kc.warn(f"WARNING: the Kafka reader process did not start ({exc}); reading in the runner's process")
            self.reader.close()
            self.reader = None
            return
        self.local.close()
        self.local = None

    def caught_up(self, partition: str) -> bool:
        """True when the partition's position has reached the high watermark of its last fetch."""
        position, high = self.status[partition]
        return high is not None and position is not None and position >= high

    def close(self) -> None:
        """Leave the broker; nothing to commit (offsets live in the runner's checkpoints)."""
        for reader in ("local", "reader"):
            if getattr(self, reader) is not None:
                getattr(self, reader).close()
                setattr(self, reader, None)

    # --- while nothing arrives ---------------------------------------------------------
    def _check_health(self) -> None:
        self.last_check = time.monotonic()
        if not kc.reachable(self.servers):
            self.down = True
            kc.warn(f"[KAFKA] broker {self.servers} unreachable; retrying...")
            return
        if self.answering is False:  # connections are taken, fetches are not answered: it hangs
            self.down = True
            kc.warn(f"[KAFKA] broker {self.servers} takes connections but has answered no fetch for "
                    f"{ANSWERING_SPAN_S:g} s or more; waiting...")
            return
        self._back()
        self._reset_beyond_end()

    def _back(self) -> None:
        if self.down:
            self.down = False
            kc.warn(f"[KAFKA] broker {self.servers} is back")

    def _reset_beyond_end(self) -> None:
        """A position past the high watermark means the broker lost data (a restarted
        in-memory broker keeps answering, with nothing, instead of OFFSET_OUT_OF_RANGE).
        Act only when a partition is still beyond its end at the same position 5 s later,
        so a lagging leader's moment never rewinds us; its end may have moved meanwhile
        (producers writing to the restarted broker), and other partitions may be delivering."""
        suspects = {}
        for name, (position, high) in self.status.items():
            if high is None or position is None or position <= high:
                continue
            if self.suspects.get(name) != position:
                suspects[name] = position
                continue
            self.rewound[name] = (self.restart(name, position, high), high)
        self.suspects = suspects

    def restart(self, partition: str, position: int, end: int) -> int:
        """The broker lost the data at ``position`` (the partition now ends at ``end``): go on
        from where ``auto_offset_reset`` says, and return that position."""
        reset = self.config["auto_offset_reset"]
        kc.warn(f"WARNING: offset {position} of {partition} is beyond its end {end} "
                f"(was the broker restarted empty?): going on from {reset} per auto_offset_reset")
        offsets = {name: position for name, (position, high) in self.status.items()}
        offsets[partition] = None if reset == "earliest" else end
        moved = (self.local or self.reader).assign(offsets, timeout=kc.CONNECT_TIMEOUT_S)
        self.status = {name: (position, None) for name, position in moved.items()}
        return self.status[partition][0]

    def lost(self) -> dict[str, tuple[int, int]]:
        """Partitions rewound since the last call because the broker lost their data."""
        rewound, self.rewound = self.rewound, {}
        return rewound


@hookimpl
def runner_register_sources():
    return [KafkaSource]
