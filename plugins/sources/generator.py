"""The ``generator`` source: synthetic click events (``plugins.clickstream``) without a broker.

One partition, ``generator/0``; the offset of a record is its sequence number, and record
``n`` is the same bytes on every run with the same config, so a restart resumes exactly
where the last checkpoint left off.
"""

from __future__ import annotations

import logging
import math
import time

from plugins.clickstream import UNPACED_EVENT_RATE, ClickGenerator
from runner import hookimpl
from runner.components import ConfigError, Record, Source
from runner.schema import obj, source_common
from runner.times import InvalidTime, parse_event_time

log = logging.getLogger(__name__)

TOPIC = "generator"
PARTITION = 0
KEY = f"{TOPIC}/{PARTITION}"
MAX_PER_POLL = 2000
DEFAULT_START = "2026-11-24T08:00:00Z"  # DEFAULT_START_MS


class GeneratorSource(Source):
    """Click events at ``rate`` per second of event time, paced at the same rate on the wall clock."""

    type = "generator"
    config_schema = obj({
        "rate": {
            "type": "number", "minimum": 0, "default": 10,
            "description": "events per second, both of event time (event n is at start + n*1000/rate ms) and "
                           f"of wall-clock pacing; 0: as fast as possible, event times then {UNPACED_EVENT_RATE} per second",
        },
        "count": {
            "type": ["integer", "null"], "minimum": 1, "default": None,
            "description": "how many events in all; null: unbounded (--until-end and --drain need a count)",
        },
        "seed": {"type": "integer", "default": 0, "description": "random seed: the same seed gives the same events"},
        "bad_ratio": {
            "type": "number", "minimum": 0, "maximum": 1, "default": 0,
            "description": "share of bad records (0..1), cycling through every invalid kind of event",
        },
        "start": {
            "type": "string", "default": DEFAULT_START, "x-expected": "an RFC 3339 time like 2026-11-24T08:00:00Z",
            "description": "event time of event 0 (RFC 3339); fixed, so that offsets mean the same events after a restart",
        },
        "users": {"type": "integer", "minimum": 1, "default": 100, "description": "number of distinct users"},
        **source_common(),
    }, description="synthetic click events in user sessions, topic generator, partition 0, offset = sequence number")

    @classmethod
    def lint(cls, config: dict) -> list[tuple[tuple, str]]:
        start = config.get("start", DEFAULT_START)
        try:
            parse_event_time(start)
        except InvalidTime:
            return [(("start",), f"expected an RFC 3339 time like 2026-11-24T08:00:00Z, got {start!r}")]
        return []

    def __init__(self, config: dict, context):
        super().__init__(config, context)
        self.rate = config.get("rate", 10)
        self.count = config.get("count")
        self.generator = ClickGenerator(
            seed=config.get("seed", 0),
            start_ms=parse_event_time(config.get("start", DEFAULT_START)),
            rate=self.rate or UNPACED_EVENT_RATE,
            bad_ratio=config.get("bad_ratio", 0),
            users=config.get("users", 100),
        )
        self.position = 0
        self._anchor_time = time.monotonic()
        self._anchor_position = 0
        self._caught_up = False

    def _end(self) -> float:
        return math.inf if self.count is None else self.count

    def _anchor(self) -> None:
        """Pace from here: the record at ``position`` is due now, the next 1/rate s later."""
        self._anchor_time = time.monotonic()
        self._anchor_position = self.position

    def _due_end(self, now: float) -> float:
        """One past the last record due at ``now`` (capped at count)."""
        if not self.rate:
            return self._end()
        due = self._anchor_position + math.floor((now - self._anchor_time) * self.rate) + 1
        return min(self._end(), due)

    def open(self, offsets: dict[str, int]) -> dict[str, int]:
        position = offsets.get(KEY, 0)
        if self.count is not None and position > self.count:
            log.warning("generator: stored offset %d is beyond count %d (was count lowered?); "
                        "starting at the end, %d", position, self.count, self.count)
            position = self.count
        self.position = max(0, position)
        self._anchor()
        return {KEY: self.position}

    def end_offsets(self) -> dict[str, int]:
        if self.count is None:
            raise ConfigError(["--until-end needs generator.count (and so does --drain): the generator "
                               "source is endless without it; set source.count, e.g. --set source.count=10000"])
        return {KEY: self.count}

    def poll(self, timeout: float) -> list[Record]:
        deadline = time.monotonic() + max(0.0, timeout)
        if self.position >= self._end():
            self._caught_up = True
            time.sleep(max(0.0, timeout))
            return []
        while True:
            now = time.monotonic()
            due_end = self._due_end(now)
            if due_end > self.position:
                break
            next_due = self._anchor_time + (self.position - self._anchor_position) / self.rate
            wait = min(next_due, deadline) - now
            if now >= deadline:
                self._caught_up = True
                return []
            time.sleep(max(wait, 0.0005))
        first = self.position
        last = int(min(due_end, first + MAX_PER_POLL))
        gen = self.generator
        records = []
        for n in range(first, last):
            key, value = gen.record(n)
            records.append(Record(TOPIC, PARTITION, n, gen.time_ms(n), key, value))
        self.position = last
        self._caught_up = last >= due_end
        return records

    def caught_up(self, partition: str) -> bool:
        return self._caught_up


@hookimpl
def runner_register_sources():
    return [GeneratorSource]
