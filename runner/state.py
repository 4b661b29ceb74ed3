"""State stores: named tables of pickled values, written to disk only by checkpoints.

Stages read through a ``Table``: the changes made since the last checkpoint are kept in
memory and written by the next checkpoint's single transaction (``Store.commit``), together
with offsets and outbox; everything else is read from the store on demand, so a restart
loads nothing up front.
"""

from __future__ import annotations

import fcntl
import os
import pickle
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

    def get(self, key: bytes, default=None):
        value = self.dirty.get(key, _MISSING)
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
        for key, value in self.dirty.items():
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
    def commit(self, meta: dict[str, Any], outbox_add: list[tuple[int, Any]], outbox_remove: list[int]) -> None: ...
    def close(self) -> None: ...

    def _written(self) -> None:
        for table in self.tables.values():
            table.dirty.clear()


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
        self._written()


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
        """One write transaction; LMDB syncs it to disk before ``commit`` returns."""
        while True:
            try:
                self._write(meta, outbox_add, outbox_remove)
                break
            except lmdb.MapFullError:
                self._grow()
        self._rtxn.abort()
        self._rtxn = self._env.begin(buffers=False)
        self._written()

    def _write(self, meta, outbox_add, outbox_remove):
        dbs = {name: self._db("t:" + name) for name in self.tables}
        with self._env.begin(write=True) as txn:
            for name, table in self.tables.items():
                db = dbs[name]
                for key, value in table.changes():
                    if value is None:
                        txn.delete(key, db=db)
                    else:
                        txn.put(key, _dumps(value), db=db)
            meta_db = self._dbs[_META]
            for key, value in meta.items():
                txn.put(key.encode(), _dumps(value), db=meta_db)
            outbox_db = self._dbs[_OUTBOX]
            for seq in outbox_remove:
                txn.delete(seq.to_bytes(8, "big"), db=outbox_db)
            for seq, item in outbox_add:
                txn.put(seq.to_bytes(8, "big"), _dumps(item), db=outbox_db)

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
