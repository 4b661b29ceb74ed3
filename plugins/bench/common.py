"""What the phases of ``runner bench`` share: progress lines, statistics, peak RSS, observers."""

from __future__ import annotations

import math
import os
import resource
import sys
import threading
import time

from runner.helper import open_helper_pids


def say(message: str) -> None:
    """A progress line on stderr."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class QuietLog:
    """The ``log`` of a benchmarked Runner: keeps its lines (shown if something fails) and
    calls ``on_first`` at the first one, which the runner writes once it has opened."""

    def __init__(self, on_first=None):
        self.lines: list[str] = []
        self.on_first = on_first

    def __call__(self, *args, **kwargs) -> None:
        self.lines.append(" ".join(str(a) for a in args))
        del self.lines[:-50]
        if self.on_first is not None:
            on_first, self.on_first = self.on_first, None
            on_first()


class Observer:
    """Runner observer: when the first event was processed; per checkpoint, the processing's
    time in it (confirming sinks, serializing, handing over; not delivering outputs) and
    the time its transaction took to write and sync (none with memory state)."""

    def __init__(self):
        self.first_event: float | None = None  # time.perf_counter()
        self.commit_ms: list[float] = []
        self.write_ms: list[float] = []
        self.records = 0

    def on_first_event(self) -> None:
        self.first_event = time.perf_counter()

    def on_checkpoint(self, number: int, commit_ms: float, write, batches: list) -> None:
        self.commit_ms.append(commit_ms)
        if write is not None:  # None from a memory store: no writer process, nothing written apart
            self.write_ms.append(write[0])
        self.records += sum(len(stamps) for _, _, stamps in batches)


class Latencies:
    """Latencies (ms) of records by their timestamps: those stamped before ``warmup_until_ms``
    (the phase's start-up) apart, the others with their stamps (for ``p99_by_third``)."""

    def __init__(self):
        self.values: list[float] = []
        self.stamps_ms: list[float] = []
        self.warmup: list[float] = []
        self.warmup_until_ms = -math.inf  # set when the load starts

    def __len__(self) -> int:
        return len(self.values) + len(self.warmup)

    def add(self, stamp_ms: float, latency_ms: float) -> bool:
        """Count one record's latency; True when it is measured (not in the warm-up)."""
        if stamp_ms < self.warmup_until_ms:
            self.warmup.append(latency_ms)
            return False
        self.values.append(latency_ms)
        self.stamps_ms.append(stamp_ms)
        return True

    def summary(self) -> dict:
        return {**summary_ms(self.values), "p99_by_third_ms": p99_by_third(self.stamps_ms, self.values),
                "warmup": summary_ms(self.warmup)}


class LatencyObserver(Observer):
    """Also: per record, the wall time its checkpoint was on disk minus the record's timestamp
    (``latencies``), the part of it in the runner (from its source's poll on), and the part
    between its source's fetch and that poll (the source's ``fetched_at``: for Kafka, the wait
    in the pipe from the reader process while the runner was busy); a ``Progress`` line out of
    ``expected`` records."""

    def __init__(self, expected: int):
        super().__init__()
        self.latencies = Latencies()
        self.in_runner: list[float] = []
        self.fetched_to_polled: list[float] = []
        self.progress = Progress("latency", expected)

    def on_checkpoint(self, number: int, commit_ms: float, write, batches: list) -> None:
        synced_ms = (time.time() if write is None else write[1]) * 1000
        super().on_checkpoint(number, commit_ms, write, batches)
        for polled_at, fetched_at, stamps in batches:
            for ts in stamps:
                if ts is not None and self.latencies.add(ts, synced_ms - ts):
                    self.in_runner.append(synced_ms - polled_at * 1000)
                    if fetched_at is not None:
                        self.fetched_to_polled.append((polled_at - fetched_at) * 1000)
        self.progress.show(self.records)


class Progress:
    """A line every ``EVERY_S`` on a phase that takes time: how many of its records are through."""

    EVERY_S = 10.0

    def __init__(self, phase: str, expected: int):
        self.phase, self.expected = phase, expected
        self.next = time.monotonic() + self.EVERY_S

    def show(self, done: int) -> None:
        now = time.monotonic()
        if now >= self.next:
            self.next = now + self.EVERY_S
            say(f"{self.phase}: {done:,}/{self.expected:,} records through")


def percentile(values, p: float) -> float | None:
    """The nearest-rank ``p``-th percentile (0 < p <= 100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary_ms(values) -> dict:
    """How many milliseconds, and their p50 (the median), p99 and max (None each when empty)."""
    return {"count": len(values), "p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99),
            "max_ms": max(values) if values else None}


def p99_by_third(stamps_ms: list[float], latencies: list[float]) -> list[float | None]:
    """The p99 of the latencies of records stamped in each third of the time from the first
    stamp to the last (``stamps_ms[i]`` is the timestamp of the record of ``latencies[i]``):
    whether the latency grows over a phase (the embedded broker's fetches slow as its
    partitions fill)."""
    if not stamps_ms:
        return [None, None, None]
    first, span = min(stamps_ms), (max(stamps_ms) - min(stamps_ms)) or 1.0
    thirds: list[list[float]] = [[], [], []]
    for stamp, latency in zip(stamps_ms, latencies):
        thirds[min(2, int(3 * (stamp - first) / span))].append(latency)
    return [percentile(third, 99) for third in thirds]


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux: ``/proc/self/clear_refs``), so that ``peak_rss_mib``
    measures from here on; False where it cannot (then it is the process's peak so far)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """``ru_maxrss`` of this process in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


class ThreadTime:
    """Where this thread's wall time went while in the ``with`` block, from Linux's
    ``/proc/thread-self/schedstat``: on a core, runnable but waiting for one (other processes
    held both), and the rest, waiting (for a pipe, the disk, a lock). ``figures`` is None where
    the kernel does not say."""

    def __enter__(self) -> "ThreadTime":
        self.figures = None
        self._start = (time.perf_counter(), _schedstat())
        return self

    def __exit__(self, *exc) -> None:
        wall, before, after = time.perf_counter() - self._start[0], self._start[1], _schedstat()
        if before is None or after is None:
            return
        on_cpu, queued = (after[0] - before[0]) / 1e9, (after[1] - before[1]) / 1e9
        self.figures = {"wall_s": wall, "on_cpu_s": on_cpu, "run_queue_s": queued,
                        "waiting_s": max(0.0, wall - on_cpu - queued)}


def _schedstat() -> tuple[int, int] | None:
    """(ns on a core, ns runnable in a run queue) of this thread so far."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            on_cpu, queued, _ = f.read().split()
        return int(on_cpu), int(queued)
    except (OSError, ValueError):
        return None


class Helpers:
    """What this process's open helper processes (``runner.helper``: the state writer, the
    Kafka reader and producers) use, sampled every ``EVERY_S`` (Linux; nothing elsewhere):
    ``peak_mib``, the peak of their summed RSS, and ``cpu_s``, the CPU seconds of each helper
    module (its processes summed), as last sampled: a helper's last ``EVERY_S`` before it
    ends can be missed."""

    EVERY_S = 0.2

    def __init__(self):
        self.peak_mib = 0.0
        self._cpu: dict[int, tuple[str, float]] = {}  # pid -> (module, CPU seconds so far)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="bench-helpers", daemon=True)

    @property
    def cpu_s(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for module, seconds in self._cpu.values():
            totals[module] = totals.get(module, 0.0) + seconds
        return totals

    def __enter__(self) -> "Helpers":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self._stop.wait(self.EVERY_S):
            total = 0
            for pid in open_helper_pids():
                try:
                    with open(f"/proc/{pid}/status") as f:
                        total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
                    with open(f"/proc/{pid}/stat") as f:  # utime and stime follow the command's ")"
                        utime, stime = f.read().rpartition(")")[2].split()[11:13]
                    module = self._cpu[pid][0] if pid in self._cpu else _module_of(pid)
                except (OSError, StopIteration, ValueError, IndexError):
                    continue  # gone meanwhile
                self._cpu[pid] = (module, (int(utime) + int(stime)) / tick)
            self.peak_mib = max(self.peak_mib, total / 1024)


def _module_of(pid: int) -> str:
    """The module a helper process runs: ``python -m MODULE ...``."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().split(b"\0")[2].decode()


class Interrupted(KeyboardInterrupt):
    """Ctrl+C or SIGTERM while a phase ran (the runner stops cleanly on them and returns)."""


# Set by the bench's Ctrl+C and SIGTERM handler, which also raises KeyboardInterrupt: where
# that lands in kafka-python's event loop, it is logged and dropped (kafka/net/selector.py
# catches BaseException), so the phases look at this too.
INTERRUPTED = threading.Event()


def stop_if_interrupted() -> None:
    """Raise ``Interrupted`` if Ctrl+C or SIGTERM came, even if its KeyboardInterrupt was lost."""
    if INTERRUPTED.is_set():
        raise Interrupted()
