"""JSON Schema fragments shared by component declarations (durations, aggregations, sources).

``x-expected`` on a fragment is what a validation error says the value should look like.
"""

from __future__ import annotations

from runner.times import DURATION_PATTERN


def duration(description: str, default=None, positive: bool = False) -> dict:
    """A duration: ``500ms``, ``30s``, ``1.5m``, ``1h`` or a bare number of seconds."""
    schema = {
        "description": description + (" (> 0)" if positive else ""),
        "x-expected": "a duration like 5m",
        "x-duration": "positive" if positive else "non-negative",
        "anyOf": [
            {"type": "string", "pattern": DURATION_PATTERN},
            {"type": "number", "minimum": 0},
        ],
    }
    if default is not None:
        schema["default"] = default
    return schema


def source_common() -> dict:
    """Properties every source has: records over this size go to the DLQ undecoded."""
    return {
        "max_record_bytes": {
            "type": "integer", "minimum": 1, "default": 1 << 20,
            "description": "a record larger than this is a deserialization error",
        },
    }


def obj(properties: dict, required: tuple = (), description: str | None = None) -> dict:
    """An object schema that rejects unknown keys."""
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    if description:
        schema["description"] = description
    return schema
