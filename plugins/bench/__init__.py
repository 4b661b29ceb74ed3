"""``runner bench``: how fast the pipelines are, measured against the Kafka client's own ceiling.

Phases, each with progress lines on stderr:

1. fill a new topic (``--partitions``) with ``--events`` generated clicks keyed by user, 3% bad;
2. the ceiling: kafka-python reading that backlog and doing nothing with it (once before it
   counts, and then just before each run of a pipeline);
3. each pipeline in-process to the end of the backlog, ``--repeat`` times: throughput (and its
   ratio to the ceiling read just before), time to first event, checkpoint commit times, peak
   RSS, LMDB size per open item; the run with the median ratio gives the figures, and the
   ratios of all runs are shown beside it;
4. latency: first kafka-python alone (the floor), then the fault-tolerant pipeline unbounded,
   while a producer process offers ``--rate`` events/s (the first ``--warmup-seconds`` apart),
   each on an empty embedded broker of its own;
5. recovery: a new process starting over a state of ``--recovery-keys`` keys.

Then a table on stdout, each figure beside its target, and with ``--json`` every figure in a
file. The embedded broker (or the topics made on ``--bootstrap``) and the temporary files go
away at the end, on Ctrl+C and on SIGTERM too.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import tempfile
import threading
from pathlib import Path

from plugins.bench.common import INTERRUPTED

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PIPELINES = ("pipelines/basic.yaml", "pipelines/fault_tolerant.yaml")
LATENCY_PIPELINE = "fault_tolerant"
FULL = {"events": 200_000, "repeat": 3, "rate": 5000.0, "latency_seconds": 30.0, "warmup_seconds": 2.0, "recovery_keys": 1_000_000}
QUICK = {"events": 5000, "repeat": 1, "rate": 1000.0, "latency_seconds": 3.0, "warmup_seconds": 0.5, "recovery_keys": 20_000}
# The latency floor is measured for as long as the latency phase, up to the mode's own latency
# length (--quick keeps every phase short): the embedded broker's latency grows as its topics
# fill (kafka-python alone at 5,000/s here: p99 57 ms over 10 s, 217 ms over 40 s), so a
# shorter floor would not be the floor of the phase it is beside.


def add_command(subparsers) -> None:
    """Add ``runner bench`` to the runner's sub-commands."""
    p = subparsers.add_parser(
        "bench", help="benchmark pipelines: throughput, checkpoint cost, latency, recovery",
        description="Run pipelines against generated clicks on the embedded broker (or --bootstrap) and "
                    "report throughput against the Kafka client's ceiling, checkpoint cost, memory, state size, "
                    "latency at a steady rate and recovery time, each beside its target.")
    p.add_argument("pipelines", nargs="*", metavar="PIPELINE.yaml",
                   help=f"pipelines with a kafka source (default: {' '.join(DEFAULT_PIPELINES)})")
    p.add_argument("--events", type=_positive(int), metavar="N",
                   help=f"backlog size (default {FULL['events']}; --quick {QUICK['events']})")
    p.add_argument("--partitions", type=_positive(int), default=3, help="partitions of the topics (default 3)")
    p.add_argument("--repeat", type=_positive(int), metavar="N",
                   help=f"runs of each pipeline, each after a ceiling read of its own; the figures are the run "
                        f"with the median ratio (default {FULL['repeat']}; --quick {QUICK['repeat']})")
    p.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    p.add_argument("--bootstrap", metavar="HOST:PORT", help="use this Kafka instead of the embedded broker")
    p.add_argument("--rate", type=_positive(float), metavar="N",
                   help=f"latency phase: events/s offered (default {FULL['rate']:g}; --quick {QUICK['rate']:g})")
    p.add_argument("--latency-seconds", type=_positive(float), metavar="S",
                   help=f"latency phase: how long (default {FULL['latency_seconds']:g}; --quick {QUICK['latency_seconds']:g}); "
                        f"the floor beside it runs as long, up to the default")
    p.add_argument("--warmup-seconds", type=_positive(float), metavar="S",
                   help=f"latency phases: records sent in the first S seconds (the runner's start-up) are reported "
                        f"apart (default {FULL['warmup_seconds']:g}; --quick {QUICK['warmup_seconds']:g})")
    p.add_argument("--recovery-keys", type=_positive(int), metavar="N",
                   help=f"recovery phase: keys in the state (default {FULL['recovery_keys']}; "
                        f"--quick {QUICK['recovery_keys']})")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.set_defaults(func=run)


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
        return value
    return parse


def settings(args: argparse.Namespace) -> dict:
    """The bench's sizes: what was given, else the --quick or full defaults."""
    defaults = QUICK if args.quick else FULL
    chosen = {key: getattr(args, key) if getattr(args, key) is not None else value for key, value in defaults.items()}
    paths = args.pipelines or [p if Path(p).exists() else str(ROOT / p) for p in DEFAULT_PIPELINES]
    return {**chosen, "partitions": args.partitions, "pipelines": paths, "quick": args.quick,
            "bootstrap": args.bootstrap}


def run(args: argparse.Namespace) -> int:
    from plugins.bench import pipelines, report
    from plugins.bench.common import say

    config = settings(args)
    pipelines.check(config["pipelines"])  # a bad file fails here, before anything starts
    previous = {}
    INTERRUPTED.clear()
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.ExitStack() as cleanup:
            results = measure(config, cleanup)
    except KeyboardInterrupt:
        say("interrupted: broker stopped, temporary files removed")
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(report.table(results), flush=True)
    if args.json:
        report.write_json(args.json, results)
        say(f"figures written to {args.json}")
    return 0


def _interrupt(signum, frame):
    INTERRUPTED.set()
    raise KeyboardInterrupt


def measure(config: dict, cleanup: contextlib.ExitStack) -> dict:
    """Every phase; whatever it starts or makes is undone by ``cleanup``."""
    from plugins.bench import kafka, pipelines, recovery, report
    from plugins.bench.common import say

    workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="runner-bench-")))
    say(f"temporary files in {workdir}")
    cluster = kafka.Cluster(config["bootstrap"])
    cleanup.callback(cluster.close)
    settings_used = {k: v for k, v in config.items() if k != "bootstrap"}
    settings_used["broker"] = config["bootstrap"] or "embedded"
    results = {"machine": report.machine(), "config": settings_used}

    topic = cluster.topic("clicks", config["partitions"])
    prepared = [pipelines.prepare(path, workdir, cluster, topic, f"p{i}")
                for i, path in enumerate(config["pipelines"])]
    results["fill"] = kafka.fill(cluster.bootstrap, topic, config["events"])
    # the first read of a new backlog is often the slowest (in one test 148k events/s, then
    # 161-164k for the next four reads): it is made once and left out, or the first pipeline's
    # ratio could gain by it
    results["ceiling_warmup"] = kafka.ceiling(cluster.bootstrap, topic, config["partitions"])
    say(f"ceiling: a first read of the backlog, left out of the figures: "
        f"{results['ceiling_warmup']['events_per_s']:,.0f} events/s")
    results["pipelines"], results["ceilings"] = [], []
    for i, (path, first) in enumerate(zip(config["pipelines"], prepared)):
        runs = []
        for n in range(config["repeat"]):
            p = first if n == 0 else pipelines.prepare(path, workdir, cluster, topic, f"p{i}-{n}")
            label = p.settings["name"] + (f", run {n + 1} of {config['repeat']}" if config["repeat"] > 1 else "")
            runs.append(pipelines.paired_run(p, cluster.bootstrap, topic, config["partitions"], config["events"], label))
        ceiling, chosen = pipelines.median_run(runs)
        results["ceilings"].append(ceiling)
        results["pipelines"].append(chosen)
    results["ceiling"] = results["ceilings"][0]

    names = [p.name for p in prepared]
    latency_path = (config["pipelines"][names.index(LATENCY_PIPELINE)] if LATENCY_PIPELINE in names
                    else str(ROOT / "pipelines" / f"{LATENCY_PIPELINE}.yaml"))
    rate, seconds, warmup = config["rate"], config["latency_seconds"], config["warmup_seconds"]
    floor_seconds = min(seconds, (QUICK if config["quick"] else FULL)["latency_seconds"])
    say(f"latency floor: kafka-python alone at {rate:g} events/s for {floor_seconds:g} s "
        f"after a {warmup:g} s warm-up")
    cluster.renew()
    floor = cluster.topic("floor", config["partitions"], kafka.BROKER_TIMESTAMPS)
    results["latency_floor"] = kafka.latency_floor(cluster.bootstrap, floor, config["partitions"], rate,
                                                   floor_seconds, warmup)
    cluster.renew()
    live = cluster.topic("live", config["partitions"], kafka.BROKER_TIMESTAMPS)
    pipeline = pipelines.prepare(latency_path, workdir, cluster, live, "latency")
    results["latency"] = pipelines.latency(pipeline, cluster, live, rate, seconds, warmup)

    results["recovery"] = recovery.recovery(workdir, config["recovery_keys"])
    return results
