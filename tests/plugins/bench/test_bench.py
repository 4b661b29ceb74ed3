"""`runner bench`: every figure is reported, each pipeline reads the whole backlog, and a stop
leaves neither broker nor temporary files behind. Figures are checked for presence and sign,
never against a time."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from plugins import broker as embedded
from plugins.bench import QUICK
from plugins.bench import kafka as bench_kafka
from plugins.bench.common import Helpers, Observer, ThreadTime, p99_by_third
from plugins.bench.pipelines import median_run
from plugins.bench.recovery import EXTRA
from runner.cli import main
from runner.state import LmdbStore

ROOT = Path(__file__).resolve().parents[3]


def positive(*values):
    for value in values:
        assert isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0, values


def test_quick_bench_reports_every_figure(broker, tmp_path, capsys):
    out = tmp_path / "out.json"
    assert main(["bench", "--quick", "--repeat", "2", "--bootstrap", broker, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    figures = json.loads(out.read_text())
    n = QUICK["events"]
    assert figures["config"]["events"] == n and figures["config"]["broker"] == broker

    assert figures["fill"]["events"] == n
    positive(figures["fill"]["bad"], figures["fill"]["events_per_s"])
    assert len(figures["ceilings"]) == 2 and figures["ceiling"] == figures["ceilings"][0]
    for ceiling in [figures["ceiling_warmup"], *figures["ceilings"]]:
        assert ceiling["events"] == ceiling["end_offsets"] == n
        positive(ceiling["seconds"], ceiling["events_per_s"])

    assert [p["name"] for p in figures["pipelines"]] == ["basic", "fault_tolerant"]
    for p, ceiling in zip(figures["pipelines"], figures["ceilings"]):
        assert p["events"] == n, p["name"]  # exactly the backlog, no more, no less
        # each against the ceiling taken just before it
        assert p["ceiling_events_per_s"] == ceiling["events_per_s"]
        assert p["ratio_to_ceiling"] == p["events_per_s"] / ceiling["events_per_s"]
        # two runs, each with a ceiling of its own: the figures are the lower middle one's
        assert len(p["runs"]) == 2 and len({run["ceiling_events_per_s"] for run in p["runs"]}) == 2
        assert p["ratio_to_ceiling"] == min(run["ratio_to_ceiling"] for run in p["runs"])
        cp = p["checkpoint_ms"]
        assert cp["count"] == p["checkpoints"] >= n // 100
        positive(p["seconds"], p["events_per_s"], p["ratio_to_ceiling"], p["first_event_s"],
                 p["after_first_event_events_per_s"], cp["p50_ms"], cp["p99_ms"], cp["max_ms"], p["peak_rss_mib"],
                 p["state"]["open_total"])
        # the runner's thread: its time on a core and in the run queue fit in its wall time
        thread = p["main_thread"]
        positive(thread["wall_s"], thread["on_cpu_s"], p["main_thread_cpu_us_per_event"])
        assert thread["run_queue_s"] >= 0 and thread["waiting_s"] >= 0
        assert thread["on_cpu_s"] + thread["run_queue_s"] <= thread["wall_s"] * 1.02 + 0.01
    basic, fault_tolerant = figures["pipelines"]
    assert basic["state"]["backend"] == "memory" and basic["state"]["used_bytes"] is None
    # memory state has no writer process: its transaction time is not the processing's again
    assert basic["checkpoint_write_ms"] is None
    assert re.search(r"basic: its transaction written \+ synced \(writer process\) +n/a \(memory state\)", table)
    assert fault_tolerant["checkpoint_write_ms"]["count"] == fault_tolerant["checkpoints"]
    positive(fault_tolerant["checkpoint_write_ms"]["p50_ms"])
    # its state writer, Kafka reader and DLQ producer live through the whole run
    positive(fault_tolerant["helpers_peak_rss_mib"], *fault_tolerant["helpers_cpu_us_per_event"].values())
    assert set(fault_tolerant["helpers_cpu_us_per_event"]) <= {
        "runner.state_writer", "plugins.sources.kafka_reader", "plugins.sinks.kafka_producer"}
    state = fault_tolerant["state"]
    assert state["backend"] == "lmdb"
    assert set(state["open"]) == {"page_stats", "traffic_5m", "trending_10m", "sessions"}
    positive(state["data_mdb_bytes"], state["used_bytes"], state["bytes_per_open"])

    sent = int(QUICK["rate"] * (QUICK["latency_seconds"] + QUICK["warmup_seconds"]))
    latency = figures["latency"]
    assert latency["pipeline"] == "fault_tolerant" and latency["warmup_seconds"] == QUICK["warmup_seconds"]
    # every record is measured once: in the warm-up (stamped in its first 0.5 s) or after it
    assert latency["sent"] == latency["count"] + latency["warmup"]["count"] == sent
    assert latency["in_runner"]["count"] == latency["count"] > sent // 2
    positive(latency["checkpoints"], latency["achieved_rate"], latency["p50_ms"], latency["p99_ms"], latency["max_ms"],
             latency["warmup"]["count"], latency["in_runner"]["p50_ms"])
    # the runner's part is part of the whole, record by record
    assert latency["in_runner"]["max_ms"] <= latency["max_ms"]
    # the Kafka source says when its reader fetched each record: the wait before the runner's
    # poll, which is part of the whole too
    waited = latency["fetched_to_polled"]
    assert waited["count"] == latency["count"]
    assert 0 <= waited["p50_ms"] <= waited["max_ms"] <= latency["max_ms"]

    floor = figures["latency_floor"]
    assert floor["sent"] == floor["count"] + floor["warmup"]["count"] == sent
    assert floor["count"] > sent // 2
    positive(floor["p50_ms"], floor["p99_ms"], floor["max_ms"], floor["warmup"]["count"])
    assert floor["timestamps"] in ("broker", "producer")  # LogAppendTime asked for; Tansu keeps CreateTime
    stamped_by = {"broker": "the broker as it appended", "producer": "the producer as it sent"}
    assert stamped_by[floor["timestamps"]] in table
    for phase in (latency, floor):  # every third of a steady load has records
        assert len(phase["p99_by_third_ms"]) == 3
        positive(*phase["p99_by_third_ms"])

    recovery = figures["recovery"]
    assert recovery["keys"] == QUICK["recovery_keys"] and recovery["processed"] == EXTRA
    assert "restored checkpoint" in recovery["log"]
    positive(recovery["state_bytes"], recovery["build_s"], recovery["first_event_s"], recovery["interpreter_s"],
             recovery["imports_s"], recovery["load_s"], recovery["open_to_first_event_s"],
             recovery["fresh_first_event_s"])

    machine = figures["machine"]
    positive(machine["cores"], machine["memory_bytes"])
    assert machine["python"] and all(machine["packages"].values())
    assert {t["figure"] for t in figures["targets"]} == {
        "basic.ratio_to_ceiling", "basic.checkpoint_ms.p50_ms", "fault_tolerant.ratio_to_ceiling",
        "fault_tolerant.checkpoint_ms.p50_ms", "latency.p99_ms", "recovery.first_event_s"}

    for label in ("ceiling", "basic: throughput", "basic: the ratios of its 2 runs",
                  "fault_tolerant: the runner's thread on a core", "fault_tolerant: checkpoint median",
                  "latency floor", "each third of the", "measured from each record's timestamp, set by", "of which in the runner", "between the source's fetch and the runner's poll",
                  "warm-up", "recovery", "machine:", "kafka-python"):
        assert label in table
    assert "MISSED" not in table and table.count("(--quick: not judged)") == 6  # a smoke run judges nothing


def test_the_median_run_gives_the_figures():
    def run(ratio):
        return {"events_per_s": ratio * 100, "ceiling_events_per_s": 100.0, "ratio_to_ceiling": ratio}, \
               {"events_per_s": ratio * 100, "ceiling_events_per_s": 100.0, "ratio_to_ceiling": ratio}

    for ratios, expected in (([0.5, 0.2, 0.4], 0.4), ([0.3, 0.6, 0.1, 0.5], 0.3), ([0.7], 0.7)):
        ceiling, chosen = median_run([run(r) for r in ratios])
        assert chosen["ratio_to_ceiling"] == expected and ceiling["ratio_to_ceiling"] == expected
        assert [r["ratio_to_ceiling"] for r in chosen["runs"]] == ratios  # in the order they ran


def test_p99_by_third_splits_the_records_by_when_they_were_sent():
    sent = [float(t) for t in range(300)]  # one record a millisecond for 300 ms
    latencies = [5.0 if t < 100 else 20.0 if t < 200 else 80.0 for t in range(300)]
    latencies[150] = 1000.0  # one slow record in the middle third: not its p99 (99 of 100 are 20)
    assert p99_by_third(sent, latencies) == [5.0, 20.0, 80.0]
    assert p99_by_third([7.0], [3.0]) == [3.0, None, None]  # one record: all in the first third
    assert p99_by_third([], []) == [None, None, None]


def test_the_observer_times_a_transaction_only_when_a_writer_process_wrote_it():
    observer = Observer()
    observer.on_checkpoint(1, 2.5, None, [])  # a memory store: no writer, nothing written apart
    observer.on_checkpoint(2, 3.0, (0.75,), [(0.0, None, [1, 2])])
    assert (observer.commit_ms, observer.write_ms, observer.records) == ([2.5, 3.0], [0.75], 2)


def test_thread_time_tells_a_busy_thread_from_a_waiting_one():
    with ThreadTime() as sleeping:
        time.sleep(0.3)
    busy_until = time.perf_counter() + 0.3
    with ThreadTime() as busy:
        while time.perf_counter() < busy_until:
            pass
    assert sleeping.figures["waiting_s"] > 0.2 > sleeping.figures["on_cpu_s"]
    assert busy.figures["on_cpu_s"] + busy.figures["run_queue_s"] > 0.2 > busy.figures["waiting_s"]


def no_broker(*args, **kwargs):
    raise AssertionError("the bench started its broker")


def test_bench_rejects_a_pipeline_without_a_kafka_source_before_starting_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_kafka, "Cluster", no_broker)
    path = tmp_path / "p.yaml"
    path.write_text("name: p\nsource: {type: generator, count: 10}\ndlq: {type: jsonl, path: dlq.jsonl}\n"
                    "stages: []\n")
    assert main(["bench", str(path), "--quick"]) == 1
    assert "source is 'generator', not kafka" in capsys.readouterr().err


def test_bench_reports_every_bad_pipeline_file_as_validate_does_before_starting_anything(tmp_path, capsys,
                                                                                         monkeypatch):
    monkeypatch.setattr(bench_kafka, "Cluster", no_broker)
    good = (ROOT / "pipelines" / "basic.yaml").read_text()
    missing, broken, unknown = tmp_path / "missing.yaml", tmp_path / "broken.yaml", tmp_path / "unknown.yaml"
    broken.write_text("name: [\n")
    unknown.write_text(good + "colour: blue\n")
    assert main(["bench", str(missing), str(broken), str(unknown), "--quick"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"{missing}: cannot read the pipeline file: [Errno 2] No such file or directory: '{missing}'"
    assert lines[1].startswith(f"{broken}:2: ")
    assert lines[2].startswith(f"{unknown}:{len(good.splitlines()) + 1}: ") and "colour" in lines[2]
    assert len(lines) == 3


def test_ctrl_c_stops_the_broker_and_removes_the_temporary_files():
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "runner", "bench", "--quick",
                             "--rate", "100", "--latency-seconds", "600"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    running = threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if "latency: fault_tolerant at" in line:
                running.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert running.wait(240), "".join(lines)  # a guard against a hang, not a timing check
        proc.send_signal(signal.SIGINT)  # while the pipeline runs, with its own SIGINT handler
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:  # show where it hangs: faulthandler prints every thread
            proc.send_signal(signal.SIGABRT)
            reader.join(10)
            code = None
        assert code == 130, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    text = "".join(lines)
    # the latency phases run on brokers of their own: every one of them is gone
    ports = [int(port) for port in re.findall(r"embedded broker on 127\.0\.0\.1:(\d+)", text)]
    workdir = re.search(r"temporary files in (\S+)", text).group(1)
    assert "interrupted" in text
    assert not os.path.exists(workdir)
    assert len(ports) == 3 and all(embedded.port_free(port) for port in ports), ports


def test_the_helpers_sampler_reports_the_memory_and_the_cpu_of_each_helper_module(tmp_path):
    with Helpers() as helpers:
        store = LmdbStore(tmp_path)  # starts its state writer process
        try:
            for n in range(20):
                store.table("t").put(b"k", n)
                store.commit({}, [], [])
            store.in_flight(wait=True)
            time.sleep(3 * Helpers.EVERY_S)
        finally:
            store.close()
    assert helpers.peak_mib > 5 and list(helpers.cpu_s) == ["runner.state_writer"]
    assert 0 < helpers.cpu_s["runner.state_writer"] < 30
