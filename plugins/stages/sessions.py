"""Session windows per key (CONTRACT section 6).

Two events of a key share a session when their times differ by at most ``gap``; an event that
bridges two sessions merges them. A session whose last event time is L is final when the
pipeline watermark W > L + gap, and an event is late when t < W_p, so a final session is
never touched again: the final sessions are exactly the gap-connected groups of the events
that were not late.
"""

from __future__ import annotations

import heapq

from runner import hookimpl
from runner.codec import key_text
from runner.components import ProcessingError
from runner.schema import duration, obj
from runner.times import duration_ms
from plugins.stages.windows import LATE, WindowProcessor, WindowStage, window_properties


def entry_key(kt: str) -> bytes:
    return kt.encode()


class Session(WindowStage):
    type = "session_window"
    config_schema = obj(window_properties({
        "gap": duration("inactivity that ends a session: events at most this far apart share one", positive=True),
    }), required=("key_by", "gap", "aggregations"),
        description="Per-key sessions of events at most gap apart; results carry duration_s.")
    config_schema["properties"]["key_by"] = {"type": "string", "minLength": 1, "description": "the event field that identifies whose session it is"}

    RESULT_FIELDS = (*WindowStage.RESULT_FIELDS, "duration_s")

    def __init__(self, config, context):
        super().__init__(config, context)
        self.gap = duration_ms(config["gap"])

    def params(self):
        return {"gap_ms": self.gap}

    def result(self, key, start, end, accs):
        result = super().result(key, start, end, accs)
        result["duration_s"] = (end - start) / 1000
        return result

    def open_results(self, entries):
        return [self.result(key, start, last, accs) for key, sessions in entries for start, last, accs in sessions]

    def build(self, table, emit):
        return SessionProcessor(self, table, emit)


class SessionProcessor(WindowProcessor):
    """State per key: [key, [[start, last, accumulators], ...]] sorted by start.

    ``due`` is a heap of (bound, key text), one live entry per key with sessions, whose bound
    is at most the earliest ``last + gap`` of that key's sessions (``scheduled`` holds it):
    extending a session only raises its ``last``, so the common event pushes nothing, and
    ``advance`` looks again at a key whose bound the watermark passed."""

    def __init__(self, stage: Session, table, emit):
        super().__init__(stage, table, emit)
        self.entries: dict[str, list] = {}
        self.scheduled: dict[str, int] = {}
        self.due: list[tuple[int, str]] = []
        for k, entry in table.items():
            if k != LATE:
                kt = k.decode()
                self.entries[kt] = entry
                self.scheduled[kt] = bound = min(last for _, last, _ in entry[1]) + stage.gap
                self.due.append((bound, kt))
        heapq.heapify(self.due)

    def process(self, events):
        aggs, gap, entries, dirty = self.stage.aggregations, self.stage.gap, self.entries, self.table.dirty
        extract, key_by = aggs.extract, self.stage.key_by
        passed = []
        for ev in events:
            t = ev.time
            if t < ev.wp:
                self.late_event(ev)
                passed.append(ev)
                continue
            data = ev.data
            try:
                values = extract(data)
            except ProcessingError as exc:
                self.fail(ev, exc)
                continue
            key = data.get(key_by)
            kt = key_text(key)
            entry = entries.get(kt)
            if entry is None:
                entry = entries[kt] = [key, []]
            sessions = entry[1]
            order = ev.order() if aggs.needs_order else None
            only = sessions[0] if len(sessions) == 1 else None
            if only is not None and only[0] - gap <= t <= only[1] + gap:  # the usual case, without a comprehension
                touching = [only]
            else:
                touching = [s for s in sessions if s[0] - gap <= t <= s[1] + gap]
            try:
                if len(touching) == 1:
                    if aggs.has_checks:
                        aggs.check(touching[0][2], values)
                else:  # a new session, or one that bridges (merges) several: built aside first
                    accs = aggs.new()
                    aggs.add(accs, values, order)
                    for s in touching:
                        accs = aggs.merge(s[2], accs)
            except ProcessingError as exc:
                self.fail(ev, exc)
                continue
            if len(touching) == 1:  # the common case: extend one session in place
                session = touching[0]
                aggs.add(session[2], values, order)
                if t < session[0]:
                    session[0] = t
                elif t > session[1]:
                    session[1] = t
            else:
                start, last = min([t] + [s[0] for s in touching]), max([t] + [s[1] for s in touching])
                for s in touching:
                    sessions.remove(s)
                sessions.append([start, last, accs])
                sessions.sort(key=lambda s: s[0])
                self._schedule(kt, last + gap)
            dirty[entry_key(kt)] = entry  # Table.put, inlined on the hot path
            passed.append(ev)
        return passed

    def _schedule(self, kt: str, bound: int) -> None:
        if bound < self.scheduled.get(kt, bound + 1):
            self.scheduled[kt] = bound
            heapq.heappush(self.due, (bound, kt))

    def advance(self, watermark):
        due, gap, scheduled = self.due, self.stage.gap, self.scheduled
        while due and due[0][0] < watermark:
            bound, kt = heapq.heappop(due)
            if scheduled.get(kt) != bound:
                continue  # a lower bound was pushed for this key since
            del scheduled[kt]
            entry = self.entries[kt]
            sessions = entry[1]
            final = [s for s in sessions if s[1] + gap < watermark]
            for session in final:
                sessions.remove(session)
                self.emit_result(entry[0], session[0], session[1], session[2])
            if sessions:
                self._schedule(kt, min(s[1] for s in sessions) + gap)
                if final:
                    self.table.put(entry_key(kt), entry)
            else:
                del self.entries[kt]
                self.table.delete(entry_key(kt))


@hookimpl
def runner_register_stages():
    return [Session]
