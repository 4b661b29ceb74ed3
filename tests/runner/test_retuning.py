"""A start on a state made by another version of the pipeline file (CONTRACT section 7): sinks
renamed, pointed elsewhere, retyped, added or removed, the source's topic switched, the
grace changed. Nothing committed is lost, nothing is written twice, and what is final is
emitted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from runner import checkpoint, config
from runner.components import RunnerError
from runner.engine import Runner
from runner.state import LmdbStore
from tests import faults

WINDOW = {"type": "tumbling_window", "name": "w", "size": "5m", "aggregations": {"events": "count"}}


def clicks(path: Path, minutes: list[float], hour: int = 8) -> Path:
    """A JSONL file of valid click events at ``hour``:``minutes`` on 2026-11-24."""
    path.write_text("".join(json.dumps({
        "event_id": f"e{i}", "user_id": "u1", "page_url": "/home",
        "timestamp": f"2026-11-24T{hour:02d}:{int(m):02d}:{round(m % 1 * 60):02d}Z"}) + "\n"
        for i, m in enumerate(minutes)))
    return path


def run(path: str, *overrides: str, lines: list | None = None, drain: bool = False) -> Runner:
    """One bounded run of ``path`` (``--set`` overrides), its lines in ``lines``."""
    settings = config.load(path, list(overrides))
    runner = Runner(settings, until_end=True, drain=drain,
                    log=lambda *a, **k: (lines if lines is not None else []).append(" ".join(map(str, a))))
    assert runner.run() == 0
    return runner


def crash_with_outbox(path: str, monkeypatch) -> None:
    """A run killed after delivering, before any confirmation: its outputs wait in the outbox."""
    monkeypatch.setattr(checkpoint, "CONFIRM_EVERY_S", 3600)
    crashed = Runner(config.load(path), until_end=True, log=lambda *a, **k: None)
    crashed._open()
    crashed._loop()
    crashed.checkpoint.settle()
    crashed._abort()
    monkeypatch.undo()
    assert faults.stored(Path(path).parent / "state")["outbox"] > 0


def wid(minute: int, hour: int = 8) -> str:
    """The id of window [hour:minute, +5m) of stage w of pipeline p, no key."""
    end_h, end_m = divmod(hour * 60 + minute + 5, 60)
    return f"p/w/null/2026-11-24T{hour:02d}:{minute:02d}:00.000Z/2026-11-24T{end_h:02d}:{end_m:02d}:00.000Z"


def edit(path: str, **changes) -> None:
    """Change top-level keys of the pipeline file at ``path``."""
    faults.write_pipeline(path, {**yaml.safe_load(Path(path).read_text()), **changes})


def crashed(tmp_path: Path, monkeypatch, sinks: list | None = None, stage: dict = WINDOW) -> str:
    """A pipeline of four events (three windows), its sinks ``sinks`` (default: jsonl sink a
    to out.jsonl), killed with all three windows delivered and none confirmed."""
    events = clicks(tmp_path / "events.jsonl", [0, 6, 11, 16])
    path = faults.file_pipeline(tmp_path, events, "in", name="p", stages=[stage], event_time={"grace": "0s"},
                                checkpoint={"every_events": 1},
                                sinks=sinks or [{"type": "jsonl", "name": "a", "path": str(tmp_path / "out.jsonl")}])
    crash_with_outbox(path, monkeypatch)
    return path


def ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.startswith("{")]


def test_a_renamed_jsonl_sink_keeps_its_file_and_appends_to_it(tmp_path, capsys):
    events = clicks(tmp_path / "events.jsonl", [0, 1, 6, 11])
    out = tmp_path / "out.jsonl"
    path = faults.file_pipeline(tmp_path, events, "in", name="p", stages=[WINDOW],
                                event_time={"grace": "0s"}, sinks=[{"type": "jsonl", "path": str(out)}])
    run(path)
    first = ids(out)
    assert len(first) == 2  # [08:00, 08:05) and [08:05, 08:10)
    with events.open("a") as f:
        f.write(json.dumps({"event_id": "e9", "user_id": "u1", "page_url": "/a",
                            "timestamp": "2026-11-24T08:16:00Z"}) + "\n")
    run(path, "sinks.jsonl.name=results")
    assert ids(out) == first + [wid(10)]
    assert "sink results: the state holds no length of" in capsys.readouterr().err


def test_a_sink_renamed_after_a_crash_writes_what_its_old_self_was_not_confirmed_once(tmp_path, monkeypatch):
    path, out = crashed(tmp_path, monkeypatch), tmp_path / "out.jsonl"
    assert len(ids(out)) == 3  # delivered, none confirmed
    edit(path, sinks=[{"type": "jsonl", "name": "b", "path": str(out)}])
    run(path)
    assert ids(out) == [wid(m) for m in (0, 5, 10)]


def test_a_sink_pointed_at_another_file_keeps_what_that_file_holds(tmp_path, capsys):
    events = clicks(tmp_path / "events.jsonl", [0, 6])
    path = faults.file_pipeline(tmp_path, events, "in", name="p", stages=[WINDOW], event_time={"grace": "0s"},
                                sinks=[{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}])
    run(path)
    notes = tmp_path / "notes.txt"
    notes.write_text("".join(f"{i}\n" for i in range(5000)))  # longer than the committed length of out.jsonl
    with events.open("a") as f:
        f.write(json.dumps({"event_id": "e9", "user_id": "u1", "page_url": "/a",
                            "timestamp": "2026-11-24T08:16:00Z"}) + "\n")
    run(path, f"sinks.jsonl.path={notes}")
    kept, added = notes.read_text().split("\n")[:5000], notes.read_text().splitlines()[5000:]
    assert kept == [str(i) for i in range(5000)]
    assert [json.loads(line)["id"] for line in added] == [wid(5)]
    assert "the state holds no length of" in capsys.readouterr().err


def test_a_first_run_still_empties_its_file(tmp_path):
    events = clicks(tmp_path / "events.jsonl", [0, 6])
    out = tmp_path / "out.jsonl"
    out.write_text("an earlier run's line\n")
    path = faults.file_pipeline(tmp_path, events, "in", name="p", stages=[WINDOW], event_time={"grace": "0s"},
                                sinks=[{"type": "jsonl", "path": str(out)}])
    run(path)
    assert ids(out) == [wid(0)]


def test_a_sink_added_beside_a_full_outbox_is_known_before_it_is_given_anything(tmp_path, monkeypatch):
    """Its kept length is committed before the outbox is redelivered: killed right after the
    redelivery, the next start cuts those lines away and writes them once."""
    events = clicks(tmp_path / "events.jsonl", [0, 6, 11, 16])
    path = faults.file_pipeline(tmp_path, events, "in", name="p", stages=[WINDOW], event_time={"grace": "0s"},
                                checkpoint={"every_events": 1},
                                sinks=[{"type": "jsonl", "name": "a", "path": str(tmp_path / "a.jsonl")}])
    crash_with_outbox(path, monkeypatch)
    added = tmp_path / "b.jsonl"
    added.write_text("someone else's line\n")
    edit(path, sinks=[{"type": "jsonl", "name": name, "path": str(tmp_path / f"{name}.jsonl")} for name in "ab"])
    again = Runner(config.load(path), until_end=True, log=lambda *a, **k: None)
    again._open()  # the outbox is handed to b here
    again.checkpoint.settle()
    assert len(ids(added)) == 3
    again._abort()
    run(path)
    assert added.read_text().splitlines()[0] == "someone else's line"
    assert ids(added) == [wid(m) for m in (0, 5, 10)]


def test_a_sink_removed_with_outputs_waiting_is_reported(tmp_path, monkeypatch):
    events = clicks(tmp_path / "events.jsonl", [0, 6, 11])
    sinks = [{"type": "jsonl", "name": name, "path": str(tmp_path / f"{name}.jsonl")} for name in "ab"]
    path = faults.file_pipeline(tmp_path, events, "in", name="p", stages=[WINDOW], event_time={"grace": "0s"},
                                checkpoint={"every_events": 1}, sinks=sinks)
    crash_with_outbox(path, monkeypatch)
    lines: list[str] = []
    edit(path, sinks=sinks[:1])
    run(path, lines=lines)
    assert "WARNING: 2 outputs of the outbox were meant for sink b, which this pipeline no longer has: they never " \
           "reach it" in lines


def test_a_dlq_switched_to_another_type_starts_without_the_old_ones_state(tmp_path, broker, topic_factory):
    events = tmp_path / "events.jsonl"
    events.write_text("not json\n" + clicks(tmp_path / "ok.jsonl", [0]).read_text())
    dlq_topic = topic_factory(1)
    path = faults.file_pipeline(tmp_path, events, "in", name="p", stages=[],
                                dlq={"type": "kafka", "topic": dlq_topic, "bootstrap_servers": broker},
                                sinks=[{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}])
    run(path)
    with events.open("a") as f:
        f.write("not json either\n")
    lines: list[str] = []
    dlq = tmp_path / "dlq.jsonl"
    edit(path, dlq={"type": "jsonl", "path": str(dlq)})
    run(path, lines=lines)
    assert "[p] sink dlq is a jsonl sink now, not kafka: it starts without the old one's committed state" in lines
    assert ids(dlq) == ["p/dlq/in/0/2/source"]


def test_a_switched_topic_no_longer_holds_the_watermark(tmp_path):
    """CONTRACT section 6: W is the minimum over the partitions of the source at start; the
    partitions of a topic no longer read are out of it, and the windows it held open close."""
    first = clicks(tmp_path / "first.jsonl", [0, 6, 11])
    out = tmp_path / "out.jsonl"
    path = faults.file_pipeline(tmp_path, first, "first", name="p", stages=[WINDOW], event_time={"grace": "0s"},
                                sinks=[{"type": "jsonl", "path": str(out)}])
    run(path)
    second = clicks(tmp_path / "second.jsonl", [0, 3], hour=9)
    runner = run(path, f"source.path={second}", "source.topic=second")
    assert ids(out)[-1] == wid(10)
    assert set(runner.tracker.high) == {"second/0"}
    store = LmdbStore(tmp_path / "state", readonly=True)
    try:
        assert set(store.meta("event_time")) == {"second/0"}
    finally:
        store.close()


def test_windows_final_under_a_smaller_grace_are_emitted_by_a_run_that_reads_nothing(tmp_path):
    events = clicks(tmp_path / "events.jsonl", [0, 6, 12])
    out = tmp_path / "out.jsonl"
    path = faults.file_pipeline(tmp_path, events, "in", name="p", stages=[WINDOW], event_time={"grace": "5m"},
                                sinks=[{"type": "jsonl", "path": str(out)}])
    run(path)
    assert ids(out) == [wid(0)]  # W = 08:07
    runner = run(path, "event_time.grace=0s")
    assert runner.processed == 0
    assert ids(out) == [wid(0), wid(5)]


def test_a_new_state_is_not_made_in_a_directory_of_other_files(tmp_path):
    events = clicks(tmp_path / "events.jsonl", [0])
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me\n")
    path = faults.file_pipeline(tmp_path, events, "in", name="p", stages=[])
    with pytest.raises(RunnerError, match=r"state.path .*notes holds other files \(todo.txt\) and no state: is it "
                                          r"the directory you meant\?"):
        Runner(config.load(path, [f"state.path={notes}"]), until_end=True, log=lambda *a, **k: None).run()
    assert sorted(p.name for p in notes.iterdir()) == ["todo.txt"]


def test_two_runners_never_write_one_jsonl_file(tmp_path):
    events = clicks(tmp_path / "events.jsonl", [0])
    shared = tmp_path / "shared.jsonl"
    one = faults.file_pipeline(tmp_path / "one", events, "in", name="one", stages=[],
                               sinks=[{"type": "jsonl", "path": str(shared)}])
    two = faults.file_pipeline(tmp_path / "two", events, "in", name="two", stages=[],
                               sinks=[{"type": "jsonl", "path": str(shared)}])
    first = Runner(config.load(one), until_end=True, log=lambda *a, **k: None)
    first._open()
    try:
        with pytest.raises(RunnerError, match=r"shared.jsonl is being written by another runner"):
            Runner(config.load(two), until_end=True, log=lambda *a, **k: None).run()
    finally:
        first._abort()
    run(two)  # once the first is gone


def test_a_refused_definition_change_names_the_values_as_json(tmp_path):
    events = clicks(tmp_path / "events.jsonl", [0, 1])
    path = faults.file_pipeline(tmp_path, events, "in", name="p", stages=[WINDOW], event_time={"grace": "0s"},
                                sinks=[{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}])
    run(path)
    edit(path, stages=[{"type": "session_window", "name": "w", "key_by": "user_id", "gap": "5m",
                        "aggregations": {"events": "count"}}])
    with pytest.raises(RunnerError) as refused:
        run(path)
    assert ('(advance: 5m -> (none), gap: (none) -> 5m, key_by: null -> "user_id", size: 5m '
            '-> (none), type: "tumbling_window" -> "session_window")') in str(refused.value)


def as_older_runner_left_it(state_path: Path, sinks: dict) -> None:
    """The state as a runner before sink types and jsonl paths were kept committed it: no
    "sink_types", and ``sinks`` as the sinks' states (a jsonl state: its length or None)."""
    store = LmdbStore(state_path)
    try:
        store.commit({"sink_types": None, "sinks": sinks}, [], [])
        store.in_flight(wait=True)
    finally:
        store.close()


def test_after_an_older_runner_crashed_before_confirming_its_outputs_are_written_once(tmp_path, monkeypatch):
    path, out = crashed(tmp_path, monkeypatch), tmp_path / "out.jsonl"
    as_older_runner_left_it(tmp_path / "state", {"a": None, "dlq": None})
    run(path)
    assert ids(out) == [wid(m) for m in (0, 5, 10)]


@pytest.mark.parametrize("change", ["two renamed", "renamed and one added", "paths swapped"])
def test_an_edit_that_hides_where_waiting_outputs_went_is_refused(tmp_path, monkeypatch, change):
    jsonl = [{"type": "jsonl", "name": name, "path": str(tmp_path / f"{name}.jsonl")} for name in "ab"]
    path = crashed(tmp_path, monkeypatch, sinks=jsonl)
    edited = {
        "two renamed": [{**jsonl[0], "name": "c"}, {**jsonl[1], "name": "d"}],
        "renamed and one added": [{**jsonl[0], "name": "c"}, jsonl[1], {**jsonl[0], "name": "e",
                                                                       "path": str(tmp_path / "e.jsonl")}],
        "paths swapped": [{**jsonl[0], "path": jsonl[1]["path"]}, {**jsonl[1], "path": jsonl[0]["path"]}],
    }[change]
    edit(path, sinks=edited)
    before = {name: (tmp_path / f"{name}.jsonl").read_bytes() for name in "ab"}
    with pytest.raises(RunnerError, match="start once (with the old sinks|as the pipeline was)"):
        run(path)
    assert {name: (tmp_path / f"{name}.jsonl").read_bytes() for name in "ab"} == before  # nothing cut, nothing added
    edit(path, sinks=jsonl)
    run(path)
    for name in "ab":
        assert ids(tmp_path / f"{name}.jsonl") == [wid(m) for m in (0, 5, 10)]


def test_a_file_reached_by_another_path_with_outputs_waiting_is_refused(tmp_path, monkeypatch):
    """A directory renamed and a symbolic link pointed at its new name: the state knows the
    file by its old real path, and cannot tell it from another file (an inode is reused)."""
    (tmp_path / "disk1").mkdir()
    (tmp_path / "out").symlink_to(tmp_path / "disk1")
    path = crashed(tmp_path, monkeypatch, sinks=[{"type": "jsonl", "path": str(tmp_path / "out" / "r.jsonl")}])
    (tmp_path / "disk1").rename(tmp_path / "disk2")
    (tmp_path / "out").unlink()
    (tmp_path / "out").symlink_to(tmp_path / "disk2")
    with pytest.raises(RunnerError, match="start once as the pipeline was"):
        run(path)
    assert len(ids(tmp_path / "disk2" / "r.jsonl")) == 3  # nothing cut, nothing added
    (tmp_path / "out").unlink()
    (tmp_path / "disk2").rename(tmp_path / "disk1")
    (tmp_path / "out").symlink_to(tmp_path / "disk1")
    run(path)
    assert ids(tmp_path / "disk1" / "r.jsonl") == [wid(m) for m in (0, 5, 10)]


def test_a_sink_renamed_with_outputs_routed_to_it_gets_them(tmp_path, monkeypatch):
    path, out = crashed(tmp_path, monkeypatch, stage={**WINDOW, "to": ["a"]}), tmp_path / "out.jsonl"
    edit(path, stages=[{**WINDOW, "to": ["b"]}], sinks=[{"type": "jsonl", "name": "b", "path": str(out)}])
    lines: list[str] = []
    run(path, lines=lines)
    assert ids(out) == [wid(m) for m in (0, 5, 10)]
    assert ("[p] sink b takes over the committed state and the waiting outputs of sink a, which this pipeline no "
            "longer has (renamed?)") in lines


def test_a_kafka_dlq_given_an_older_runners_jsonl_state_reads_the_topic_back(tmp_path, broker, topic_factory):
    events = tmp_path / "events.jsonl"
    events.write_text("not json\n")
    path = faults.file_pipeline(tmp_path, events, "in", name="p", stages=[])
    run(path)
    as_older_runner_left_it(tmp_path / "state", {"dlq": 9})  # a jsonl DLQ's length
    with events.open("a") as f:
        f.write("not json either\n")
    dlq_topic = topic_factory(1)
    edit(path, dlq={"type": "kafka", "topic": dlq_topic, "bootstrap_servers": broker})
    run(path)
    assert [i for i, _ in faults.kafka_records(broker, dlq_topic)] == ["p/dlq/in/0/1/source"]


def test_a_new_file_systems_root_is_an_empty_directory(tmp_path):
    events = clicks(tmp_path / "events.jsonl", [0])
    volume = tmp_path / "volume"
    (volume / "lost+found").mkdir(parents=True)
    path = faults.file_pipeline(tmp_path, events, "in", name="p", stages=[])
    run(path, f"state.path={volume}")
    assert (volume / "data.mdb").exists()


def test_a_sink_added_to_an_older_runners_state_keeps_its_file(tmp_path, monkeypatch):
    path = crashed(tmp_path, monkeypatch)
    as_older_runner_left_it(tmp_path / "state", {"a": None, "dlq": None})
    other = tmp_path / "b.jsonl"
    other.write_text("someone else's line\n")
    edit(path, sinks=[{"type": "jsonl", "name": "a", "path": str(tmp_path / "out.jsonl")},
                      {"type": "jsonl", "name": "b", "path": str(other)}])
    run(path)
    assert other.read_text().splitlines()[0] == "someone else's line"
    assert ids(tmp_path / "out.jsonl") == ids(other) == [wid(m) for m in (0, 5, 10)]


@pytest.mark.parametrize("older", [False, True])
def test_a_rename_that_cannot_be_told_from_a_removal_is_refused_while_outputs_wait(tmp_path, monkeypatch, older):
    """One jsonl sink removed and another added with a file of its own, or a rename on a
    state of an older runner (which kept no types): refused, nothing cut, until a start with
    the old sinks has delivered the waiting outputs."""
    sinks = [{"type": "jsonl", "name": n, "path": str(tmp_path / f"{n}.jsonl")} for n in "ab"]
    path = crashed(tmp_path, monkeypatch, sinks=sinks)
    if older:
        as_older_runner_left_it(tmp_path / "state", {"a": None, "b": None, "dlq": None})
    renamed = tmp_path / ("a.jsonl" if older else "c.jsonl")
    edit(path, sinks=[sinks[1], {"type": "jsonl", "name": "c", "path": str(renamed)}])
    with pytest.raises(RunnerError, match="start once (with the old sinks|as the pipeline was)"):
        run(path)
    assert len(ids(tmp_path / "a.jsonl")) == 3
    edit(path, sinks=sinks)
    run(path)
    assert ids(tmp_path / "a.jsonl") == ids(tmp_path / "b.jsonl") == [wid(m) for m in (0, 5, 10)]


def test_an_older_runners_length_is_not_taken_for_another_file(tmp_path):
    events = clicks(tmp_path / "events.jsonl", [0, 6])
    path = faults.file_pipeline(tmp_path, events, "in", name="p", stages=[WINDOW], event_time={"grace": "0s"},
                                sinks=[{"type": "jsonl", "name": "a", "path": str(tmp_path / "out.jsonl")}])
    run(path)
    as_older_runner_left_it(tmp_path / "state", {"a": (tmp_path / "out.jsonl").stat().st_size, "dlq": 0})
    notes = tmp_path / "notes.txt"
    notes.write_text("".join(f"{i}\n" for i in range(5000)))
    edit(path, sinks=[{"type": "jsonl", "name": "a", "path": str(notes)}])
    run(path)
    assert notes.read_text().split("\n")[:5000] == [str(i) for i in range(5000)]


def test_a_new_file_that_got_the_old_ones_inode_is_not_taken_for_it(tmp_path):
    events = clicks(tmp_path / "events.jsonl", [0, 6])
    out = tmp_path / "out.jsonl"
    path = faults.file_pipeline(tmp_path, events, "in", name="p", stages=[WINDOW], event_time={"grace": "0s"},
                                sinks=[{"type": "jsonl", "name": "a", "path": str(out)}])
    run(path)
    out.unlink()
    notes = tmp_path / "notes.txt"
    notes.write_text("".join(f"{i}\n" for i in range(5000)))  # on many file systems, the freed inode
    edit(path, sinks=[{"type": "jsonl", "name": "a", "path": str(notes)}])
    run(path)
    assert notes.read_text().split("\n")[:5000] == [str(i) for i in range(5000)]


@pytest.mark.parametrize("moved", ["dlq", "b"])
def test_a_sink_that_nothing_waits_for_may_move_after_a_crash(tmp_path, monkeypatch, moved):
    """The outbox holds results routed to sink a only (no dead letters): the DLQ's file or
    sink b's may change."""
    sinks = [{"type": "jsonl", "name": n, "path": str(tmp_path / f"{n}.jsonl")} for n in "ab"]
    path = crashed(tmp_path, monkeypatch, sinks=sinks, stage={**WINDOW, "to": ["a"]})
    if moved == "dlq":
        edit(path, dlq={"type": "jsonl", "path": str(tmp_path / "dlq2.jsonl")})
    else:
        edit(path, sinks=[sinks[0], {**sinks[1], "path": str(tmp_path / "b2.jsonl")}])
    run(path)
    assert ids(tmp_path / "a.jsonl") == [wid(m) for m in (0, 5, 10)]


def add_clicks(events: Path, minutes: list[int]) -> None:
    with events.open("a") as f:
        f.writelines(json.dumps({"event_id": f"x{m}", "user_id": "u1", "page_url": "/a",
                                 "timestamp": f"2026-11-24T08:{m:02d}:00Z"}) + "\n" for m in minutes)


@pytest.mark.parametrize("older", [False, True])
def test_a_sink_moved_to_another_file_is_committed_there_before_its_first_output(tmp_path, monkeypatch, older):
    """Nothing waits, so the move is allowed; a crash before the sink's first confirmation
    must then find the new file's start, not the old file's length (or an older runner's)."""
    events = clicks(tmp_path / "events.jsonl", [0, 6])
    out = tmp_path / "out.jsonl"
    path = faults.file_pipeline(tmp_path, events, "in", name="p", stages=[WINDOW], event_time={"grace": "0s"},
                                checkpoint={"every_events": 1}, sinks=[{"type": "jsonl", "name": "a", "path": str(out)}])
    run(path)
    if older:
        as_older_runner_left_it(tmp_path / "state", {"a": out.stat().st_size, "dlq": 0})
    notes = tmp_path / "notes.txt"
    notes.write_text("".join(f"{i}\n" for i in range(5000)))
    edit(path, sinks=[{"type": "jsonl", "name": "a", "path": str(notes)}])
    add_clicks(events, [11, 16])
    crash_with_outbox(path, monkeypatch)
    run(path)
    assert notes.read_text().split("\n")[:5000] == [str(i) for i in range(5000)]
    assert ids(notes) == [wid(5), wid(10)]


@pytest.mark.parametrize("when", ["start", "first checkpoint"])
def test_outputs_routed_to_a_renamed_sink_reach_it_across_a_second_crash(tmp_path, monkeypatch, when):
    """The checkpoint that records the new sink names (at the start, as the moved DLQ is
    committed first, or the first one after it) records the outputs under the new name too."""
    out = tmp_path / "out.jsonl"
    path = crashed(tmp_path, monkeypatch, stage={**WINDOW, "to": ["a"]})
    edit(path, stages=[{**WINDOW, "to": ["b"]}], sinks=[{"type": "jsonl", "name": "b", "path": str(out)}],
         **({"dlq": {"type": "jsonl", "path": str(tmp_path / "dlq2.jsonl")}} if when == "start" else {}))
    if when == "first checkpoint":
        add_clicks(tmp_path / "events.jsonl", [21])
    monkeypatch.setattr(checkpoint, "CONFIRM_EVERY_S", 3600)
    again = Runner(config.load(path), until_end=True, log=lambda *a, **k: None)
    again._open()
    if when == "first checkpoint":
        again._loop()
    again.checkpoint.settle()
    again._abort()
    monkeypatch.undo()
    assert faults.stored(tmp_path / "state")["checkpoint"] > 4  # the new names are on disk
    run(path)
    assert ids(out) == [wid(m) for m in (0, 5, 10, 15)][: 3 if when == "start" else 4]
