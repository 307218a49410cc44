"""Clocks are injected so that schedules and rules can be tested without sleeping."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("gateway.clock")


class Clock(Protocol):
    def wall_ms(self) -> int:
        """UTC wall-clock time in milliseconds: used for source timestamps."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never steps: used for schedules."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""
        ...


class SystemClock:
    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ScaledClock:
    """Simulated time running `scale` times faster than real time, from `origin_ms` (for simulations).

    `carbon-gateway run --time-scale 720 --time-origin 2026-01-01T00:00:00Z` plays two hours of plant
    time in ten real seconds: how the rules engine's hourly behaviour is demonstrated and tested
    without waiting hours. Never for production data: timestamps are not real.
    """

    def __init__(self, scale: float, origin_ms: int | None = None) -> None:
        if scale <= 0:
            raise ValueError("time scale must be positive")
        self.scale = scale
        self._real0: float | None = None  # anchored at first use, so start-up time is not plant time
        self._origin_ms = origin_ms if origin_ms is not None else time.time_ns() // 1_000_000

    def _elapsed(self) -> float:
        if self._real0 is None:
            self._real0 = time.monotonic()
        return (time.monotonic() - self._real0) * self.scale

    def wall_ms(self) -> int:
        return self._origin_ms + int(self._elapsed() * 1000)

    def monotonic(self) -> float:
        return self._elapsed()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.scale)


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, wall_ms: int = 1_700_000_000_000, monotonic: float = 1000.0) -> None:
        self._wall_ms = wall_ms
        self._mono = monotonic

    def wall_ms(self) -> int:
        return self._wall_ms

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self._wall_ms += round(seconds * 1000)
        self._mono += seconds


class SteppableClock:
    """Real time whose wall clock a test can step (forward or back), as NTP or an operator would.

    Monotonic time and sleeps are real; `step(seconds)` moves only the wall clock.
    """

    def __init__(self, base: Clock | None = None) -> None:
        self._base = base or SystemClock()
        self.offset_ms = 0

    def wall_ms(self) -> int:
        return self._base.wall_ms() + self.offset_ms

    def monotonic(self) -> float:
        return self._base.monotonic()

    async def sleep(self, seconds: float) -> None:
        await self._base.sleep(seconds)

    def step(self, seconds: float) -> None:
        self.offset_ms += round(seconds * 1000)


# -- time you can trust: wall-clock steps and kernel synchronisation -------------------------------------

TIME_ERROR = 5  # adjtimex(2) return value: the clock is not synchronised
STA_UNSYNC = 0x0040


def kernel_synchronised() -> bool | None:
    """Whether the kernel considers its clock synchronised (adjtimex(2) with modes 0: read only).

    True/False from the kernel's STA_UNSYNC flag and TIME_ERROR state; None where adjtimex is not
    available (not Linux, or refused)."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct timex is ~208 bytes on 64-bit; modes=0 reads only
        state = libc.adjtimex(buf)
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    status = int.from_bytes(buf.raw[40:44], sys.byteorder) if ctypes.sizeof(ctypes.c_long) == 8 else 0
    return not (state == TIME_ERROR or status & STA_UNSYNC)


@dataclass(frozen=True)
class ClockStep:
    """A wall-clock step: the wall clock moved by `delta_ms` more than monotonic time did."""

    old_ms: int  # where the wall clock would be without the step
    new_ms: int  # where it is
    delta_ms: int
    window: tuple[int, int]  # wall time (new scale) during which readings' timestamps are doubtful


REASON_CLOCK_STEPPED = "clock_stepped"


class TimeKeeper:
    """Detects wall-clock steps by comparing wall and monotonic deltas between checks, and tracks
    whether the kernel clock is synchronised. Slewing (NTP's gradual correction, at most 0.5 ms/s)
    never reaches the threshold; a step (settimeofday, an NTP step, an operator) does.

    `check()` is cheap (two clock reads): the store writer calls it before each batch, so readings
    taken after a step are marked before they are committed.
    """

    def __init__(self, clock: Clock, *, threshold_ms: int = 2000, hold_ms: int = 2000,
                 sync_probe: Callable[[], bool | None] = kernel_synchronised) -> None:
        self.clock = clock
        self.threshold_ms = threshold_ms
        self.hold_ms = hold_ms
        self._probe = sync_probe
        self._last: tuple[int, float] | None = None
        self.last_step: ClockStep | None = None
        self.steps = 0
        self._windows: list[tuple[int, int, float]] = []  # (lo, hi, monotonic deadline)
        self.synchronised: bool | None = None
        self._sync_checked = False

    def check(self) -> ClockStep | None:
        wall, mono = self.clock.wall_ms(), self.clock.monotonic()
        last, self._last = self._last, (wall, mono)
        if self._windows and self._windows[0][2] < mono:
            self._windows = [w for w in self._windows if w[2] >= mono]
        if last is None:
            return None
        expected = last[0] + round((mono - last[1]) * 1000)
        delta = wall - expected
        if abs(delta) < self.threshold_ms:
            return None
        # Readings stamped between the step and now, and shortly after, may be on either side of it.
        lo = last[0] + delta
        step = ClockStep(expected, wall, delta, (min(lo, wall), wall + self.hold_ms))
        self._windows.append((*step.window, mono + 60.0))
        self.last_step = step
        self.steps += 1
        log.warning("wall clock stepped %+.3f s: %s -> %s; readings stamped until %s are marked %s",
                    delta / 1000, _iso(expected), _iso(wall), _iso(step.window[1]), REASON_CLOCK_STEPPED)
        return step

    def doubtful(self, ts_ms: int) -> bool:
        """Whether a reading stamped `ts_ms` was taken just after a step."""
        return any(lo <= ts_ms <= hi for lo, hi, _ in self._windows)

    @property
    def marking(self) -> bool:
        return bool(self._windows)

    def check_sync(self) -> None:
        """Probe the kernel's synchronisation state; one log line when it changes."""
        now = self._probe()
        if now == self.synchronised and self._sync_checked:
            return
        self.synchronised = now
        first, self._sync_checked = not self._sync_checked, True
        if now is False:
            log.warning("system clock is not synchronised (kernel STA_UNSYNC): timestamps depend on the local "
                        "oscillator; check NTP/chrony")
        elif now is True and not first:
            log.info("system clock is synchronised again")
        elif now is None and first:
            log.info("system clock synchronisation state unknown (adjtimex not available)")

    def status(self) -> dict[str, Any]:
        step = self.last_step
        return {"synchronised": "unknown" if self.synchronised is None else self.synchronised,
                "steps": self.steps,
                "last_step": None if step is None else {"at": step.new_ms, "from": step.old_ms,
                                                        "delta_ms": step.delta_ms}}


def _iso(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
