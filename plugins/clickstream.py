"""The synthetic click stream: valid click events in user sessions, and bad records of every
invalid kind of CONTRACT section 4 (``runner generate`` writes it out: ``plugins.generate``).

Everything here is a pure function of the generator's arguments and the record's index,
so a record can be made without making the ones before it (a source resumes at any
offset) and the same arguments give the same bytes in every process.

Users behave in sessions. Each user lives in periods of ``PERIOD_MS`` of event time (the
periods of different users are shifted against each other). In most periods the user has
one session of 1 to 10 minutes, placed so that at least ``QUIET_MS`` (11 minutes) pass
between two sessions of the same user: 10-minute session windows see exactly these
sessions. Event ``i`` (at time ``start + floor(i * 1000 / rate)``) belongs to one of the
users in session at that time.
"""

from __future__ import annotations

import random
from fractions import Fraction

import orjson

from runner.times import format_ms, parse_event_time

DEFAULT_START_MS = 1795507200000  # 2026-11-24T08:00:00.000Z
UNPACED_EVENT_RATE = 10  # events/s of event time when the wall-clock rate is 0 (unpaced)

PERIOD_MS = 30 * 60_000
QUIET_MS = 11 * 60_000  # more than a 10-minute session gap between two sessions of a user
SESSION_MIN_MS = 60_000
SESSION_MAX_MS = 10 * 60_000
SESSION_PERCENT = 70  # the share of periods in which a user has a session
_BUCKET_MS = 60_000

_PRODUCT_IDS = list(range(1001, 1031))
_HARMONIC = sum(1 / rank for rank in range(1, len(_PRODUCT_IDS) + 1))
PAGES = (
    [("/home", 22.0), ("/products", 14.0), ("/search", 9.0), ("/cart", 7.0), ("/deals", 5.0),
     ("/checkout", 4.0), ("/blog", 3.0), ("/account", 2.5), ("/about", 2.0), ("/contact", 1.5)]
    # product pages: 30 in all, a few much more popular than the rest (Zipf-like)
    + [(f"/products/{pid}", 30.0 / (rank + 1) / _HARMONIC) for rank, pid in enumerate(_PRODUCT_IDS)]
)
_PAGE_URLS = [url for url, _ in PAGES]
_PAGE_CUM = []
for _url, _weight in PAGES:
    _PAGE_CUM.append((_PAGE_CUM[-1] if _PAGE_CUM else 0.0) + _weight)

# event types by page kind, as (types, cumulative weights)
_TYPES_PRODUCT = (["page_view", "click", "add_to_cart"], [60, 82, 100])
_TYPES_CART = (["page_view", "click"], [65, 100])
_TYPES_CHECKOUT = (["page_view", "click", "purchase"], [45, 60, 100])
_TYPES_OTHER = (["page_view", "click"], [78, 100])

_REFERRERS = ["https://www.google.com/", "https://www.bing.com/", "https://duckduckgo.com/",
              "https://t.co/", "https://www.facebook.com/", "https://news.ycombinator.com/",
              "https://newsletter.example.com/"]
_DEVICES = (["desktop", "mobile", "tablet"], [48, 92, 100])
_COUNTRIES = (["US", "GB", "DE", "FR", "IN", "BR", "CA", "JP", "NL", "ES"],
              [34, 44, 53, 60, 70, 77, 83, 89, 94, 100])

# tags that keep the random streams of different purposes apart
_T_PHASE, _T_SESSION, _T_SESSION_ID, _T_EVENT, _T_STRAY, _T_BAD_SLOT, _T_BAD_POS = range(1, 8)
_M64 = (1 << 64) - 1


def _mix(*parts: int) -> int:
    """A 64-bit hash of integers (splitmix64 steps): the same in every process and version."""
    h = 0x9E3779B97F4A7C15
    for part in parts:
        h = (h ^ (part & _M64)) * 0xBF58476D1CE4E5B9 & _M64
        h ^= h >> 31
        h = (h + 0x9E3779B97F4A7C15) * 0x94D049BB133111EB & _M64
        h ^= h >> 29
    return h


def _pick(rng: random.Random, table: tuple[list, list]):
    values, cum = table
    return rng.choices(values, cum_weights=cum)[0]


def _exact(number) -> Fraction:
    """A rate or ratio as the exact decimal the user wrote (0.1 is 1/10, not its double)."""
    return Fraction(number) if isinstance(number, (int, Fraction)) else Fraction(repr(float(number)))


# ---------------------------------------------------------------------------------------
# bad records


BAD_KINDS = [
    # deserialization errors
    "not_utf8", "not_json", "truncated_json", "bom", "nan", "infinity", "double_overflow",
    "int_overflow", "too_deep", "no_value",
    # JSON that is not an object
    "json_array", "json_string",
    # missing required fields (absent, or null)
    "missing_event_id", "missing_user_id", "missing_page_url", "missing_timestamp",
    "null_event_id", "null_user_id", "null_page_url", "null_timestamp",
    # wrong types
    "event_id_number", "user_id_number", "page_url_number", "event_type_number",
    "session_id_number", "referrer_bool", "duration_string", "duration_bool", "revenue_string",
    # constraints
    "page_url_relative", "unknown_event_type", "negative_duration", "negative_revenue",
    # timestamps
    "timestamp_not_rfc3339", "timestamp_no_offset", "timestamp_digit_string",
    "timestamp_fractional_ms", "timestamp_before_1970", "timestamp_after_9999",
    "timestamp_impossible_date", "timestamp_leap_second", "timestamp_bool",
]
"""Every kind of bad record the generator cycles through, in CONTRACT section 4's order."""

FILE_BAD_KINDS = [kind for kind in BAD_KINDS if kind != "no_value"]
"""The kinds a JSONL file can hold: a line always has a value."""

OVERSIZED = "oversized"
"""A record over ``max_record_bytes`` (1 MiB + 1 byte): ``bad_record`` makes it on request,
the generator never does (Kafka's default limits refuse records that large)."""

_KNOWN_KINDS = frozenset(BAD_KINDS + [OVERSIZED])


def bad_record(kind: str, i: int = 0, base: dict | None = None) -> tuple[bytes | None, bytes | None]:
    """The record (key, value) of one bad ``kind`` (one of ``BAD_KINDS``, or ``OVERSIZED``).

    ``base`` is the valid event it is made from (default: valid event ``i`` of a generator
    with seed 0 at the default start); every kind breaks exactly one rule of section 4, so
    a validator reports that rule. The key is the base event's ``user_id``. No value holds
    a line break, so every record but ``no_value`` can be one line of a JSONL file.
    """
    if kind not in _KNOWN_KINDS:
        raise ValueError(f"unknown bad record kind {kind!r}; known: {', '.join(BAD_KINDS + [OVERSIZED])}")
    if base is None:
        base = ClickGenerator(0, DEFAULT_START_MS, UNPACED_EVENT_RATE).event(i)
    key = str(base["user_id"]).encode()
    ev = dict(base)
    dumps = orjson.dumps

    def with_raw(field: str, raw: bytes) -> bytes:
        ev.pop(field, None)
        return dumps(ev)[:-1] + b',"' + field.encode() + b'":' + raw + b"}"

    stamp = base["timestamp"] if isinstance(base["timestamp"], str) else format_ms(base["timestamp"])
    day, clock = stamp[:10], stamp[11:19]
    if kind == "no_value":
        return key, None
    if kind == "not_utf8":  # a search page written as Latin-1
        ev["page_url"] = f"/search?q=caf\u00e9+{i % 97}"
        return key, orjson.dumps(ev).decode().encode("latin-1")
    if kind == "not_json":
        return key, f"{base['user_id']} viewed {base['page_url']} at {stamp}".encode()
    if kind == "truncated_json":
        raw = dumps(ev)
        return key, raw[: len(raw) // 2]
    if kind == "bom":
        return key, b"\xef\xbb\xbf" + dumps(ev)
    if kind == "nan":
        return key, with_raw("duration", b"NaN")
    if kind == "infinity":
        return key, with_raw("duration", b"Infinity")
    if kind == "double_overflow":
        return key, with_raw("duration", b"1e400")
    if kind == "int_overflow":
        return key, with_raw("duration", b"9223372036854775808")
    if kind == "too_deep":  # the object and 64 arrays: 65 levels
        return key, with_raw("tags", b"[" * 64 + b"]" * 64)
    if kind == OVERSIZED:
        ev["padding"] = ""
        raw = dumps(ev)
        ev["padding"] = "x" * ((1 << 20) + 1 - len(raw))
        return key, dumps(ev)
    if kind == "json_array":
        return key, b"[" + dumps(ev) + b"]"
    if kind == "json_string":  # JSON encoded twice
        return key, dumps(dumps(ev).decode())
    field = kind.partition("_")[2]
    if kind.startswith("missing_"):
        del ev[field]
    elif kind.startswith("null_"):
        ev[field] = None
    elif kind == "event_id_number":
        ev["event_id"] = i
    elif kind == "user_id_number":
        digits = "".join(c for c in str(base["user_id"]) if c.isdigit())
        ev["user_id"] = int(digits) if digits else 42
    elif kind == "page_url_number":
        ev["page_url"] = 404
    elif kind == "event_type_number":
        ev["event_type"] = 1
    elif kind == "session_id_number":
        ev["session_id"] = 7
    elif kind == "referrer_bool":
        ev["referrer"] = True
    elif kind == "duration_string":
        ev["duration"] = str(base.get("duration") or 12)
    elif kind == "duration_bool":
        ev["duration"] = True
    elif kind == "revenue_string":
        ev["event_type"] = "purchase"
        ev["revenue"] = "19.99"
    elif kind == "page_url_relative":
        ev["page_url"] = str(base["page_url"]).lstrip("/") or "home"
    elif kind == "unknown_event_type":
        ev["event_type"] = "hover"
    elif kind == "negative_duration":
        ev["duration"] = -round(1.5 + i % 30, 1)
    elif kind == "negative_revenue":  # a refund sent as a purchase
        ev["event_type"] = "purchase"
        ev["revenue"] = -round(5 + i % 200 + 0.99, 2)
    elif kind == "timestamp_not_rfc3339":
        ev["timestamp"] = f"{day[8:10]}/{day[5:7]}/{day[0:4]} {clock}"
    elif kind == "timestamp_no_offset":
        ev["timestamp"] = stamp.rstrip("Zz")
    elif kind == "timestamp_digit_string":
        ev["timestamp"] = str(parse_event_time(stamp))
    elif kind == "timestamp_fractional_ms":
        ev["timestamp"] = parse_event_time(stamp) + 0.5
    elif kind == "timestamp_before_1970":
        ev["timestamp"] = f"1969-12-31T{clock}Z"
    elif kind == "timestamp_after_9999":
        ev["timestamp"] = 253402300800000  # 10000-01-01T00:00:00.000Z
    elif kind == "timestamp_impossible_date":
        ev["timestamp"] = f"{day[:4]}-02-30T{clock}Z"
    elif kind == "timestamp_leap_second":
        ev["timestamp"] = f"{day}T23:59:60Z"
    elif kind == "timestamp_bool":
        ev["timestamp"] = True
    else:  # pragma: no cover - every kind is handled above
        raise AssertionError(kind)
    return key, dumps(ev)


# ---------------------------------------------------------------------------------------
# the generator


class ClickGenerator:
    """Record ``i`` of a synthetic click stream, deterministic for the arguments.

    ``rate`` (> 0) is events per second of event time: event ``i`` has time
    ``start_ms + floor(i * 1000 / rate)``. With ``bad_ratio`` > 0, that share of the records
    (exactly, up to one, in every prefix) is bad, at positions drawn from the seed, the
    kinds taken in turn from ``bad_kinds`` (default ``BAD_KINDS``).
    """

    def __init__(self, seed: int, start_ms: int, rate: float, bad_ratio: float = 0.0,
                 users: int = 100, bad_kinds: list[str] | None = None):
        rate_q = _exact(rate)
        ratio_q = _exact(bad_ratio)
        if rate_q <= 0:
            raise ValueError(f"rate must be > 0 events per second, got {rate!r}")
        if not 0 <= ratio_q <= 1:
            raise ValueError(f"bad_ratio must lie within 0..1, got {bad_ratio!r}")
        if users < 1:
            raise ValueError(f"users must be >= 1, got {users!r}")
        self.seed, self.start_ms, self.rate, self.bad_ratio, self.users = seed, start_ms, rate, bad_ratio, users
        self.bad_kinds = list(BAD_KINDS if bad_kinds is None else bad_kinds)
        for kind in self.bad_kinds:
            if kind not in _KNOWN_KINDS:
                raise ValueError(f"unknown bad record kind {kind!r}")
        if ratio_q and not self.bad_kinds:
            raise ValueError("bad_ratio > 0 needs at least one bad kind")
        self._ms_num, self._ms_den = rate_q.denominator * 1000, rate_q.numerator  # ms per event
        self._bad_n, self._bad_d = ratio_q.numerator, ratio_q.denominator
        self._bad_phase = _mix(seed, _T_BAD_SLOT) % 1_000_000  # the slots' offset, in millionths
        width = max(4, len(str(users)))
        self._user_ids = [f"user_{u + 1:0{width}d}" for u in range(users)]
        self._phases = [_mix(seed, _T_PHASE, u) % PERIOD_MS for u in range(users)]
        self._buckets: dict[int, list] = {}
        self._session_attrs: dict[tuple[int, int], tuple] = {}

    # -- time and sessions

    def time_ms(self, i: int) -> int:
        """Event time of record ``i``: ``start_ms + floor(i * 1000 / rate)``, exactly."""
        return self.start_ms + i * self._ms_num // self._ms_den

    def _session(self, u: int, k: int) -> tuple[int, int] | None:
        """User ``u``'s session in its period ``k`` as [first ms, end ms) after start, or None."""
        h = _mix(self.seed, _T_SESSION, u, k)
        if h % 100 >= SESSION_PERCENT:
            return None
        length = SESSION_MIN_MS + _mix(h, 1) % (SESSION_MAX_MS - SESSION_MIN_MS + 1)
        offset = _mix(h, 2) % (PERIOD_MS - QUIET_MS - length + 1)
        first = self._phases[u] + k * PERIOD_MS + offset
        return first, first + length

    def _bucket(self, b: int) -> list:
        """The sessions that overlap minute ``b`` after start: (first, end, user, period)."""
        found = self._buckets.get(b)
        if found is None:
            lo, hi = b * _BUCKET_MS, (b + 1) * _BUCKET_MS
            found = []
            for u, phase in enumerate(self._phases):
                for k in range((lo - phase) // PERIOD_MS, (hi - 1 - phase) // PERIOD_MS + 1):
                    span = self._session(u, k)
                    if span and span[0] < hi and span[1] > lo:
                        found.append((span[0], span[1], u, k))
            if len(self._buckets) >= 64:
                self._buckets.clear()
            self._buckets[b] = found
        return found

    def _attrs(self, u: int, k: int) -> tuple:
        """What stays the same during a session: its id, device, country and entry referrer."""
        attrs = self._session_attrs.get((u, k))
        if attrs is None:
            rng = random.Random(_mix(self.seed, _T_SESSION_ID, u, k))
            session_id = f"sess-{rng.getrandbits(48):012x}"
            device = _pick(rng, _DEVICES) if rng.random() < 0.9 else None
            country = _pick(rng, _COUNTRIES) if rng.random() < 0.9 else None
            referrer = rng.choice(_REFERRERS) if rng.random() < 0.55 else None
            attrs = (session_id, device, country, referrer, rng.random() < 0.9, rng.random() < 0.9)
            if len(self._session_attrs) >= 4096:
                self._session_attrs.clear()
            self._session_attrs[(u, k)] = attrs
        return attrs

    # -- records

    def event(self, i: int) -> dict:
        """The valid click event of index ``i`` (what record ``i`` is unless it is bad)."""
        t = self.time_ms(i)
        r = t - self.start_ms
        rng = random.Random(_mix(self.seed, _T_EVENT, i))
        active = [(u, k) for first, end, u, k in self._bucket(r // _BUCKET_MS) if first <= r < end]
        if active:
            u, k = active[int(rng.random() * len(active))]
        else:  # nobody in a session (rare with many users): a stray click
            u = _mix(self.seed, _T_STRAY, i) % self.users
            k = (r - self._phases[u]) // PERIOD_MS
        session_id, device, country, referrer, has_device, has_country = self._attrs(u, k)
        page = rng.choices(_PAGE_URLS, cum_weights=_PAGE_CUM)[0]
        if page.startswith("/products/"):
            event_type = _pick(rng, _TYPES_PRODUCT)
        elif page == "/cart":
            event_type = _pick(rng, _TYPES_CART)
        elif page == "/checkout":
            event_type = _pick(rng, _TYPES_CHECKOUT)
        else:
            event_type = _pick(rng, _TYPES_OTHER)
        if event_type == "page_view":
            duration = round(min(rng.lognormvariate(3.0, 0.9), 1800.0), 1)
        elif event_type == "click":
            duration = round(rng.uniform(0.0, 3.0), 2)
        else:
            duration = round(rng.uniform(1.0, 45.0), 1)
        ev = {
            "event_id": f"evt-{self.seed}-{i}",
            "user_id": self._user_ids[u],
            "session_id": session_id,
            "page_url": page,
            "timestamp": format_ms(t),
            "event_type": event_type,
            "duration": duration,
        }
        if event_type == "purchase":
            ev["revenue"] = 0 if rng.random() < 0.02 else round(rng.uniform(5.0, 250.0), 2)
        roll = rng.random()
        if roll < 0.4:  # the referrer: where the session came from, often unknown
            ev["referrer"] = referrer
        elif roll < 0.55:
            ev["referrer"] = None
        if has_device:
            ev["device"] = device
        if has_country:
            ev["country"] = country
        return ev

    def bad_kind(self, i: int) -> str | None:
        """The bad kind of record ``i``, or None when it is valid.

        Records are cut into slots of 1/bad_ratio records (shifted by the seed); one record
        of each slot, drawn from the seed, is bad, and slot ``j`` has kind ``j`` in turn.
        """
        n, d = self._bad_n, self._bad_d
        if n == 0:
            return None
        scale = 1_000_000
        a = self._bad_phase
        j = (i * n * scale + a * d) // (d * scale)  # floor(i * ratio + phase)
        lo = -((a - j * scale) * d // (n * scale))  # ceil((j - phase) / ratio)
        hi = -((a - (j + 1) * scale) * d // (n * scale))
        if lo + _mix(self.seed, _T_BAD_POS, j) % (hi - lo) != i:
            return None
        return self.bad_kinds[j % len(self.bad_kinds)]

    def record(self, i: int) -> tuple[bytes | None, bytes | None]:
        """Record ``i`` as (key, value): key is the ``user_id`` as UTF-8, value JSON bytes
        (or a bad record's bytes, or None for a bad record with no value)."""
        ev = self.event(i)
        kind = self.bad_kind(i)
        if kind is not None:
            return bad_record(kind, i, ev)
        return ev["user_id"].encode(), orjson.dumps(ev)
