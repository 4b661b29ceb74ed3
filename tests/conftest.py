"""Fixtures for the whole suite: one embedded Kafka-compatible broker per test session (per worker
under pytest-xdist, as `make test` runs it), and the machine's PostgreSQL server."""

from __future__ import annotations

import uuid

import pytest

from plugins import broker as embedded
from tests.faults import POSTGRES_DSN


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


@pytest.fixture(scope="session")
def postgres_dsn():
    """The DSN of the test server, after checking that it answers (a failure, never a skip)."""
    import psycopg

    try:
        with psycopg.connect(POSTGRES_DSN, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL does not answer at {POSTGRES_DSN}: {' '.join(str(exc).split())}\n"
                    f"start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
                    pytrace=False)
    yield POSTGRES_DSN
