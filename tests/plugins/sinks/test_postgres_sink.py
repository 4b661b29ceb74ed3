"""The PostgreSQL sink against a real server: one row per id, across crashes and lost connections."""

from __future__ import annotations

import base64
import datetime as dt
import json
import socket
import time

import psycopg
import pytest

from plugins.sinks import postgres as pg
from plugins.sinks.jsonl import JsonlSink
from plugins.sinks.postgres import PostgresSink
from runner import cli
from runner.checkpoint import Checkpoint
from runner.components import Context, Record, RunnerError
from runner.outputs import Emitter, Output
from runner.state import MemoryStore

UTC = dt.timezone.utc


def make_sink(dsn: str, table: str, state=None, name: str = "out", **config) -> PostgresSink:
    """A sink opened like the runner does (defaults filled in)."""
    config = {"dsn": dsn, "table": table, "connect_timeout_s": 10, **config}
    sink = PostgresSink(config, Context("test", name, {}))
    sink.open(state)
    return sink


def results(ids, version: int = 1) -> list[Output]:
    """Tumbling-window-like results ``test/tw/"/p<i>"/...``, ``events`` = i * version."""
    emit = Emitter("test", {})
    for i in ids:
        key = f"/p{i}"
        start, end = "2026-11-24T08:00:00.000Z", "2026-11-24T08:05:00.000Z"
        emit.result("tw", key, {"id": f"test/tw/\"{key}\"/{start}/{end}", "stage": "tw", "key": key,
                                "window_start": start, "window_end": end, "events": i * version})
    return emit.take()


def rows(dsn: str, table: str) -> dict[str, dict]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(f'SELECT id, stage, key, window_start, window_end, kind, record, updated_at FROM "{table}"')
        names = [c.name for c in cur.description]
        return {row[0]: dict(zip(names, row)) for row in cur}


def test_open_creates_the_table_with_its_columns_and_primary_key(postgres_dsn, pg_table):
    sink = make_sink(postgres_dsn, pg_table)
    sink.close()
    with psycopg.connect(postgres_dsn) as conn:
        columns = conn.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = %s ORDER BY ordinal_position", [pg_table]).fetchall()
        primary = conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary", [pg_table]).fetchall()
    assert columns == [
        ("id", "text", "NO"),
        ("stage", "text", "NO"),
        ("key", "jsonb", "YES"),
        ("window_start", "timestamp with time zone", "YES"),
        ("window_end", "timestamp with time zone", "YES"),
        ("kind", "text", "NO"),
        ("record", "jsonb", "NO"),
        ("updated_at", "timestamp with time zone", "NO"),
    ]
    assert primary == [("id",)]
    make_sink(postgres_dsn, pg_table).close()  # an existing table of ours is taken as it is


def test_flush_writes_and_commits_each_output_once_and_returns_no_state(postgres_dsn, pg_table):
    sink = make_sink(postgres_dsn, pg_table)
    try:
        sink.deliver(results(range(30)))
        assert rows(postgres_dsn, pg_table) == {}  # buffered, nothing written before flush
        assert sink.flush() is None
        with psycopg.connect(postgres_dsn) as conn:  # the transaction is over: nothing idles in one
            states = conn.execute("SELECT application_name, state FROM pg_stat_activity WHERE pid = %s",
                                  [sink.conn.info.backend_pid]).fetchall()
        assert states == [("runner-test-out", "idle")]
    finally:
        sink.close()
    got = rows(postgres_dsn, pg_table)
    assert sorted(got) == sorted(out.id for out in results(range(30)))
    assert got['test/tw/"/p7"/2026-11-24T08:00:00.000Z/2026-11-24T08:05:00.000Z']["record"]["events"] == 7


def test_redelivery_by_a_new_instance_leaves_one_row_per_id_with_the_latest_record(postgres_dsn, pg_table):
    first = make_sink(postgres_dsn, pg_table)
    first.deliver(results(range(10)))
    first.flush()  # written and committed, then a crash before the runner's checkpoint committed
    before = rows(postgres_dsn, pg_table)
    second = make_sink(postgres_dsn, pg_table)  # the restart: the outbox is delivered again
    try:
        again = results(range(10))
        again[3] = results([3], version=2)[0]  # a changed record under the same id
        second.deliver(again[:5])
        second.deliver(again)  # delivered twice before one flush: still one row each
        second.flush()
    finally:
        second.close()
        first.close()
    after = rows(postgres_dsn, pg_table)
    assert sorted(after) == sorted(before) and len(after) == 10
    id3 = again[3].id
    assert (before[id3]["record"]["events"], after[id3]["record"]["events"]) == (3, 6)
    assert after[id3]["updated_at"] > before[id3]["updated_at"]
    unchanged = again[4].id  # rewritten with the same record: the row is left as it was
    assert after[unchanged] == before[unchanged]


def test_window_bounds_and_key_are_filled_from_results(postgres_dsn, pg_table):
    emit = Emitter("test", {})
    emit.result("tw", "/home", {"id": "a", "stage": "tw", "key": "/home", "window_start": "2026-11-24T08:00:00.000Z",
                                "window_end": "2026-11-24T08:05:00.000Z", "events": 3})
    emit.result("tw", None, {"id": "b", "stage": "tw", "key": None, "window_start": "2026-11-24T08:05:00.000Z",
                             "window_end": "2026-11-24T08:10:00.000Z", "events": 1})
    emit.result("stats", {"u": [1, 2]}, {"id": "c", "stage": "stats", "key": {"u": [1, 2]}, "milestone": "views",
                                         "value": 100})
    sink = make_sink(postgres_dsn, pg_table)
    sink.deliver(emit.take())
    sink.flush()
    sink.close()
    got = rows(postgres_dsn, pg_table)
    assert got["a"]["key"] == "/home" and got["a"]["stage"] == "tw" and got["a"]["kind"] == "result"
    assert (got["a"]["window_start"], got["a"]["window_end"]) == (dt.datetime(2026, 11, 24, 8, 0, tzinfo=UTC),
                                                                  dt.datetime(2026, 11, 24, 8, 5, tzinfo=UTC))
    assert got["a"]["record"] == {"id": "a", "stage": "tw", "key": "/home", "window_start": "2026-11-24T08:00:00.000Z",
                                  "window_end": "2026-11-24T08:05:00.000Z", "events": 3}
    with psycopg.connect(postgres_dsn) as conn:  # a global window's key is JSON null, not SQL NULL
        assert conn.execute(f"""SELECT key = 'null'::jsonb FROM "{pg_table}" WHERE id = 'b'""").fetchone() == (True,)
    assert got["c"]["key"] == {"u": [1, 2]}
    assert (got["c"]["window_start"], got["c"]["window_end"]) == (None, None)  # a milestone has no window


def test_dead_letters_are_stored_with_kind_dlq_and_no_key(postgres_dsn, pg_table):
    emit = Emitter("test", {})
    emit.dead_letter(Record("clicks", 0, 5, None, b"\xffkey", b'{"bad": 1}'), "validate", "validation",
                     "missing required field: page_url")
    emit.dead_letter(Record("clicks", 0, 6, None, None, b"nul\x00byte \xfe"), "source", "deserialization",
                     "not UTF-8: invalid byte at position 9")
    sink = make_sink(postgres_dsn, pg_table, name="dlq")
    sink.deliver(emit.take())
    sink.flush()
    sink.close()
    got = rows(postgres_dsn, pg_table)
    assert sorted(got) == ["test/dlq/clicks/0/5/validate", "test/dlq/clicks/0/6/source"]
    first, second = got["test/dlq/clicks/0/5/validate"], got["test/dlq/clicks/0/6/source"]
    assert (first["kind"], first["stage"], first["key"], first["window_start"]) == ("dlq", "validate", None, None)
    assert first["record"]["error"] == "missing required field: page_url"
    assert first["record"]["key_b64"] == base64.b64encode(b"\xffkey").decode()
    # jsonb cannot hold NUL: the text shows U+FFFD there, the exact bytes stay in payload_b64
    assert second["record"]["payload"] == "nul\ufffdbyte \ufffd"
    assert base64.b64decode(second["record"]["payload_b64"]) == b"nul\x00byte \xfe"


def test_jsonb_text_replaces_only_real_nul_escapes():
    assert pg._jsonb_text(json.dumps(["a\x00b", "c\\u0000d", "\\\x00"])) == r'["a\ufffdb", "c\\u0000d", "\\\ufffd"]'


def test_open_fails_clearly_when_nothing_listens(postgres_dsn):
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(RunnerError, match=rf"cannot connect to PostgreSQL at 127\.0\.0\.1:{port}/test: .*is it running\?"):
        make_sink(f"postgresql://postgres@127.0.0.1:{port}/test", "t", connect_timeout_s=2)
    assert time.monotonic() - started < 3


def test_open_gives_up_after_connect_timeout_on_a_server_that_never_answers():
    with socket.socket() as s:  # accepts connections (in the backlog) and never says a word
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        port = s.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(RunnerError, match=r"no answer within connect_timeout_s = 2.*is it running\?"):
            make_sink(f"postgresql://postgres@127.0.0.1:{port}/test", "t", connect_timeout_s=2)
        assert 1.5 < time.monotonic() - started < 6


def test_an_existing_table_with_other_columns_is_refused_clearly(postgres_dsn, pg_table):
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{pg_table}" (id integer PRIMARY KEY, stage text, record json, owner text NOT NULL)')
    with pytest.raises(RunnerError) as info:
        make_sink(postgres_dsn, pg_table)
    message = str(info.value)
    assert message.startswith(f"table {pg_table} at 127.0.0.1:5432/test exists but cannot take this sink's rows: ")
    for problem in ("column id is integer, not text", "no column key (jsonb)", "column record is json, not jsonb",
                    "column owner is NOT NULL without a default"):
        assert problem in message


@pytest.mark.parametrize("deferrable", ["PRIMARY KEY DEFERRABLE INITIALLY DEFERRED",
                                        "PRIMARY KEY DEFERRABLE INITIALLY IMMEDIATE",
                                        "PRIMARY KEY, UNIQUE (id) DEFERRABLE"])
def test_a_table_whose_key_on_id_is_deferrable_is_refused_at_open(postgres_dsn, pg_table, deferrable):
    # every ON CONFLICT upsert into it would fail, and be retried forever
    column, _, constraint = deferrable.partition(", ")
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{pg_table}" (id text {column}, stage text NOT NULL, key jsonb, '
                     f'window_start timestamptz, window_end timestamptz, kind text NOT NULL, record jsonb NOT NULL, '
                     f'updated_at timestamptz NOT NULL DEFAULT now(){", " + constraint if constraint else ""})')
    with pytest.raises(RunnerError) as info:
        make_sink(postgres_dsn, pg_table)
    assert str(info.value) == (
        f"table {pg_table} at 127.0.0.1:5432/test exists but cannot take this sink's rows: the primary key (or "
        f"unique constraint) on id is DEFERRABLE, which ON CONFLICT cannot use; drop or rename it, or choose "
        f"another table")


def test_a_table_made_by_hand_with_extra_columns_is_taken(postgres_dsn, pg_table):
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{pg_table}" (id text UNIQUE, stage text, key jsonb, window_start timestamptz, '
                     f'window_end timestamptz, kind text, record jsonb, updated_at timestamptz DEFAULT now(), '
                     f'note text, seen_at timestamptz NOT NULL DEFAULT now())')
    sink = make_sink(postgres_dsn, pg_table)
    sink.deliver(results(range(3)))
    sink.flush()
    sink.close()
    assert len(rows(postgres_dsn, pg_table)) == 3


def test_a_schema_qualified_name_is_folded_to_lower_case_and_its_schema_created(postgres_dsn, pg_table):
    schema = pg_table.replace("test_sink_", "test_schema_")
    sink = make_sink(postgres_dsn, f"{schema.upper()}.Results")
    try:
        sink.deliver(results(range(2)))
        sink.flush()
        sink.close()
        with psycopg.connect(postgres_dsn) as conn:
            assert conn.execute(f"SELECT count(*) FROM {schema}.results").fetchone() == (2,)
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_a_table_named_like_the_sinks_temporary_table_is_written(postgres_dsn):
    table = pg.INCOMING.split(".")[-1]
    drop = f"DROP TABLE IF EXISTS public.{table}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(drop)
    try:
        for version in (1, 2):  # created, then taken as it is by a second instance
            sink = make_sink(postgres_dsn, table)
            sink.deliver(results(range(3), version=version))
            sink.flush()
            sink.close()
        got = rows(postgres_dsn, table)
        assert sorted(r["record"]["events"] for r in got.values()) == [0, 2, 4]
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(drop)


@pytest.mark.parametrize("dropped", ["table", "schema"])
def test_a_table_dropped_between_two_flushes_is_created_again_by_the_next(postgres_dsn, pg_table, dropped, capsys):
    schema = pg_table.replace("test_sink_", "test_schema_")
    table = f"{schema}.results" if dropped == "schema" else pg_table
    sink = make_sink(postgres_dsn, table)
    try:
        sink.deliver(results(range(3)))
        sink.flush()
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE" if dropped == "schema" else f"DROP TABLE {table}")
        assert "dropped" not in capsys.readouterr().err
        sink.deliver(results(range(3, 5)))
        assert sink.flush() is None
        sink.close()
        with psycopg.connect(postgres_dsn) as conn:
            assert sorted(r[0] for r in conn.execute(f"SELECT record->>'events' FROM {table}")) == ["3", "4"]
        assert f"table {table} at 127.0.0.1:5432/test was dropped while the runner wrote to it: creating it " \
               f"again" in capsys.readouterr().err
    finally:
        sink.close()
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def kill_connection(dsn: str, sink: PostgresSink) -> None:
    """Terminate the sink's server process from another connection."""
    pid = sink.conn.info.backend_pid
    with psycopg.connect(dsn, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone() == (True,)


def test_a_flush_on_a_killed_connection_raises_then_recover_and_redelivery_write_each_output_once(
        postgres_dsn, pg_table):
    sink = make_sink(postgres_dsn, pg_table)
    try:
        confirmed, unconfirmed = results(range(20)), results(range(20, 50))
        sink.deliver(confirmed)
        sink.flush()
        sink.deliver(unconfirmed)
        kill_connection(postgres_dsn, sink)
        with pytest.raises(RunnerError, match=r"writing 30 outputs to table .* at 127\.0\.0\.1:5432/test failed: "):
            sink.flush()
        assert len(rows(postgres_dsn, pg_table)) == 20  # nothing of the failed transaction
        sink.recover()  # what the runner does next: recover, deliver every unconfirmed output, flush
        sink.deliver(unconfirmed)
        assert sink.flush() is None
    finally:
        sink.close()
    got = rows(postgres_dsn, pg_table)
    assert sorted(got) == sorted(out.id for out in confirmed + unconfirmed)


class RecordingStore(MemoryStore):
    """A memory store that keeps the ids each commit takes out of the outbox."""

    def __init__(self):
        super().__init__()
        self.confirmed: list[int] = []

    def commit(self, meta, added, confirmed):
        super().commit(meta, added, confirmed)
        self.confirmed += confirmed


def test_the_runner_retries_a_lost_connection_until_every_output_is_in_once(postgres_dsn, pg_table):
    sink = make_sink(postgres_dsn, pg_table)
    store, log = RecordingStore(), []
    checkpoint = Checkpoint(store, {"out": sink}, ("out",), 0, 0, log=lambda *a, **k: log.append(" ".join(a)))
    try:
        checkpoint.commit(results(range(10)), {})
        checkpoint.settle()  # committed, then handed to the sink (the runner settles after each poll)
        kill_connection(postgres_dsn, sink)  # e.g. the server restarted between checkpoints
        checkpoint.commit(results(range(10, 15)), {}, confirm=True)  # its first flush fails; recover, redeliver
        checkpoint.settle()
        checkpoint.commit([], {}, confirm=True)
    finally:
        sink.close()
    assert store.confirmed == list(range(15))
    assert len(log) == 2 and "10 outputs not confirmed" in log[0] and "127.0.0.1:5432/test" in log[0]
    assert log[1] == "[SINK] out: confirmed again; processing goes on"
    assert sorted(rows(postgres_dsn, pg_table)) == sorted(out.id for out in results(range(15)))


def test_a_sink_that_confirmed_is_not_given_its_outputs_again_when_another_fails(postgres_dsn, pg_table, tmp_path):
    path = tmp_path / "out.jsonl"
    file_sink = JsonlSink({"path": str(path)}, Context("test", "file", {}))
    file_sink.open(None)
    pg_sink = make_sink(postgres_dsn, pg_table, name="pg")
    store = RecordingStore()
    checkpoint = Checkpoint(store, {"file": file_sink, "pg": pg_sink}, ("file", "pg"), 0, 0, log=lambda *a, **k: None)
    try:
        checkpoint.commit(results(range(5)), {})
        checkpoint.settle()  # both sinks have them
        kill_connection(postgres_dsn, pg_sink)  # the file's flush succeeds, PostgreSQL's fails once
        checkpoint.commit([], {}, confirm=True)
    finally:
        file_sink.close()
        pg_sink.close()
    assert store.confirmed == list(range(5))
    lines = path.read_bytes().splitlines()
    assert len(lines) == len(set(lines)) == 5  # the file was not given them again
    assert sorted(rows(postgres_dsn, pg_table)) == sorted(out.id for out in results(range(5)))


def test_a_failed_write_inside_deliver_makes_the_next_flush_fail(postgres_dsn, pg_table, monkeypatch):
    monkeypatch.setattr(pg, "BATCH", 4)  # deliver writes large batches itself
    sink = make_sink(postgres_dsn, pg_table)
    try:
        sink.deliver(results(range(5)))
        assert len(rows(postgres_dsn, pg_table)) == 5  # written (and committed) by deliver
        kill_connection(postgres_dsn, sink)
        lost = results(range(5, 10))
        with pytest.raises(RunnerError):
            sink.deliver(lost)
        with pytest.raises(RunnerError, match="an earlier write .* failed"):
            sink.flush()  # never confirms outputs that were not written
        sink.recover()
        sink.deliver(lost)
        sink.flush()
    finally:
        sink.close()
    assert len(rows(postgres_dsn, pg_table)) == 10


def test_lint_reports_a_bad_dsn_and_a_name_postgres_would_cut():
    problems = PostgresSink.lint({"dsn": "host=x port", "table": "t" * 64, "connect_timeout_s": 10})
    assert [path for path, _ in problems] == [("table",), ("dsn",)]
    assert PostgresSink.lint({"dsn": pg.DEFAULT_DSN, "table": "s.t", "connect_timeout_s": 10}) == []


CLICKS = [
    {"event_id": "e1", "user_id": "u1", "page_url": "/home", "timestamp": "2026-11-24T08:00:01Z"},
    {"event_id": "e2", "user_id": "u2", "page_url": "/cart", "timestamp": "2026-11-24T08:01:00Z"},
    {"event_id": "e3", "user_id": "u1", "page_url": "/home", "timestamp": "2026-11-24T08:04:59.999Z"},
    {"event_id": "e4", "user_id": "u3", "timestamp": "2026-11-24T08:06:00Z"},  # no page_url: DLQ
    {"event_id": "e5", "user_id": "u3", "page_url": "/home", "timestamp": "2026-11-24T08:06:00Z"},
    {"event_id": "e6", "user_id": "u1", "page_url": "/buy", "timestamp": "2026-11-24T08:12:30Z"},
]


def test_a_drained_pipeline_upserts_its_results_and_dead_letters(postgres_dsn, pg_table, tmp_path, monkeypatch):
    (tmp_path / "clicks.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CLICKS))
    (tmp_path / "pipeline.yaml").write_text(f"""
name: pgtest
source: {{type: file, path: clicks.jsonl, topic: clicks}}
state: {{backend: lmdb, path: state}}
checkpoint: {{every_events: 2}}
event_time: {{field: timestamp}}
dlq: {{type: postgres, dsn: "${{POSTGRES_DSN}}", table: {pg_table}}}
stages:
  - type: validate
  - type: tumbling_window
    size: 5m
    aggregations: {{events: count}}
sinks:
  - type: postgres
    dsn: "${{POSTGRES_DSN}}"
    table: {pg_table}
""")
    monkeypatch.setenv("POSTGRES_DSN", postgres_dsn)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "pipeline.yaml", "--drain"]) == 0
    got = rows(postgres_dsn, pg_table)
    windows = {(r["window_start"].astimezone(UTC).strftime("%H:%M"), r["record"]["events"])
               for r in got.values() if r["kind"] == "result"}
    assert windows == {("08:00", 3), ("08:05", 1), ("08:10", 1)}
    assert 'pgtest/tumbling_window/null/2026-11-24T08:00:00.000Z/2026-11-24T08:05:00.000Z' in got
    dead = [r for r in got.values() if r["kind"] == "dlq"]
    assert [(r["id"], r["record"]["error"]) for r in dead] == [
        ("pgtest/dlq/clicks/0/3/validate", "missing required field: page_url")]
    # a second drained run reads nothing new and writes nothing twice
    assert cli.main(["run", "pipeline.yaml", "--drain"]) == 0
    assert rows(postgres_dsn, pg_table) == got
