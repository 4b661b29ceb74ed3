"""State stores: named tables of pickled values, written to disk only by checkpoints.

Stages read through a ``Table``: the changes made since the last checkpoint are kept in
memory and written by the next checkpoint's single transaction (``Store.commit``), together
with offsets and outbox; everything else is read from the store on demand, so a restart
loads nothing up front.

LMDB writes and syncs that transaction in a process of its own while processing goes on
(``runner.state_writer``), at most ``MAX_IN_FLIGHT`` checkpoints in flight and always in order:
``Store.in_flight`` tells how many are not on disk yet, and nothing of a checkpoint may
leave the process before it is.

A value is pickled whole at every checkpoint that changed it. Parts of it that never change
once made go in ``Frozen`` blobs: LMDB writes each one once, under a key of its own, and the
value only refers to it. The full chunks of a long collection go in a ``FrozenList``, which
the value refers to by its id and length: a checkpoint writes only the chunks appended
since the last one, so its cost does not grow with the collection.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import pickle
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterator

import lmdb

from runner.components import RunnerError
from runner.state_writer import Writer

FORMAT = b"runner-state/3"
READS = (b"runner-state/2", FORMAT)  # /2 stored each chunk of a FrozenList as a Frozen of its own
LOCK_WAIT_S = 2.0  # how long a start waits for a state lock held by another process
MAX_IN_FLIGHT = 4  # checkpoints being written at once: the processing waits for no sync
_DELETED = object()
_MISSING = object()
_OUTBOX = "outbox"
_META = "meta"
_BLOBS = "blobs"
_REFERS = b"F"  # the first byte of a stored value that refers to Frozen blobs (a pickle starts with 0x80)


def _dumps(value) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


class Frozen:
    """Bytes that never change once made, held by one table value.

    In LMDB a checkpoint writes a Frozen once, under a key of its own, and the value that
    holds it refers to it by that key; the blob is deleted in the checkpoint that deletes
    the value, or writes it without that Frozen. So a value that grows by whole Frozen
    chunks writes each chunk once, though it refers to all of them at every checkpoint
    (many chunks belong in a ``FrozenList``). A Frozen belongs to the first table key it is
    written under: put in another key's value too, it is copied into that value.
    """

    __slots__ = ("data", "id", "owner")

    def __init__(self, data: bytes, id: bytes | None = None, owner: tuple | None = None):
        self.data = data
        self.id = id or _new_id()
        self.owner = owner  # (table, key) it is stored under, once it is

    def __reduce__(self):
        saving = getattr(_context, "saving", None)
        if saving is None or (self.owner is not None and self.owner != saving[0]):
            return (Frozen, (self.data,))  # by value
        self.owner = saving[0]
        saving[1][self.id] = self
        return (_frozen, (self.id,))


class FrozenList:
    """Frozen chunks in order, appended to (or cut back with ``truncate``) but never changed
    in place: the full chunks of a long collection.

    In LMDB chunk i is stored under the list's id and i, and the value that holds the list
    refers to it by (id, length); a checkpoint writes the chunks added since the last one
    (after a ``truncate``, those from the cut on), so its cost is what changed, not the
    list's length. The list belongs to the first table key it is written under: put in
    another key's value too, it is copied into that value, chunk by chunk as Frozen blobs."""

    __slots__ = ("_chunks", "id", "owner", "clean")

    def __init__(self, chunks=(), id: bytes | None = None, owner: tuple | None = None):
        self._chunks: list[Frozen] = list(chunks)  # changed by append and truncate only
        self.id = id  # given when first stored
        self.owner = owner  # (table, key) it is stored under, once it is
        self.clean = len(self._chunks) if id is not None else 0  # leading chunks as stored under id

    def append(self, chunk: Frozen) -> None:
        self._chunks.append(chunk)

    def truncate(self, length: int) -> None:
        """Drop the chunks from ``length`` on."""
        del self._chunks[length:]
        self.clean = min(self.clean, length)

    def __len__(self) -> int:
        return len(self._chunks)

    def __iter__(self):
        return iter(self._chunks)

    def __getitem__(self, index):
        return self._chunks[index]

    def __eq__(self, other) -> bool:
        return isinstance(other, FrozenList) and [f.data for f in self] == [f.data for f in other]

    __hash__ = None

    def __reduce__(self):
        saving = getattr(_context, "saving", None)
        if saving is None or not self._chunks or (self.owner is not None and self.owner != saving[0]):
            return (FrozenList, (self._chunks,))  # by value: each chunk by Frozen's own rule
        if self.id is None:
            self.id = _new_id()
        self.owner = saving[0]
        saving[1][self.id] = self
        return (_stored_list, (self.id, len(self._chunks)))


def _stored_list(id: bytes, length: int) -> FrozenList:
    return _context.fetch_list(id, length)


def _frozen_list(ids: list) -> FrozenList:
    """A FrozenList as runner-state/2 stored it: a Frozen blob per chunk. Its next checkpoint
    stores it as this format does, and deletes those blobs."""
    fetch = _context.fetch
    return FrozenList([fetch(id) for id in ids])


def _chunk_key(list_id: bytes, index: int) -> bytes:
    return list_id + index.to_bytes(4, "big")


_PROCESS_ID = os.urandom(8)  # Frozen and FrozenList ids: unique to this process, then numbered
_numbers = itertools.count()


def _new_id() -> bytes:
    return _PROCESS_ID + next(_numbers).to_bytes(8, "big")


_context = threading.local()  # what the pickling (saving) or unpickling (fetch) of one value refers to


def _frozen(id: bytes) -> Frozen:
    return _context.fetch(id)


def _save(table: str, key: bytes, value) -> tuple[bytes, dict]:
    """``value`` pickled, and the Frozen blobs and FrozenLists it refers to, by id."""
    frozen: dict[bytes, Frozen | FrozenList] = {}
    _context.saving = ((table, key), frozen)
    try:
        raw = _dumps(value)
    finally:
        _context.saving = None
    return (_REFERS + raw if frozen else raw), frozen


class Table:
    """A stage's state: bytes keys, picklable values. Changes wait for the next checkpoint."""

    def __init__(self, store: "Store", name: str):
        self._store = store
        self.name = name
        self.dirty: dict[bytes, Any] = {}
        # the changes of checkpoints still being written, oldest first: the store's read
        # snapshot predates them
        self.committing: list[dict[bytes, Any]] = []
        # key -> what its stored value refers to (as read or written): {Frozen id: None,
        # FrozenList id: its length}
        self.refs: dict[bytes, dict[bytes, int | None]] = {}
        self.journal: list | None = None  # while set, (key, change it replaced) of each put and delete

    def get(self, key: bytes, default=None):
        value = self.dirty.get(key, _MISSING)
        if value is _MISSING:
            for changes in reversed(self.committing):
                value = changes.get(key, _MISSING)
                if value is not _MISSING:
                    break
            else:
                return self._store.read(self.name, key, default)
        return default if value is _DELETED else value

    def put(self, key: bytes, value) -> None:
        """Record a change; a value mutated after ``put`` is written as it is at the checkpoint."""
        if self.journal is not None:
            self.journal.append((key, self.dirty.get(key, _MISSING)))
        self.dirty[key] = value

    def delete(self, key: bytes) -> None:
        if self.journal is not None:
            self.journal.append((key, self.dirty.get(key, _MISSING)))
        self.dirty[key] = _DELETED

    def undo(self, journal: list) -> None:
        """Take back the puts and deletes that ``journal`` recorded (not changes made inside
        a value in place)."""
        for key, before in reversed(journal):
            if before is _MISSING:
                del self.dirty[key]
            else:
                self.dirty[key] = before

    def items(self) -> Iterator[tuple[bytes, Any]]:
        """Every (key, value), in key order, uncommitted changes included."""
        committed = dict(self._store.scan(self.name))
        for changes in (*self.committing, self.dirty):
            for key, value in changes.items():
                if value is _DELETED:
                    committed.pop(key, None)
                else:
                    committed[key] = value
        return iter(sorted(committed.items()))

    def changed(self, key: bytes) -> bool:
        """The key has a change not yet on disk (in this checkpoint or one in flight)."""
        return key in self.dirty or any(key in changes for changes in self.committing)

    def changes(self) -> Iterator[tuple[bytes, Any]]:
        for key, value in self.dirty.items():
            yield key, (None if value is _DELETED else value)


class Store:
    """Where a pipeline's state lives. ``commit`` is the only way anything reaches it."""

    persistent = True

    def __init__(self):
        self.tables: dict[str, Table] = {}
        # per commit written beside the processing, once on disk: (ms writing it, time.time() synced);
        # a store that writes within ``commit`` leaves it empty
        self.written: deque[tuple[float, float]] = deque()

    def table(self, name: str) -> Table:
        if name not in self.tables:
            table = Table(self, name)
            table.committing = [{} for _ in range(self.in_flight())]  # one per commit in flight
            self.tables[name] = table
        return self.tables[name]

    # --- implemented by backends ---
    def read(self, table: str, key: bytes, default=None): ...
    def scan(self, table: str) -> Iterator[tuple[bytes, Any]]: ...
    def meta(self, key: str, default=None): ...
    def outbox(self) -> list[tuple[int, Any]]: ...
    def commit(self, meta: dict[str, Any], outbox_add: list[tuple[int, Any]], outbox_remove: list[int]) -> None:
        """Start one checkpoint's transaction: every table's changes, ``meta``, the outbox changes.
        Returns once they are captured (later changes are the next checkpoint's); the
        transaction is on disk once ``in_flight`` no longer counts it."""

    def table_sizes(self) -> dict[str, int]:
        """Every stored table's name and number of entries (those never committed: none)."""
        return {}

    def in_flight(self, wait: bool = False) -> int:
        """How many commits are not on disk yet (none once ``wait`` has waited for them all);
        raises what writing one raised."""
        return 0

    def close(self) -> None: ...


class MemoryStore(Store):
    """Keeps nothing across restarts (``state.backend: memory``)."""

    persistent = False

    def __init__(self):
        super().__init__()
        self._data: dict[str, dict[bytes, Any]] = {}
        self._meta: dict[str, Any] = {}
        self._outbox: dict[int, Any] = {}

    def read(self, table, key, default=None):
        return self._data.get(table, {}).get(key, default)

    def scan(self, table):
        return iter(sorted(self._data.get(table, {}).items()))

    def meta(self, key, default=None):
        return self._meta.get(key, default)

    def outbox(self):
        return sorted(self._outbox.items())

    def commit(self, meta, outbox_add, outbox_remove):
        for name, table in self.tables.items():
            data = self._data.setdefault(name, {})
            for key, value in table.changes():
                if value is None:
                    data.pop(key, None)
                else:
                    data[key] = value
        self._meta.update(meta)
        for seq in outbox_remove:
            self._outbox.pop(seq, None)
        self._outbox.update(outbox_add)
        for table in self.tables.values():
            table.dirty.clear()


class LmdbStore(Store):
    """One LMDB environment per pipeline; one synced write transaction per checkpoint,
    written by the store's writer process (this process only reads).

    A lock file keeps a second runner out; readers (``runner state dump``) need no lock.
    """

    def __init__(self, path: str | os.PathLike, readonly: bool = False, map_size: int = 64 << 20):
        super().__init__()
        self.path = Path(path)
        self._lock = None
        if readonly:
            if not (self.path / "data.mdb").exists():
                raise FileNotFoundError(self.path)
        else:
            self._lock = take_lock(self.path)
        try:
            self._env = lmdb.open(
                str(self.path), map_size=map_size, max_dbs=256, readonly=readonly,
                sync=True, metasync=True, lock=True, readahead=False,
            )
        except lmdb.Error as exc:
            raise RunnerError(f"cannot open the state store at {self.path}: {exc}") from None
        self._dbs: dict[str, Any] = {}
        self._readonly = readonly
        self._db(_META)
        self._db(_OUTBOX)
        self._db(_BLOBS)
        self._rtxn = self._env.begin(buffers=False)
        self._writer = None
        if not readonly:
            try:
                self._writer = Writer(self.path, map_size, self._lock)
            except BaseException:
                self._release()
                raise
        self._writing = 0  # commits handed to the writer, not known to be on disk

    def _db(self, name: str):
        db = self._dbs.get(name)
        if db is None:
            try:
                db = self._env.open_db(name.encode(), create=not self._readonly)
            except lmdb.NotFoundError:
                return None
            self._dbs[name] = db
            if getattr(self, "_rtxn", None) is not None:  # a read txn begun before cannot see a new db
                self._renew()
        return db

    def _renew(self) -> None:
        """A read transaction that sees the latest commit."""
        self._rtxn.abort()
        try:
            self._rtxn = self._env.begin(buffers=False)
        except lmdb.MapResizedError:  # the writer grew the map: map all of it
            self._env.set_mapsize(0)
            self._rtxn = self._env.begin(buffers=False)

    def read(self, table, key, default=None):
        db = self._db("t:" + table)
        raw = None if db is None else self._rtxn.get(key, db=db)
        return default if raw is None else self._load(table, key, raw)

    def scan(self, table):
        db = self._db("t:" + table)
        if db is None:
            return
        cursor = self._rtxn.cursor(db=db)
        for key, raw in cursor.iternext(keys=True, values=True):
            yield key, self._load(table, key, raw)

    def _load(self, table: str, key: bytes, raw: bytes):
        """Unpickle a stored value, its blobs read back and remembered as its references."""
        if raw[:1] != _REFERS:
            return pickle.loads(raw)
        value, refs = self._unpickle(table, key, raw, fetch=True)
        holder = self.tables.get(table)
        if holder is not None and not holder.changed(key):  # else this read is older than what it holds
            holder.refs[key] = refs
        return value

    def _unpickle(self, table: str, key: bytes, raw: bytes, fetch: bool) -> tuple[Any, dict]:
        """A value that refers to blobs, and what it refers to as ``Table.refs`` holds it (its
        blobs read back with ``fetch``)."""
        refs: dict[bytes, int | None] = {}
        blobs, owner = self._dbs.get(_BLOBS), (table, key)

        def blob(blob_key: bytes) -> bytes:
            data = self._rtxn.get(blob_key, db=blobs) if fetch else b""
            if data is None:
                raise RunnerError(f"the state at {self.path} is damaged: table {table}, key {key!r} refers to "
                                  f"blob {blob_key.hex()}, which is missing; reset it with 'runner state reset'")
            return data

        def load(id: bytes) -> Frozen:
            refs[id] = None
            return Frozen(blob(id), id, owner)

        def load_list(id: bytes, length: int) -> FrozenList:
            refs[id] = length
            chunks = [Frozen(blob(_chunk_key(id, i))) for i in range(length)] if fetch else ()
            return FrozenList(chunks, id, owner)

        _context.fetch, _context.fetch_list = load, load_list
        try:
            return pickle.loads(memoryview(raw)[1:]), refs
        finally:
            _context.fetch = _context.fetch_list = None

    def meta(self, key, default=None):
        db = self._dbs.get(_META)
        raw = None if db is None else self._rtxn.get(key.encode(), db=db)
        return default if raw is None else pickle.loads(raw)

    def table_sizes(self):
        names = [key.decode()[2:] for key in self._rtxn.cursor().iternext(keys=True, values=False) if key[:2] == b"t:"]
        dbs = {name: self._db("t:" + name) for name in names}  # first: opening one renews the read transaction
        return {name: self._rtxn.stat(db)["entries"] for name, db in dbs.items()}

    def outbox(self):
        if self._dbs.get(_OUTBOX) is None:
            return []
        cursor = self._rtxn.cursor(db=self._dbs[_OUTBOX])
        return [(int.from_bytes(k, "big"), pickle.loads(v)) for k, v in cursor.iternext()]

    def commit(self, meta, outbox_add, outbox_remove):
        """Serialize the checkpoint here (values may change as soon as this returns), then
        write it in one transaction, synced before it commits, in the writer process."""
        while self.in_flight() >= MAX_IN_FLIGHT:
            self._collect()
        # per database: its name, puts and deletes
        writes = []
        blob_puts, blob_deletes = [], []
        for name, table in self.tables.items():
            db = self._db("t:" + name)  # to read what it refers to, and for later reads
            puts, deletes = [], []
            for key, value in table.dirty.items():
                if value is _DELETED:
                    deletes.append(key)
                    frozen = {}
                else:
                    raw, frozen = _save(name, key, value)
                    puts.append((key, raw))
                    if not frozen and key not in table.refs:
                        continue
                self._blob_writes(table, db, key, frozen, blob_puts, blob_deletes)
            writes.append(("t:" + name, puts, deletes))
            table.committing.append(table.dirty)
            table.dirty = {}
        writes.append((_BLOBS, blob_puts, blob_deletes))
        writes.append((_META, [(key.encode(), _dumps(value)) for key, value in meta.items()], []))
        writes.append((_OUTBOX, [(seq.to_bytes(8, "big"), _dumps(item)) for seq, item in outbox_add],
                       [seq.to_bytes(8, "big") for seq in outbox_remove]))
        try:
            self._writer.write(writes)
        except OSError as exc:
            raise RunnerError(str(exc)) from None
        self._writing += 1

    def _blob_writes(self, table: Table, db, key: bytes, frozen: dict, puts: list, deletes: list) -> None:
        """Add the blob puts and deletes that make ``key``'s references those of ``frozen``."""
        if key not in table.refs:
            # never read nor written with blobs here: what does the disk copy refer to? (With a
            # write in flight, the snapshot may show blobs that write already deleted: deleting
            # them again is harmless; a blob is never shared by two keys.)
            raw = self._rtxn.get(key, db=db)
            if raw is not None and raw[:1] == _REFERS:
                table.refs[key] = self._unpickle(table.name, key, raw, fetch=False)[1]
        before = table.refs.pop(key, {})
        now: dict[bytes, int | None] = {}
        for id, held in frozen.items():
            if held.__class__ is FrozenList:  # the chunks since its last checkpoint; fewer: the rest go
                length, stored = len(held), before.get(id) or 0
                puts += [(_chunk_key(id, i), held[i].data) for i in range(min(held.clean, stored), length)]
                deletes += [_chunk_key(id, i) for i in range(length, stored)]
                held.clean = now[id] = length
            else:
                now[id] = None
                if id not in before:
                    puts.append((id, held.data))
        for id, length in before.items():
            if id not in now:
                deletes += [id] if length is None else [_chunk_key(id, i) for i in range(length)]
        if now:
            table.refs[key] = now

    def in_flight(self, wait=False):
        while self._writing and (wait or self._writer.ready()):
            self._collect()
        return self._writing

    def _collect(self) -> None:
        """The oldest commit in flight, once on disk: read what it wrote from now on."""
        try:
            ms, synced_at = self._writer.done()
        except OSError as exc:
            raise RunnerError(str(exc)) from None
        self.written.append((ms, synced_at))
        self._writing -= 1
        self._renew()
        for table in self.tables.values():
            del table.committing[0]

    def size_bytes(self) -> int:
        info, stat = self._env.info(), self._env.stat()
        return (info["last_pgno"] + 1) * stat["psize"]

    def close(self):
        try:
            if self._writer is not None:
                self.in_flight(wait=True)
        finally:
            self._release()

    def _release(self):
        try:
            if self._writer is not None:
                self._writer.close()  # it has stopped writing before the lock is let go
                self._writer = None
        finally:
            if self._env is not None:
                self._rtxn.abort()
                self._env.close()
                self._env = None
            if self._lock is not None:
                self._lock.close()
                self._lock = None


def take_lock(path: Path):
    """Hold the state directory for this process, or raise RunnerError naming who holds it."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        lock = _open_lock(path)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() < deadline:  # the state writer of a runner that just died may still hold it
                lock.close()
                time.sleep(0.05)
                continue
            lock.seek(0)
            owner = lock.read().strip() or "unknown"
            lock.close()
            raise RunnerError(
                f"the state directory {path} is in use by another runner (pid {owner}); "
                "stop it first, or give this pipeline another state.path"
            ) from None
        try:
            if os.fstat(lock.fileno()).st_ino == os.stat(path / "runner.lock").st_ino:
                break
        except FileNotFoundError:
            pass
        lock.close()  # a 'runner state reset' removed the directory while we waited: lock the new one
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def require_directory(path: Path) -> None:
    """Refuse a ``state.path`` that is there but is not a directory (a file)."""
    if path.exists() and not path.is_dir():
        raise RunnerError(f"state.path {path} is not a directory")


STATE_FILES = {"data.mdb", "lock.mdb", "runner.lock"}  # all that a state directory holds
_ALSO_EMPTY = {"lost+found"}  # what a new file system's root holds: still an empty directory


def foreign_entries(path: Path, also: set = frozenset()) -> str | None:
    """What the directory ``path`` holds beside a runner's state (and the names ``also``), as
    a message names it (None: nothing)."""
    foreign = sorted(entry.name for entry in path.iterdir() if entry.name not in STATE_FILES | also)
    if not foreign:
        return None
    return ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")


def _open_lock(path: Path):
    require_directory(path)
    if path.is_dir() and not (path / "data.mdb").exists():
        foreign = foreign_entries(path, also=_ALSO_EMPTY)
        if foreign:  # a new state goes into a directory of its own, which `state reset` deletes whole
            raise RunnerError(f"state.path {path} holds other files ({foreign}) and no state: is it the "
                              f"directory you meant? a new state needs an empty or new directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunnerError(f"cannot create the state directory {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise RunnerError(f"the state directory {path} is not writable")
    return open(path / "runner.lock", "a+")
