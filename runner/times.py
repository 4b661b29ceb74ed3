"""Event time and durations: integer milliseconds since 1970-01-01T00:00:00Z, never float seconds."""

from __future__ import annotations

import datetime as _dt
import math
import re
from fractions import Fraction

MIN_MS = 0
MAX_MS = 253402300799999  # 9999-12-31T23:59:59.999Z

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, None: 1000}
DURATION_PATTERN = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)?$"
_DURATION = re.compile(DURATION_PATTERN)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)
_EPOCH = _dt.datetime(1970, 1, 1)
_day_cache: dict[str, int] = {}
# "2026-11-24T08:00:" -> its epoch ms, from texts the pattern matched (from 1970 on: every
# time in a minute of the cache is in range)
_minute_cache: dict[str, int] = {}
_SECOND_MS = {f"{s:02d}": s * 1000 for s in range(60)}
_MILLIS = {f"{ms:03d}": ms for ms in range(1000)}


def duration_ms(value) -> int:
    """``500ms``, ``30s``, ``1.5m``, ``1h`` or a bare number of seconds, as whole milliseconds.

    Raises ValueError for anything else, including a value that is not a whole number of ms.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 5m, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"expected a duration like 5m, got {value!r}")
        ms = Fraction(value) * 1000
    else:
        match = _DURATION.match(str(value).strip())
        if not match:
            raise ValueError(f"expected a duration like 5m, got {value!r}")
        number = str(value).strip()[: match.start(2)] if match.group(2) else str(value).strip()
        ms = Fraction(number) * _UNITS_MS[match.group(2)]
    if ms.denominator != 1:
        raise ValueError(f"a duration must be a whole number of milliseconds, got {value!r}")
    return int(ms)


def format_duration(ms: int) -> str:
    """``ms`` as a duration in the largest unit that holds it whole (``300000``: ``5m``)."""
    for unit in ("h", "m", "s"):
        if ms and ms % _UNITS_MS[unit] == 0:
            return f"{ms // _UNITS_MS[unit]}{unit}"
    return f"{ms}ms"


class InvalidTime(ValueError):
    """An event time that is not an RFC 3339 string or integral epoch ms in range."""


class WrongTimeType(InvalidTime):
    """An event time of a type that can never be one (booleans, null, strings of digits...)."""


def parse_event_time(value) -> int:
    """An event time as epoch ms: an RFC 3339 string (with offset; fraction truncated toward
    the past to ms) or a JSON number with an integral value, within 1970..9999."""
    if value.__class__ is str and len(value) == 24 and value[19] == "." and value[23] == "Z":
        # the usual form, 2026-11-24T08:00:00.000Z, with a minute seen before: three lookups,
        # which also check that seconds and ms are ASCII digits in range
        minute = _minute_cache.get(value[:17])
        seconds, millis = _SECOND_MS.get(value[17:19]), _MILLIS.get(value[20:23])
        if minute is not None and seconds is not None and millis is not None:
            return minute + seconds + millis
    if isinstance(value, str):
        ms = _parse_rfc3339(value)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WrongTimeType(f"expected an RFC 3339 string or epoch milliseconds, got {_show(value)}")
    elif isinstance(value, float) and not value.is_integer():
        raise InvalidTime(f"epoch milliseconds must be a whole number, got {value!r}")
    else:
        ms = int(value)
    if not MIN_MS <= ms <= MAX_MS:
        raise InvalidTime(f"{_show(value)} is outside 1970-01-01T00:00:00.000Z..9999-12-31T23:59:59.999Z")
    return ms


def _parse_rfc3339(text: str) -> int:
    match = _RFC3339.fullmatch(text)
    if not match:
        if text.isascii() and text.isdigit():
            raise WrongTimeType(f"expected an RFC 3339 string or epoch milliseconds, got the string {text!r}")
        raise InvalidTime(f"{text!r} is not an RFC 3339 time like 2026-11-24T08:00:00.000Z (an offset is required)")
    year, month, day, hh, mm, ss, frac, zulu, sign, oh, om = match.groups()
    date = text[:10]
    days = _day_cache.get(date)
    if days is None:
        try:
            days = (_dt.datetime(int(year), int(month), int(day)) - _EPOCH).days
        except ValueError:
            raise InvalidTime(f"{text!r} has no such date") from None
        if len(_day_cache) < 100_000:
            _day_cache[date] = days
    h, m, s = int(hh), int(mm), int(ss)
    if h > 23 or m > 59 or s > 59:
        raise InvalidTime(f"{text!r} has no such time of day")
    ms = ((days * 24 + h) * 60 + m) * 60_000 + s * 1000
    if len(text) == 24 and zulu == "Z" and ms >= MIN_MS and len(_minute_cache) < 100_000:
        _minute_cache[text[:17]] = ms - s * 1000
    if frac:
        ms += int((frac + "00")[:3])
    if not zulu:
        offset_h, offset_m = int(oh), int(om)
        if offset_h > 23 or offset_m > 59:
            raise InvalidTime(f"{text!r} has no such UTC offset")
        offset = (offset_h * 60 + offset_m) * 60_000
        ms += -offset if sign == "+" else offset
    return ms


def _show(value) -> str:
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    return text if len(text) <= 60 else text[:57] + "..."


def format_ms(ms: int) -> str:
    """``YYYY-MM-DDThh:mm:ss.sssZ`` (UTC). Computed by hand: a window that holds the last
    millisecond of 9999 ends in year 10000, beyond what ``datetime`` can show."""
    days, rest = divmod(ms, 86_400_000)
    year, month, day = _civil(days)
    seconds, millis = divmod(rest, 1000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}.{millis:03d}Z"


def _civil(days: int) -> tuple[int, int, int]:
    """The proleptic Gregorian date ``days`` after 1970-01-01 (H. Hinnant's civil_from_days)."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def format_watermark(w: float):
    """A watermark as the state dump writes it: null before any event, "+inf" when drained."""
    if w == -math.inf:
        return None
    if w == math.inf:
        return "+inf"
    return format_ms(int(w))
