"""Wall-clock step detection, kernel synchronisation and the overload monitor (no sleeping)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest

from gateway.clock import FakeClock, SteppableClock, TimeKeeper, kernel_synchronised
from gateway.overload import LoopLag, OverloadMonitor


def test_steps_are_detected_slew_is_not(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    tk = TimeKeeper(clock, threshold_ms=2000, hold_ms=1000, sync_probe=lambda: None)
    assert tk.check() is None
    clock.advance(1.0)
    clock._wall_ms += 1  # slewing: a millisecond per second is never a step
    assert tk.check() is None
    clock.advance(0.5)
    before = clock.wall_ms()
    clock._wall_ms += 86_400_000  # a day forward
    step = tk.check()
    assert step is not None
    assert step.delta_ms == 86_400_000
    assert step.old_ms == before
    assert step.new_ms == before + 86_400_000
    assert tk.doubtful(step.new_ms)
    assert tk.doubtful(step.new_ms + 999)
    assert not tk.doubtful(before)
    clock._wall_ms -= 3_600_000  # an hour back
    step = tk.check()
    assert step is not None
    assert step.delta_ms == -3_600_000
    assert tk.status()["last_step"]["delta_ms"] == -3_600_000
    assert tk.status()["steps"] == 2
    assert caplog.text.count("wall clock stepped") == 2


def test_doubt_window_expires_on_monotonic_time() -> None:
    clock = FakeClock()
    tk = TimeKeeper(clock, sync_probe=lambda: True)
    tk.check()
    clock._wall_ms += 10_000
    step = tk.check()
    assert step is not None
    assert tk.marking
    clock.advance(61)
    tk.check()
    assert not tk.marking


def test_sync_state_changes_are_one_line_each(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    state: list[bool | None] = [False]
    tk = TimeKeeper(FakeClock(), sync_probe=lambda: state[0])
    tk.check_sync()
    tk.check_sync()
    assert tk.status()["synchronised"] is False
    state[0] = True
    tk.check_sync()
    tk.check_sync()
    assert caplog.text.count("not synchronised") == 1
    assert caplog.text.count("synchronised again") == 1
    assert TimeKeeper(FakeClock(), sync_probe=lambda: None).status()["synchronised"] == "unknown"


def test_kernel_probe_answers_on_linux() -> None:
    assert kernel_synchronised() in (True, False, None)


def test_steppable_clock_moves_wall_only() -> None:
    clock = SteppableClock()
    mono, wall = clock.monotonic(), clock.wall_ms()
    clock.step(3600)
    assert clock.wall_ms() - wall >= 3_600_000
    assert clock.monotonic() - mono < 60


def test_overload_starts_and_ends_with_hysteresis(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    m = OverloadMonitor(start_windows=2, end_windows=2)
    ids = [f"M{i}" for i in range(10)]

    def window(late: int) -> bool | None:
        for i, iid in enumerate(ids):
            m.poll_started(iid, 0.9 if i < late else 0.01, 1.0)
        return m.tick(now_ms=1000, loop_lag_s=0.0, blocked_puts=0)

    assert window(2) is None  # a few late meters are the meters' business
    assert window(8) is None  # one bad window is a hiccup
    assert window(8) is True
    assert m.status()["active"]
    assert m.status()["since"] == 1000
    assert window(0) is None
    assert window(0) is False
    assert m.status() == {"active": False, "since": None, "late_polls": 18}
    assert caplog.text.count("cannot keep its polling schedule") == 1
    assert caplog.text.count("overload ended") == 1


def test_blocked_queue_and_loop_lag_count_as_overload() -> None:
    m = OverloadMonitor(start_windows=1, end_windows=1)
    assert m.tick(now_ms=0, loop_lag_s=0.0, blocked_puts=5) is True
    assert m.tick(now_ms=0, loop_lag_s=0.0, blocked_puts=5) is False  # no new blocked puts
    assert m.tick(now_ms=0, loop_lag_s=2.0, blocked_puts=5) is True


async def test_loop_lag_sees_a_stall_of_the_loop() -> None:
    """A synchronous stretch on the loop (here 0.3 s of time.sleep) shows as the probe's lag: at least
    the stall minus one probe interval, whatever else the machine does (a lower bound only)."""
    probe = LoopLag(interval_s=0.02)
    task = asyncio.create_task(probe.run())
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # the stall: nothing else on the loop runs
        await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    first = probe.status()
    assert set(first) == {"max_ms", "max_ms_total", "probe_ms", "cpu_ms", "cpu_ms_total"}
    assert first["max_ms"] >= 300 - 20 - 1
    assert first["probe_ms"] == 20
    second = probe.status()  # the per-status maximum starts again; the total keeps the stall
    assert second["max_ms"] == 0
    assert second["max_ms_total"] == first["max_ms_total"] >= first["max_ms"]


async def test_loop_lag_measures_a_busy_stretch_in_cpu_time() -> None:
    """A stretch that burns 0.15 s of the loop thread's CPU shows as cpu_ms >= 150 however busy the machine
    is (the wall lag would also count the waits for a core)."""
    probe = LoopLag(interval_s=0.02)
    task = asyncio.create_task(probe.run())
    try:
        await asyncio.sleep(0.05)
        start = time.thread_time()
        while time.thread_time() - start < 0.15:
            pass
        await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    body = probe.status()
    assert body["cpu_ms"] >= 150
    assert body["cpu_ms_total"] >= 150
    assert probe.status()["cpu_ms"] < body["cpu_ms"]
