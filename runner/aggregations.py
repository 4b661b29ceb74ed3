"""The aggregations of CONTRACT section 3, shared by every stage that aggregates.

An aggregation keeps an accumulator that can be added to one value at a time and merged
with another (sessions merge); ``result`` turns it into the value written in results and in
the state dump. Accumulators are picklable values; those that can grow long (``collect``,
and ``count_distinct``, ``count_by`` and ``top`` past ``SMALL`` values) keep what they
gathered in ``runner.state`` Frozen chunks, so a checkpoint writes what changed.
"""

from __future__ import annotations

import json
import pickle
import struct
from bisect import insort
from typing import Any

from runner.components import ProcessingError
from runner.state import Frozen, FrozenList

RESERVED = frozenset({"id", "stage", "key", "window_start", "window_end", "duration_s", "milestone", "value"})
SKIP = object()  # an absent or null value: skipped by every aggregation but count


INF = float("inf")


def _overflow(field: str):
    raise ProcessingError(f"sum of field {field} overflows a double")


def _not_a_number(field: str, value):
    raise ProcessingError(f"wrong type for field {field}: expected number, got {_kind(value)}")


def _scalar(field: str, value):
    """A value as aggregations compare it: strings as they are, numbers by value, booleans
    apart from numbers (True == 1 in Python, not in JSON)."""
    if value is None:
        return SKIP
    cls = value.__class__
    if cls is str:
        return value
    if cls is bool:
        return ("bool", value)
    if cls is int or cls is float:
        return ("num", int(value) if cls is float and value.is_integer() else value)
    raise ProcessingError(f"wrong type for field {field}: expected a string, number or boolean, got {_kind(value)}")


def _kind(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "array", str: "string"}.get(type(value), "number")


def _plain(canonical):
    return canonical[1] if canonical.__class__ is tuple else canonical


def _text(canonical) -> str:
    """count_by keys: the string itself, or the compact JSON text of a number or boolean."""
    if canonical.__class__ is str:
        return canonical
    return json.dumps(canonical[1])


def _top_order(canonical, count):
    if canonical.__class__ is str:
        return (-count, 1, canonical)
    kind, value = canonical
    rank = 0 if kind == "num" else (3 if value else 2)
    return (-count, rank, value if kind == "num" else 0)


class Aggregation:
    """One named aggregation. ``EXTRACT`` and ``ADD`` are the source lines ``Aggregations``
    compiles into one function per stage ({v}: the value's variable, {f}: the field, {i}: the
    accumulator's index), so the per-event path makes no call per aggregation."""

    needs_order = False
    EXTRACT = ("{v} = get({f})\n"
               "if {v} is None: {v} = SKIP\n"
               "elif {v}.__class__ is not int and {v}.__class__ is not float: {v} = number({f}, {v})")
    ADD = "if {v} is not SKIP: accs[{i}] = add_{i}(accs[{i}], {v}, order)"
    CHECK = ""  # what adding a value could break, checked for all before any is added

    def __init__(self, name: str, field: str | None, spec: dict | str):
        self.name, self.field, self.spec = name, field, spec

    def new(self):
        raise NotImplementedError

    def result(self, acc):
        return acc


class Count(Aggregation):
    EXTRACT = "{v} = 1"
    ADD = "accs[{i}] += 1"

    def new(self):
        return 0

    def merge(self, a, b):
        return a + b


class Sum(Aggregation):
    ADD = "if {v} is not SKIP: accs[{i}] += {v}"
    CHECK = "if {v} is not SKIP and abs(accs[{i}] + {v}) == INF: overflow({f})"

    def new(self):
        return 0

    def merge(self, a, b):
        total = a + b
        if abs(total) == INF:
            _overflow(self.field)
        return total


class Avg(Aggregation):
    ADD = "if {v} is not SKIP: a = accs[{i}]; accs[{i}] = (a[0] + {v}, a[1] + 1)"
    CHECK = "if {v} is not SKIP and abs(accs[{i}][0] + {v}) == INF: overflow({f})"

    def new(self):
        return (0, 0)

    def merge(self, a, b):
        total = a[0] + b[0]
        if abs(total) == INF:
            _overflow(self.field)
        return (total, a[1] + b[1])

    def result(self, acc):
        return acc[0] / acc[1] if acc[1] else None


class Min(Aggregation):
    ADD = "if {v} is not SKIP and (accs[{i}] is None or {v} < accs[{i}]): accs[{i}] = {v}"

    def new(self):
        return None

    def merge(self, a, b):
        return b if a is None else a if b is None else min(a, b)


class Max(Min):
    ADD = "if {v} is not SKIP and (accs[{i}] is None or {v} > accs[{i}]): accs[{i}] = {v}"

    def merge(self, a, b):
        return b if a is None else a if b is None else max(a, b)


# A count_distinct's set or a count_by's or top's map is pickled whole at every checkpoint
# that changed it while it holds at most SMALL values; beyond, it becomes a Distinct or a
# Counts, which a checkpoint writes only the changes of (a window's distinct users or pages
# can be many, and at 100 events a checkpoint the whole of them would be written each time).
SMALL = 1024


class Distinct:
    """A count_distinct's values once they are many, in the order first seen: the full chunks
    of ``CHUNK`` in ``Frozen`` blobs (a ``FrozenList``), frozen when a checkpoint pickles it,
    and a tail, the only part written again; ``seen`` is rebuilt from them when read."""

    CHUNK = 64
    __slots__ = ("seen", "frozen", "tail")

    def __init__(self, frozen: FrozenList, tail: list):
        self.frozen, self.tail = frozen, tail
        self.seen = set(_thaw(frozen))
        self.seen.update(tail)

    @classmethod
    def of(cls, values) -> "Distinct":
        distinct = cls(FrozenList(), [])
        for value in values:
            distinct.add(value)
        return distinct

    def add(self, value) -> None:
        if value not in self.seen:
            self.seen.add(value)
            self.tail.append(value)

    def __len__(self) -> int:
        return len(self.seen)

    def __iter__(self):
        return iter(self.seen)

    def __reduce__(self):
        full = len(self.tail) - len(self.tail) % self.CHUNK
        _freeze(self.frozen, self.tail[:full], self.CHUNK)
        del self.tail[:full]
        return (Distinct, (self.frozen, self.tail))


class Counts(dict):
    """A count_by's or top's counts once they are many: each checkpoint appends the counts
    changed since the last one to a log of ``Frozen`` chunks (a ``FrozenList``), and the log
    is written anew from the counts once it holds twice as many entries as they do, so a
    change costs a constant share of writing. Read back, the log is replayed in order."""

    CHUNK = 256
    __slots__ = ("changed", "log", "logged")

    def __init__(self, counts=(), log: FrozenList | None = None, logged: int = 0):
        super().__init__(counts)
        # the values whose counts are not in the log yet; None: all (never pickled, as in a
        # memory store, where nothing is tracked)
        self.changed: set | None = None if log is None else set()
        self.log = FrozenList() if log is None else log
        self.logged = logged  # entries in the log

    def __setitem__(self, value, count) -> None:
        dict.__setitem__(self, value, count)
        if self.changed is not None:
            self.changed.add(value)

    def __reduce__(self):
        """Pickled by a checkpoint: the changes join the log (or the log is written anew)."""
        if self.changed is None or self.changed:
            if self.changed is None or self.logged + len(self.changed) > 2 * len(self):
                self.log.truncate(0)
                self.logged, entries = 0, list(self.items())
            else:
                entries = [(value, self[value]) for value in self.changed]
            _freeze(self.log, entries, self.CHUNK)
            self.logged += len(entries)
            self.changed = set()
        return (_replay, (self.log, self.logged))


def _replay(log: FrozenList, logged: int) -> Counts:
    counts = Counts((), log, logged)
    dict.update(counts, _thaw(log))  # not __setitem__: these are in the log
    return counts


def _freeze(frozen: FrozenList, items: list, size: int) -> None:
    """Append ``items`` to ``frozen``, pickled in Frozen chunks of ``size``."""
    for i in range(0, len(items), size):
        frozen.append(Frozen(pickle.dumps(items[i:i + size], pickle.HIGHEST_PROTOCOL)))


def _thaw(frozen: FrozenList):
    """The items ``_freeze`` put in ``frozen``, in order."""
    for chunk in frozen:
        yield from pickle.loads(chunk.data)


class CountDistinct(Aggregation):
    EXTRACT = ("{v} = get({f})\n"
               "if {v} is None: {v} = SKIP\n"
               "elif {v}.__class__ is not str: {v} = scalar({f}, {v})")
    ADD = ("if {v} is not SKIP:\n"
           "    s = accs[{i}]; s.add({v})\n"
           "    if s.__class__ is set and len(s) > SMALL: accs[{i}] = Distinct.of(s)")

    def new(self):
        return set()

    def merge(self, a, b):
        merged = set(a) | set(b)
        return Distinct.of(merged) if len(merged) > SMALL else merged

    def result(self, acc):
        return len(acc)


class CountBy(CountDistinct):
    ADD = ("if {v} is not SKIP:\n"
           "    d = accs[{i}]; d[{v}] = d.get({v}, 0) + 1\n"
           "    if d.__class__ is dict and len(d) > SMALL: accs[{i}] = Counts(d)")

    def new(self):
        return {}

    def merge(self, a, b):
        merged = dict(a)
        for value, count in b.items():
            merged[value] = merged.get(value, 0) + count
        return Counts(merged) if len(merged) > SMALL else merged

    def result(self, acc):
        # "1" and 1 are two values with one key text: their counts add up
        counts: dict[str, int] = {}
        for value, count in acc.items():
            text = _text(value)
            counts[text] = counts.get(text, 0) + count
        return counts


class Top(CountBy):
    def result(self, acc):
        ranked = sorted(acc.items(), key=lambda item: _top_order(*item))
        return [[_plain(value), count] for value, count in ranked[: self.spec["n"]]]


_ORDER = struct.Struct(">qHiq")  # event time, topic index, partition, offset


class Collect(Aggregation):
    """Values in event order. Accumulators are pickled at every checkpoint that changed them,
    so a long collection must not cost its length each time: the accumulator is
    [count, topics, frozen, orders, values, last], where ``frozen`` holds full chunks of
    ``CHUNK`` (their event orders packed, then their values pickled) as
    ``runner.state.Frozen`` blobs (in a ``FrozenList``) that a checkpoint writes once, ``orders`` (packed, topics
    by index into ``topics``) and ``values`` are the tail, the only part written again, and
    ``last`` is the greatest event order (None while empty)."""

    CHUNK = 64  # part of the state format: a frozen chunk's orders are CHUNK * _ORDER.size bytes
    needs_order = True
    EXTRACT = "{v} = get({f})\nif {v} is None: {v} = SKIP"

    def new(self):
        return [0, [], FrozenList(), bytearray(), [], None]

    def add(self, acc, value, order):
        last = acc[5]
        if last is not None and last > order:  # out of event order (rare): insert it
            return self._insert(acc, order, value, self.spec.get("limit"))
        if "limit" not in self.spec or acc[0] < self.spec["limit"]:
            self._append(acc, order, value)
        return acc

    @classmethod
    def _insert(cls, acc, order, value, limit):
        """``acc`` with (order, value) in its place: the frozen chunks before that place stay
        as they are (a checkpoint does not write them again), the rest is packed again."""
        frozen, size = acc[2], _ORDER.size
        low, high = 0, len(frozen)
        while low < high:  # the first chunk whose last order is after ``order``
            mid = (low + high) // 2
            t, i, p, o = _ORDER.unpack_from(frozen[mid].data, (cls.CHUNK - 1) * size)
            if (t, acc[1][i], p, o) > order:
                high = mid
            else:
                low = mid + 1
        kept = low * cls.CHUNK
        if limit and kept >= limit:  # its place is past the limit
            return acc
        rest = cls._pairs([0, acc[1], frozen[low:], acc[3], acc[4], None])
        insort(rest, (order, value), key=lambda item: item[0])
        frozen.truncate(low)  # in place: the next checkpoint writes the chunks from ``low`` on
        packed = [kept, list(acc[1]), frozen, bytearray(), [], None]
        for order, value in rest[:limit - kept] if limit else rest:
            cls._append(packed, order, value)
        return packed

    @classmethod
    def _append(cls, acc, order, value) -> None:
        acc[3] += _pack_order(acc[1], order)
        acc[4].append(value)
        acc[0] += 1
        acc[5] = order
        if len(acc[4]) == cls.CHUNK:  # the tail is full: freeze it
            acc[2].append(Frozen(bytes(acc[3]) + pickle.dumps(acc[4], pickle.HIGHEST_PROTOCOL)))
            acc[3], acc[4] = bytearray(), []

    @classmethod
    def _pairs(cls, acc) -> list:
        """[(order, value)] of the whole collection, in event order."""
        topics, frozen, orders, values = acc[1:5]
        size = cls.CHUNK * _ORDER.size
        pairs = []
        for chunk in frozen:
            data = memoryview(chunk.data)
            pairs += zip(_unpack_orders(topics, data[:size]), pickle.loads(data[size:]))
        pairs += zip(_unpack_orders(topics, orders), values)
        return pairs

    @classmethod
    def _pack(cls, pairs) -> list:
        acc = [0, [], FrozenList(), bytearray(), [], None]
        for order, value in pairs:
            cls._append(acc, order, value)
        return acc

    def merge(self, a, b):
        merged = sorted(self._pairs(a) + self._pairs(b), key=lambda item: item[0])
        limit = self.spec.get("limit")
        return self._pack(merged if limit is None else merged[:limit])

    def result(self, acc):
        size = self.CHUNK * _ORDER.size
        return [value for chunk in acc[2] for value in pickle.loads(memoryview(chunk.data)[size:])] + acc[4]


def _pack_order(topics: list, order: tuple) -> bytes:
    time, topic, partition, offset = order
    try:
        index = topics.index(topic)
    except ValueError:
        topics.append(topic)
        index = len(topics) - 1
    return _ORDER.pack(time, index, partition, offset)


def _unpack_orders(topics: list, blob) -> list:
    return [(t, topics[i], p, o) for t, i, p, o in _ORDER.iter_unpack(blob)]


class First(Collect):
    def new(self):
        return None

    def add(self, acc, value, order):
        return (order, value) if acc is None or order < acc[0] else acc

    def merge(self, a, b):
        return b if a is None else a if b is None else min(a, b, key=lambda item: item[0])

    def result(self, acc):
        return None if acc is None else acc[1]


class Last(First):
    def add(self, acc, value, order):
        return (order, value) if acc is None or order > acc[0] else acc

    def merge(self, a, b):
        return b if a is None else a if b is None else max(a, b, key=lambda item: item[0])


KINDS = {
    "sum": Sum, "avg": Avg, "min": Min, "max": Max, "count_distinct": CountDistinct,
    "count_by": CountBy, "top": Top, "collect": Collect, "first": First, "last": Last,
}


def schema() -> dict:
    """The JSON Schema of an ``aggregations:`` mapping (shared by every aggregating stage)."""
    field = {"type": "string", "minLength": 1}

    def one(kind, extra=None, required=()):
        props = {kind: {**field, "description": f"the event field to take the {kind} of"}}
        props.update(extra or {})
        return {"type": "object", "properties": props, "required": [kind, *required], "additionalProperties": False}

    variants = [{"const": "count", "description": "the number of events"}]
    variants += [one(kind) for kind in ("sum", "avg", "min", "max", "count_distinct", "count_by", "first", "last")]
    variants.append(one("top", {"n": {"type": "integer", "minimum": 1, "description": "how many values"}}, ["n"]))
    variants.append(one("collect", {"limit": {"type": "integer", "minimum": 1, "description": "keep the first N"}}))
    return {
        "type": "object",
        "description": "result field name -> aggregation: count, {sum|avg|min|max|count_distinct|count_by|first|last: field}, {top: field, n: N}, {collect: field, limit: N}",
        "minProperties": 1,
        "propertyNames": {"not": {"enum": sorted(RESERVED)}},
        "additionalProperties": {"x-expected": "an aggregation such as count or {sum: field}", "oneOf": variants},
    }


class Aggregations:
    """A stage's named aggregations, compiled once: extract all values of an event first
    (a processing error changes nothing), then add them."""

    def __init__(self, spec: dict):
        self.items: list[Aggregation] = []
        for name, item in spec.items():
            if item == "count":
                self.items.append(Count(name, None, item))
            else:
                kind = next(k for k in item if k in KINDS)
                self.items.append(KINDS[kind](name, item[kind], item))
        self.names = [agg.name for agg in self.items]
        self.needs_order = any(agg.needs_order for agg in self.items)
        # check(accs, values) raises ProcessingError where add would overflow, changing nothing:
        # call it for every accumulator an event goes to before adding it to any (if has_checks)
        self.extract, self.add, self.check = self._compile()
        self.has_checks = any(agg.CHECK for agg in self.items)

    def _compile(self):
        """``extract(data) -> values`` (raises ProcessingError, changes nothing) and
        ``add(accs, values, order)``, generated for this list of aggregations."""
        names = [f"v{i}" for i in range(len(self.items))]
        extract = ["def extract(data):", "    get = data.get"]
        unpack = f"    {', '.join(names)}, = values"
        add = ["def add(accs, values, order):", unpack]
        check = ["def check(accs, values):", unpack, "    pass"]
        namespace = {"SKIP": SKIP, "INF": INF, "number": _not_a_number, "scalar": _scalar, "overflow": _overflow,
                     "SMALL": SMALL, "Distinct": Distinct, "Counts": Counts}
        for i, agg in enumerate(self.items):
            fields = {"v": names[i], "f": repr(agg.field), "i": i}
            extract += ["    " + line for line in agg.EXTRACT.format(**fields).splitlines()]
            add += ["    " + line for line in agg.ADD.format(**fields).splitlines()]
            check += ["    " + line for line in agg.CHECK.format(**fields).splitlines()]
            if "add_" in agg.ADD:
                namespace[f"add_{i}"] = agg.add
        extract.append(f"    return ({', '.join(names)},)")
        exec("\n\n".join("\n".join(lines) for lines in (extract, add, check)), namespace)
        return namespace["extract"], namespace["add"], namespace["check"]

    def new(self) -> list:
        return [agg.new() for agg in self.items]

    def merge(self, a: list, b: list) -> list:
        return [agg.merge(x, y) for agg, x, y in zip(self.items, a, b)]

    def results(self, accs: list) -> dict[str, Any]:
        return {agg.name: agg.result(acc) for agg, acc in zip(self.items, accs)}
