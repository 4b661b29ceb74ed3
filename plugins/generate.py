"""``runner generate`` (CONTRACT section 2): the click stream of ``plugins.clickstream`` into
a Kafka topic (keyed by ``user_id``, paced at ``--rate``) or a JSONL file.

``add_command`` adds the command and its argument checks to the ``runner`` sub-parsers;
``generate`` runs it: it prints the ``--seed`` and ``--start`` that reproduce the run,
writes the records with progress on stderr for large or endless runs, stops cleanly on
Ctrl+C or SIGTERM, and says what to do when no broker or topic is there.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
from itertools import count as _count

from plugins.clickstream import FILE_BAD_KINDS, UNPACED_EVENT_RATE, ClickGenerator
from runner.times import format_ms, parse_event_time

DEFAULT_TOPIC = "clickstream-events"
BOOTSTRAP_TIMEOUT_MS = 8_000  # how long `runner generate` looks for a broker before giving up


def add_command(subparsers) -> None:
    """Add ``runner generate`` (CONTRACT section 2) to the ``runner`` sub-parsers."""
    p = subparsers.add_parser(
        "generate",
        help="write synthetic click events (and bad records) to Kafka or a JSONL file",
        description="Generate click events in user sessions, into a Kafka topic (key = user_id) "
                    "or a JSONL file. With --seed and --start the output is the same on every run: "
                    "event i has time start + i*1000/rate.",
    )
    p.add_argument("--rate", type=_non_negative_float, default=10.0, metavar="N",
                   help="events per second, of event time and of sending to Kafka (default 10); "
                        f"0 sends as fast as possible, with event times {UNPACED_EVENT_RATE} per second")
    p.add_argument("--count", type=_non_negative_int, default=None, metavar="N",
                   help="how many events (default: until Ctrl+C; required with --out)")
    p.add_argument("--bad-ratio", type=_ratio, default=0.0, metavar="R",
                   help="share of bad records, 0..1 (default 0), cycling through every invalid kind")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a random one, printed)")
    p.add_argument("--start", type=_start_time, default=None, metavar="TIME",
                   help="event time of the first event, RFC 3339 like 2026-11-24T08:00:00Z or epoch ms "
                        "(default: now, to the second)")
    p.add_argument("--users", type=_positive_int, default=100, metavar="N", help="number of users (default 100)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--topic", default=None, help=f"Kafka topic (default {DEFAULT_TOPIC})")
    target.add_argument("--out", default=None, metavar="FILE",
                        help="write JSONL to FILE instead of Kafka ('-' for stdout); never paced")
    p.add_argument("--bootstrap-servers", default=None, metavar="HOST:PORT[,...]",
                   help="Kafka brokers (default: $KAFKA_BOOTSTRAP_SERVERS or localhost:9092)")
    p.set_defaults(func=generate)


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _ratio(text: str) -> float:
    value = _non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a number within 0..1, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _start_time(text: str) -> int:
    try:
        return int(text) if text.isascii() and text.isdigit() else parse_event_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an RFC 3339 time like 2026-11-24T08:00:00Z: {exc}") from None


class _Stop(Exception):
    """SIGTERM: stop like Ctrl+C."""


class _Progress:
    """Progress on stderr for large or endless runs: one updating line on a terminal,
    a line every 10% (or every 10 s without a count) otherwise."""

    def __init__(self, total: int | None, stream=None):
        self.stream = stream or sys.stderr
        self.total = total
        self.tty = self.stream.isatty()
        self.enabled = total is None or total >= 10_000
        self.step = max(1, (total or 0) // (100 if self.tty else 10))
        self.next_at = self.step
        self.last = time.monotonic()
        self.shown = False

    def update(self, n: int, bad: int) -> None:
        if not self.enabled:
            return
        if self.total is not None:
            if n < self.next_at:
                return
            self.next_at = (n // self.step + 1) * self.step
            text = f"generated {n}/{self.total} events ({bad} bad, {n * 100 // self.total}%)"
        else:
            now = time.monotonic()
            if now - self.last < (1.0 if self.tty else 10.0):
                return
            self.last = now
            text = f"generated {n} events ({bad} bad)"
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.tty and self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def generate(args: argparse.Namespace) -> int:
    """``runner generate``: the exit code (0 done or stopped by Ctrl+C, 1 Kafka failure)."""
    rate = getattr(args, "rate", 10.0)
    count = getattr(args, "count", None)
    seed = getattr(args, "seed", None)
    start = getattr(args, "start", None)
    out = getattr(args, "out", None)
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 31)
    if start is None:
        start = int(time.time()) * 1000
    if isinstance(start, str):
        start = _start_time(start)
    gen = ClickGenerator(seed, start, rate or UNPACED_EVENT_RATE, getattr(args, "bad_ratio", 0.0),
                         getattr(args, "users", 100), FILE_BAD_KINDS if out else None)
    print(f"runner generate: --seed {seed} --start {format_ms(start)}", file=sys.stderr)
    if out is not None:
        if count is None:
            print("runner generate: --out needs --count", file=sys.stderr)
            return 2
        return _to_file(gen, count, out)
    servers = getattr(args, "bootstrap_servers", None) or os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or "localhost:9092"
    return _to_kafka(gen, count, rate, getattr(args, "topic", None) or DEFAULT_TOPIC, servers)


def _to_file(gen: ClickGenerator, count: int, out: str) -> int:
    progress = _Progress(count)
    bad = 0
    if out == "-":
        stream, report = sys.stdout.buffer, sys.stderr
    else:
        if os.path.isdir(out):
            print(f"error: --out {out} is a directory: give a file to write, or '-' for stdout", file=sys.stderr)
            return 2
        try:
            if os.path.dirname(out):
                os.makedirs(os.path.dirname(out), exist_ok=True)
            stream, report = open(out, "wb"), sys.stdout
        except OSError as exc:
            return _cannot_write(out, exc)
    try:
        try:
            for i in range(count):
                _, value = gen.record(i)
                stream.write(value + b"\n")
                if gen.bad_kind(i) is not None:
                    bad += 1
                progress.update(i + 1, bad)
        finally:
            progress.close()
            stream.flush()
            if out != "-":
                stream.close()
    except OSError as exc:
        if out == "-":
            raise  # standard output: the command line's own handling (a reader gone)
        return _cannot_write(out, exc)
    print(f"generated {count} events ({bad} bad) to {out if out != '-' else 'stdout'}", file=report)
    return 0


def _cannot_write(out: str, exc: OSError) -> int:
    where = f" ({exc.filename})" if exc.filename not in (None, out) else ""
    print(f"error: cannot write --out {out}: {exc.strerror or exc}{where}", file=sys.stderr)
    return 1


def _producer(servers: str):
    from kafka import KafkaProducer

    config = {
        "bootstrap_servers": [s.strip() for s in servers.split(",") if s.strip()],
        "client_id": "runner-generate",
        "linger_ms": 20,
        "batch_size": 256 * 1024,
        "max_block_ms": 10_000,
        "request_timeout_ms": 15_000,
        "delivery_timeout_ms": 45_000,
        "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
    }
    return KafkaProducer(**config)


def _to_kafka(gen: ClickGenerator, count: int | None, rate: float, topic: str, servers: str) -> int:
    from kafka import errors
    from kafka.errors import KafkaError

    unreachable = tuple({errors.KafkaTimeoutError, getattr(errors, "NoBrokersAvailable", errors.KafkaTimeoutError)})
    hint = ("start a development broker with `runner broker`, or Kafka with "
            "`docker compose -f docker/docker-compose.yml up -d`, or point --bootstrap-servers "
            "(or KAFKA_BOOTSTRAP_SERVERS) at yours")
    try:
        producer = _producer(servers)
    except (*unreachable, OSError) as exc:
        print(f"runner generate: no Kafka broker reachable at {servers} ({exc}): {hint}", file=sys.stderr)
        return 1
    except KafkaError as exc:
        print(f"runner generate: cannot use the Kafka broker at {servers}: {exc}", file=sys.stderr)
        return 1
    try:
        try:
            producer.partitions_for(topic)
        except KafkaError as exc:
            print(f"runner generate: topic {topic} is not available on {servers} ({exc}): create it "
                  f"(`runner broker` creates {DEFAULT_TOPIC} and clickstream-dlq)", file=sys.stderr)
            return 1
        failures: list[Exception] = []
        sent = bad = 0
        progress = _Progress(count)
        previous = None
        if threading.current_thread() is threading.main_thread():
            def on_term(signum, frame):
                raise _Stop()
            previous = signal.signal(signal.SIGTERM, on_term)
        try:
            began = time.monotonic()
            for i in (range(count) if count is not None else _count()):
                if rate:
                    delay = began + i / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                if failures:
                    break
                key, value = gen.record(i)
                producer.send(topic, key=key, value=value).add_errback(failures.append)
                sent += 1
                if gen.bad_kind(i) is not None:
                    bad += 1
                progress.update(sent, bad)
        except (KeyboardInterrupt, _Stop):
            pass
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            progress.close()
        try:
            producer.flush(timeout=30)
        except KafkaError as exc:
            failures.append(exc)
        if failures:
            print(f"runner generate: sending to {topic} on {servers} failed: {failures[0]}", file=sys.stderr)
            return 1
        print(f"generated {sent} events ({bad} bad) to {topic}")
        return 0
    finally:
        producer.close(timeout=5)
