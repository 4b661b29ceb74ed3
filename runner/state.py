"""State stores: named tables of pickled values, written to disk only by checkpoints.

Stages read through a ``Table``: the changes made since the last checkpoint are kept in
memory and written by the next checkpoint's single transaction (``Store.commit``), together
with offsets and outbox; everything else is read from the store on demand, so a restart
loads nothing up front.

LMDB writes and syncs that transaction on a thread of its own while processing goes on
(the sync releases the interpreter lock): ``Store.committed`` tells when it is on disk,
and nothing of a checkpoint may leave the process before it says so.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import lmdb

from runner.components import RunnerError

FORMAT = b"runner-state/1"
_DELETED = object()
_MISSING = object()
_OUTBOX = "outbox"
_META = "meta"


def _dumps(value) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


class Table:
    """A stage's state: bytes keys, picklable values. Changes wait for the next checkpoint."""

    def __init__(self, store: "Store", name: str):
        self._store = store
        self.name = name
        self.dirty: dict[bytes, Any] = {}
        # the changes of a checkpoint still being written: the store's read snapshot predates them
        self.committing: dict[bytes, Any] = {}

    def get(self, key: bytes, default=None):
        value = self.dirty.get(key, _MISSING)
        if value is _MISSING:
            value = self.committing.get(key, _MISSING)
            if value is _MISSING:
                return self._store.read(self.name, key, default)
        return default if value is _DELETED else value

    def put(self, key: bytes, value) -> None:
        """Record a change; a value mutated after ``put`` is written as it is at the checkpoint."""
        self.dirty[key] = value

    def delete(self, key: bytes) -> None:
        self.dirty[key] = _DELETED

    def items(self) -> Iterator[tuple[bytes, Any]]:
        """Every (key, value), in key order, uncommitted changes included."""
        committed = dict(self._store.scan(self.name))
        for changes in (self.committing, self.dirty):
            for key, value in changes.items():
                if value is _DELETED:
                    committed.pop(key, None)
                else:
                    committed[key] = value
        return iter(sorted(committed.items()))

    def changes(self) -> Iterator[tuple[bytes, Any]]:
        for key, value in self.dirty.items():
            yield key, (None if value is _DELETED else value)


class Store:
    """Where a pipeline's state lives. ``commit`` is the only way anything reaches it."""

    persistent = True
    last_write: tuple[float, float] | None = None  # see LmdbStore

    def __init__(self):
        self.tables: dict[str, Table] = {}

    def table(self, name: str) -> Table:
        if name not in self.tables:
            self.tables[name] = Table(self, name)
        return self.tables[name]

    # --- implemented by backends ---
    def read(self, table: str, key: bytes, default=None): ...
    def scan(self, table: str) -> Iterator[tuple[bytes, Any]]: ...
    def meta(self, key: str, default=None): ...
    def outbox(self) -> list[tuple[int, Any]]: ...
    def commit(self, meta: dict[str, Any], outbox_add: list[tuple[int, Any]], outbox_remove: list[int]) -> None:
        """Start one checkpoint's transaction: every table's changes, ``meta``, the outbox changes.
        Returns once they are captured (later changes are the next checkpoint's); the
        transaction is on disk when ``committed`` says so."""

    def committed(self, wait: bool = True) -> bool:
        """True once the last ``commit`` is on disk, waiting for it when ``wait``; raises what
        writing it raised."""
        return True

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
    """One LMDB environment per pipeline; one synced write transaction per checkpoint.

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
        self._rtxn = self._env.begin(buffers=False)
        # every write transaction runs on this one thread: LMDB ties a writer to its thread
        self._writer = None if readonly else ThreadPoolExecutor(1, thread_name_prefix="runner-lmdb-commit")
        self._writing: tuple[Future, list] | None = None  # the commit in flight and its writes
        self.last_write = None  # the last commit's (ms writing it, time.time() once synced)

    def _db(self, name: str):
        db = self._dbs.get(name)
        if db is None:
            try:
                db = self._env.open_db(name.encode(), create=not self._readonly)
            except lmdb.NotFoundError:
                return None
            self._dbs[name] = db
            if getattr(self, "_rtxn", None) is not None:  # a read txn begun before cannot see a new db
                self._rtxn.abort()
                self._rtxn = self._env.begin(buffers=False)
        return db

    def read(self, table, key, default=None):
        db = self._db("t:" + table)
        raw = None if db is None else self._rtxn.get(key, db=db)
        return default if raw is None else pickle.loads(raw)

    def scan(self, table):
        db = self._db("t:" + table)
        if db is None:
            return
        cursor = self._rtxn.cursor(db=db)
        for key, raw in cursor.iternext(keys=True, values=True):
            yield key, pickle.loads(raw)

    def meta(self, key, default=None):
        db = self._dbs.get(_META)
        raw = None if db is None else self._rtxn.get(key.encode(), db=db)
        return default if raw is None else pickle.loads(raw)

    def outbox(self):
        if self._dbs.get(_OUTBOX) is None:
            return []
        cursor = self._rtxn.cursor(db=self._dbs[_OUTBOX])
        return [(int.from_bytes(k, "big"), pickle.loads(v)) for k, v in cursor.iternext()]

    def commit(self, meta, outbox_add, outbox_remove):
        """Serialize the checkpoint here (values may change as soon as this returns), then
        write it in one transaction, synced before it commits, on the writer thread."""
        self.committed(wait=True)  # one checkpoint in flight at a time, in order
        writes = []
        for name, table in self.tables.items():
            db = self._db("t:" + name)  # opened here: never while another transaction opens one
            writes += [(db, key, None if value is _DELETED else _dumps(value)) for key, value in table.dirty.items()]
            table.committing, table.dirty = table.dirty, {}
        meta_db, outbox_db = self._dbs[_META], self._dbs[_OUTBOX]
        writes += [(meta_db, key.encode(), _dumps(value)) for key, value in meta.items()]
        writes += [(outbox_db, seq.to_bytes(8, "big"), None) for seq in outbox_remove]
        writes += [(outbox_db, seq.to_bytes(8, "big"), _dumps(item)) for seq, item in outbox_add]
        self._writing = (self._writer.submit(self._write, writes), writes)

    def committed(self, wait=True):
        while self._writing is not None:
            future, writes = self._writing
            if not wait and not future.done():
                return False
            try:
                self.last_write = future.result()
            except lmdb.MapFullError:
                self._grow()  # nothing was written: write it all again into the larger map
                self._writing = (self._writer.submit(self._write, writes), writes)
                continue
            self._writing = None
            self._rtxn.abort()
            self._rtxn = self._env.begin(buffers=False)
            for table in self.tables.values():
                table.committing = {}
        return True

    def _write(self, writes) -> tuple[float, float]:
        started = time.perf_counter()
        with self._env.begin(write=True) as txn:
            for db, key, value in writes:
                if value is None:
                    txn.delete(key, db=db)
                else:
                    txn.put(key, value, db=db)
        return (time.perf_counter() - started) * 1000, time.time()

    def _grow(self):
        # set_mapsize needs no transaction of ours open.
        self._rtxn.abort()
        size = self._env.info()["map_size"] * 2
        self._env.set_mapsize(size)
        self._rtxn = self._env.begin(buffers=False)

    def size_bytes(self) -> int:
        info, stat = self._env.info(), self._env.stat()
        return (info["last_pgno"] + 1) * stat["psize"]

    def close(self):
        try:
            if self._writer is not None:
                self.committed(wait=True)  # never close the environment under a writing thread
        finally:
            self._release()

    def _release(self):
        if self._writer is not None:
            self._writer.shutdown()
            self._writer = None
        if self._env is not None:
            self._rtxn.abort()
            self._env.close()
            self._env = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def take_lock(path: Path):
    """Hold the state directory for this process, or raise RunnerError naming who holds it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunnerError(f"cannot create the state directory {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise RunnerError(f"the state directory {path} is not writable")
    lock = open(path / "runner.lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        owner = lock.read().strip() or "unknown"
        lock.close()
        raise RunnerError(
            f"the state directory {path} is in use by another runner (pid {owner}); "
            "stop it first, or give this pipeline another state.path"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock
