"""A plain batch reference of CONTRACT sections 3 and 6, written from the contract alone.

It never imports the runner. Given the records of one partition (``events/0``) in offset
order and a pipeline dict (a ``validate`` stage, then tumbling, hopping and session window
stages), it says what a bounded run must leave: the results, the DLQ records (id ->
error_type), each window stage's ``late`` counter and open windows, the high mark and the
watermark, i.e. the state dump without ``checkpoint``.

It is deliberately literal and slow:

- per record in offset order: deserialize, validate; a valid event raises H; then for each
  window stage in chain order it is judged late or not against W_p = H - grace, or fails
  there with a processing error (and goes no further), or is added to its windows;
- the windows' contents are kept as plain lists of member events, and the results are
  computed from scratch from the members in event order when asked for;
- a tumbling/hopping window is final when W >= its end; sessions are the gap-connected
  groups of the non-late events of a key, and a session is final when W > last + gap
  (CONTRACT 6 says these groups are exactly the final sessions).

``Reference.feed(records)`` takes more records (dicts as JSON objects, bytes as raw
lines), ``Reference.finish(drain)`` ends a bounded run (``--until-end`` or ``--drain``);
both may be called again for later runs over the same state.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction

INF = math.inf
TOPIC, PARTITION = "events", 0
WINDOW_TYPES = ("tumbling_window", "hopping_window", "session_window")


# --- small independent helpers ------------------------------------------------------------------

def compact(value) -> str:
    """CONTRACT 5: compact JSON text."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def duration(value) -> int:
    """CONTRACT 2: ``500ms``, ``30s``, ``1.5m``, ``1h`` or bare seconds, as whole ms."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        ms = Fraction(value) * 1000
    else:
        m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)?", str(value).strip())
        assert m, f"not a duration: {value!r}"
        ms = Fraction(m.group(1)) * {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, None: 1000}[m.group(2)]
    assert ms.denominator == 1
    return int(ms)


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
MAX_MS = int((_dt.datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=_dt.timezone.utc) - _EPOCH)
             / _dt.timedelta(milliseconds=1))


def fmt(ms) -> str:
    """YYYY-MM-DDThh:mm:ss.sssZ (UTC)."""
    t = _EPOCH + _dt.timedelta(milliseconds=int(ms))
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def fmt_watermark(w):
    if w == -INF:
        return None
    if w == INF:
        return "+inf"
    return fmt(w)


_TIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
                   r"(Z|z|[+-][0-9]{2}:[0-9]{2})")


def event_time(value):
    """CONTRACT 4: an RFC 3339 string with offset or integral epoch ms, in range; None if not."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not value.is_integer():
            return None
        ms = int(value)
    elif isinstance(value, str):
        m = _TIME.fullmatch(value)
        if not m:
            return None
        y, mo, d, hh, mi, ss, frac, off = m.groups()
        if int(hh) > 23 or int(mi) > 59 or int(ss) > 59:
            return None
        try:
            base = _dt.datetime(int(y), int(mo), int(d), int(hh), int(mi), int(ss), tzinfo=_dt.timezone.utc)
        except ValueError:
            return None
        ms = (base - _EPOCH) // _dt.timedelta(milliseconds=1)
        if frac:
            ms += int(frac[1:4].ljust(3, "0"))  # truncated toward the past
        if off not in ("Z", "z"):
            sign = 1 if off[0] == "+" else -1
            ms -= sign * (int(off[1:3]) * 60 + int(off[4:6])) * 60_000
    else:
        return None
    return ms if 0 <= ms <= MAX_MS else None


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def valid_click(data) -> bool:
    """CONTRACT 4, the click event table (enough for the events the tests generate)."""
    if not isinstance(data, dict):
        return False
    for name in ("event_id", "user_id", "page_url"):
        if not isinstance(data.get(name), str):
            return False
    if not data["page_url"].startswith("/"):
        return False
    if data.get("event_type") is not None and data["event_type"] not in ("page_view", "click", "add_to_cart", "purchase"):
        return False
    for name in ("session_id", "referrer", "device", "country"):
        if data.get(name) is not None and not isinstance(data[name], str):
            return False
    for name in ("duration", "revenue"):
        v = data.get(name)
        if v is not None and not (is_number(v) and v >= 0):
            return False
    return event_time(data.get("timestamp")) is not None


def _no_constants(name):
    raise ValueError(f"not JSON: {name}")


def decode(raw):
    """A record as the source gives it: a dict (written as JSON) or raw bytes."""
    if isinstance(raw, (bytes, bytearray)):
        text = bytes(raw).decode("utf-8")  # the tests only write UTF-8
        if text.startswith("\ufeff"):
            raise ValueError("BOM")
        return json.loads(text, parse_constant=_no_constants)
    return json.loads(json.dumps(raw))


# --- JSON values as the aggregations compare them (CONTRACT 3) --------------------------------

class ProcessingError(Exception):
    pass


def identity(v):
    """Equal JSON values get equal identities: numbers by exact value, the rest apart."""
    if isinstance(v, bool):
        return ("bool", v)
    if is_number(v):
        return ("num", Fraction(v))
    if isinstance(v, str):
        return ("str", v)
    raise ProcessingError(f"object or array value {v!r}")


def count_by_text(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return json.dumps(v)


def top_rank(ident):
    kind, value = ident
    if kind == "num":
        return (0, value, "")
    if kind == "str":
        return (1, 0, value)
    return (3 if value else 2, 0, "")


def agg_kind(spec):
    if spec == "count":
        return "count", None
    kind = next(k for k in spec if k not in ("n", "limit"))
    return kind, spec[kind]


def check_event(aggregations: dict, data: dict) -> None:
    """Raise ProcessingError if one of the event's values cannot be aggregated."""
    for name, spec in aggregations.items():
        kind, fld = agg_kind(spec)
        v = data.get(fld) if fld else None
        if v is None:
            continue
        if kind in ("sum", "avg", "min", "max") and not is_number(v):
            raise ProcessingError(f"{fld}: not a number")
        if kind in ("count_distinct", "count_by", "top"):
            identity(v)


def aggregate(aggregations: dict, members: list[dict]) -> dict:
    """Every aggregation over the member events, given in event order."""
    out = {}
    for name, spec in aggregations.items():
        kind, fld = agg_kind(spec)
        if kind == "count":
            out[name] = len(members)
            continue
        values = [m[fld] for m in members if m.get(fld) is not None]
        if kind == "sum":
            out[name] = sum(values, 0)
        elif kind == "avg":
            out[name] = sum(values, 0) / len(values) if values else None
        elif kind == "min":
            out[name] = min(values) if values else None
        elif kind == "max":
            out[name] = max(values) if values else None
        elif kind == "count_distinct":
            out[name] = len({identity(v) for v in values})
        elif kind == "count_by":
            counts: dict[str, int] = {}
            for v in values:
                counts[count_by_text(v)] = counts.get(count_by_text(v), 0) + 1
            out[name] = counts
        elif kind == "top":
            counts, first_seen = {}, {}
            for v in values:
                ident = identity(v)
                counts[ident] = counts.get(ident, 0) + 1
                first_seen.setdefault(ident, v)
            ranked = sorted(counts, key=lambda i: (-counts[i], top_rank(i)))
            out[name] = [[first_seen[i], counts[i]] for i in ranked[: spec["n"]]]
        elif kind == "collect":
            limit = spec.get("limit")
            out[name] = values if limit is None else values[:limit]
        elif kind == "first":
            out[name] = values[0] if values else None
        elif kind == "last":
            out[name] = values[-1] if values else None
        else:
            raise AssertionError(kind)
    return out


# --- the reference run ----------------------------------------------------------------------------

@dataclass
class Member:
    time: int
    offset: int
    data: dict

    @property
    def order(self):
        return (self.time, TOPIC, PARTITION, self.offset)


@dataclass
class WindowStage:
    name: str
    type: str
    key_by: str | None
    aggregations: dict
    size: int = 0
    advance: int = 0
    gap: int = 0
    late: int = 0
    emitted: set = field(default_factory=set)  # ids already emitted (windows: final ones)
    # tumbling/hopping: (start, key text) -> [key, [members]]; sessions: key text -> [key, [members]]
    contents: dict = field(default_factory=dict)

    def windows_of(self, t: int) -> list[int]:
        """Starts of the windows [k*A, k*A + S) holding t, none before the epoch."""
        lo = max(0, (t - self.size) // self.advance)
        return [k * self.advance for k in range(lo, t // self.advance + 1)
                if k * self.advance <= t < k * self.advance + self.size]


class Reference:
    def __init__(self, pipeline: dict):
        self.name = pipeline["name"]
        et = pipeline.get("event_time") or {}
        self.time_field = et.get("field", "timestamp")
        self.grace = duration(et.get("grace", 0))
        self.late_policy = et.get("late", "dlq")
        self.stages: list[WindowStage] = []
        self.validate = None
        for i, st in enumerate(pipeline["stages"]):
            name = st.get("name", st["type"])
            if st["type"] == "validate":
                assert i == 0 and not self.stages, "the reference knows a validate stage only at the head"
                self.validate = name
            elif st["type"] in WINDOW_TYPES:
                ws = WindowStage(name, st["type"], st.get("key_by"), st["aggregations"])
                if st["type"] == "session_window":
                    ws.gap = duration(st["gap"])
                else:
                    ws.size = duration(st["size"])
                    ws.advance = duration(st.get("advance", st["size"]))
                self.stages.append(ws)
            else:
                raise NotImplementedError(f"the reference does not know stage type {st['type']}")
        self.offset = 0  # next offset of events/0
        self.high = -INF  # H of events/0
        self.watermark = -INF
        self.drained = False
        self.invalid = 0
        self.results: dict[str, dict] = {}  # id -> result
        self.dead_letters: dict[str, str] = {}  # id -> error_type

    # -- CONTRACT 6, one record at a time --
    def feed(self, records) -> "Reference":
        for raw in records:
            offset = self.offset
            self.offset += 1
            try:
                data = decode(raw)
            except ValueError:
                self._dlq(offset, "source", "deserialization")
                continue
            if self.validate is not None:
                if not valid_click(data):
                    self.invalid += 1
                    self._dlq(offset, self.validate, "validation")
                    continue
                if data.get("event_type") is None:
                    data["event_type"] = "page_view"
            if not self.stages:
                continue
            t = event_time(data.get(self.time_field))
            assert t is not None, "the reference expects valid times after validate"
            self.high = max(self.high, t)  # raised even if a stage then finds it late or fails it
            wp = self.high - self.grace
            if self.drained:
                wp = INF
            self.watermark = max(self.watermark, wp)  # one partition: W = W_p
            for stage in self.stages:
                outcome = self._stage(stage, Member(t, offset, data), wp)
                if outcome == "failed":
                    break
            self._emit_final()
        return self

    def _stage(self, stage: WindowStage, ev: Member, wp: float) -> str:
        key = ev.data.get(stage.key_by) if stage.key_by else None
        if stage.type == "session_window":
            starts = None
            late = ev.time < wp
        else:
            starts = [s for s in stage.windows_of(ev.time) if s + stage.size > wp]
            late = not starts
        if late:
            stage.late += 1
            if self.late_policy == "dlq":
                self._dlq(ev.offset, stage.name, "late")
            return "late"
        try:
            check_event(stage.aggregations, ev.data)
        except ProcessingError:
            self._dlq(ev.offset, stage.name, "processing")
            return "failed"
        if starts is None:
            stage.contents.setdefault(compact(key), [key, []])[1].append(ev)
        else:
            for s in starts:
                stage.contents.setdefault((s, compact(key)), [key, []])[1].append(ev)
        return "added"

    def finish(self, drain: bool) -> "Reference":
        """The end of a bounded run; ``drain``: W := +inf for good, and every window is final."""
        if drain:
            self.drained = True
            self.watermark = INF
        self._emit_final()
        return self

    # -- windows and sessions, computed from their members --
    def _all_windows(self, stage: WindowStage):
        """(key, start, end, members in event order) of every window or session ever opened."""
        if stage.type == "session_window":
            for key, members in stage.contents.values():
                group: list[Member] = []
                for m in sorted(members, key=lambda m: m.order):
                    if group and m.time - group[-1].time > stage.gap:
                        yield key, group[0].time, group[-1].time, group
                        group = []
                    group.append(m)
                if group:
                    yield key, group[0].time, group[-1].time, group
        else:
            for (start, _), (key, members) in stage.contents.items():
                yield key, start, start + stage.size, sorted(members, key=lambda m: m.order)

    def _final(self, stage: WindowStage, end: int) -> bool:
        if stage.type == "session_window":
            return self.watermark > end + stage.gap
        return self.watermark >= end

    def _result(self, stage: WindowStage, key, start, end, members) -> dict:
        r = {"key": key, "window_start": fmt(start), "window_end": fmt(end)}
        if stage.type == "session_window":
            r["duration_s"] = (end - start) / 1000
        r.update(aggregate(stage.aggregations, [m.data for m in members]))
        return r

    def _rid(self, stage, key, start, end) -> str:
        return f"{self.name}/{stage.name}/{compact(key)}/{fmt(start)}/{fmt(end)}"

    def _emit_final(self) -> None:
        for stage in self.stages:
            for key, start, end, members in self._all_windows(stage):
                rid = self._rid(stage, key, start, end)
                if self._final(stage, end) and rid not in stage.emitted:
                    stage.emitted.add(rid)
                    self.results[rid] = {"id": rid, "stage": stage.name,
                                         **self._result(stage, key, start, end, members)}

    def open_windows(self, stage: WindowStage) -> list[dict]:
        found = [self._result(stage, key, start, end, members)
                 for key, start, end, members in self._all_windows(stage) if not self._final(stage, end)]
        return sorted(found, key=lambda r: (compact(r["key"]), r["window_start"], r["window_end"]))

    def _dlq(self, offset: int, stage: str, error_type: str) -> None:
        self.dead_letters[f"{self.name}/dlq/{TOPIC}/{PARTITION}/{offset}/{stage}"] = error_type

    # -- what the runner must show --
    def dump(self) -> dict:
        """``runner state dump`` without ``checkpoint``."""
        p = f"{TOPIC}/{PARTITION}"
        stages = {}
        if self.validate is not None:
            stages[self.validate] = {"invalid": self.invalid}
        for stage in self.stages:
            stages[stage.name] = {"late": stage.late, "open": self.open_windows(stage)}
        has_windows = bool(self.stages)
        return {
            "offsets": {p: self.offset},
            "event_time": {p: fmt(self.high) if has_windows and self.high != -INF else None},
            "watermark": fmt_watermark(self.watermark) if has_windows else None,
            "stages": stages,
        }

    def late_counts(self) -> dict[str, int]:
        return {s.name: s.late for s in self.stages}


def expected(pipeline: dict, records, drain: bool = True) -> Reference:
    """One bounded run over ``records`` from a fresh state."""
    return Reference(pipeline).feed(records).finish(drain)


# --- comparing what the runner wrote with what the reference says -----------------------------

def same_value(a, b, rel: float = 1e-9, path: str = "") -> str | None:
    """None when ``a`` (expected) and ``b`` (got) are equal JSON values, numbers by value to a
    relative 1e-9; otherwise where they differ."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return None if (type(a) is type(b) and a == b) else f"{path}: expected {a!r}, got {b!r}"
    if is_number(a) and is_number(b):
        return None if math.isclose(a, b, rel_tol=rel, abs_tol=0.0) or a == b else f"{path}: expected {a!r}, got {b!r}"
    if isinstance(a, str) or isinstance(b, str):
        return None if a == b else f"{path}: expected {a!r}, got {b!r}"
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: expected {a!r}, got {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            diff = same_value(x, y, rel, f"{path}[{i}]")
            if diff:
                return diff
        return None
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{path}: keys {sorted(a)} expected, got {sorted(b)}"
        for k in a:
            diff = same_value(a[k], b[k], rel, f"{path}.{k}")
            if diff:
                return diff
        return None
    return f"{path}: expected {a!r}, got {b!r}"


def by_id(records: list[dict]) -> dict[str, dict]:
    """Records by id; a duplicated id (not exactly-once) is an assertion error."""
    out: dict[str, dict] = {}
    for r in records:
        assert r["id"] not in out, f"duplicate record {r['id']}: {r} and {out[r['id']]}"
        out[r["id"]] = r
    return out


def assert_same_results(expected_results: dict[str, dict], got: list[dict], strict_ints: tuple = ()) -> None:
    """The result set equals the expected one (no duplicates); ``strict_ints`` names fields
    (sums of integers, counts) that must be JSON integers when the expected value is one."""
    got_ids = by_id(got)
    missing = sorted(set(expected_results) - set(got_ids))
    extra = sorted(set(got_ids) - set(expected_results))
    assert not missing and not extra, f"missing results {missing}, unexpected results {[got_ids[i] for i in extra]}"
    for rid, exp in expected_results.items():
        diff = same_value(exp, got_ids[rid], path=rid)
        assert diff is None, diff
        for name in strict_ints:
            if type(exp.get(name)) is int:
                assert type(got_ids[rid][name]) is int, f"{rid}.{name}: a sum of integers must be an integer, got {got_ids[rid][name]!r}"


def assert_same_dead_letters(expected_letters: dict[str, str], got: list[dict]) -> None:
    got_ids = by_id(got)
    assert {i: d["error_type"] for i, d in got_ids.items()} == expected_letters


def assert_same_dump(expected_dump: dict, got: dict) -> None:
    got = {k: v for k, v in got.items() if k != "checkpoint"}
    diff = same_value(expected_dump, got, path="dump")
    assert diff is None, diff


def assert_matches(ref: Reference, outcome) -> None:
    """A ``runner.testing.Outcome`` of a finished run against the reference: result set, DLQ
    ids and kinds, and the whole dump (late counters, open windows, high mark, watermark)."""
    assert_same_results(ref.results, outcome.results, STRICT_INTS)
    assert_same_dead_letters(ref.dead_letters, outcome.dead_letters)
    assert outcome.dump is not None, "the run crashed"
    assert_same_dump(ref.dump(), outcome.dump)


# --- random click streams for property tests ------------------------------------------------------

def drawn_pipeline(draw, name: str, stages: list, graces: list) -> dict:
    """The pipeline of a property test: ``stages`` over LMDB, with a drawn grace (one of
    ``graces``), late policy and checkpoint interval; ``draw`` is hypothesis's."""
    from hypothesis import strategies as st

    return {
        "name": name,
        "event_time": {"field": "timestamp", "grace": draw(st.sampled_from(graces)), "idle_timeout": 0,
                       "late": draw(st.sampled_from(["dlq", "dlq", "drop"]))},
        "checkpoint": {"every_events": draw(st.integers(1, 10)), "every_ms": 0},
        "state": {"backend": "lmdb"},
        "stages": stages,
    }


def strategies():
    """``(streams, aggregations)``: hypothesis strategies of click-stream records
    (``streams(max_size=30)``) and of ``aggregations:`` mappings. Built on call: the reference
    itself needs no hypothesis."""
    from hypothesis import strategies as st

    T0s = (1795507200000, 0)  # 2026-11-24T08:00:00Z, and the epoch (no window starts before it)
    step = 15_000

    def rfc3339(ms: int, style: str) -> str:
        if style == "offset+":
            off = 330
        elif style == "offset-":
            off = -480
        else:
            off = 0
        t = _EPOCH + _dt.timedelta(milliseconds=ms + off * 60_000)
        base = t.strftime("%Y-%m-%d") + ("t" if style == "lower" else " " if style == "space" else "T") + t.strftime("%H:%M:%S")
        frac = f".{t.microsecond // 1000:03d}"
        if style == "micro":
            frac += "999"  # truncated toward the past: still ms
        elif style == "nofrac" and ms % 1000 == 0:
            frac = ""
        if off == 0:
            zone = "z" if style == "lower" else "Z"
        else:
            zone = ("+" if off > 0 else "-") + f"{abs(off) // 60:02d}:{abs(off) % 60:02d}"
        return base + frac + zone

    def stamp(ms: int, style: str):
        if style == "int":
            return ms
        if style == "float":
            return float(ms)
        return rfc3339(ms, style)

    styles = st.sampled_from(["int", "float", "Z", "nofrac", "micro", "offset+", "offset-", "lower", "space"])
    maybe = lambda values: st.one_of(st.just(_ABSENT), st.none(), values)  # noqa: E731
    tag_values = st.one_of(st.just(_ABSENT), st.none(), st.sampled_from(["a", "b", "c", "1", "true", 1, 1.0, 2, 2.5, True, False]),
                           st.just("a"), st.just(2))
    bad_tags = st.sampled_from([{"x": 1}, [1]])
    amounts = st.one_of(st.integers(-5, 20), st.floats(-5, 20, allow_nan=False, allow_infinity=False).map(lambda f: round(f, 3)))
    bad_amounts = st.sampled_from(["12", True, False])
    rare = st.sampled_from([False] * 14 + [True])

    @st.composite
    def event(draw, i: int, t: int):
        e = {"event_id": f"e{i}", "user_id": draw(st.sampled_from(["u1", "u2", "u3"])),
             "page_url": draw(st.sampled_from(["/home", "/cart", "/p/1"])),
             "timestamp": stamp(t, draw(styles))}
        for name, values in (("duration", st.one_of(st.integers(0, 60), st.sampled_from([0.5, 2.25, 10.0]))),
                             ("revenue", st.one_of(st.integers(0, 100), st.sampled_from([0.1, 19.99, 5.0]))),
                             ("country", st.sampled_from(["US", "DE"])),
                             ("event_type", st.sampled_from(["page_view", "click", "purchase"]))):
            v = draw(maybe(values))
            if v is not _ABSENT:
                e[name] = v
        tag = draw(bad_tags if draw(rare) else tag_values)
        if tag is not _ABSENT:
            e["tag"] = tag
        amount = draw(st.one_of(st.just(_ABSENT), st.none(), bad_amounts if draw(rare) else amounts))
        if amount is not _ABSENT:
            e["amount"] = amount
        return e

    @st.composite
    def stream(draw, max_size: int = 30):
        """Records in offset order: mostly valid click events at times on (or 1 ms around)
        15 s steps over 3, 6 or 12 minutes, with equal times; in order, nearly in order,
        out of order by up to 2 minutes, or shuffled; now and then an invalid record."""
        t0 = draw(st.sampled_from(T0s))
        n = draw(st.integers(0, max_size))
        slots = draw(st.sampled_from([24, 12, 48]))
        jitter = st.sampled_from([0, 0, 0, 0, 1, -1, 999, 14_999])
        times = [max(t0 + draw(st.integers(0, slots)) * step + draw(jitter), 0) for _ in range(n)]
        order = draw(st.sampled_from(["delayed", "shuffled", "nearly", "sorted"]))
        if order == "delayed":  # each event arrives up to 8 steps late
            delays = [draw(st.integers(0, 8)) * step for _ in range(n)]
            times = [t for _, t in sorted(zip([t + d for t, d in zip(times, delays)], times), key=lambda p: p[0])]
        elif order != "shuffled":
            times.sort()
        if order == "nearly" and n > 1:
            for _ in range(draw(st.integers(1, 4))):
                i = draw(st.integers(0, n - 2))
                times[i], times[i + 1] = times[i + 1], times[i]
        records = []
        for i, t in enumerate(times):
            kind = draw(st.sampled_from(["valid"] * 18 + ["not json", "invalid"]))
            if kind == "not json":
                records.append(b"not json")
            elif kind == "invalid":
                e = draw(event(i, t))
                del e["page_url"]
                records.append(e)
            else:
                records.append(draw(event(i, t)))
        return records

    pool = {
        "events": "count",
        "dur": {"sum": "duration"}, "avg_dur": {"avg": "duration"},
        "min_rev": {"min": "revenue"}, "max_rev": {"max": "revenue"}, "rev": {"sum": "revenue"},
        "users": {"count_distinct": "user_id"}, "tags": {"count_distinct": "tag"},
        "pages": {"count_by": "page_url"}, "tag_counts": {"count_by": "tag"}, "types": {"count_by": "event_type"},
        "top_tags": {"top": "tag", "n": 2}, "top_tag": {"top": "tag", "n": 1}, "top_pages": {"top": "page_url", "n": 3},
        "path": {"collect": "page_url"}, "ids": {"collect": "event_id", "limit": 2}, "tag_list": {"collect": "tag"},
        "first_tag": {"first": "tag"}, "last_id": {"last": "event_id"}, "first_dur": {"first": "duration"},
        "last_tag": {"last": "tag"},
        "amt": {"sum": "amount"}, "avg_amt": {"avg": "amount"}, "min_amt": {"min": "amount"}, "max_amt": {"max": "amount"},
    }

    @st.composite
    def aggregations(draw):
        names = draw(st.lists(st.sampled_from(sorted(pool)), min_size=1, max_size=6, unique=True))
        return {name: pool[name] for name in names}

    return stream, aggregations


_ABSENT = object()
STRICT_INTS = ("events", "dur", "rev", "amt", "users", "tags")  # counts and sums that must stay integers


# --- driving runner.testing.Driver (duck-typed: the reference never imports the runner) ---------

def crash_plans(n: int):
    """A strategy of crash plans over ``n`` records: pieces ``(lo, hi, [crash_after, ...])``,
    appended one after the other, each followed by runs that crash after so many records."""
    from hypothesis import strategies as st

    @st.composite
    def plans(draw):
        cuts = sorted(draw(st.lists(st.integers(0, n), max_size=3)))
        bounds = [0, *cuts, n]
        return [(bounds[i], bounds[i + 1], draw(st.lists(st.integers(0, 12), min_size=1, max_size=3)))
                for i in range(len(bounds) - 1)]

    return plans()


def closer(pipeline: dict, records: list, data) -> list:
    """Maybe one more event, timed so that the watermark lands exactly on (or 1 ms beside) the
    point where an open window or session becomes final: W >= end for windows, W > last + gap
    for sessions. ``data`` is hypothesis' ``st.data()``."""
    from hypothesis import strategies as st

    ref = Reference(pipeline).feed(records).finish(drain=False)
    points = sorted({end + stage.gap for stage in ref.stages for _, _, end, _ in ref._all_windows(stage)
                     if not ref._final(stage, end)})
    if not points or not data.draw(st.booleans()):
        return []
    t = data.draw(st.sampled_from(points)) + ref.grace + data.draw(st.sampled_from([0, -1, 1]))
    return [{"event_id": "closer", "user_id": "u9", "page_url": "/closer", "timestamp": max(t, 0)}]


def run_with_crashes(driver, records: list, plan):
    """Feed ``records`` piece by piece as ``plan`` says, crashing runs, then drain."""
    for lo, hi, crash_after in plan:
        driver.add(records[lo:hi])
        for n in crash_after:
            driver.run(crash_after=n)
    return driver.run(drain=True)


def assert_crashes_change_nothing(new_driver, pipeline: dict, records: list, data) -> None:
    """A run over ``records`` that crashes between checkpoints (every 3-10 records) as a
    drawn plan says ends as one clean run does, and as the model says. ``new_driver(pipeline,
    directory)`` makes a driver (``runner.testing.Driver``); ``data`` is hypothesis'
    ``st.data()``."""
    import tempfile

    from hypothesis import strategies as st

    pipeline["checkpoint"]["every_events"] = data.draw(st.integers(3, 10))
    plan = data.draw(crash_plans(len(records)))
    with tempfile.TemporaryDirectory() as clean_dir, tempfile.TemporaryDirectory() as crash_dir:
        clean = new_driver(pipeline, clean_dir).run(records, drain=True)
        final = run_with_crashes(new_driver(pipeline, crash_dir), records, plan)
    assert_same_as_clean_run(clean, final)
    assert_matches(expected(pipeline, records, drain=True), final)


def assert_same_as_clean_run(clean, final) -> None:
    """Exactly once in both sinks and the same sets and dump (but ``checkpoint``) as one clean run."""
    assert_same_results(by_id(clean.results), final.results, STRICT_INTS)
    assert set(by_id(final.dead_letters)) == set(by_id(clean.dead_letters))
    assert_same_dump({k: v for k, v in clean.dump.items() if k != "checkpoint"}, final.dump)
