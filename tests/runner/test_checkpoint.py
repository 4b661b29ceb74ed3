"""runner.checkpoint: when outputs reach their sinks."""

from __future__ import annotations

import sys

import pytest
import yaml

from runner import checkpoint as checkpoint_module
from runner.checkpoint import Checkpoint
from runner.cli import main
from runner.components import Sink
from runner.outputs import Output
from runner.state import MemoryStore


class Recording(Sink):
    type = "recording"

    def __init__(self):
        self.deliveries: list[list[str]] = []

    def deliver(self, outputs):
        self.deliveries.append([out.id for out in outputs])


def output(n: int) -> Output:
    return Output(f"p/s/{n}", "result", "s", b"k", b"{}", None)


def test_the_checkpoints_on_disk_at_a_settle_reach_each_sink_in_one_hand_over_in_order():
    sink = Recording()
    checkpoint = Checkpoint(MemoryStore(), {"out": sink}, ("out",), number=0, next_seq=0)
    durable = []
    checkpoint.on_durable = lambda number, ms, write, note: durable.append(number)
    for first in (0, 2, 4):  # three checkpoints, as one poll's records make them
        checkpoint.commit([output(first), output(first + 1)], {"offsets": {}})
    assert sink.deliveries == []  # nothing leaves before the runner settles

    assert checkpoint.settle()
    assert sink.deliveries == [[f"p/s/{n}" for n in range(6)]]
    assert durable == [1, 2, 3]  # each checkpoint is still reported on its own
    assert checkpoint.unconfirmed_count() == 6


class Careless(Sink):
    """Holds what it is given until ``flush`` makes it durable. Every third ``deliver``
    raises before taking anything, and its next ``flush`` does not say so, against the rule
    of ``Sink.deliver``: the runner must not take that flush's word."""

    type = "careless"

    def __init__(self):
        self.calls = 0
        self.held: list[str] = []
        self.durable: list[str] = []

    def deliver(self, outputs):
        self.calls += 1
        if self.calls % 3 == 0:
            raise OSError("transient")
        self.held += [out.id for out in outputs]

    def flush(self):
        self.durable += self.held
        self.held = []

    def recover(self):
        self.held = []


def test_a_sink_whose_delivery_failed_gets_its_outputs_again_though_its_flush_says_nothing():
    sink, log = Careless(), []
    checkpoint = Checkpoint(MemoryStore(), {"out": sink}, ("out",), number=0, next_seq=0,
                            log=lambda line, file=None: log.append(line))
    for n in range(6):
        checkpoint.commit([output(n)], {"offsets": {}})
        checkpoint.settle()
    checkpoint.commit([], {"offsets": {}}, confirm=True)

    assert sorted(sink.durable) == [f"p/s/{n}" for n in range(6)]  # each once: none lost, none twice
    assert sink.calls == 4  # nothing more is handed to it after its third failed, until it recovered
    assert log == ["[SINK] out: delivery failed (transient); retrying at its next confirmation",
                   "[SINK] out: 6 outputs not confirmed (transient); processing waits; retrying in 0.5s",
                   "[SINK] out: confirmed again; processing goes on"]


class Screen(Recording):
    """A console-like sink: it shows display lines."""

    shows_display = True

    def __init__(self):
        super().__init__()
        self.shown: list[str] = []

    def display(self, lines):
        self.shown += lines


def test_a_dead_letters_notice_names_the_stage_that_sent_it():
    letter = b'{"error": "late: ...", "error_type": "late", "offset": 4, "partition": 0, "stage": "w5m", "topic": "t"}'
    screen = Screen()
    checkpoint = Checkpoint(MemoryStore(), {"console": screen, "dlq": Recording()}, ("console",), number=0, next_seq=0)
    checkpoint.commit([Output("p/dlq/t/0/4/w5m", "dlq", "w5m", None, letter, ("dlq",))], {"offsets": {}})
    checkpoint.settle()
    assert screen.shown == ["[LATE ERROR] late: ...\n[DLQ] sent t/0@4 to the dead letter queue (stage w5m)"]


class Stubborn(Careless):
    """Its first flush fails, and so does the first recover after it, having dropped what it held."""

    def __init__(self, recover_error=OSError("still down")):
        super().__init__()
        self.flushes = self.recovers = 0
        self.recover_error = recover_error

    def deliver(self, outputs):
        self.held += [out.id for out in outputs]

    def flush(self):
        self.flushes += 1
        if self.flushes == 1:
            raise OSError("down")
        super().flush()

    def recover(self):
        self.recovers += 1
        self.held = []
        if self.recovers == 1:
            raise self.recover_error


def test_a_sink_whose_recover_failed_is_not_confirmed_until_it_is_given_its_outputs_again():
    careless, stubborn = Careless(), Stubborn()
    checkpoint = Checkpoint(MemoryStore(), {"a": careless, "b": stubborn}, ("a", "b"), number=0, next_seq=0,
                            log=lambda line, file=None: None)
    for n in range(3):  # a's third delivery fails
        checkpoint.commit([output(n)], {"offsets": {}})
        checkpoint.settle()
    checkpoint.commit([], {"offsets": {}}, confirm=True)
    expected = [f"p/s/{n}" for n in range(3)]
    assert (sorted(careless.durable), sorted(stubborn.durable)) == (expected, expected)


def test_a_runner_error_from_recover_stops_the_confirmation():
    from runner.components import RunnerError

    checkpoint = Checkpoint(MemoryStore(), {"b": Stubborn(RunnerError("not a regular file"))}, ("b",), number=0,
                            next_seq=0, log=lambda line, file=None: None)
    checkpoint.commit([output(0)], {"offsets": {}})
    checkpoint.settle()
    with pytest.raises(RunnerError, match="not a regular file"):
        checkpoint.commit([], {"offsets": {}}, confirm=True)


class Raising(Recording):
    def __init__(self, error):
        super().__init__()
        self.error = error

    def deliver(self, outputs):
        raise self.error


def test_a_closed_output_behind_another_sinks_failure_stops_the_run_at_once():
    closed, log = [], []
    sinks = {"a": Raising(OSError("disk")), "console": Raising(BrokenPipeError())}  # a fails first
    checkpoint = Checkpoint(MemoryStore(), sinks, ("a", "console"), number=0, next_seq=0,
                            log=lambda line, file=None: log.append(line), output_closed=lambda: closed.append(1))
    checkpoint.commit([output(0)], {"offsets": {}})
    checkpoint.settle()
    assert closed == [1]
    assert log == ["[SINK] a: delivery failed (disk); retrying at its next confirmation"]


SLOW_MODULE = '''
import time

from runner import hookimpl
from runner.components import Sink
from runner.schema import obj


class Slow(Sink):
    """Its first flush takes 2.5 s without raising, as a connection that stops answering."""

    type = "slow"
    config_schema = obj({}, description="A sink whose first flush hangs for a while.")
    flushes = 0

    def deliver(self, outputs):
        self.held = [out.id for out in outputs]

    def flush(self):
        Slow.flushes += 1
        if Slow.flushes == 1:
            time.sleep(2.5)


@hookimpl
def runner_register_sinks():
    return [Slow]
'''


def test_a_sink_call_that_does_not_return_is_said_while_processing_waits(tmp_path, monkeypatch, capsys):
    (tmp_path / "slow_sink.py").write_text(SLOW_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(checkpoint_module, "SLOW_SINK_S", 0.5)
    (tmp_path / "e.jsonl").write_text('{"a": 1}\nnot json\n')  # a dead letter for the DLQ
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({
        "name": "p", "plugins": ["slow_sink"], "source": {"type": "file", "path": "e.jsonl"},
        "state": {"path": "state"}, "dlq": {"type": "slow"}, "stages": [],
        "sinks": [{"type": "jsonl", "path": "out.jsonl"}]}))
    try:
        assert main(["run", "p.yaml", "--until-end"]) == 0
    finally:
        sys.modules.pop("slow_sink", None)
    err = capsys.readouterr().err.splitlines()
    said = [line for line in err if line.startswith("[SINK] dlq: its flush has not returned for ")]
    assert len(said) >= 3, err  # at 0.5 s, then every 0.5 s of the 2.5
    assert said[0].endswith(" s; processing waits (a stop signal stops the run, and what is not confirmed "
                            "stays in the outbox)")
    assert not [line for line in err if line.startswith("[SINK]") and line not in said]
