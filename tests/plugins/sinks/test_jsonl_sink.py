"""The jsonl sink on its own: what it confirms is in the file, once."""

import errno

import pytest

from plugins.sinks.jsonl import JsonlSink
from runner.checkpoint import Checkpoint
from runner.components import Context, RunnerError
from runner.outputs import Output
from runner.state import MemoryStore


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
        assert sink.flush()["length"] > committed["length"]
    finally:
        sink.close()
    assert path.read_bytes() == b'{"n":1}\n{"n":2}\n{"n":3}\n'


def test_a_sink_whose_write_fails_does_not_keep_the_others_from_their_outputs(tmp_path):
    sinks = {name: JsonlSink({"path": str(tmp_path / f"{name}.jsonl")}, Context("p", name, {})) for name in "ab"}
    for sink in sinks.values():
        sink.open(None)
    checkpoint = Checkpoint(MemoryStore(), sinks, ("a", "b"), 0, 0, log=lambda *a, **k: None)
    real, sinks["a"].file = sinks["a"].file, FullDisk(sinks["a"].file)
    try:
        checkpoint.commit(outputs([1, 2]), {})
        checkpoint.settle()  # a's write fails; b's must happen all the same
        sinks["a"].file = real  # the disk has room again
        checkpoint.commit([], {}, confirm=True)  # a is recovered and given them again; b is confirmed
    finally:
        for sink in sinks.values():
            sink.close()
    for name in "ab":
        assert (tmp_path / f"{name}.jsonl").read_bytes() == b'{"n":1}\n{"n":2}\n', name


@pytest.mark.parametrize("where", ["dlq", "sinks.jsonl"])
def test_an_empty_path_is_refused_by_validate(tmp_path, monkeypatch, capsys, where):
    from runner.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.yaml").write_text("name: p\nsource: {type: file, path: e.jsonl}\ndlq: {type: jsonl, path: d.jsonl}\n"
                                     "sinks:\n  - type: jsonl\n    path: out.jsonl\n")
    assert main(["validate", "p.yaml", "--set", f"{where}.path="]) == 2
    at = "dlq" if where == "dlq" else "sinks[0]"
    assert capsys.readouterr().err.splitlines() == [f"--set {where}.path=: {at}.path: must not be empty"]


@pytest.mark.parametrize("second", ["dlq.path=out.jsonl", "sinks.jsonl.path=./sub/../out.jsonl"])
def test_two_sinks_on_one_file_are_refused_by_validate(tmp_path, monkeypatch, capsys, second):
    # after a crash each would cut the file back to its own committed length, cutting the other's lines away
    from runner.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.yaml").write_text("name: p\nsource: {type: file, path: e.jsonl}\ndlq: {type: jsonl, path: d.jsonl}\n"
                                     "sinks:\n  - type: jsonl\n    path: out.jsonl\n"
                                     "  - {type: jsonl, name: other, path: other.jsonl}\n")
    assert main(["validate", "p.yaml"]) == 0
    capsys.readouterr()
    changes = ["--set", second] + ([] if second.startswith("dlq") else ["--set", "sinks.other.path=out.jsonl"])
    assert main(["validate", "p.yaml", *changes]) == 2
    assert f"writes {tmp_path / 'out.jsonl'}, as " in capsys.readouterr().err


def test_a_path_that_cannot_be_cut_back_is_a_clear_error(tmp_path):
    sink = JsonlSink({"path": "/dev/full"}, Context("p", "out", {}))
    with pytest.raises(RunnerError, match="cannot write /dev/full: .*a jsonl sink needs a regular file"):
        sink.open(None)
    sink.close()


FILE_SIZE_LIMITED = """
import resource, signal, sys
from plugins.sinks.jsonl import JsonlSink
from runner.checkpoint import Checkpoint
from runner.components import Context
from runner.outputs import Output
from runner.state import MemoryStore

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as on a full disk
sink = JsonlSink({"path": sys.argv[1]}, Context("p", "out", {}))
sink.open(None)
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
resource.setrlimit(resource.RLIMIT_FSIZE, (20, hard))  # room for two lines of the four
log = []
def logged(line, file=None):
    log.append(line)
    if "retrying in 1s" in line:  # the second retry: the disk has room again
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
checkpoint = Checkpoint(MemoryStore(), {"out": sink}, ("out",), 0, 0, log=logged)
checkpoint.commit([Output(f"p/s/{n}", "result", "s", b"k", b'{"n":%d}' % n, None) for n in range(4)], {})
checkpoint.settle()
checkpoint.commit([], {}, confirm=True)
sink.close()
assert log[-1] == "[SINK] out: confirmed again; processing goes on", log
"""


def test_a_full_disk_is_retried_until_it_has_room_and_each_line_is_written_once(tmp_path):
    # a real failing write: the process's file size limit, reached as a full disk would be
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "out.jsonl"
    proc = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMITED, str(path)], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[3])
    assert proc.returncode == 0, proc.stderr
    assert path.read_bytes() == b'{"n":0}\n{"n":1}\n{"n":2}\n{"n":3}\n'
