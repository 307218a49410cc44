"""Per-connection polling: one task per endpoint, instruments scheduled on a monotonic clock.

Schedules are kept in monotonic time so a wall-clock step never causes a burst or a hole of polls;
each reading's source timestamp is wall-clock UTC. A failing device backs off exponentially (with
jitter) without touching the schedules of other devices; polls skipped meanwhile are counted.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from drivers.modbus.client import ModbusConnection
from gateway.clock import Clock
from gateway.errors import DriverError
from gateway.instruments import InstrumentSpec
from gateway.model import Quality, RawSample
from gateway.queue import ReadingQueue
from gateway.tagging import tag

log = logging.getLogger("gateway.poller")


@dataclass
class DeviceHealth:
    polls: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    missed_polls: int = 0
    last_ok_ms: int | None = None
    last_error: str = ""

    @property
    def state(self) -> str:
        return "failing" if self.consecutive_failures else "ok"


def backoff_delay(failures: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Capped exponential backoff with full jitter in [d/2, d] (pure apart from the rng)."""
    d = min(cap, base * 2 ** max(0, failures - 1))
    return d * (0.5 + 0.5 * rng.random())


def failed_samples(spec: InstrumentSpec, ts_ms: int, reason: str) -> list[RawSample]:
    return [RawSample(p.name, ts_ms, None, Quality.BAD, reason) for p in spec.points]


class ConnectionPoller:
    def __init__(self, conn: ModbusConnection, specs: Sequence[InstrumentSpec], out: ReadingQueue, clock: Clock,
                 *, backoff_min_s: float, backoff_max_s: float, seed: int | None = None,
                 on_readings: Callable[[str, int], None] | None = None) -> None:
        self.conn = conn
        self.specs = list(specs)
        self.out = out
        self.clock = clock
        self.health = {s.id: DeviceHealth() for s in specs}
        self._backoff = (backoff_min_s, backoff_max_s)
        self._rng = random.Random(seed)
        self._on_readings = on_readings

    async def run(self) -> None:
        start = self.clock.monotonic()
        # Stagger first polls so devices sharing a connection do not all fall due together.
        due = {s.id: start + i * min(0.05, s.poll_interval_s / max(1, len(self.specs)))
               for i, s in enumerate(self.specs)}
        not_before = {s.id: start for s in self.specs}
        try:
            while True:
                spec = min(self.specs, key=lambda s: max(due[s.id], not_before[s.id]))
                at = max(due[spec.id], not_before[spec.id])
                delay = at - self.clock.monotonic()
                if delay > 0:
                    await self.clock.sleep(delay)
                await self._poll(spec, due, not_before)
        finally:
            await self.conn.close()

    async def _poll(self, spec: InstrumentSpec, due: dict[str, float], not_before: dict[str, float]) -> None:
        h = self.health[spec.id]
        try:
            samples = await self.conn.read(spec.device)
        except DriverError as err:
            samples = failed_samples(spec, self.clock.wall_ms(), err.reason)
            h.failures += 1
            h.consecutive_failures += 1
            if h.consecutive_failures == 1:
                log.error("%s: %s (readings stored as bad/%s until it recovers)", spec.id, err, err.reason)
            h.last_error = str(err)
            lo, hi = self._backoff
            not_before[spec.id] = self.clock.monotonic() + backoff_delay(h.consecutive_failures, base=lo, cap=hi,
                                                                          rng=self._rng)
        else:
            if h.consecutive_failures:
                log.info("%s: communication restored after %d failed polls", spec.id, h.consecutive_failures)
            h.consecutive_failures = 0
            h.last_ok_ms = self.clock.wall_ms()
            not_before[spec.id] = 0.0
        h.polls += 1  # counted once finished, so a cancelled poll is not a poll
        readings = tag(spec, samples)
        await self.out.put(readings)
        if self._on_readings is not None:
            self._on_readings(spec.id, len(readings))
        # Next slot on the fixed grid; slots that already passed are missed polls, not a burst.
        interval = spec.poll_interval_s
        nxt = due[spec.id] + interval
        now = self.clock.monotonic()
        if nxt <= now:
            skipped = int((now - nxt) // interval) + 1
            h.missed_polls += skipped
            nxt += skipped * interval
        due[spec.id] = nxt
