"""The LMDB store writes checkpoints on its writer thread: what is in flight must read as
committed, be written as it was at its checkpoint, and reach the disk in order."""

from runner.state import MAX_IN_FLIGHT, LmdbStore


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
