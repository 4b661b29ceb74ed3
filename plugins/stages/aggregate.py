"""The ``aggregate`` stage: running aggregations per key, milestones, and a console report."""

from __future__ import annotations

import time

from runner import hookimpl
from runner.aggregations import SKIP, Aggregations, Count, Sum
from runner.aggregations import schema as aggregations_schema
from runner.codec import compact, key_text
from runner.components import Processor, ProcessingError, Stage
from runner.display import render, template_problems, template_schema
from runner.outputs import result_id
from runner.schema import duration, obj
from runner.times import duration_ms

MILESTONE_KINDS = ("count", "count_distinct", "sum")
MILESTONE_FIELDS = ("id", "stage", "key", "milestone", "value")  # a milestone result's
MAX_MILESTONES = 10_000  # milestones one event may reach at once (one result each)


class Aggregate(Stage):
    type = "aggregate"
    config_schema = obj({
        "key_by": {"type": ["string", "null"], "minLength": 1, "default": None,
                   "description": "the event field to group by (absent or null values form the key null); none: one global key"},
        "aggregations": aggregations_schema(),
        "milestones": {
            "type": "object", "default": {},
            "additionalProperties": {"type": "number", "exclusiveMinimum": 0, "x-expected": "a number > 0"},
            "description": "metric -> M: emit a result each time the metric of a key reaches a multiple of M",
        },
        "display": {"default": {}, **obj({
            "every": duration("how often the console report is shown (and once at a clean stop)", default="10s"),
            "line": template_schema("one line per key changed since the last report, e.g. '[PAGE STATS] {key}: {views} views'"),
            "milestone": template_schema("how a milestone shows on the console, e.g. '[POPULAR] {key} reached {value} {milestone}!'"),
            "top": obj({
                "by": {"type": "string", "description": "the aggregation to rank keys by"},
                "n": {"type": "integer", "minimum": 1, "default": 5, "description": "how many keys"},
                "title": {"type": "string", "default": "TOP KEYS", "description": "the table's heading"},
            }, required=("by",), description="a periodic table of the top keys"),
        }, description="console display; not results")},
    }, required=("aggregations",), description="Running aggregations per key (no window); results are milestones only.")

    @classmethod
    def lint(cls, config):
        aggs = config["aggregations"]
        problems = []
        for metric in config.get("milestones", {}):
            spec = aggs.get(metric)
            kind = spec if spec == "count" else next(iter(spec), None) if isinstance(spec, dict) else None
            if kind not in MILESTONE_KINDS:
                problems.append((("milestones", metric), f"milestones need a count, count_distinct or sum aggregation, "
                                                        f"and {metric!r} is {'not one' if spec is None else kind}"))
        display = config.get("display") or {}
        top = display.get("top")
        if top and top["by"] not in aggs:
            problems.append((("display", "top", "by"), f"no aggregation named {top['by']!r}"))
        for part, fields in (("line", ["key", *aggs]), ("milestone", MILESTONE_FIELDS)):
            problems += [(("display", part), problem) for problem in template_problems(display.get(part), fields)]
        return problems

    def __init__(self, config, context):
        super().__init__(config, context)
        self.key_by = config.get("key_by")
        self.aggregations = Aggregations(config["aggregations"])
        self.milestones = [(self.aggregations.names.index(m), m, step) for m, step in config.get("milestones", {}).items()]
        self.display = config.get("display") or {}

    def fingerprint(self):
        # milestones too: an entry keeps the highest multiple of each step it reached
        return {"type": self.type, "key_by": self.key_by, "aggregations": self.config["aggregations"],
                "milestones": self.config.get("milestones", {})}

    def build(self, table, emit):
        return AggregateProcessor(self, table, emit)

    def dump(self, table):
        aggs = self.aggregations
        keys = [{"key": entry[0], **aggs.results(entry[1])} for _, entry in table.items()]
        return {"keys": sorted(keys, key=lambda k: compact(k["key"]))}

    def format_result(self, result):
        template = self.display.get("milestone")
        return render(template, result) if template else None


class AggregateProcessor(Processor):
    """Entries are [key, accumulators, {metric: highest milestone multiple emitted}]."""

    def __init__(self, stage: Aggregate, table, emit):
        super().__init__(stage, table, emit)
        self.cache: dict[str, tuple[list, bytes]] = {}  # key text -> (entry, table key)
        self.changed: set[str] = set()
        # every milestone counts or sums (its result is its accumulator) in whole steps
        self.exact = all(isinstance(stage.aggregations.items[index], (Count, Sum)) and step.__class__ is int
                         for index, _, step in stage.milestones)
        self.next_report = time.monotonic() + duration_ms(stage.display.get("every", "10s")) / 1000

    def process(self, events):
        stage, aggs, cache, dirty = self.stage, self.stage.aggregations, self.cache, self.table.dirty
        key_by, time_of, milestones, exact = stage.key_by, stage.context.time_of, stage.milestones, self.exact
        track = bool(stage.display.get("line"))  # keys changed since the last report
        passed = []
        for ev in events:
            data = ev.data
            try:
                if data.__class__ is not dict:
                    raise ProcessingError("event is not a JSON object")
                values = aggs.extract(data)
                for index, metric, step in milestones:
                    v = values[index]
                    if v is not SKIP and v.__class__ is not tuple and v.__class__ is not str:
                        if v < 0:
                            raise ProcessingError(f"negative value for field {aggs.items[index].field}: "
                                                  f"a sum with milestones cannot go down")
                        if v > MAX_MILESTONES * step:  # each would be a result: refuse the event, not hang
                            raise ProcessingError(f"value {v:g} of field {aggs.items[index].field} would reach "
                                                  f"{v / step:,.0f} milestones of {metric} at once (at most "
                                                  f"{MAX_MILESTONES:,} an event): raise milestones.{metric}")
                order = None
                if aggs.needs_order:
                    time_of(ev)
                    order = ev.order()
            except ProcessingError as exc:
                self.fail(ev, exc)
                continue
            key = data.get(key_by) if key_by else None
            kj = key_text(key)
            cached = cache.get(kj)
            if cached is None:
                kb = kj.encode()
                cached = cache[kj] = (self.table.get(kb) or [key, aggs.new(), {}], kb)
            entry, kb = cached
            if aggs.has_checks:
                try:
                    aggs.check(entry[1], values)
                except ProcessingError as exc:
                    self.fail(ev, exc)
                    continue
            accs = entry[1]
            aggs.add(accs, values, order)
            if milestones:
                if exact:  # _milestones's own first test, inlined: most events reach no threshold
                    reached = entry[2]
                    for index, metric, step in milestones:
                        value = accs[index]
                        if value.__class__ is not int or value >= (reached.get(metric, 0) + 1) * step:
                            self._milestones(entry)
                            break
                else:
                    self._milestones(entry)
            dirty[kb] = entry  # Table.put, inlined on the hot path
            if track:
                self.changed.add(kj)
            passed.append(ev)
        if len(cache) > 100_000:  # the table has them all; keep memory bounded
            cache.clear()
        return passed

    def _milestones(self, entry):
        key, accs, reached = entry
        stage = self.stage
        for index, metric, step in stage.milestones:
            value = stage.aggregations.items[index].result(accs[index])
            done = reached.get(metric, 0)
            if value.__class__ is int and step.__class__ is int and value < (done + 1) * step:
                continue  # the usual case, exact in integers: no threshold reached
            top = int(value // step)
            for k in range(done + 1, top + 1):
                threshold = k * step
                if isinstance(threshold, float) and threshold.is_integer():
                    threshold = int(threshold)
                result = {"id": result_id(self.emit.pipeline, self.name, key, "milestone", metric, compact(threshold)),
                          "stage": self.name, "key": key, "milestone": metric, "value": threshold}
                self.emit.result(self.name, key, result)
            if top > done:
                reached[metric] = top

    def report(self):
        display = self.stage.display
        now = time.monotonic()
        if not (display.get("line") or display.get("top")) or now < self.next_report:
            return []
        self.next_report = now + duration_ms(display.get("every", "10s")) / 1000
        aggs, lines = self.stage.aggregations, []
        if display.get("line"):
            for kj in sorted(self.changed):
                entry = self.cache[kj][0] if kj in self.cache else self.table.get(kj.encode())
                if entry:
                    lines.append(render(display["line"], {"key": entry[0], **aggs.results(entry[1])}))
        self.changed.clear()
        top = display.get("top")
        if top:
            rows = [{"key": e[0], **aggs.results(e[1])} for _, e in self.table.items()]
            rows.sort(key=lambda r: (-(r[top["by"]] or 0), compact(r["key"])))
            lines.append(f"==== {top['title']} ====")
            for i, row in enumerate(rows[: top["n"]], 1):
                lines.append(f"{i:>3}. {str(row['key']):<28} {row[top['by']]} {top['by']}")
        return lines


    def final_report(self):
        self.next_report = 0.0  # a run shorter than display.every shows its figures once, at its stop
        return self.report()


@hookimpl
def runner_register_stages():
    return [Aggregate]
