"""Outputs: results and dead letters, as they wait in the outbox and reach sinks."""

from __future__ import annotations

import base64
import time
from typing import Any

from runner import codec
from runner.components import Record
from runner.times import format_ms


class Output:
    """One result or DLQ record. ``value`` is its JSON (bytes); ``key`` is the Kafka key a
    Kafka sink writes (results: the compact JSON of the result's key; DLQ: the original)."""

    __slots__ = ("id", "kind", "stage", "key", "value", "targets")

    def __init__(self, id: str, kind: str, stage: str, key: bytes | None, value: bytes, targets: tuple | None):
        self.id = id
        self.kind = kind  # "result" or "dlq"
        self.stage = stage
        self.key = key
        self.value = value
        self.targets = targets  # sink names; None: every result sink

    def data(self) -> dict:
        return codec.loads(self.value)

    def to_tuple(self) -> tuple:
        return (self.id, self.kind, self.stage, self.key, self.value, self.targets)

    @classmethod
    def from_tuple(cls, item: tuple) -> "Output":
        return cls(*item)


def result_id(pipeline: str, stage: str, key, *parts: str) -> str:
    """``<pipeline>/<stage>/<compact JSON key>/<part>/...``"""
    return "/".join((pipeline, stage, codec.compact(key), *parts))


class Emitter:
    """Collects the outputs of the current checkpoint interval for the outbox."""

    def __init__(self, pipeline: str, routes: dict[str, tuple | None]):
        self.pipeline = pipeline
        self.routes = routes  # stage name -> sink names (its ``to:``), None for all
        self.pending: list[Output] = []

    def result(self, stage: str, key: Any, result: dict) -> None:
        """Queue a result; it must carry ``id`` and ``stage``."""
        key_bytes = codec.compact(key).encode()
        self.pending.append(Output(result["id"], "result", stage, key_bytes, codec.dumps(result), self.routes.get(stage)))

    def dead_letter(self, record: Record, stage: str, error_type: str, error: str) -> None:
        """Queue the DLQ record of CONTRACT section 4 for one input record and one stage."""
        key, value = record.key, record.value
        letter = {
            "id": f"{self.pipeline}/dlq/{record.topic}/{record.partition}/{record.offset}/{stage}",
            "error_type": error_type,
            "error": error,
            "stage": stage,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "key": None if key is None else key.decode("utf-8", "replace"),
            "key_b64": None if key is None else base64.b64encode(key).decode(),
            "payload": None if value is None else value.decode("utf-8", "replace"),
            "payload_b64": None if value is None else base64.b64encode(value).decode(),
            "failed_at": format_ms(int(time.time() * 1000)),
        }
        self.pending.append(Output(letter["id"], "dlq", stage, key, codec.dumps(letter), ("dlq",)))

    def take(self) -> list[Output]:
        pending, self.pending = self.pending, []
        return pending
