"""The figures of ``runner bench`` beside their targets, the machine they were measured on,
and the JSON file."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata

PACKAGES = ("kafka-python", "lmdb", "orjson", "jsonschema-rs")
RATIO_TARGETS = {"fault_tolerant": 0.5, "basic": 0.7}  # throughput / ceiling, by pipeline name
CHECKPOINT_MEDIAN_MS = 1.0
LATENCY_P99_MS = 30.0
LATENCY_RATE = 5000
RECOVERY_S = 1.0


def machine() -> dict:
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = None
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cores": os.cpu_count(), "memory_bytes": memory, "python": platform.python_version(),
            "platform": platform.platform(), "packages": versions}


def targets(results: dict) -> list[dict]:
    """Each figure with a target: {figure, value, target, met}."""
    rows = []
    for p in results["pipelines"]:
        goal = RATIO_TARGETS.get(p["name"])
        if goal is not None:
            rows.append({"figure": f"{p['name']}.ratio_to_ceiling", "value": p["ratio_to_ceiling"],
                         "target": f">= {goal}x", "met": p["ratio_to_ceiling"] >= goal})
        median = p["checkpoint_ms"]["p50_ms"]
        rows.append({"figure": f"{p['name']}.checkpoint_ms.p50_ms", "value": median,
                     "target": f"< {CHECKPOINT_MEDIAN_MS:g} ms", "met": median is not None and median < CHECKPOINT_MEDIAN_MS})
    lat = results.get("latency")
    if lat:
        rows.append({"figure": "latency.p99_ms", "value": lat["p99_ms"],
                     "target": f"< {LATENCY_P99_MS:g} ms at {LATENCY_RATE}/s",
                     "met": lat["p99_ms"] is not None and lat["p99_ms"] < LATENCY_P99_MS if lat["rate"] == LATENCY_RATE else None})
    rec = results.get("recovery")
    if rec:
        rows.append({"figure": "recovery.first_event_s", "value": rec["first_event_s"], "target": f"< {RECOVERY_S:g} s",
                     "met": rec["first_event_s"] < RECOVERY_S})
    return rows


def table(results: dict) -> str:
    """The figures as an aligned text table: figure, value, target, and whether it is met."""
    goals = {row["figure"]: row for row in targets(results)}
    rows: list[tuple] = []
    verdicts = {True: "ok", False: "MISSED", None: "(other rate)"}
    if results["config"]["quick"]:  # its sizes are too small to judge anything by (a smoke test)
        verdicts = dict.fromkeys(verdicts, "(--quick: not judged)")

    def add(label, value, figure=None):
        goal = goals.get(figure)
        met = "" if goal is None else verdicts[goal["met"]]
        rows.append((label, value, goal["target"] if goal else "", met))

    fill = results["fill"]
    add("backlog", f"{fill['events']:,} events ({fill['bad']:,} bad), {results['config']['partitions']} partitions")
    for p in results["pipelines"]:
        n = p["name"]
        add(f"{n}: ceiling just before its run, kafka-python, records untouched",
            f"{p['ceiling_events_per_s']:,.0f} events/s")
        add(f"{n}: throughput", f"{p['events_per_s']:,.0f} events/s = {p['ratio_to_ceiling']:.2f}x ceiling",
            f"{n}.ratio_to_ceiling")
        if len(p["runs"]) > 1:
            add(f"{n}: the ratios of its {len(p['runs'])} runs (the median one gives its figures)",
                ", ".join(f"{run['ratio_to_ceiling']:.2f}x" for run in p["runs"]))
        add(f"{n}: events processed, wall time", f"{p['events']:,} in {p['seconds']:.2f} s")
        add(f"{n}: time to first event", f"{p['first_event_s'] * 1000:.0f} ms")
        cp, wr = p["checkpoint_ms"], p["checkpoint_write_ms"]
        add(f"{n}: checkpoint median / p99 ({cp['count']}), processing", f"{cp['p50_ms']:.3f} / {cp['p99_ms']:.3f} ms",
            f"{n}.checkpoint_ms.p50_ms")
        add(f"{n}: its transaction written + synced (writer process)",
            "n/a (memory state)" if wr is None else f"{wr['p50_ms']:.3f} / {wr['p99_ms']:.3f} ms")
        thread = p["main_thread"]
        if thread and p["main_thread_cpu_us_per_event"] is not None:
            add(f"{n}: the runner's thread on a core / waiting for a core / waiting (pipes, disk)",
                " / ".join(f"{thread[k] / thread['wall_s']:.0%}" for k in ("on_cpu_s", "run_queue_s", "waiting_s"))
                + f" of {thread['wall_s']:.2f} s; {p['main_thread_cpu_us_per_event']:.1f} us of CPU an event")
        if p["helpers_cpu_us_per_event"]:
            add(f"{n}: CPU an event in its helper processes",
                ", ".join(f"{module.rpartition('.')[2]} {us:.1f} us" for module, us in p["helpers_cpu_us_per_event"].items()))
        add(f"{n}: peak RSS ({p['peak_rss_scope']}), runner + its helper processes",
            f"{p['peak_rss_mib']:.0f} + {p['helpers_peak_rss_mib']:.0f} MiB")
        st = p["state"]
        if st["used_bytes"] is None:
            add(f"{n}: state ({st['backend']})", f"{st['open_total']:,} open keys/windows")
        else:
            add(f"{n}: LMDB data.mdb / in use", f"{_mib(st['data_mdb_bytes'])} / {_mib(st['used_bytes'])}")
            per = "n/a" if st["bytes_per_open"] is None else f"{st['bytes_per_open']:,.0f} B"
            add(f"{n}: in use per open key/window", f"{per} ({st['open_total']:,} open)")
    lat = results.get("latency")
    if lat:
        add(f"latency {lat['pipeline']} at {lat['rate']:g}/s for {lat['seconds']:g} s "
            f"after {lat['warmup_seconds']:g} s: p50 / p99 / max", _latencies(lat), "latency.p99_ms")
        add(f"latency: p99 of the records sent in each third of the {lat['seconds']:g} s", _thirds(lat))
        add("latency: of which in the runner (polled -> checkpoint on disk)", _latencies(lat["in_runner"]))
        add("latency: of which between the source's fetch and the runner's poll", _latencies(lat["fetched_to_polled"]))
        add(f"latency: the {lat['warmup_seconds']:g} s warm-up (the runner starting)", _latencies(lat["warmup"]))
        add("latency: records measured (+ warm-up), rate achieved",
            f"{lat['count']:,} (+ {lat['warmup']['count']:,}) of {lat['sent']:,}, "
            f"{lat['achieved_rate'] or 0:,.0f}/s")
    low = results.get("latency_floor")
    if low:
        add("latency: measured from each record's timestamp, set by", _stamped_by(low["timestamps"]))
        add(f"latency floor: kafka-python alone at {low['rate']:g}/s for {low['seconds']:g} s "
            f"after {low['warmup_seconds']:g} s: p50 / p99 / max", _latencies(low))
        add(f"latency floor: p99 of the records sent in each third of the {low['seconds']:g} s", _thirds(low))
    rec = results.get("recovery")
    if rec:
        add(f"recovery over {rec['keys']:,} keys ({_mib(rec['state_bytes'])}): spawn to first event",
            f"{rec['first_event_s']:.3f} s", "recovery.first_event_s")
        add("recovery: of which interpreter / imports / load / open",
            f"{rec['interpreter_s']:.3f} / {rec['imports_s']:.3f} / {rec['load_s']:.3f} / "
            f"{rec['open_to_first_event_s']:.3f} s")
        add("recovery: the same over no state", f"{rec['fresh_first_event_s']:.3f} s")
    header = ("figure", "value", "target", "")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(3)]
    lines = [f"{header[0]:<{widths[0]}}  {header[1]:<{widths[1]}}  {header[2]}",
             "  ".join("-" * w for w in widths)]
    lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}".rstrip() for a, b, c, d in rows]
    m = results["machine"]
    memory = "?" if m["memory_bytes"] is None else f"{m['memory_bytes'] / (1 << 30):.1f} GiB"
    lines.append(f"machine: {m['cores']} cores, {memory}, Python {m['python']}, {m['platform']}")
    lines.append("packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()))
    return "\n".join(lines)


def _latencies(figures: dict) -> str:
    if not figures["count"]:
        return "none measured"
    return f"{figures['p50_ms']:.1f} / {figures['p99_ms']:.1f} / {figures['max_ms']:.1f} ms"


def _stamped_by(timestamps: str | None) -> str:
    if timestamps is None:
        return "- (no record came)"
    return {"broker": "the broker as it appended the record (LogAppendTime)",
            "producer": "the producer as it sent the record, its linger included (the broker kept it)",
            }.get(timestamps, "the broker for some records, the producer for others")


def _thirds(figures: dict) -> str:
    """The p99s of a latency phase's thirds: the embedded broker's latency grows as it fills."""
    return " / ".join("-" if p is None else f"{p:.1f}" for p in figures["p99_by_third_ms"]) + " ms"


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / (1 << 20):.1f} MiB"


def write_json(path: str, results: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump({**results, "targets": targets(results)}, f, indent=2)
        f.write("\n")
