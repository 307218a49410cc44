"""Clocks are injected so that schedules and rules can be tested without sleeping."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


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
