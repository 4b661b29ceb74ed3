"""Event time across partitions: high marks, partition watermarks and the pipeline watermark.

CONTRACT section 6: H_p is the greatest event time of partition p among events that reached
the first window stage; W_p = H_p - grace; W = min over partitions of W_p, never decreasing.
Lateness is judged against the event's own partition, so which events count where never
depends on how partitions interleave.
"""

from __future__ import annotations

import math

from runner.components import Context, Event, ProcessingError

INF = math.inf


class EventTime:
    def __init__(self, context: Context, stage: str, grace_ms: int, idle_timeout_ms: int,
                 highs: dict[str, float], watermark: float):
        self.context = context
        self.stage = stage  # the first window stage: its name is on time errors
        self.grace = grace_ms
        self.idle_timeout = idle_timeout_ms / 1000
        # partition -> H_p (-inf before any event; the state stores null for it)
        self.high = {p: -INF if h is None else h for p, h in highs.items()}
        self.watermark = watermark
        self.idle: set[str] = set()
        self._last_seen: dict[str, float] = {}

    def add_partitions(self, partitions) -> None:
        for p in partitions:
            self.high.setdefault(p, -INF)

    def observe(self, events: list[Event], emit) -> list[Event]:
        """Raise H_p with each event reaching the first window stage and stamp the event
        with its partition watermark; an event without a valid time fails that stage."""
        high, grace, watermark, time_of = self.high, self.grace, self.watermark, self.context.time_of
        passed = []
        for ev in events:
            t = ev.time
            if t is None:
                try:
                    t = time_of(ev)
                except ProcessingError as exc:
                    emit.dead_letter(ev.record, self.stage, "processing", str(exc))
                    continue
            p = ev.partition
            h = high[p]
            if t > h:
                high[p] = h = t
            wp = h - grace
            # after a drain the watermark is +inf for good: everything is late
            ev.wp = wp if wp >= watermark else watermark
            passed.append(ev)
        return passed

    def seen(self, partitions, now: float) -> None:
        """Partitions that delivered records just now."""
        for p in partitions:
            self._last_seen[p] = now
            if p in self.idle:
                # back from idleness: never behind the watermark it was left out of
                self.idle.discard(p)
                self.high[p] = max(self.high[p], self.watermark + self.grace)

    def update_idle(self, caught_up, now: float) -> None:
        """Unbounded runs: leave out partitions caught up and silent for ``idle_timeout``
        (``now``: ``time.monotonic()``)."""
        if not self.idle_timeout:
            return
        for p in self.high:
            last = self._last_seen.setdefault(p, now)
            if p not in self.idle and now - last >= self.idle_timeout and caught_up(p):
                self.idle.add(p)

    def recompute(self) -> float:
        active = [h for p, h in self.high.items() if p not in self.idle]
        if active:
            candidate = min(active) - self.grace
            if candidate > self.watermark:
                self.watermark = candidate
        return self.watermark

    def drain(self) -> float:
        self.watermark = INF
        return INF
