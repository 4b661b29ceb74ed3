"""Shared by the command-line tests of runner/."""

import json

import pytest

EVENT = {"event_id": "e1", "user_id": "u1", "page_url": "/home", "timestamp": "2026-11-24T08:00:00Z"}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The current directory, holding ``events.jsonl`` with one event (test_cli.BASE reads it)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "events.jsonl").write_text(json.dumps(EVENT) + "\n")
    return tmp_path
