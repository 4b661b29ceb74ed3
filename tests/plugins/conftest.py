"""Fixtures for plugin tests that need a real PostgreSQL server."""

from __future__ import annotations

import uuid

import pytest

POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"


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


@pytest.fixture
def pg_table(postgres_dsn):
    """A unique table name (not created); the table is dropped after the test."""
    import psycopg

    name = f"test_sink_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(postgres_dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{name}"')
