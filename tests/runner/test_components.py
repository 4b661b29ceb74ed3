"""What a plugin's stage may rely on from the base classes."""

from types import SimpleNamespace

import pytest

from runner.components import Event, ProcessingError, Processor, Record
from runner.outputs import Emitter
from runner.state import MemoryStore


class Halfway(Processor):
    """Counts every event and emits a result for it, then fails on odd offsets, after both."""

    def __init__(self, table, emit, error):
        super().__init__(SimpleNamespace(name="halfway"), table, emit)
        self.error = error

    def process_one(self, event):
        offset = event.record.offset
        self.table.put(b"seen", self.table.get(b"seen", 0) + 1)
        self.table.put(b"offset/%d" % offset, offset)
        self.table.delete(b"gone")
        self.emit.result(self.name, "k", {"id": f"p/halfway/k/{offset}", "stage": self.name})
        if offset % 2:
            raise self.error(f"offset {offset} is odd")
        return event


@pytest.mark.parametrize("error", [ProcessingError, KeyError])
def test_a_failed_event_leaves_no_trace_of_its_puts_deletes_or_results(error):
    table, emit = MemoryStore().table("halfway"), Emitter("p", {"halfway": None})
    table.put(b"gone", "kept while no good event deleted it")
    events = [Event(Record("t", 0, offset, 0, None, b"{}"), {}, "t/0") for offset in (1, 2, 3, 4, 5)]
    passed = Halfway(table, emit, error).process(events)
    assert [e.record.offset for e in passed] == [2, 4]
    assert table.get(b"seen") == 2
    assert sorted(k for k in table.dirty if k.startswith(b"offset/")) == [b"offset/2", b"offset/4"]
    assert table.get(b"gone") is None and table.journal is None
    kinds = [(out.kind, out.id) for out in emit.pending]
    assert [i for kind, i in kinds if kind == "result"] == ["p/halfway/k/2", "p/halfway/k/4"]
    assert [i for kind, i in kinds if kind == "dlq"] == [f"p/dlq/t/0/{o}/halfway" for o in (1, 3, 5)]


def test_a_first_event_that_fails_restores_what_was_there_before_the_batch():
    table, emit = MemoryStore().table("halfway"), Emitter("p", {"halfway": None})
    table.put(b"gone", "still here")
    Halfway(table, emit, ProcessingError).process([Event(Record("t", 0, 1, 0, None, b"{}"), {}, "t/0")])
    assert table.get(b"gone") == "still here" and table.get(b"seen") is None


def test_an_exception_that_is_not_a_processing_error_is_shown_once_with_its_traceback(capsys):
    # a stage's own bug would otherwise look like bad input: every event in the DLQ, exit 0
    table, emit = MemoryStore().table("halfway"), Emitter("p", {"halfway": None})
    stage = Halfway(table, emit, KeyError)
    stage.process([Event(Record("t", 0, offset, 0, None, b"{}"), {}, "t/0") for offset in (1, 3)])
    err = capsys.readouterr().err
    assert err.count("WARNING: stage halfway raised KeyError, not a ProcessingError") == 1
    assert "Traceback (most recent call last)" in err and "in process_one" in err
    assert len([out for out in emit.pending if out.kind == "dlq"]) == 2
    Halfway(table, emit, ProcessingError).process([Event(Record("t", 0, 5, 0, None, b"{}"), {}, "t/0")])
    assert capsys.readouterr().err == ""  # bad input, said in the DLQ only


class ReturnsData(Halfway):
    """A stage's bug: ``process_one`` returns the event's data, not the event, for odd offsets."""

    def process_one(self, event):
        self.table.put(b"offset/%d" % event.record.offset, 1)
        return event.data if event.record.offset % 2 else event


def test_process_one_returning_something_else_than_an_event_is_that_events_processing_error(capsys):
    table, emit = MemoryStore().table("halfway"), Emitter("p", {"halfway": None})
    events = [Event(Record("t", 0, offset, 0, None, b"{}"), {"a": 1}, "t/0") for offset in (1, 2, 3)]
    passed = ReturnsData(table, emit, None).process(events)
    assert [e.record.offset for e in passed] == [2]
    assert list(table.dirty) == [b"offset/2"]  # the failed events' puts are taken back
    letters = [out.data() for out in emit.pending if out.kind == "dlq"]
    assert [(d["offset"], d["error_type"], d["error"]) for d in letters] == [
        (o, "processing", "TypeError: process_one returned dict, not an Event or None") for o in (1, 3)]
    assert capsys.readouterr().err.count("WARNING: stage halfway raised TypeError") == 1
