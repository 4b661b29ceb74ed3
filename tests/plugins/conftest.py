"""Fixtures for plugin tests that need a real PostgreSQL server."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def pg_table(postgres_dsn):
    """A unique table name (not created); the table is dropped after the test."""
    import psycopg

    name = f"test_sink_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(postgres_dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{name}"')
