"""Fixtures for the whole suite: one embedded Kafka-compatible broker per test session (per worker
under pytest-xdist, as `make test` runs it)."""

from __future__ import annotations

import uuid

import pytest

from plugins import broker as embedded


@pytest.fixture(scope="session")
def broker():
    """The bootstrap string ``127.0.0.1:PORT`` of a Tansu broker started once per session (worker)."""
    port = embedded.free_port()
    proc = embedded.start_broker(port, {})
    yield f"127.0.0.1:{port}"
    embedded.stop_broker(proc)


@pytest.fixture
def topic_factory(broker):
    """``make(partitions=1) -> name``: a fresh, uniquely named topic on the session broker."""

    def make(partitions: int = 1, prefix: str = "test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        embedded.create_topics(broker, {name: partitions})
        return name

    return make
