"""Strict JSON in (RFC 8259, as CONTRACT section 4 reads it) and compact JSON out."""

from __future__ import annotations

import json
import math

import orjson

MAX_DEPTH = 64
MAX_INT = 2**63 - 1
# digits to "0", [ and { to "[", all else to " ": a run of 19 zeros is a run of 19 digits (5x
# faster than a regex), and the brackets are counted in the same copy
_SHAPE = bytes(48 if 48 <= b <= 57 else 91 if b in b"[{" else 32 for b in range(256))
_LONG_NUMBER = b"0" * 19


class DecodeError(ValueError):
    """Bytes that are not one strict JSON value; the message says what is wrong."""


def decode(raw: bytes | None, max_bytes: int):
    """Decode one record value, or raise DecodeError with a message a person can act on."""
    if raw is None:
        raise DecodeError("record has no value")
    if len(raw) > max_bytes:
        raise DecodeError(f"record of {len(raw)} bytes is over max_record_bytes ({max_bytes})")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(_explain(raw, exc)) from None
    # orjson reads integers beyond 64 bits as floats and has no depth limit of ours: the two
    # rare cases are checked only when the bytes could hold them.
    shape = raw.translate(_SHAPE)
    if _LONG_NUMBER in shape:
        _check_integers(raw)
    if shape.count(b"[") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        raise DecodeError(f"more than {MAX_DEPTH} nested arrays and objects")
    return value


def _explain(raw: bytes, exc: Exception) -> str:
    if raw.startswith(b"\xef\xbb\xbf"):
        return "not JSON: starts with a UTF-8 byte order mark"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"not UTF-8: invalid byte at position {err.start}"
    if "\x00" in text:
        return f"not JSON: a NUL byte at position {raw.index(0)}"
    message = str(exc)
    if "depth" in message:
        return f"more than {MAX_DEPTH} nested arrays and objects"
    if "infinity" in message:
        return f"not JSON: a number overflows a double ({message})"
    try:  # the standard parser tells a NaN token from "NaN" inside a string
        json.loads(text, parse_constant=_reject_constant)
    except _NonFinite as constant:
        return f"not JSON: {constant} is not a JSON number"
    except ValueError:
        pass
    return f"not JSON: {message}"


class _NonFinite(Exception):
    pass


def _reject_constant(name: str):
    raise _NonFinite(name)


def _check_integers(raw: bytes) -> None:
    def parse_int(text: str) -> int:
        number = int(text)
        if abs(number) > MAX_INT:
            raise DecodeError(f"integer {text} is outside +-(2^63-1)")
        return number

    def parse_float(text: str) -> float:
        number = float(text)
        if math.isinf(number):
            raise DecodeError(f"number {text} overflows a double")
        return number

    json.loads(raw, parse_int=parse_int, parse_float=parse_float)


def _depth(value) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, level)
            if deepest > MAX_DEPTH:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def compact(value) -> str:
    """The compact JSON text of CONTRACT section 5 (used in ids and count_by keys)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


_key_texts: dict[str, str] = {}


def key_text(key) -> str:
    """``compact(key)``, remembered for strings: stages need it for every event's key."""
    if key.__class__ is str:
        text = _key_texts.get(key)
        if text is None:
            if len(_key_texts) >= 100_000:
                _key_texts.clear()
            text = _key_texts[key] = compact(key)
        return text
    return "null" if key is None else compact(key)


def dumps(value) -> bytes:
    """Fast JSON bytes for outputs (keys sorted, so records compare as text too)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        if not _has_big_integer(value):
            raise
    # a sum of integers beyond 64 bits (CONTRACT section 3: an integer), which orjson refuses
    return json.dumps(_finite(value), separators=(",", ":"), ensure_ascii=False, sort_keys=True,
                      allow_nan=False).encode()


def _has_big_integer(value) -> bool:
    if isinstance(value, dict):
        return any(map(_has_big_integer, value.values()))
    if isinstance(value, (list, tuple)):
        return any(map(_has_big_integer, value))
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT + 1


def _finite(value):
    """``value`` with non-finite floats as null, as orjson writes them."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


loads = orjson.loads
