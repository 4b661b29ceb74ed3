"""Faults of the world around the runner: a broker that stops (and comes back empty), a
PostgreSQL server that goes away, an LMDB map that fills up, a state of another format.

Servers "go down" without the shared ones being touched: the broker here is a second
Tansu of the test's own, and PostgreSQL is reached through a TCP proxy that is closed and
opened again.
"""

from __future__ import annotations

import json
import signal
import uuid
from pathlib import Path

import pytest

from plugins.clickstream import ClickGenerator
from runner.state import FORMAT, LmdbStore
from tests import e2e, faults

TOPIC = "events"


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture
def runners():
    """``start(*args) -> faults.Runner``; every runner still alive at the end is killed."""
    started = []

    def start(*args):
        proc = faults.Runner(*args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def own_broker():
    broker = faults.OwnBroker()
    yield broker
    broker.stop()


@pytest.fixture
def postgres(postgres_dsn):
    """``table() -> name``: fresh table names (dropped afterwards) on the test server, which must answer."""
    made = []

    def table() -> str:
        made.append(f"test_faults_{uuid.uuid4().hex[:12]}")
        return made[-1]

    yield table
    faults.drop_tables(faults.POSTGRES_DSN, made)


@pytest.fixture
def pg_proxy():
    proxy = faults.Proxy(("127.0.0.1", 5432))
    yield proxy
    proxy.close()


# --- the broker stops ---------------------------------------------------------------------------
def kafka_pipeline(workdir: Path, servers: str) -> str:
    return faults.kafka_pipeline(
        workdir, servers, TOPIC, source={"auto_offset_reset": "earliest"}, name="broker_faults",
        checkpoint={"every_events": 50, "every_ms": 100},
        stages=[{"type": "validate"},
                {"type": "aggregate", "name": "page_stats", "key_by": "page_url", "aggregations": {"views": "count"}}],
        sinks=[{"type": "jsonl", "path": str(workdir / "results.jsonl")}],
    )


def views(state: dict) -> int:
    return sum(k["views"] for k in state["stages"]["page_stats"]["keys"])


def expected_offsets(partitions: dict[int, int]) -> dict[str, int]:
    return {f"{TOPIC}/{p}": partitions.get(p, 0) for p in range(3)}


def test_broker_stopped_while_running_and_back_empty(own_broker, runners, tmp_path):
    own_broker.start({TOPIC: 3})
    _, before = faults.produce_range(own_broker.address, TOPIC, 0, 3000, seed=5, bad_ratio=0)
    pipeline = kafka_pipeline(tmp_path, own_broker.address)
    run = runners("run", pipeline)
    state = tmp_path / "state"
    assert faults.wait_until(lambda: faults.stored(state)["offsets"] == expected_offsets(before), 60), \
        (faults.stored(state), run.stderr[-3000:])

    own_broker.stop()
    assert run.wait_for("unreachable", 30), run.stderr[-3000:]
    assert f"[KAFKA] broker {own_broker.address} unreachable; retrying..." in run.stderr
    assert run.alive(), run.stderr[-3000:]

    own_broker.start({TOPIC: 3})  # back, and empty
    _, after = faults.produce_range(own_broker.address, TOPIC, 0, 1000, seed=6, bad_ratio=0)
    beyond = [p for p in range(3) if before.get(p, 0) > after.get(p, 0)]
    assert beyond == [0, 1, 2], (before, after)  # every stored offset is past the new end
    assert faults.wait_until(lambda: faults.stored(state)["offsets"] == expected_offsets(after), 90), \
        (faults.stored(state), run.stderr[-3000:])
    for p in beyond:
        assert f" of {TOPIC}/{p} is beyond its end" in run.stderr, run.stderr[-3000:]
    assert "auto_offset_reset" in run.stderr
    assert run.alive(), run.stderr[-3000:]

    _, live = faults.produce_range(own_broker.address, TOPIC, 1000, 1500, seed=6, bad_ratio=0)  # and it goes on
    total = {p: after.get(p, 0) + live.get(p, 0) for p in range(3)}
    assert faults.wait_until(lambda: faults.stored(state)["offsets"] == expected_offsets(total), 60), \
        (faults.stored(state), run.stderr[-3000:])
    assert run.alive(), run.stderr[-3000:]
    run.signal(signal.SIGTERM)
    assert run.wait(60) == 0, run.stderr[-3000:]
    print("\n" + "".join(line for line in run.lines if "KAFKA" in line or "WARNING" in line))
    dumped = e2e.dump(pipeline)
    assert dumped["offsets"] == expected_offsets(total)
    assert views(dumped) == 3000 + 1500  # the events of before and after the restart, each once


def test_stored_offset_beyond_the_end_at_start(own_broker, tmp_path):
    own_broker.start({TOPIC: 3})
    _, before = faults.produce_range(own_broker.address, TOPIC, 0, 2000, seed=8, bad_ratio=0)
    pipeline = kafka_pipeline(tmp_path, own_broker.address)
    first = e2e.run("run", pipeline, "--until-end", timeout=120)
    assert first.returncode == 0, first.stderr[-3000:]
    assert e2e.dump(pipeline)["offsets"] == expected_offsets(before)

    own_broker.stop()
    own_broker.start({TOPIC: 3})  # empty
    _, after = faults.produce_range(own_broker.address, TOPIC, 0, 600, seed=9, bad_ratio=0)
    again = e2e.run("run", pipeline, "--until-end", timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    for p in range(3):
        assert before[p] > after.get(p, 0)
        assert (f"WARNING: stored offset {before[p]} of {TOPIC}/{p} is beyond its end {after.get(p, 0)}"
                in again.stderr), again.stderr[-3000:]
    print("\n" + "\n".join(line for line in again.stderr.splitlines() if "WARNING" in line))
    dumped = e2e.dump(pipeline)
    assert dumped["offsets"] == expected_offsets(after)
    assert views(dumped) == 2000 + 600


def test_broker_back_empty_during_an_until_end_run_ends_the_run(own_broker, runners, tmp_path):
    """--until-end stops at the end of the input present at start. When the broker loses that
    input mid-run, the offsets to stop at no longer exist: the run must still end (CONTRACT
    section 7: an offset beyond the end is reported and handled, never a hang)."""
    own_broker.start({TOPIC: 3})
    _, before = faults.produce_range(own_broker.address, TOPIC, 0, 60_000, seed=5, bad_ratio=0)
    pipeline = kafka_pipeline(tmp_path, own_broker.address)
    run = runners("run", pipeline, "--until-end", "--set", "checkpoint.every_events=10")
    state = tmp_path / "state"
    assert faults.wait_until(lambda: sum(faults.stored(state)["offsets"].values()) >= 1000, 60), run.stderr[-3000:]
    own_broker.stop()
    read = sum(faults.stored(state)["offsets"].values())
    assert read < 60_000 and run.alive(), "the run ended before the broker stopped: make the input longer"
    own_broker.start({TOPIC: 3})  # back, and empty
    _, after = faults.produce_range(own_broker.address, TOPIC, 0, 1000, seed=6, bad_ratio=0)
    # reported either by the source (positions beyond the new ends) or by the runner (ends
    # gone back below the stop offsets), whichever notices first
    ended = faults.wait_until(lambda: not run.alive(), 60, 0.5)
    assert "is beyond its end" in run.stderr or "its data was lost" in run.stderr, run.stderr[-3000:]
    positions = faults.stored(state)["offsets"]
    assert ended, (f"the --until-end run still runs 60 s after reporting offsets beyond the end; it stops at "
                   f"{before} (the lost input), its positions are {positions}; stderr: {run.stderr[-1500:]!r}")
    assert run.wait(10) == 0, run.stderr[-3000:]
    assert all(positions[f"{TOPIC}/{p}"] <= after.get(p, 0) for p in range(3)), positions


# --- PostgreSQL goes away ---------------------------------------------------------------------------
def click_lines(count: int, seed: int = 4) -> list[bytes]:
    gen = ClickGenerator(seed=seed, start_ms=1795507200000, rate=10, bad_ratio=0.02)
    return [(gen.record(i)[1] or b"") + b"\n" for i in range(count)]  # a null value: a blank line


def pg_pipeline(workdir: Path, events: Path, dsn: str, table: str) -> str:
    return faults.file_pipeline(
        workdir, events, "clicks", name="pg_faults",
        checkpoint={"every_events": 50, "every_ms": 100},
        event_time={"field": "timestamp", "grace": "30s"},
        stages=[
            {"type": "validate"},
            {"type": "aggregate", "name": "page_stats", "key_by": "page_url",
             "aggregations": {"views": "count", "revenue": {"sum": "revenue"}}, "milestones": {"views": 25}},
            {"type": "tumbling_window", "name": "per_30s", "size": "30s",
             "aggregations": {"events": "count", "users": {"count_distinct": "user_id"}}},
        ],
        sinks=[{"type": "postgres", "name": "pg", "dsn": dsn, "table": table}],
    )


def rows_by_id(table: str) -> dict:
    rows = faults.pg_rows(faults.POSTGRES_DSN, table)
    found = faults.by_id(rows)
    assert len(found) == len(rows)  # the primary key says so; checked all the same
    return found


@pytest.fixture
def pg_case(postgres, pg_proxy, tmp_path):
    """Events in two halves, the clean run's rows over both, and a pipeline writing to PostgreSQL
    through the proxy, its source file holding the first half."""
    lines = click_lines(4000)
    first, second = lines[:2000], lines[2000:]
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    (clean_dir / "events.jsonl").write_bytes(b"".join(lines))
    clean_table = postgres()
    clean = e2e.run("run", pg_pipeline(clean_dir, clean_dir / "events.jsonl", faults.POSTGRES_DSN, clean_table), "--until-end")
    assert clean.returncode == 0, clean.stderr[-3000:]
    want = rows_by_id(clean_table)
    assert len(want) > 100

    work = tmp_path / "faulty"
    work.mkdir()
    events = work / "events.jsonl"
    events.write_bytes(b"".join(first))
    table = postgres()
    pipeline = pg_pipeline(work, events, f"postgresql://postgres@{pg_proxy.address}/test", table)
    return {"pipeline": pipeline, "state": work / "state", "events": events, "table": table, "want": want,
            "first": b"".join(first), "second": b"".join(second), "lines": b"".join(lines).count(b"\n")}


def _start_with_the_first_half(case, runners):
    """Start the runner unbounded and wait until it has read the first half and written rows."""
    run = runners("run", case["pipeline"])
    first_lines = case["first"].count(b"\n")
    assert faults.wait_until(lambda: faults.stored(case["state"])["offsets"].get("clicks/0") == first_lines
                             and faults.pg_rows(faults.POSTGRES_DSN, case["table"]), 60), run.stderr[-3000:]
    return run


def _run_into_an_outage(case, pg_proxy, runners):
    """Start the runner unbounded, let it write the first half, close the proxy, append the
    second half and wait until the sink fails and is retried."""
    run = _start_with_the_first_half(case, runners)
    pg_proxy.close()
    with open(case["events"], "ab") as f:
        f.write(case["second"])
    assert run.wait_for("retrying", 60, count=2), run.stderr[-3000:]
    assert "[SINK]" in run.stderr and f"{pg_proxy.address}/test" in run.stderr, run.stderr[-3000:]
    assert run.alive(), run.stderr[-3000:]
    assert rows_by_id(case["table"]).keys() < case["want"].keys()  # the second half is not there yet
    print("\n" + "".join(line for line in run.lines if "[SINK]" in line)[-1500:])
    return run


def test_postgres_down_while_running_is_retried_without_loss_or_duplicates(pg_case, pg_proxy, runners):
    run = _run_into_an_outage(pg_case, pg_proxy, runners)
    pg_proxy.open()
    want = pg_case["want"]
    assert faults.wait_until(lambda: rows_by_id(pg_case["table"]).keys() == want.keys(), 90), run.stderr[-3000:]
    assert faults.wait_until(lambda: faults.stored(pg_case["state"])["outbox"] == 0, 30)
    assert faults.stored(pg_case["state"])["offsets"] == {"clicks/0": pg_case["lines"]}
    run.signal(signal.SIGTERM)
    assert run.wait(60) == 0, run.stderr[-3000:]
    got = rows_by_id(pg_case["table"])
    assert faults.differences(want, got) == []


def test_sigterm_while_postgres_is_down_keeps_the_outbox_for_the_next_start(pg_case, pg_proxy, runners):
    run = _run_into_an_outage(pg_case, pg_proxy, runners)
    run.signal(signal.SIGTERM)
    assert run.wait(60) == 0, run.stderr[-3000:]
    assert "outbox" in run.stderr, run.stderr[-3000:]
    assert faults.stored(pg_case["state"])["outbox"] > 0
    missing = pg_case["want"].keys() - rows_by_id(pg_case["table"]).keys()
    assert missing

    outbox = faults.stored(pg_case["state"])
    down = e2e.run("run", pg_case["pipeline"], "--until-end")  # still down: a clear error, nothing lost
    assert down.returncode == 1, down.stderr[-3000:]
    assert f"cannot connect to PostgreSQL at {pg_proxy.address}/test" in down.stderr, down.stderr[-3000:]
    assert faults.stored(pg_case["state"]) == outbox

    pg_proxy.open()
    again = e2e.run("run", pg_case["pipeline"], "--until-end")
    assert again.returncode == 0, again.stderr[-3000:]
    assert faults.differences(pg_case["want"], rows_by_id(pg_case["table"])) == []
    after = faults.stored(pg_case["state"])
    assert after["offsets"] == {"clicks/0": pg_case["lines"]} and after["outbox"] == 0


# --- LMDB ---------------------------------------------------------------------------------------
def blob_pipeline(workdir: Path) -> str:
    return faults.file_pipeline(
        workdir, workdir / "events.jsonl", "big", name="big_state",
        checkpoint={"every_events": 100, "every_ms": 1000},
        stages=[{"type": "aggregate", "name": "per_event", "key_by": "event_id",
                 "aggregations": {"n": "count", "blobs": {"collect": "blob"}}}],
        sinks=[{"type": "jsonl", "path": str(workdir / "results.jsonl")}],
    )


def blob_events(path: Path, start: int, stop: int, size: int) -> None:
    with open(path, "a") as f:
        for i in range(start, stop):
            f.write(json.dumps({"event_id": f"e{i:06d}", "timestamp": 1795507200000 + 1000 * i,
                                "blob": f"{i:06d}" * (size // 6)}) + "\n")


def check_blob_dump(state: dict, count: int, size: int) -> None:
    keys = state["stages"]["per_event"]["keys"]
    assert len(keys) == count
    for i, entry in enumerate(keys):
        assert entry == {"key": f"e{i:06d}", "n": 1, "blobs": [f"{i:06d}" * (size // 6)]}, entry["key"]
    assert state["offsets"] == {"big/0": count}


def dead_letters(workdir: Path) -> list:
    return faults.jsonl_records(workdir / "dlq.jsonl")


def test_state_outgrowing_the_initial_lmdb_map(tmp_path):
    """~80 MiB of state against the default 64 MiB map: the map grows, and a later start
    (which asks for 64 MiB again) reopens it and goes on."""
    size = 6000
    blob_events(tmp_path / "events.jsonl", 0, 12_000, size)
    pipeline = blob_pipeline(tmp_path)
    proc = e2e.run("run", pipeline, "--until-end", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert dead_letters(tmp_path) == []
    assert (tmp_path / "state" / "data.mdb").stat().st_size > 64 << 20
    check_blob_dump(e2e.dump(pipeline), 12_000, size)

    blob_events(tmp_path / "events.jsonl", 12_000, 13_000, size)
    proc = e2e.run("run", pipeline, "--until-end", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_blob_dump(e2e.dump(pipeline), 13_000, size)


def test_map_full_grows_many_times_in_process(tmp_path, monkeypatch):
    """The same with a 128 KiB initial map, so one run grows it again and again."""
    from runner import engine
    from runner.cli import main

    class SmallStore(LmdbStore):
        def __init__(self, path, readonly=False, map_size=128 << 10):
            super().__init__(path, readonly=readonly, map_size=map_size)

    monkeypatch.setattr(engine, "LmdbStore", SmallStore)
    size = 600
    blob_events(tmp_path / "events.jsonl", 0, 6000, size)
    pipeline = blob_pipeline(tmp_path)
    assert main(["run", pipeline, "--until-end"]) == 0
    assert dead_letters(tmp_path) == []
    assert (tmp_path / "state" / "data.mdb").stat().st_size > 2 << 20
    blob_events(tmp_path / "events.jsonl", 6000, 6500, size)
    assert main(["run", pipeline, "--until-end"]) == 0
    check_blob_dump(e2e.dump(pipeline), 6500, size)


def test_a_state_of_another_format_is_refused_and_left_alone(tmp_path):
    blob_events(tmp_path / "events.jsonl", 0, 50, 60)
    pipeline = blob_pipeline(tmp_path)
    assert e2e.run("run", pipeline, "--until-end").returncode == 0
    store = LmdbStore(tmp_path / "state")
    assert store.meta("format") == FORMAT
    checkpoint = store.meta("checkpoint")
    store.commit({"format": b"other"}, [], [])
    store.close()
    results = (tmp_path / "results.jsonl").read_bytes()

    blob_events(tmp_path / "events.jsonl", 50, 60, 60)
    proc = e2e.run("run", pipeline, "--until-end")
    assert proc.returncode == 1, proc.stderr
    assert "runner state reset" in proc.stderr and "format" in proc.stderr and "b'other'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    store = LmdbStore(tmp_path / "state", readonly=True)
    try:  # refused, never started over silently
        assert store.meta("format") == b"other" and store.meta("checkpoint") == checkpoint
        assert store.meta("offsets") == {"big/0": 50}
    finally:
        store.close()
    assert (tmp_path / "results.jsonl").read_bytes() == results


HANG_BOUND_S = 90  # far beyond every timeout of the sink (connect 10 s, TCP 30 s, retry backoff 10 s)


def test_sigterm_while_postgres_hangs_stops_the_runner(pg_case, pg_proxy, runners):
    """PostgreSQL hangs (connections up, no answer: a stopped or stuck server). A write waiting
    on it must not keep the runner from honouring SIGTERM: it stops with exit 0, the
    outputs stay in the outbox, and the next start delivers them."""
    run = _start_with_the_first_half(pg_case, runners)
    pg_proxy.pause()
    with open(pg_case["events"], "ab") as f:
        f.write(pg_case["second"])
    assert faults.wait_until(pg_proxy.stalled.is_set, 60), run.stderr[-3000:]  # a write waits on the server
    assert run.alive(), run.stderr[-3000:]
    run.signal(signal.SIGTERM)
    stopped = faults.wait_until(lambda: not run.alive(), HANG_BOUND_S, 0.5)
    pg_proxy.resume()  # whatever happened, nothing is left hanging
    assert stopped, (f"the runner still runs {HANG_BOUND_S} s after SIGTERM, blocked on a PostgreSQL write "
                     f"that gets no answer; stderr: {run.stderr[-2000:]!r}")
    assert run.wait(10) == 0, run.stderr[-3000:]
    assert faults.stored(pg_case["state"])["outbox"] > 0

    again = e2e.run("run", pg_case["pipeline"], "--until-end")
    assert again.returncode == 0, again.stderr[-3000:]
    assert faults.differences(pg_case["want"], rows_by_id(pg_case["table"])) == []
