"""Tumbling and hopping windows on event time (CONTRACT section 6).

Windows are ``[k*advance, k*advance + size)``, half-open and aligned to the epoch. An event
is added to each of its windows that is not late for its partition (end > W_p); a window is
emitted once, when the pipeline watermark reaches its end, and then forgotten. Only open
windows are kept: in memory for speed, and in the stage's table for recovery.
"""

from __future__ import annotations

import heapq

from runner import hookimpl
from runner.aggregations import Aggregations
from runner.aggregations import schema as aggregations_schema
from runner.codec import compact, key_text
from runner.components import ProcessingError, Processor, Stage
from runner.display import render, template_problems, template_schema
from runner.outputs import result_id
from runner.schema import duration, obj
from runner.times import duration_ms, format_ms

LATE = b"late"


def window_properties(extra: dict) -> dict:
    return {
        "key_by": {"type": ["string", "null"], "minLength": 1, "default": None,
                   "description": "the event field to window per key (absent or null: key null); none: one global window"},
        **extra,
        "aggregations": aggregations_schema(),
        "display": template_schema("how a result shows on the console, its fields in braces, e.g. "
                                   "'{key}: {window_start:hm} - {window_end:hm}  {events} events'"),
    }


class WindowStage(Stage):
    """What every window stage shares: event time, late events, results and the dump."""

    windowed = True
    definition_free_keys = (LATE,)
    RESULT_FIELDS = ("id", "stage", "key", "window_start", "window_end")  # and the aggregations

    @classmethod
    def lint(cls, config):
        fields = [*cls.RESULT_FIELDS, *config["aggregations"]]
        return [(("display",), problem) for problem in template_problems(config.get("display"), fields)]

    def __init__(self, config, context):
        super().__init__(config, context)
        self.key_by = config.get("key_by")
        self.aggregations = Aggregations(config["aggregations"])
        self.late_policy = (context.settings.get("event_time") or {}).get("late", "dlq")

    def fingerprint(self):
        return {"type": self.type, "key_by": self.key_by, "aggregations": self.config["aggregations"], **self.params()}

    def params(self) -> dict:
        raise NotImplementedError

    def format_result(self, result):
        template = self.config.get("display")
        return render(template, result) if template else None

    def result(self, key, start: int, end: int, accs) -> dict:
        """The result (without id and stage) as the dump shows an open window."""
        return {"key": key, "window_start": format_ms(start), "window_end": format_ms(end),
                **self.aggregations.results(accs)}

    def open_results(self, entries: list) -> list[dict]:
        """The open windows held by the table's entries (all but the late counter)."""
        raise NotImplementedError

    def dump(self, table):
        entries = [value for key, value in table.items() if key != LATE]
        open_windows = self.open_results(entries)
        open_windows.sort(key=lambda r: (compact(r["key"]), r["window_start"], r["window_end"]))
        return {"late": table.get(LATE, 0), "open": open_windows}


class WindowProcessor(Processor):
    """Shared running logic: lateness, the late counter and emission."""

    def __init__(self, stage, table, emit):
        super().__init__(stage, table, emit)
        self.late = table.get(LATE, 0)

    def late_event(self, ev) -> None:
        self.late += 1
        self.table.put(LATE, self.late)
        if self.stage.late_policy == "dlq":
            self.emit.dead_letter(ev.record, self.name, "late",
                                  f"late: event time {format_ms(ev.time)} is before watermark "
                                  f"{format_ms(int(ev.wp))} of {ev.record.topic}/{ev.record.partition}"
                                  if ev.wp != float("inf") else
                                  f"late: event time {format_ms(ev.time)} arrived after the pipeline was drained "
                                  f"(watermark +inf) on {ev.record.topic}/{ev.record.partition}")

    def emit_result(self, key, start: int, end: int, accs) -> None:
        result = self.stage.result(key, start, end, accs)
        result["id"] = result_id(self.emit.pipeline, self.name, key, result["window_start"], result["window_end"])
        result["stage"] = self.name
        self.emit.result(self.name, key, result)


class TimeWindow(WindowStage):
    """Tumbling and hopping windows: state key = start (8 bytes) + compact JSON key."""

    def __init__(self, config, context):
        super().__init__(config, context)
        self.size = duration_ms(config["size"])
        self.advance = duration_ms(config.get("advance", config["size"]))

    def params(self):
        return {"size_ms": self.size, "advance_ms": self.advance}

    def open_results(self, entries):
        return [self.result(key, start, start + self.size, accs) for key, start, accs in entries]

    def build(self, table, emit):
        return TimeWindowProcessor(self, table, emit)


class TimeWindowProcessor(WindowProcessor):
    """Open windows by (start, key text): [key, start, accumulators], with their table key."""

    def __init__(self, stage: TimeWindow, table, emit):
        super().__init__(stage, table, emit)
        self.windows: dict[tuple[int, str], tuple[list, bytes]] = {}
        self.due: list[tuple[int, int, str]] = []  # (end, start, key text): a heap
        for key, value in table.items():
            if key != LATE:
                k, start, _ = value
                kt = compact(k)
                self.windows[(start, kt)] = (value, key)
                self.due.append((start + stage.size, start, kt))
        heapq.heapify(self.due)

    def process(self, events):
        stage, aggs, windows, dirty = self.stage, self.stage.aggregations, self.windows, self.table.dirty
        size, advance, key_by = stage.size, stage.advance, stage.key_by
        extract, add, new = aggs.extract, aggs.add, aggs.new
        passed = []
        for ev in events:
            t, wp = ev.time, ev.wp
            first = t - t % advance
            if advance == size:  # tumbling: one window
                starts = (first,) if first + size > wp else ()
            else:  # the windows holding t that are not late for its partition (end > W_p)
                low = first - size + advance  # the earliest window holding t
                if low >= 0 and low + size > wp:  # the usual case: all of them
                    starts = range(first, low - 1, -advance)
                else:
                    starts = [s for s in range(first, t - size, -advance) if s >= 0 and s + size > wp]
            if not starts:
                self.late_event(ev)
                passed.append(ev)
                continue
            data = ev.data
            if key_by:
                key = data.get(key_by)
                kt = key_text(key)
            else:
                key, kt = None, "null"
            try:
                values = extract(data)
                if aggs.has_checks:  # all of the event's windows, or none
                    for s in starts:
                        if (s, kt) in windows:
                            aggs.check(windows[(s, kt)][0][2], values)
            except ProcessingError as exc:
                self.fail(ev, exc)
                continue
            order = ev.order() if aggs.needs_order else None
            for s in starts:
                found = windows.get((s, kt))
                if found is None:
                    found = windows[(s, kt)] = ([key, s, new()], s.to_bytes(8, "big") + kt.encode())
                    heapq.heappush(self.due, (s + size, s, kt))
                window, table_key = found
                add(window[2], values, order)
                dirty[table_key] = window  # Table.put, inlined on the hot path
            passed.append(ev)
        return passed

    def advance(self, watermark):
        due, windows = self.due, self.windows
        while due and due[0][0] <= watermark:
            end, start, kt = heapq.heappop(due)
            (key, _, accs), table_key = windows.pop((start, kt))
            self.emit_result(key, start, end, accs)
            self.table.delete(table_key)


class Tumbling(TimeWindow):
    type = "tumbling_window"
    config_schema = obj(window_properties({
        "size": duration("the window length", positive=True),
    }), required=("size", "aggregations"), description="Fixed, non-overlapping event-time windows [k*size, (k+1)*size).")


class Hopping(TimeWindow):
    type = "hopping_window"
    config_schema = obj(window_properties({
        "size": duration("the window length", positive=True),
        "advance": duration("how far each window starts after the previous one; must divide size", positive=True),
    }), required=("size", "advance", "aggregations"),
        description="Overlapping event-time windows [k*advance, k*advance + size); an event is in size/advance of them.")

    @classmethod
    def lint(cls, config):
        problems = super().lint(config)
        try:
            size, advance = duration_ms(config["size"]), duration_ms(config["advance"])
        except ValueError:
            return problems  # reported by the schema checks
        if advance and size % advance:
            problems.append((("advance",), f"advance ({config['advance']}) must divide size ({config['size']}) evenly"))
        return problems


@hookimpl
def runner_register_stages():
    return [Tumbling, Hopping]
