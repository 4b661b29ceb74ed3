"""Fault torture: the fault-tolerant pipeline over three partitions, killed with SIGKILL at
random moments and restarted again and again, must end with exactly what one clean run
gives, in every sink (JSONL, Kafka, PostgreSQL), in the DLQ and in its state (CONTRACT
section 7)."""

from __future__ import annotations

import random
import signal
import time
import uuid

from tests import e2e, faults

EVENTS = 100_000
SLICE = 20_000  # the input grows by this much whenever a run has read all of it
SEED, BAD_RATIO = 23, 0.05
MIN_KILLS = 10
MAX_RUNS = 60
TORTURE_BUDGET_S = 100  # no more kills after this long (once MIN_KILLS is reached); --drain ends it
KILLS_PER_SLICE = 5
STARTUP_KILLS = 0.2  # the share of runs killed while they start; the others once they have checkpointed
DLQ_VOLATILE = ("failed_at", "error")  # CONTRACT section 7: the only fields that may differ


def outputs(broker: str, workdir, run: dict) -> dict:
    """Every sink's and the DLQ's (id, record) pairs, as stored."""
    return {
        "jsonl": [(r["id"], r) for r in faults.jsonl_records(workdir / "results.jsonl")],
        "kafka": faults.kafka_records(broker, run["results_topic"]),
        "postgres": faults.pg_rows(faults.POSTGRES_DSN, run["table"]),
        "dlq": faults.kafka_records(broker, run["dlq_topic"]),
    }


def test_sigkill_torture_gives_the_clean_run_in_every_sink(broker, topic_factory, tmp_path, postgres_dsn):
    topic = topic_factory(3)
    runs = {}
    for name in ("clean", "torture"):
        run = {"results_topic": topic_factory(3, prefix="results"), "dlq_topic": topic_factory(1, prefix="dlq"),
               "table": f"test_torture_{uuid.uuid4().hex[:12]}"}
        run["yaml"] = faults.fault_tolerant(tmp_path / name, broker=broker, topic=topic, dsn=faults.POSTGRES_DSN,
                                            results_topic=run["results_topic"], dlq_topic=run["dlq_topic"],
                                            table=run["table"])
        runs[name] = run
    try:
        _torture(broker, topic, tmp_path, runs)
    finally:
        faults.drop_tables(faults.POSTGRES_DSN, [run["table"] for run in runs.values()])


def _torture(broker, topic, tmp_path, runs):
    clean, torture = runs["clean"], runs["torture"]
    rng = random.Random(20240917)
    produced = bad = kills = ended = slice_kills = 0
    log = []
    started = time.monotonic()
    caught_up = True
    for _ in range(MAX_RUNS):
        if caught_up and produced < EVENTS:  # more input arrives while the runner is down
            bad += faults.produce_range(broker, topic, produced, min(produced + SLICE, EVENTS), SEED, BAD_RATIO)[0]
            produced = min(produced + SLICE, EVENTS)
            log.append(f"{produced} events produced")
            slice_kills = 0
        elif produced == EVENTS and kills >= MIN_KILLS and time.monotonic() - started > TORTURE_BUDGET_S:
            break
        caught_up = False
        every = rng.choice((10, 50, 100))
        before = faults.stored(tmp_path / "torture" / "state")["checkpoint"]
        run = faults.Runner("run", torture["yaml"], "--until-end", "--set", f"checkpoint.every_events={every}")
        if slice_kills >= KILLS_PER_SLICE or (kills >= MIN_KILLS and time.monotonic() - started > TORTURE_BUDGET_S):
            run.wait(300)  # enough kills in this slice, or over the time budget: it reads to the end
            when = "(not killed)"
        elif rng.random() < STARTUP_KILLS:  # while it starts, restores and redelivers
            delay = rng.uniform(0.05, 0.8)
            time.sleep(delay)
            when = f"after {delay:.2f}s"
        else:  # once it has checkpointed: a kill in the middle of its work, whatever the machine's speed
            faults.wait_until(lambda: not run.alive() or faults.stored(tmp_path / "torture" / "state")["checkpoint"]
                              > before, 30, interval=0.02)
            delay = rng.uniform(0, 0.6)
            time.sleep(delay)
            when = f"{delay:.2f}s after its first checkpoint"
        if run.alive():
            run.signal(signal.SIGKILL)
            run.wait(30)
            kills += 1
            slice_kills += 1
            at = faults.stored(tmp_path / "torture" / "state")
            log.append(f"kill {kills:2d}: every_events={every:3d} {when}: checkpoint {at['checkpoint']}, "
                       f"{sum(at['offsets'].values())}/{produced} records read, {at['outbox']} outputs in the outbox")
        else:
            code = run.wait(30)
            assert code == 0, run.stderr[-3000:]
            ended += 1
            caught_up = True
            log.append(f"run ended by itself (every_events={every}) {when}")
            if produced == EVENTS and kills >= MIN_KILLS:
                break  # all read: nothing is left to kill in
    print("\n" + "\n".join(log))
    assert produced == EVENTS
    assert kills >= MIN_KILLS, f"only {kills} runs could be killed before they ended"
    final = e2e.run("run", torture["yaml"], "--drain")
    assert final.returncode == 0, final.stderr[-3000:]
    proc = e2e.run("run", clean["yaml"], "--drain")
    assert proc.returncode == 0, proc.stderr[-3000:]

    want, got = outputs(broker, tmp_path / "clean", clean), outputs(broker, tmp_path / "torture", torture)
    figures = [f"{kills} kills, {ended} runs ended by themselves, {EVENTS} events ({bad} bad)"]
    problems = []
    for sink in ("jsonl", "kafka", "postgres", "dlq"):
        drop = DLQ_VOLATILE if sink == "dlq" else ()
        clean_ids = [i for i, _ in want[sink]]
        ids = [i for i, _ in got[sink]]
        assert len(clean_ids) == len(set(clean_ids)), f"the clean run has duplicates in {sink}"
        duplicates = len(ids) - len(set(ids))
        a, b = faults.by_id(want[sink], drop), faults.by_id(got[sink], drop)
        missing, extra = len(a.keys() - b.keys()), len(b.keys() - a.keys())
        changed = sum(not faults.approx_equal(a[i], b[i]) for i in a.keys() & b.keys())
        figures.append(f"{sink}: {len(ids)} records (clean {len(clean_ids)}), duplicates {duplicates}, "
                       f"missing {missing}, unexpected {extra}, different {changed}")
        if duplicates or missing or extra or changed:
            problems.append(f"{sink}: duplicates {duplicates}; " + "; ".join(faults.differences(a, b)))
    for sink in ("kafka", "postgres"):  # one result set, the same in every sink
        assert {i for i, _ in want[sink]} == {i for i, _ in want["jsonl"]}, f"clean {sink} != clean jsonl"
    assert len(want["jsonl"]) > 500 and len(want["dlq"]) >= bad

    clean_state, torture_state = e2e.dump(clean["yaml"]), e2e.dump(torture["yaml"])
    clean_state.pop("checkpoint"), torture_state.pop("checkpoint")
    state_equal = faults.approx_equal(clean_state, torture_state)
    figures.append(f"state dump equal to the clean one (but checkpoint): {state_equal}")
    print("\n".join(figures))
    assert not problems, problems
    assert state_equal, faults.differences({"dump": clean_state}, {"dump": torture_state})
    assert sum(torture_state["offsets"].values()) == EVENTS
