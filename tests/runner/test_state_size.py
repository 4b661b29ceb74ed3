"""The state holds only open windows: ``pipelines/windowed.yaml`` over N and over 3N events of
the same click generator (run --until-end, not drained) keeps about as many open windows and
sessions, and about as large an LMDB file, for 3N as for N; and nothing it keeps is final."""

from __future__ import annotations

from plugins.clickstream import FILE_BAD_KINDS, ClickGenerator
from runner.state import LmdbStore
from runner.testing import Driver
from runner.times import duration_ms, parse_event_time

PIPELINE = "pipelines/windowed.yaml"
N = 9_000
RATE = 5  # events per second of event time: N events span 30 minutes, 3N an hour and a half
GAP_MS = duration_ms("10m")


def records(count: int) -> list[bytes]:
    gen = ClickGenerator(seed=3, start_ms=1795507200000, rate=RATE, bad_ratio=0.01, bad_kinds=FILE_BAD_KINDS)
    return [gen.record(i)[1] for i in range(count)]


def measure(driver: Driver, events: list[bytes], total: int) -> tuple[dict, int]:
    out = driver.run(events)  # --until-end: the open windows stay open
    assert out.dump["offsets"] == {"events/0": total}
    store = LmdbStore(driver.workdir / "state", readonly=True)
    try:
        size = store.size_bytes()
    finally:
        store.close()
    return out.dump, size


def open_counts(dump: dict) -> dict[str, int]:
    return {name: len(stage["open"]) for name, stage in dump["stages"].items() if "open" in stage}


def check_only_open(dump: dict) -> None:
    """Every window or session the state keeps is still open under the stored watermark."""
    watermark = parse_event_time(dump["watermark"])
    for name, stage in dump["stages"].items():
        for window in stage.get("open", ()):
            end = parse_event_time(window["window_end"])
            if "duration_s" in window:  # a session is final when W > last + gap
                assert watermark <= end + GAP_MS, f"{name} keeps a final session: {window}"
            else:  # a window is final when W >= end
                assert watermark < end, f"{name} keeps a final window: {window}"


def test_open_windows_and_state_size_do_not_grow_with_the_input(tmp_path):
    events = records(3 * N)
    small, small_size = measure(Driver(PIPELINE, tmp_path / "n"), events[:N], N)
    large, large_size = measure(Driver(PIPELINE, tmp_path / "3n"), events, 3 * N)
    # the same 3N events in two runs over one state: N, then 2N more after a restart
    resumed = Driver(PIPELINE, tmp_path / "n+2n")
    measure(resumed, events[:N], N)
    again, again_size = measure(resumed, events[N:], 3 * N)
    small_open, large_open = open_counts(small), open_counts(large)
    print(f"\nopen after {N} events: {small_open}, LMDB {small_size / 1024:.0f} KiB; "
          f"after {3 * N}: {large_open}, LMDB {large_size / 1024:.0f} KiB; "
          f"after {N} + {2 * N} in two runs: {open_counts(again)}, LMDB {again_size / 1024:.0f} KiB")
    for dump in (small, large, again):
        check_only_open(dump)
    again.pop("checkpoint"), large.pop("checkpoint")
    assert again == large, "two runs over one state differ from one run"
    assert set(small_open) == {"traffic_5m", "sessions", "trending_10m"}
    assert small_open["sessions"] > 0 and large_open["sessions"] > 0
    for name in small_open:
        assert large_open[name] <= small_open[name] * 1.5 + 10, f"{name}: open windows grow with the input"
    assert sum(large_open.values()) <= sum(small_open.values()) * 1.5 + 10
    for size in (large_size, again_size):
        assert size <= small_size * 2 + (256 << 10), "the LMDB file grows with the input"
