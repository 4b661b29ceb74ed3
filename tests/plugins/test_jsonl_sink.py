"""The jsonl sink on its own: what it confirms is in the file, once."""

import errno

import pytest

from plugins.sinks.jsonl import JsonlSink
from runner.components import Context, RunnerError
from runner.outputs import Output


def outputs(numbers) -> list[Output]:
    return [Output(f"p/s/{n}", "result", "s", b"k", b'{"n":%d}' % n, None) for n in numbers]


class FullDisk:
    """The sink's file, whose next write fails as on a full disk (a real full disk cannot be
    made here without mounting one); everything else goes to the real file."""

    def __init__(self, real):
        self.real = real

    def write(self, data):
        self.real.write(data[: len(data) // 2])  # a part may land before the error
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_failed_write_makes_the_next_flush_fail_until_recovered(tmp_path):
    path = tmp_path / "out.jsonl"
    sink = JsonlSink({"path": str(path)}, Context("p", "out", {}))
    sink.open(None)
    try:
        sink.deliver(outputs([1]))
        committed = sink.flush()
        real, sink.file = sink.file, FullDisk(sink.file)
        with pytest.raises(OSError):
            sink.deliver(outputs([2, 3]))
        sink.file = real
        with pytest.raises(RunnerError, match="an earlier write to .* failed"):
            sink.flush()  # never confirms outputs that were not all written
        sink.recover()  # cut back to what was confirmed; the runner delivers them again
        sink.deliver(outputs([2, 3]))
        assert sink.flush() > committed
    finally:
        sink.close()
    assert path.read_bytes() == b'{"n":1}\n{"n":2}\n{"n":3}\n'
