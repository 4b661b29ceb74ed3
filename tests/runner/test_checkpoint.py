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
