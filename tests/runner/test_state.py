"""The LMDB store writes checkpoints in its writer process: what is in flight must read as
committed, be written as it was at its checkpoint, and reach the disk in order. Frozen
blobs are written once, and deleted with the last value that held them. The writer is a
process: its death fails the run, and it does not outlive its parent."""

import pickle
import shutil
import signal
import threading
import time

import pytest

from runner import state, state_writer
from runner.components import RunnerError
from runner.helper import open_helper_pids
from runner.state import MAX_IN_FLIGHT, Frozen, FrozenList, LmdbStore, take_lock
from runner.state_writer import Writer
from tests import faults


def read_back(path, table: str, key: bytes):
    store = LmdbStore(path, readonly=True)
    try:
        return store.table(table).get(key, "absent"), store.meta("checkpoint")
    finally:
        store.close()


def test_a_value_is_written_as_it_was_at_its_checkpoint_and_read_back_while_in_flight(tmp_path):
    store = LmdbStore(tmp_path)
    table = store.table("t")
    value = [1]
    table.put(b"k", value)
    store.commit({"checkpoint": 1}, [], [])
    value.append(2)  # changed after the checkpoint: the next checkpoint's business
    assert table.get(b"k") == [1, 2] and table.dirty == {}
    assert store.in_flight(wait=True) == 0
    assert table.committing == [] and table.get(b"k") == [1]  # read from the disk now
    store.close()
    assert read_back(tmp_path, "t", b"k") == ([1], 1)


def test_checkpoints_in_flight_reach_the_disk_in_order_and_read_as_the_newest(tmp_path):
    store = LmdbStore(tmp_path)
    table = store.table("t")
    for number in range(1, 41):
        if number % 2:
            table.put(b"k", number)
        else:
            table.delete(b"k")
        store.commit({"checkpoint": number}, [], [])
        assert store.in_flight() <= MAX_IN_FLIGHT
        assert table.get(b"k", "absent") == (number if number % 2 else "absent")
        late = store.table(f"late{number}")  # a table opened while checkpoints are in flight
        in_flight = store.in_flight()
        assert late.get(b"k", "absent") == "absent" and len(late.committing) == in_flight
    store.close()
    assert read_back(tmp_path, "t", b"k") == ("absent", 40)


def test_a_table_item_scan_includes_checkpoints_in_flight_and_changes_not_yet_checkpointed(tmp_path):
    store = LmdbStore(tmp_path)
    table = store.table("t")
    table.put(b"a", 1)
    table.put(b"b", 2)
    store.commit({}, [], [])
    table.delete(b"a")
    table.put(b"c", 3)
    assert list(table.items()) == [(b"b", 2), (b"c", 3)]
    store.commit({}, [], [])
    assert list(table.items()) == [(b"b", 2), (b"c", 3)]
    store.close()


# --- Frozen blobs ----------------------------------------------------------------------------

def stored(store) -> tuple[dict, dict]:
    """(raw values of table t, blobs) as they are on disk (LMDB opens an environment once per
    process: read through the store's)."""
    env = store._env
    with env.begin() as txn:
        return ({k: v for k, v in txn.cursor(db=env.open_db(b"t:t", txn=txn))},
                {k: v for k, v in txn.cursor(db=env.open_db(b"blobs", txn=txn))})


def checkpoint(store) -> None:
    store.commit({}, [], [])
    store.in_flight(wait=True)


def test_a_frozen_blob_is_written_once_and_deleted_with_the_last_value_that_held_it(tmp_path):
    store = LmdbStore(tmp_path)
    table = store.table("t")
    a, b = Frozen(b"a" * 5000), Frozen(b"b" * 5000)
    table.put(b"k", [a, b, "tail"])
    checkpoint(store)
    values, blobs = stored(store)
    assert blobs == {a.id: a.data, b.id: b.data} and len(values[b"k"]) < 200  # referred to, not copied
    table.put(b"k", [a, "tail 2"])  # b dropped from the value: gone from the disk
    checkpoint(store)
    assert stored(store)[1] == {a.id: a.data}
    store.close()

    store = LmdbStore(tmp_path)  # restarted: the value reads back whole
    table = store.table("t")
    value = table.get(b"k")
    assert value[0].data == a.data and value[1] == "tail 2"
    c = Frozen(b"c" * 100)
    table.put(b"k", value + [c])
    checkpoint(store)
    assert stored(store)[1] == {a.id: a.data, c.id: c.data}
    table.delete(b"k")
    checkpoint(store)
    assert stored(store) == ({}, {})
    store.close()



def blob_writes(checkpoints: list) -> list:
    """The (puts, deletes) of the blobs database in each of ``faults.record_writes``' checkpoints."""
    return [(puts, deletes) for writes in checkpoints for name, puts, deletes in writes if name == "blobs"]


def test_a_frozen_list_is_stored_chunk_by_chunk_and_a_checkpoint_writes_only_what_changed(tmp_path):
    store = LmdbStore(tmp_path)
    table = store.table("t")
    chunks = FrozenList(Frozen(bytes([n]) * 3000) for n in range(5))
    table.put(b"k", ["head", chunks])
    checkpoint(store)
    values, blobs = stored(store)
    assert blobs == {chunks.id + n.to_bytes(4, "big"): bytes([n]) * 3000 for n in range(5)}
    assert len(values[b"k"]) < 100
    writes = faults.record_writes(store)
    chunks.append(Frozen(b"\5" * 3000))
    table.put(b"k", ["head", chunks])
    checkpoint(store)
    assert blob_writes(writes) == [([(chunks.id + (5).to_bytes(4, "big"), b"\5" * 3000)], [])]  # the new chunk alone
    chunks.truncate(2)
    chunks.append(Frozen(b"x" * 10))
    table.put(b"k", ["head", chunks])
    checkpoint(store)
    key = [chunks.id + n.to_bytes(4, "big") for n in range(6)]
    assert blob_writes(writes)[1] == ([(key[2], b"x" * 10)], key[3:])  # from the cut on
    assert stored(store)[1] == {key[0]: b"\0" * 3000, key[1]: b"\1" * 3000, key[2]: b"x" * 10}
    store.close()

    store = LmdbStore(tmp_path)  # restarted: read back whole, and still written from where it is
    table = store.table("t")
    head, back = table.get(b"k")
    assert type(back) is FrozenList and back == chunks and back.id == chunks.id
    writes = faults.record_writes(store)
    back.append(Frozen(b"y"))
    table.put(b"k", [head, back])
    checkpoint(store)
    assert blob_writes(writes) == [([(chunks.id + (3).to_bytes(4, "big"), b"y")], [])]
    table.delete(b"k")
    table.put(b"empty", FrozenList())  # refers to nothing: stored as a plain value
    checkpoint(store)
    values, blobs = stored(store)
    assert blobs == {} and list(values) == [b"empty"] and not values[b"empty"].startswith(b"F")
    assert table.get(b"empty") == FrozenList()
    store.close()


def test_a_checkpoint_of_a_long_frozen_list_costs_what_changed_not_its_length(tmp_path):
    store = LmdbStore(tmp_path)
    table = store.table("t")
    chunks = FrozenList(Frozen(b"c") for _ in range(20_000))
    table.put(b"k", chunks)
    checkpoint(store)
    writes = faults.record_writes(store)
    chunks.append(Frozen(b"d"))
    table.put(b"k", chunks)
    checkpoint(store)
    values, _ = stored(store)
    assert len(values[b"k"]) < 100 and blob_writes(writes) == [([(chunks.id + (20_000).to_bytes(4, "big"), b"d")], [])]
    store.close()


class OldFrozenList:
    """A FrozenList as runner-state/2 pickled it: the ids of a Frozen blob per chunk."""

    def __init__(self, ids):
        self.ids = ids

    def __reduce__(self):
        return (state._frozen_list, (self.ids,))


def test_a_frozen_list_of_the_previous_format_reads_back_and_is_stored_anew(tmp_path):
    store = LmdbStore(tmp_path)
    old = [Frozen(b"a" * 100), Frozen(b"b" * 100)]
    with store._env.begin(write=True) as txn:
        blobs = store._env.open_db(b"blobs", txn=txn)
        for f in old:
            txn.put(f.id, f.data, db=blobs)
        raw = b"F" + pickle.dumps(["head", OldFrozenList([f.id for f in old])], pickle.HIGHEST_PROTOCOL)
        txn.put(b"k", raw, db=store._env.open_db(b"t:t", txn=txn))
    store.close()

    store = LmdbStore(tmp_path)
    table = store.table("t")
    head, chunks = table.get(b"k")
    assert head == "head" and [f.data for f in chunks] == [b"a" * 100, b"b" * 100]
    table.put(b"k", [head, chunks])
    checkpoint(store)
    assert stored(store)[1] == {chunks.id + n.to_bytes(4, "big"): f.data for n, f in enumerate(old)}
    store.close()


def test_a_frozen_blob_put_in_a_second_key_is_copied_there_and_outlives_its_owner(tmp_path):
    store = LmdbStore(tmp_path)
    table = store.table("t")
    a = Frozen(b"a" * 3000)
    table.put(b"owner", [a])
    checkpoint(store)
    table.put(b"other", [a])
    table.delete(b"owner")
    checkpoint(store)
    values, blobs = stored(store)
    assert blobs == {} and len(values[b"other"]) > 3000
    store.close()
    store = LmdbStore(tmp_path)
    assert store.table("t").get(b"other")[0].data == a.data
    store.close()


def restarted_over_a_value_with_a_blob(path) -> LmdbStore:
    """A store reopened over key k of table t, stored with a Frozen blob by an earlier process."""
    store = LmdbStore(path)
    store.table("t").put(b"k", [Frozen(b"x" * 100)])
    checkpoint(store)
    store.close()
    return LmdbStore(path)


def test_a_key_written_blind_over_a_value_with_blobs_drops_them_when_deleted(tmp_path):
    store = restarted_over_a_value_with_a_blob(tmp_path)
    store.table("t").delete(b"k")  # never read in this process
    checkpoint(store)
    assert stored(store) == ({}, {})
    store.close()


def test_a_key_written_blind_then_deleted_while_that_write_is_in_flight_drops_its_blobs(tmp_path):
    store = restarted_over_a_value_with_a_blob(tmp_path)
    store.table("t").put(b"k", "plain")  # never read in this process, and refers to no blob
    store._writer.process.send_signal(signal.SIGSTOP)  # that write stays in flight
    try:
        store.commit({}, [], [])
        store.table("t").delete(b"k")
        store.commit({}, [], [])
    finally:
        store._writer.process.send_signal(signal.SIGCONT)
    store.in_flight(wait=True)
    assert stored(store) == ({}, {})
    store.close()


def test_a_start_that_waited_through_a_state_reset_holds_the_new_directory(tmp_path):
    path = tmp_path / "state"
    resetting = take_lock(path)  # as 'runner state reset' does, then deletes the directory
    waiting: list = []
    starter = threading.Thread(target=lambda: waiting.append(take_lock(path)))
    starter.start()
    time.sleep(0.3)  # the starter is waiting for the lock
    shutil.rmtree(path)
    resetting.close()
    starter.join(10)
    assert waiting, "the start did not get the lock"
    try:
        with pytest.raises(RunnerError, match="in use by another runner"):
            take_lock(path)  # the directory the starter holds, not a lock of a deleted file
    finally:
        waiting[0].close()


# --- the writer process ------------------------------------------------------------------------

def test_a_value_whose_blob_is_missing_fails_naming_it(tmp_path):
    store = LmdbStore(tmp_path)
    lost = Frozen(b"a" * 5000)
    store.table("t").put(b"k", [lost, "tail"])
    checkpoint(store)
    with store._env.begin(write=True) as txn:  # damage it as a lost disk page would
        assert txn.delete(lost.id, db=store._env.open_db(b"blobs", txn=txn))
    store.close()

    store = LmdbStore(tmp_path)
    with pytest.raises(RunnerError, match=f"table t, key b'k' refers to blob {lost.id.hex()}, which is missing"):
        store.table("t").get(b"k")
    store.close()


def test_the_writer_process_is_listed_among_the_open_helpers_until_the_store_closes(tmp_path):
    store = LmdbStore(tmp_path)
    pid = store._writer.process.pid
    assert pid in open_helper_pids()
    store.close()
    assert pid not in open_helper_pids()


def test_a_killed_writer_process_fails_the_next_checkpoint_and_the_last_one_stands(tmp_path):
    store = LmdbStore(tmp_path)
    store.table("t").put(b"k", 1)
    checkpoint(store)
    store._writer.process.send_signal(signal.SIGKILL)
    store._writer.process.wait(10)
    store.table("t").put(b"k", 2)
    with pytest.raises(RunnerError, match=r"state writer process of .* ended unexpectedly \(killed by SIGKILL\); the last checkpoint on disk stands"):
        store.commit({}, [], [])
        store.in_flight(wait=True)
    store.close()
    assert read_back(tmp_path, "t", b"k")[0] == 1


def test_a_writer_that_takes_nothing_fails_the_checkpoint_instead_of_hanging_it(tmp_path, monkeypatch):
    monkeypatch.setattr(Writer, "SEND_WAIT_S", 0.5)
    store = LmdbStore(tmp_path)
    store._writer.process.send_signal(signal.SIGSTOP)  # as a writer stuck on a hung disk
    try:
        with pytest.raises(RunnerError, match="took no checkpoint for 0.5 s: is the disk stuck"):
            for i in range(MAX_IN_FLIGHT):  # more than the pipe holds (4 MiB each way at most)
                store.table("t").put(b"k", b"x" * (8 << 20))
                store.commit({}, [], [])
        with pytest.raises(RunnerError, match="disk stuck"):
            store.commit({}, [], [])  # and fails at once from then on
    finally:
        store._writer.process.send_signal(signal.SIGCONT)
        try:
            store.close()
        except RunnerError:
            pass


CHILD = """
import sys, time
from runner.state import LmdbStore
store = LmdbStore(sys.argv[1])
store.table("t").put(b"k", 1)
store.commit({}, [], [])
store.in_flight(wait=True)
print(store._writer.process.pid, flush=True)
time.sleep(60)
"""


def test_the_writer_process_goes_with_its_parent_killed(tmp_path):
    assert not faults.helper_outlives_parent(CHILD, str(tmp_path)), "the writer process outlived its parent"
    assert read_back(tmp_path, "t", b"k")[0] == 1


def test_a_writer_that_could_not_open_the_store_says_why_at_the_next_write(tmp_path):
    """The child sends its error and exits (as on a full disk at start); a write to its
    closed pipe must report that error, not 'ended unexpectedly (exit status 0)'."""
    with open(tmp_path / "runner.lock", "a+") as lock:
        writer = Writer(tmp_path, 1 << 62, lock)  # a map no machine has room for
        try:
            assert writer.process.wait(30) == 0
            with pytest.raises(OSError, match=f"the state writer cannot open {tmp_path}: .*Cannot allocate memory"):
                writer.write([("meta", [(b"k", b"v")], [])])
        finally:
            writer.close()


def test_a_writer_error_on_a_nearly_full_disk_asks_whether_it_is_full(tmp_path, monkeypatch):
    # LMDB reports a full disk as "Input/output error" at commit; a full disk cannot be made
    # here without mounting one, so its free space is what is faked
    assert state_writer._space(str(tmp_path)) == ""  # this disk has room
    monkeypatch.setattr(state_writer.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 20, 10 << 20, 4096))
    assert state_writer._space(str(tmp_path)) == " (its disk has 4,096 bytes free: is it full?)"
