"""runner.checkpoint: when outputs reach their sinks."""

from __future__ import annotations

from runner.checkpoint import Checkpoint
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
    assert log[0] == "[SINK] out: delivery failed (transient); retrying at its next confirmation"
    assert log[2:] == ["[SINK] out: 6 outputs not confirmed (transient); processing waits; retrying in 0.5s",
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
