"""Pipelines under ``runner bench``: each one pointed at the bench's topics and temporary files,
then run in-process (a ``Runner`` with an observer) for throughput, checkpoint cost, memory,
state size, and end-to-end latency at a steady rate."""

from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path

import yaml

from plugins.bench import kafka as bk
from plugins.bench.common import (INTERRUPTED, Helpers, Interrupted, LatencyObserver, Observer, QuietLog,
                                  ThreadTime, peak_rss_mib, reset_peak_rss, say, stop_if_interrupted, summary_ms)
from runner import config
from runner.components import ConfigError, RunnerError
from runner.dump import dump_state
from runner.engine import Runner, build_stages
from runner.state import LmdbStore

ROOT = Path(__file__).resolve().parents[2]


def check(paths: list[str]) -> None:
    """Load and validate every pipeline as ``runner validate`` does, a relative schema file
    found as ``prepare`` finds it, before the bench starts anything: ``ConfigError`` with the
    lines of them all, or ``RunnerError`` for a source that is not Kafka."""
    lines, pipelines = [], []
    for path in paths:
        try:
            pipelines.append((path, config.load(path, _schema_overrides(path))))
        except ConfigError as exc:
            lines += exc.lines
    if lines:
        raise ConfigError(lines)
    for path, pipeline in pipelines:
        _kafka_source(path, pipeline.settings)


def _schema_overrides(path: str) -> list[str]:
    """``--set`` texts pointing each stage's relative schema file where ``prepare`` finds it."""
    try:
        stages = yaml.safe_load(Path(path).read_text(encoding="utf-8")).get("stages")
    except Exception:  # not a readable mapping: config.load says what is wrong with it
        return []
    overrides = []
    for i, stage in enumerate(stages if isinstance(stages, list) else []):
        schema = stage.get("schema") if isinstance(stage, dict) else None
        if isinstance(schema, str) and _locate(schema, Path(path)) != schema:
            overrides.append(f"stages[{i}].schema={_locate(schema, Path(path))}")
    return overrides


def _kafka_source(path: str, doc: dict) -> dict:
    """The pipeline's source, which must be Kafka."""
    source = doc.get("source") or {}
    if source.get("type") != "kafka":
        raise RunnerError(f"{path}: runner bench feeds pipelines from Kafka; its source is "
                          f"{source.get('type')!r}, not kafka")
    return source


def prepare(path: str, workdir: Path, cluster: bk.Cluster, topic: str, tag: str):
    """``path`` loaded with its source reading ``topic`` on the bench's broker, its state, DLQ
    and file sinks in ``workdir`` (a Kafka DLQ or sink gets a new topic), and no console sink
    (``--set`` cannot remove a list item: the YAML is edited and written again, then loaded)."""
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        config.load(path)  # says what is wrong with it
    source = _kafka_source(path, doc)
    source.update(bootstrap_servers=cluster.bootstrap, topics=[topic])
    state = doc.setdefault("state", {})
    if state.get("backend", "lmdb") != "memory":
        state["path"] = str(workdir / f"{tag}-state")
    doc["dlq"] = _redirect(doc.get("dlq") or {}, workdir, cluster, f"{tag}-dlq")
    routed = {t for stage in doc.get("stages") or [] for t in stage.get("to") or []}
    sinks = []
    for sink in doc.get("sinks") or []:
        sink_name = sink.get("name", sink.get("type"))
        if sink.get("type") == "console":
            if sink_name not in routed:
                continue  # dropped: the console is not what is measured
            sink = {"type": "jsonl", "name": sink_name}  # a stage routes to it: keep the name
        sinks.append(_redirect(sink, workdir, cluster, f"{tag}-{sink_name}"))
    doc["sinks"] = sinks
    for stage in doc.get("stages") or []:
        if isinstance(stage.get("schema"), str):
            stage["schema"] = _locate(stage["schema"], Path(path))
    out = workdir / f"{tag}.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return config.load(str(out))


def _redirect(sink: dict, workdir: Path, cluster: bk.Cluster, tag: str) -> dict:
    sink = dict(sink)
    if sink.get("type") == "jsonl":
        sink["path"] = str(workdir / f"{tag}.jsonl")
    elif sink.get("type") == "kafka":
        sink.update(topic=cluster.topic(tag, 1), bootstrap_servers=cluster.bootstrap)
    return sink


def _locate(relative: str, pipeline_path: Path) -> str:
    """A relative file of a pipeline: as given if it exists here, else beside the pipeline or
    in the project root (where ``runner run`` is meant to be started)."""
    if os.path.isabs(relative) or os.path.exists(relative):
        return relative
    for base in (pipeline_path.resolve().parent, pipeline_path.resolve().parent.parent, ROOT):
        if (base / relative).exists():
            return str(base / relative)
    return relative


def _run(runner: Runner, log: QuietLog, stopped_by_bench=lambda: False) -> None:
    """``runner.run()``; a stop the bench did not ask for is Ctrl+C (or SIGTERM)."""
    stop_if_interrupted()
    try:
        runner.run()  # its own handler takes Ctrl+C and SIGTERM while it runs, and stops cleanly
    except KeyboardInterrupt:  # a second one: the runner left at once
        INTERRUPTED.set()
        raise Interrupted() from None
    except BaseException:
        for line in log.lines:
            say(f"  {runner.settings['name']}: {line}")
        raise
    if runner.signalled is not None:
        INTERRUPTED.set()
    stop_if_interrupted()
    if runner.stop_requested and not stopped_by_bench():
        raise Interrupted()


def throughput(pipeline, events: int, ceiling_eps: float) -> dict:
    """Run ``pipeline`` to the end of the backlog (``--until-end``) and measure it."""
    name = pipeline.settings["name"]
    say(f"{name}: processing {events} events")
    observer, log = Observer(), QuietLog()
    runner = Runner(pipeline, until_end=True, log=log, observer=observer)
    # garbage the earlier phases left (the fill's producer, the ceiling's consumer) goes first:
    # the runner's collector thresholds keep full collections away, so it would stay, counted
    # in this run's peak RSS
    gc.collect()
    run_scoped = reset_peak_rss()
    started = time.perf_counter()
    with Helpers() as helpers, ThreadTime() as main_thread:
        _run(runner, log)
    seconds = time.perf_counter() - started
    rss = peak_rss_mib()
    first = (observer.first_event or started) - started
    eps = runner.processed / seconds
    if runner.processed != events:
        say(f"WARNING: {name} processed {runner.processed} records, not the {events} of the backlog")
    result = {
        "name": name, "path": pipeline.path, "events": runner.processed, "seconds": seconds,
        "events_per_s": eps, "ceiling_events_per_s": ceiling_eps,
        "ratio_to_ceiling": eps / ceiling_eps if ceiling_eps else None,
        "first_event_s": first,
        "after_first_event_events_per_s": runner.processed / (seconds - first) if seconds > first else None,
        "checkpoints": len(observer.commit_ms), "checkpoint_ms": summary_ms(observer.commit_ms),
        # memory state has no writer process: no figure, rather than the processing's again
        "checkpoint_write_ms": None if pipeline.settings["state"]["backend"] == "memory" else
        summary_ms(observer.write_ms),
        "peak_rss_mib": rss, "peak_rss_scope": "this run" if run_scoped else "the process so far",
        "helpers_peak_rss_mib": helpers.peak_mib,
        "helpers_cpu_us_per_event": {module: seconds / runner.processed * 1e6
                                     for module, seconds in sorted(helpers.cpu_s.items())} if runner.processed else {},
        # the runner's thread: is it computing, or kept from a core, or waiting for its helpers?
        "main_thread": main_thread.figures,
        "main_thread_cpu_us_per_event": (main_thread.figures["on_cpu_s"] / runner.processed * 1e6
                                         if main_thread.figures and runner.processed else None),
        "state": state_figures(pipeline, runner),
    }
    written = result["checkpoint_write_ms"]
    say(f"{name}: {eps:,.0f} events/s ({result['ratio_to_ceiling']:.2f}x the ceiling), "
        f"checkpoint median {result['checkpoint_ms']['p50_ms']:.3f} ms"
        + (f" (written and synced beside it in {written['p50_ms']:.3f} ms)" if written else ""))
    return result


def paired_run(pipeline, bootstrap: str, topic: str, partitions: int, events: int, label: str) -> tuple[dict, dict]:
    """A ceiling read, then a run of ``pipeline``: (ceiling, throughput). The machine's speed
    drifts (on a shared VM, 62k-111k events/s for the same read within minutes), so each run is
    held against a ceiling taken just before it."""
    say(f"ceiling: kafka-python reading the backlog (before {label})")
    ceiling = bk.ceiling(bootstrap, topic, partitions)
    say(f"ceiling: {ceiling['events_per_s']:,.0f} events/s")
    return ceiling, throughput(pipeline, events, ceiling["events_per_s"])


def median_run(runs: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """Of ``(ceiling, throughput)`` pairs, the one whose ratio is the median (of an even
    number, the lower middle one); its throughput figures list every run under ``runs``."""
    ordered = sorted(runs, key=lambda run: run[1]["ratio_to_ceiling"] or 0.0)
    ceiling, chosen = ordered[(len(ordered) - 1) // 2]
    chosen["runs"] = [{key: result[key] for key in ("events_per_s", "ceiling_events_per_s", "ratio_to_ceiling")}
                      for _, result in runs]
    return ceiling, chosen


def state_figures(pipeline, runner: Runner) -> dict:
    """What the state holds after the run: open keys, windows and sessions per stage, and for
    LMDB the size of data.mdb, the pages in use, and the bytes in use per open item."""
    settings = pipeline.settings
    if runner.store.persistent:
        stages = dump_state(pipeline)["stages"]
    else:  # a memory store keeps its tables after close; dump them as dump_state would
        stages = {st.name: part for st in build_stages(pipeline)
                  if (part := st.dump(runner.store.table(st.name))) is not None}
    open_items = {name: len(part["keys"] if "keys" in part else part["open"]) for name, part in stages.items()
                  if isinstance(part, dict) and ("keys" in part or "open" in part)}
    total = sum(open_items.values())
    figures = {"backend": settings["state"]["backend"], "open": open_items, "open_total": total,
               "data_mdb_bytes": None, "used_bytes": None, "bytes_per_open": None}
    if runner.store.persistent:
        path = Path(settings["state"]["path"])
        store = LmdbStore(path, readonly=True)
        try:
            used = store.size_bytes()
        finally:
            store.close()
        figures.update(data_mdb_bytes=(path / "data.mdb").stat().st_size, used_bytes=used,
                       bytes_per_open=used / total if total else None)
    return figures


def latency(pipeline, cluster: bk.Cluster, topic: str, rate: float, seconds: float, warmup: float) -> dict:
    """Run ``pipeline`` unbounded while a producer offers ``rate`` events/s for ``warmup`` +
    ``seconds``; per record, latency = wall time of its checkpoint - its record timestamp (its
    send time). Records sent in the first ``warmup`` seconds (the runner's start-up: its helper
    processes start beside it) are reported apart."""
    name = pipeline.settings["name"]
    count = max(1, int(rate * (seconds + warmup)))
    say(f"latency: {name} at {rate:g} events/s for {seconds:g} s after a {warmup:g} s warm-up ({count} events)")
    producer = bk.SteadyProducer(cluster.bootstrap, topic, rate, count)
    observer, sent, asked, failed = LatencyObserver(count), {}, [], []
    wait_s = max(15.0, seconds)

    def watch():  # stops the runner once every record sent is through a checkpoint (or later)
        try:
            sent.update(producer.wait())
        except BaseException as exc:
            failed.append(exc)
        deadline = time.monotonic() + wait_s
        while observer.records < sent.get("sent", 0) and time.monotonic() < deadline:
            time.sleep(0.01)
        asked.append(True)
        runner.stop_requested = True

    watcher = threading.Thread(target=watch, name="bench-latency-watch", daemon=True)

    def opened():  # the runner's first log line: it has opened its source
        observer.latencies.warmup_until_ms = (time.time() + warmup) * 1000
        producer.go()
        watcher.start()

    log = QuietLog(on_first=opened)
    runner = Runner(pipeline, log=log, observer=observer)
    try:
        _run(runner, log, stopped_by_bench=lambda: bool(asked))
    finally:
        producer.close()
    if failed:
        raise failed[0]
    result = {
        "pipeline": name, "rate": rate, "seconds": seconds, "warmup_seconds": warmup, "sent": sent["sent"],
        "achieved_rate": sent["sent"] / sent["send_seconds"] if sent["send_seconds"] else None,
        "checkpoints": len(observer.commit_ms), "producer_linger_ms": producer.LINGER_MS,
        **observer.latencies.summary(),
        "in_runner": summary_ms(observer.in_runner), "fetched_to_polled": summary_ms(observer.fetched_to_polled),
    }
    unmeasured = result["sent"] - result["count"] - result["warmup"]["count"]
    say(f"latency: p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, max {result['max_ms']:.1f} ms; "
        f"in the runner p50 {result['in_runner']['p50_ms']:.1f} ms, p99 {result['in_runner']['p99_ms']:.1f} ms"
        + (f"; {unmeasured} records not through a checkpoint {wait_s:g} s after the last send" if unmeasured else ""))
    return result
