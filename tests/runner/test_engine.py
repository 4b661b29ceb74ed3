"""The processing loop: its checkpoint triggers on the real broker with the Kafka source, the
collector thresholds it runs with, and a stop by signal."""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading
import time

import pytest
import yaml
from kafka import KafkaProducer

from plugins.sinks.kafka import KafkaSink
from runner import checkpoint, config, engine
from runner.engine import GC_THRESHOLDS, Runner
from runner.outputs import Output
from tests import e2e, faults

RECORDS = 30


class Checkpoints:
    """Runner observer: when each checkpoint was synced to disk (wall time), and its number of
    input records."""

    def __init__(self):
        self.taken: list[tuple[float, int]] = []

    def on_first_event(self) -> None:
        pass

    def on_checkpoint(self, number, commit_ms, write, batches) -> None:
        synced_at = time.time() if write is None else write[1]
        self.taken.append((synced_at, sum(len(stamps) for _, _, stamps in batches)))


@pytest.mark.parametrize("when_quiet", [True, False])
def test_when_quiet_commits_what_was_read_once_nothing_more_is_ready(broker, topic_factory, tmp_path, when_quiet):
    topic = topic_factory(1)
    e2e.produce(broker, topic, RECORDS, bad_ratio=0)
    path = faults.kafka_pipeline(
        tmp_path, broker, topic, name="quiet",
        # neither count nor timer can trigger a checkpoint before the stop
        checkpoint={"every_events": 1000, "every_ms": 0, "when_quiet": when_quiet},
        stages=[{"type": "aggregate", "name": "views", "key_by": "page_url", "aggregations": {"views": "count"}}],
        sinks=[{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}],
    )
    observer = Checkpoints()
    runner = Runner(config.load(path), log=lambda *a, **k: None, observer=observer)
    asked = []

    def stop_once_all_read():
        deadline = time.monotonic() + 30
        while runner.processed < RECORDS and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # the quiet checkpoint is synced well within this (in ms)
        asked.append(time.time())
        runner.stop_requested = True

    stopper = threading.Thread(target=stop_once_all_read, daemon=True)
    stopper.start()
    runner.run()
    stopper.join(5)
    assert runner.processed == RECORDS
    before_stop = [records for at, records in observer.taken if at < asked[0]]
    assert sum(records for _, records in observer.taken) == RECORDS
    if when_quiet:  # all of them committed while the runner waited for more
        assert sum(before_stop) == RECORDS
    else:
        assert before_stop == []


@pytest.mark.parametrize("ends_taken", [True, False])
def test_a_first_run_killed_after_delivering_writes_nothing_twice(broker, topic_factory, tmp_path, monkeypatch,
                                                                  ends_taken):
    """A first run takes a Kafka DLQ's ends as confirmed instead of reading the topic back;
    killed after delivering, before confirming, its restart writes nothing twice. Without
    those ends (a probe that failed, or a state of a runner before ``fresh_start``), the
    restart finds the outbox full and reads the topic back rather than taking the ends anew."""
    dlq = topic_factory(1)
    faults.written_by_another(broker, dlq, [Output(f"other/{i}", "dlq", "other", None, b"{}", None) for i in range(50)])
    events = tmp_path / "events.jsonl"
    events.write_text("".join(f"not json {i}\n" for i in range(20)))  # 20 dead letters
    path = faults.file_pipeline(tmp_path, events, "in", name="fresh", checkpoint={"every_events": 5},
                                dlq={"type": "kafka", "topic": dlq, "bootstrap_servers": broker}, stages=[],
                                sinks=[{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}])
    monkeypatch.setattr(checkpoint, "CONFIRM_EVERY_S", 3600)  # nothing is confirmed, however slow the machine
    if not ends_taken:
        monkeypatch.setattr(KafkaSink, "fresh_start", lambda self: None)
    crashed = Runner(config.load(path), until_end=True, log=lambda *a, **k: None)
    crashed._open()
    ends = {f"{dlq}/0": 50} if ends_taken else None  # no read-back: the topic's end
    assert crashed.checkpoint.sink_states["dlq"] == ends
    crashed._loop()
    crashed.checkpoint.settle()  # the checkpoints on disk: their dead letters are sent
    crashed._abort()  # as a crash, after its sends landed
    monkeypatch.undo()
    at = faults.stored(tmp_path / "state")
    assert at["sinks"]["dlq"] == ends and at["outbox"] == 20  # committed, none confirmed
    assert 50 < len(faults.kafka_records(broker, dlq)), "nothing of the first run was delivered"

    Runner(config.load(path), until_end=True, log=lambda *a, **k: None).run()
    ids = [i for i, _ in faults.kafka_records(broker, dlq) if not i.startswith("other/")]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 20


def test_partitions_that_keep_delivering_are_never_left_out_as_idle(broker, topic_factory, tmp_path):
    """Unbounded, idle_timeout 1 s: both partitions deliver an event every 0.2 s for 3 s, a
    minute of event time apart. Were they taken for idle (silent), the watermark would stop
    where it was after 1 s and the later 1-minute windows would not close while running."""
    topic = topic_factory(2)
    start = 1795507200000
    path = faults.kafka_pipeline(
        tmp_path, broker, topic, name="idle",
        event_time={"field": "timestamp", "grace": "0s", "idle_timeout": "1s", "late": "dlq"},
        stages=[{"type": "tumbling_window", "name": "w", "size": "1m", "aggregations": {"n": "count"}}],
        sinks=[{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}],
    )
    runner = Runner(config.load(path), log=lambda *a, **k: None)
    producer = KafkaProducer(bootstrap_servers=broker)

    def feed_then_stop():
        for i in range(15):
            for partition in (0, 1):
                click = {"page_url": "/home", "timestamp": start + i * 60_000}
                producer.send(topic, json.dumps(click).encode(), partition=partition).get(10)
            time.sleep(0.2)
        deadline = time.monotonic() + 30
        while runner.processed < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        runner.stop_requested = True

    feeder = threading.Thread(target=feed_then_stop, daemon=True)
    feeder.start()
    runner.run()
    feeder.join(5)
    producer.close()
    assert runner.processed == 30
    closed = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["n"] for r in closed] == [2] * 14  # every minute but the last, closed while running


def views_pipeline(tmp_path, source: dict, state: dict, sink: dict | None = None, name: str = "views"):
    """A pipeline file counting views by page from ``source``, to ``sink`` (a JSONL file in
    ``tmp_path``), its DLQ a JSONL file there."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name,
        "source": source,
        "state": state,
        "dlq": {"type": "jsonl", "path": str(tmp_path / "dlq.jsonl")},
        "stages": [{"type": "aggregate", "name": "views", "key_by": "page_url", "aggregations": {"views": "count"}}],
        "sinks": [sink or {"type": "jsonl", "path": str(tmp_path / "out.jsonl")}],
    }))
    return path


def test_the_collector_runs_with_its_own_thresholds_and_they_are_restored(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"page_url": "/home", "n": n}) + "\n" for n in range(3)))
    path = views_pipeline(tmp_path, {"type": "file", "path": str(events)}, {"backend": "memory"})
    during = []

    class Watch(Checkpoints):
        def on_first_event(self):
            during.append(gc.get_threshold())

    before = gc.get_threshold()
    assert before != GC_THRESHOLDS
    runner = Runner(config.load(str(path)), until_end=True, log=lambda *a, **k: None, observer=Watch())
    runner.run()
    assert runner.processed == 3
    assert during == [GC_THRESHOLDS]
    assert gc.get_threshold() == before


def endless_runner(tmp_path, sink: dict) -> tuple[Runner, list[str]]:
    """A Runner of a paced generator that never ends, writing to ``sink``; and its log lines."""
    path = views_pipeline(tmp_path, {"type": "generator", "rate": 1000}, {"path": str(tmp_path / "state")}, sink,
                          name="endless")
    lines = []
    return Runner(config.load(str(path)), log=lambda *a, **k: lines.append(" ".join(map(str, a)))), lines


def test_status_lines_name_only_what_the_pipeline_has(tmp_path):
    runner, lines = endless_runner(tmp_path, {"type": "jsonl", "path": str(tmp_path / "out.jsonl")})
    runner.stop_requested = True  # no window stage, no Kafka source
    assert runner.run() == 0
    assert lines[0] == f"[endless] no checkpoint in {tmp_path / 'state'}: starting fresh"
    assert lines[-1] == "[endless] stopped cleanly after 0 records; checkpoint 1"


@pytest.mark.parametrize("by_signal", [True, False])
def test_a_stop_by_signal_is_clean_and_says_which_signal(tmp_path, by_signal):
    runner, lines = endless_runner(tmp_path, {"type": "jsonl", "path": str(tmp_path / "out.jsonl")})

    def stop_once_running():
        deadline = time.monotonic() + 30
        while runner.processed < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        if by_signal:
            os.kill(os.getpid(), signal.SIGTERM)  # taken by the runner's handler in the main thread
        else:
            runner.stop_requested = True

    stopper = threading.Thread(target=stop_once_running, daemon=True)
    stopper.start()
    previous = signal.getsignal(signal.SIGTERM)
    assert runner.run() == 0
    stopper.join(5)
    assert runner.processed >= 100 and "stopped cleanly" in lines[-1]
    assert runner.signalled == (signal.SIGTERM if by_signal else None)
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_stop_asked_by_a_closed_output_leaves_the_first_signal_a_clean_stop(tmp_path):
    runner, lines = endless_runner(tmp_path, {"type": "console"})
    runner.opened = True  # running (a stop while starting raises Stopped at once)
    runner._output_closed()  # runner run ... | head: head is gone
    assert runner.stop_requested and "closed by its reader" in lines[-1]
    runner._on_signal(signal.SIGTERM, None)  # Ctrl+C reaching the runner beside head: still the first
    assert runner.signalled == signal.SIGTERM
    with pytest.raises(KeyboardInterrupt):
        runner._on_signal(signal.SIGINT, None)  # a second one breaks off


def test_a_bounded_run_says_how_far_it_got(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "PROGRESS_EVERY_S", 0.2)
    path = tmp_path / "bounded.yaml"
    path.write_text(yaml.safe_dump({
        "name": "bounded",
        "source": {"type": "generator", "rate": 2000, "count": 2000},  # paced: a second
        "state": {"path": str(tmp_path / "state")},
        "dlq": {"type": "jsonl", "path": str(tmp_path / "dlq.jsonl")},
        "event_time": {"grace": "0s"},
        "stages": [{"type": "tumbling_window", "name": "w", "size": "1m", "aggregations": {"n": "count"}}],
        "sinks": [{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}],
    }))
    lines = []
    Runner(config.load(str(path)), until_end=True, log=lambda *a, **k: lines.append(" ".join(map(str, a)))).run()
    shares = [float(line.split("(")[1].split("%")[0]) for line in lines if " of 2,000 records (" in line]
    assert len(shares) >= 2, lines
    assert shares == sorted(shares) and 0 < shares[0] and shares[-1] <= 100
    assert all("/s; watermark 2026-11-24T08:" in line for line in lines if " of 2,000 records" in line)


def test_only_the_runners_own_status_lines_stop_it_when_their_reader_is_gone(tmp_path, monkeypatch):
    def gone(*args, **kwargs):  # a log of the caller's that fails for a reason of its own
        raise BrokenPipeError("a pipe of the caller's")

    runner, _ = endless_runner(tmp_path, {"type": "console"})
    runner._log = gone
    with pytest.raises(BrokenPipeError):
        runner.log("line")
    runner._log = None  # printed: a reader gone from stderr silences it, from stdout stops the run
    streams = []
    for name in ("stderr", "stdout"):
        read, write = os.pipe()
        os.close(read)
        streams.append(os.fdopen(write, "w"))
        monkeypatch.setattr(sys, name, streams[-1])
        runner.log("line", file=streams[-1])
        assert runner.stop_requested == (name == "stdout")
    for stream in streams:
        stream.close()  # silenced: what they still hold goes to /dev/null


def test_a_sink_that_fails_to_close_does_not_keep_the_rest_from_closing(tmp_path, monkeypatch):
    # a jsonl file on a full disk cannot write out its buffer at close: its outputs are in the outbox
    from plugins.sinks.jsonl import JsonlSink

    def full(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(JsonlSink, "close", full)
    runner, lines = endless_runner(tmp_path, {"type": "jsonl", "path": str(tmp_path / "out.jsonl")})
    runner.stop_requested = True
    assert runner.run() == 0
    assert "[endless] sink jsonl did not close cleanly: [Errno 28] No space left on device" in lines
    assert lines[-1].startswith("[endless] stopped cleanly") and runner.store._env is None  # the state closed too


RETURNS_DATA = '''
from runner import hookimpl
from runner.components import Processor, Stage
from runner.schema import obj


class PassesData(Processor):
    def process(self, events):
        return [event.data for event in events]  # the bug: data, not the events


class ReturnsData(Stage):
    type = "returns_data"
    config_schema = obj({}, description="Passes each event's data on instead of the event.")

    def build(self, table, emit):
        return PassesData(self, table, emit)


@hookimpl
def runner_register_stages():
    return [ReturnsData]
'''


def test_a_stage_whose_process_returns_no_events_stops_the_run_with_an_error_naming_it(tmp_path, monkeypatch):
    (tmp_path / "returns_data.py").write_text(RETURNS_DATA)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "events.jsonl").write_text('{"page_url": "/home"}\n')
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({
        "name": "p", "plugins": ["returns_data"],
        "source": {"type": "file", "path": str(tmp_path / "events.jsonl")},
        "state": {"path": str(tmp_path / "state")},
        "dlq": {"type": "jsonl", "path": str(tmp_path / "dlq.jsonl")},
        "stages": [{"type": "returns_data", "name": "buggy"},
                   {"type": "aggregate", "name": "views", "key_by": "page_url", "aggregations": {"views": "count"}}],
        "sinks": [{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}],
    }))
    runner = Runner(config.load(str(path)), until_end=True, log=lambda *a, **k: None)
    with pytest.raises(engine.RunnerError) as caught:
        runner.run()
    assert str(caught.value) == ("stage buggy (returns_data.PassesData.process) returned a list holding dict, "
                                 "not a list of the Event objects that go on: a bug of the stage's plugin")


def test_a_source_that_starts_before_the_checkpointed_offset_is_reported(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"page_url": "/home", "n": n}) + "\n" for n in range(3)))
    path = views_pipeline(tmp_path, {"type": "file", "path": str(events), "topic": "events"},
                          {"path": str(tmp_path / "state")})
    lines = []
    log = lambda line, file=None: lines.append(line)  # noqa: E731
    assert Runner(config.load(str(path)), until_end=True, log=log).run() == 0
    events.write_text(json.dumps({"page_url": "/home", "n": 0}) + "\n")  # the file replaced by a shorter one
    assert Runner(config.load(str(path)), until_end=True, log=log).run() == 0
    assert [line for line in lines if line.startswith("WARNING")] == [
        "WARNING: source file starts events/0 at offset 1, before the checkpoint's 3: its data was lost (a file "
        "replaced by a shorter one, a broker restarted empty), or the source does not start where it is told and "
        "records 1..2 are counted again (a source's open must return the offsets it is given)"]


def test_a_start_on_a_drained_state_says_that_every_event_will_be_late(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"timestamp": "2026-11-24T08:00:00Z"}) + "\n")
    path = tmp_path / "windows.yaml"
    path.write_text(yaml.safe_dump({
        "name": "windows", "source": {"type": "file", "path": str(events)},
        "state": {"path": str(tmp_path / "state")}, "event_time": {"late": "drop"},
        "dlq": {"type": "jsonl", "path": str(tmp_path / "dlq.jsonl")},
        "stages": [{"type": "tumbling_window", "name": "w", "size": "5m", "aggregations": {"events": "count"}}],
        "sinks": [{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}],
    }))
    lines = []
    log = lambda line, file=None: lines.append(line)  # noqa: E731
    assert Runner(config.load(str(path)), drain=True, log=log).run() == 0
    assert not [line for line in lines if line.startswith("WARNING")]
    assert Runner(config.load(str(path)), until_end=True, log=log).run() == 0
    assert [line for line in lines if line.startswith("WARNING")] == [
        f"WARNING: the state at {tmp_path / 'state'} was drained (watermark +inf): every event is late for the "
        f"window stages from now on (CONTRACT section 6: the watermark never goes back); 'runner state reset' "
        f"starts over"]
