"""What the Kafka source, sink and DLQ share: connection settings, clients, true end offsets.

Clients are kafka-python's. Every wait here is bounded: a missing broker becomes a
``RunnerError`` within ``CONNECT_TIMEOUT_S`` (or the client's own ``bootstrap_timeout_ms``
when ``options`` sets one), never a hang.

End offsets are measured by the high watermark of a fetch, not by ListOffsets: some
Kafka-compatible brokers (Tansu) answer ListOffsets with the base offset of the last
batch + 1, while the high watermark in a fetch response is right everywhere.
"""

from __future__ import annotations

import difflib
import socket
import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaConfigurationError, KafkaError
from kafka.partitioner.default import DefaultPartitioner, murmur2

from runner.components import RunnerError
from runner.display import show

DEFAULT_SERVERS = "localhost:9092"
CONNECT_TIMEOUT_S = 10
PROBE_POLL_MS = 5  # one poll of a high-watermark probe (see high_watermarks)

# Client settings the runner needs; a user's ``options`` may override any of them.
_COMMON = {
    "bootstrap_timeout_ms": CONNECT_TIMEOUT_S * 1000,
    "reconnect_backoff_max_ms": 1000,  # come back within a second once a lost broker returns
}
_CONSUMER = {
    **_COMMON,
    "request_timeout_ms": 10000,
    "allow_auto_create_topics": False,  # reading a topic must never create it
}
PRODUCER_DELIVERY_TIMEOUT_MS = 15000  # every send is acknowledged or failed by then
# No retries and no idempotence: a failed send is found (or not) by reading the topic
# back, which is how the sink gets exactly once on brokers without idempotent producers.
_PRODUCER = {
    **_COMMON,
    "acks": "all",
    "retries": 0,
    "enable_idempotence": False,
    "linger_ms": 5,
    "max_block_ms": CONNECT_TIMEOUT_S * 1000,
    "request_timeout_ms": 10000,
    "delivery_timeout_ms": PRODUCER_DELIVERY_TIMEOUT_MS,
    # nor writing: a broker would make a missing topic with its default partition count
    "allow_auto_create_topics": False,
}


def connection_properties() -> dict:
    """Schema properties of every Kafka component: ``bootstrap_servers`` and ``options``."""
    return {
        "bootstrap_servers": {
            "type": "string", "default": DEFAULT_SERVERS,
            "description": "comma-separated host:port list of the Kafka brokers",
        },
        "options": {
            "type": "object", "default": {},
            "description": "extra kafka-python client settings passed through as they are "
                           "(security_protocol, sasl_mechanism, ssl_cafile, ...)",
        },
    }


def client_settings(factory, servers: str, options: dict, base: dict, **fixed) -> dict:
    """``base`` defaults, then the user's ``options``, then ``fixed`` (what the code relies on).

    One ``options`` serves every client of a component (a sink has a producer and a
    reader), so a key that only another kind of client knows is left out here; a key
    no client knows is kept, and the client rejects it (a misspelt option is an error).
    """
    own = factory.DEFAULT_CONFIG
    others = {k for c in (KafkaConsumer, KafkaProducer, KafkaAdminClient) for k in c.DEFAULT_CONFIG}
    options = {k: v for k, v in (options or {}).items() if k in own or k not in others}
    return {**{k: v for k, v in base.items() if k in own}, "bootstrap_servers": servers, **options, **fixed}


def no_broker(servers: str, settings: dict) -> RunnerError:
    """The error for a broker that did not answer: where, how long, and what to do."""
    seconds = settings.get("bootstrap_timeout_ms", CONNECT_TIMEOUT_S * 1000) / 1000
    unknown = _unresolved(servers)
    if unknown:
        return RunnerError(f"no Kafka broker at {servers}: the host {unknown} is not known (DNS): "
                           f"check bootstrap_servers (or KAFKA_BOOTSTRAP_SERVERS)")
    return RunnerError(
        f"no Kafka broker at {servers} within {seconds:g} s: start one with 'runner broker' or "
        f"'docker compose -f docker/docker-compose.yml up -d', or set KAFKA_BOOTSTRAP_SERVERS")


def _unresolved(servers: str) -> str | None:
    """The first host of ``servers`` (``host:port,...``) that does not resolve, if one does not."""
    for server in servers.split(","):
        host = server.strip().rsplit(":", 1)[0].strip("[]")
        try:
            socket.getaddrinfo(host, None)
        except (socket.gaierror, UnicodeError):
            return host
    return None


def _connect(factory, servers: str, settings: dict):
    """Build a client; kafka-python bootstraps in the constructor, bounded by bootstrap_timeout_ms."""
    try:
        return factory(**settings)
    except KafkaConfigurationError as exc:
        raise RunnerError(f"invalid Kafka client options for {servers}: {exc}") from None
    except KafkaError:
        raise no_broker(servers, settings) from None


def consumer(servers: str, options: dict, client_id: str, fixed: dict | None = None, **settings) -> KafkaConsumer:
    """A consumer outside any group (partitions are assigned by hand, offsets never committed):
    ``settings`` are defaults a user's ``options`` may change, ``fixed`` what they may not."""
    merged = client_settings(KafkaConsumer, servers, options, {**_CONSUMER, **settings}, client_id=client_id,
                             group_id=None, enable_auto_commit=False, **(fixed or {}))
    return _connect(KafkaConsumer, servers, merged)


class KeyHashCache(DefaultPartitioner):
    """Kafka's default partitioner (murmur2 of the key), each key's hash remembered: kafka-python
    computes murmur2 in pure Python, and a stream's keys repeat."""

    LIMIT = 100_000

    def __init__(self):
        self.hashes: dict[bytes, int] = {}

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster):
        if serialized_key is None or topic not in cluster.topics():
            return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
        h = self.hashes.get(serialized_key)
        if h is None:
            if len(self.hashes) >= self.LIMIT:
                self.hashes.clear()
            h = self.hashes[serialized_key] = murmur2(serialized_key) & 0x7FFFFFFF
        partitions = sorted(cluster.partitions_for_topic(topic))
        return partitions[h % len(partitions)]


def producer(servers: str, options: dict, client_id: str, **settings) -> KafkaProducer:
    """A producer of raw bytes (no serializers) tuned for read-back exactly once."""
    settings.setdefault("partitioner", KeyHashCache())
    merged = client_settings(KafkaProducer, servers, options, {**_PRODUCER, **settings}, client_id=client_id)
    return _connect(KafkaProducer, servers, merged)


def admin(servers: str, options: dict | None = None, client_id: str = "runner-admin") -> KafkaAdminClient:
    merged = client_settings(KafkaAdminClient, servers, options, dict(_COMMON), client_id=client_id)
    return _connect(KafkaAdminClient, servers, merged)


def partitions_of(client: KafkaConsumer, topics, servers: str) -> list[TopicPartition]:
    """Every partition of ``topics``, sorted; a missing topic is a ``RunnerError`` naming it."""
    tps = []
    for topic in dict.fromkeys(topics):  # each once, in the order given
        try:
            found = client.partitions_for_topic(topic)
        except KafkaError as exc:
            raise RunnerError(f"cannot read the metadata of topic {topic!r} from {servers}: {exc}") from None
        if not found:
            raise RunnerError(f"topic {topic!r} does not exist on {servers}{_topic_hint(client, topic)}: create it "
                              f"('runner broker' creates clickstream-events and clickstream-dlq)")
        tps.extend(TopicPartition(topic, p) for p in sorted(found))
    return tps


def _topic_hint(client: KafkaConsumer, topic: str) -> str:
    """'; did you mean X?' for a topic of the broker's close to ``topic`` (none: empty)."""
    try:
        close = difflib.get_close_matches(topic, sorted(client.topics()), n=1)
    except KafkaError:
        return ""
    return f" (did you mean {close[0]!r}?)" if close else ""


def high_watermarks(client: KafkaConsumer, tps: list[TopicPartition], timeout: float = CONNECT_TIMEOUT_S) -> dict:
    """The true end offset of every partition in ``tps``: the high watermark of a fetch.

    ``client`` must be a consumer that has not fetched these partitions yet (kafka-python
    keeps the last high watermark across seeks); it is left assigned to ``tps`` at
    arbitrary positions. ListOffsets (``end_offsets``) is used only to seek near the
    end so that the probe fetch is small; it may be too low (Tansu), never too high
    for a fetch to answer. Raises ``RunnerError`` if no fetch answers within ``timeout``.
    """
    if not tps:
        return {}
    client.assign(tps)
    try:
        listed = client.end_offsets(tps, timeout_ms=int(timeout * 1000))
    except KafkaError as exc:
        raise RunnerError(f"cannot read the end offsets of {_names(tps)}: {exc}") from None
    for tp in tps:
        client.seek(tp, max(0, listed.get(tp, 0) - 1))
    deadline = time.monotonic() + timeout
    ends: dict = {}
    while True:
        ends = {tp: hw for tp in tps if (hw := client.highwater(tp)) is not None}
        if len(ends) == len(tps) or time.monotonic() >= deadline:
            break
        try:
            # the records themselves are not needed; a poll that returns none waits out its
            # timeout even once the fetch has answered (an empty partition's high watermark
            # comes with the first answer): short polls, not one of 100 ms per empty topic
            client.poll(timeout_ms=PROBE_POLL_MS, max_records=10000)
        except KafkaError:
            pass  # retried until the deadline
    if len(ends) < len(tps):
        missing = [tp for tp in tps if tp not in ends]
        raise RunnerError(f"no fetch answered for {_names(missing)} within {timeout:g} s")
    return ends


def true_ends(servers: str, options: dict, client_id: str, tps: list[TopicPartition],
              timeout: float = CONNECT_TIMEOUT_S) -> dict:
    """``high_watermarks`` with a short-lived consumer of its own: small fetches with a 1-ms
    wait, which the user's ``options`` do not change, since a broker holds the fetch of an
    empty partition for the whole wait (a 50-ms wait cost 80 ms on Tansu) and the answer's
    high watermark is all a probe needs (a wait of 0 is never answered there)."""
    client = consumer(servers, options, client_id, fixed={"fetch_max_wait_ms": 1}, max_partition_fetch_bytes=64 * 1024)
    try:
        return high_watermarks(client, tps, timeout)
    finally:
        client.close()


def reachable(servers: str, timeout: float = 1.0) -> bool:
    """True when any bootstrap server accepts a TCP connection (a cheap health check)."""
    for address in servers.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=timeout):
                return True
        except (OSError, ValueError):
            continue
    return False


def key(tp) -> str:
    """``topic/partition``, the runner's name of a partition."""
    return f"{tp.topic}/{tp.partition}"


def parse_key(name: str) -> TopicPartition:
    topic, _, partition = name.rpartition("/")
    return TopicPartition(topic, int(partition))


def _names(tps) -> str:
    return ", ".join(key(tp) for tp in tps)


def warn(message: str) -> None:
    show(message, sys.stderr)  # a reader gone from stderr: the run goes on without its warnings
