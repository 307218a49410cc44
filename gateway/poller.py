"""Per-connection polling: one task per endpoint, instruments scheduled on a monotonic clock.

Schedules are kept in monotonic time so a wall-clock step never causes a burst or a hole of polls;
each reading's source timestamp is wall-clock UTC. A failing device backs off exponentially (with
jitter) without touching the schedules of other devices; polls skipped meanwhile are counted.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence

from drivers.base import PollingDriver
from drivers.pacing import LinkHealth, backoff_delay, next_slot
from gateway.clock import Clock
from gateway.errors import DriverError
from gateway.ingest import Ingest
from gateway.instruments import InstrumentSpec
from gateway.model import Quality, RawSample
from gateway.queue import ReadingQueue

log = logging.getLogger("gateway.poller")

DeviceHealth = LinkHealth  # the name the tests and status code know


def failed_samples(spec: InstrumentSpec, ts_ms: int, reason: str) -> list[RawSample]:
    return [RawSample(p.name, ts_ms, None, Quality.BAD, reason) for p in spec.points if p.derived is None]


class ConnectionPoller:
    def __init__(self, conn: PollingDriver, specs: Sequence[InstrumentSpec], out: ReadingQueue, clock: Clock,
                 *, backoff_min_s: float, backoff_max_s: float, seed: int | None = None,
                 on_readings: Callable[[str, int], None] | None = None,
                 on_poll_start: Callable[[str, float, float], None] | None = None) -> None:
        self.conn = conn
        self.specs = list(specs)
        self.out = out
        self.clock = clock
        self.health = {s.id: LinkHealth() for s in specs}
        self._backoff = (backoff_min_s, backoff_max_s)
        self._rng = random.Random(seed)
        self.ingest = Ingest(out, specs, on_readings=on_readings)
        self.late_polls = {s.id: 0 for s in specs}  # polls that started over half an interval after their due time
        self._on_poll_start = on_poll_start  # (instrument, seconds late, interval): overload detection
        self._polling = False  # a poll is under way (its readings not yet queued)
        self._park: asyncio.Event | None = None  # set by park(): stop between polls

    async def park(self, timeout_s: float) -> bool:
        """Let the poll under way finish and queue its readings, then stay idle until cancelled: a poller a
        reload replaces is cancelled only between polls, so no reading is lost half-way. False when the poll
        did not finish within `timeout_s` (the caller cancels it anyway: that poll then counts as not made)."""
        self._park = asyncio.Event()
        if not self._polling:
            return True
        try:
            async with asyncio.timeout(timeout_s):
                await self._park.wait()
        except TimeoutError:
            return False
        return True

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
                if not_before[spec.id] <= due[spec.id]:  # on schedule, not backing off: how late did it start?
                    late = self.clock.monotonic() - due[spec.id]
                    if late > 0.5 * spec.poll_interval_s:
                        self.late_polls[spec.id] += 1
                    if self._on_poll_start is not None:
                        self._on_poll_start(spec.id, late, spec.poll_interval_s)
                self._polling = True
                try:
                    await self._poll(spec, due, not_before)
                finally:
                    self._polling = False
                if self._park is not None:
                    self._park.set()
                    await asyncio.Event().wait()  # parked: cancelled by the reload that replaces this poller
        finally:
            await self.conn.close()

    async def _poll(self, spec: InstrumentSpec, due: dict[str, float], not_before: dict[str, float]) -> None:
        h = self.health[spec.id]
        try:
            samples = await self.conn.read(spec.device)
        except DriverError as err:
            samples = failed_samples(spec, self.clock.wall_ms(), err.reason)
            h.failed(err, log=log, who=spec.id, consequence=f"readings stored as bad/{err.reason} until it recovers")
            lo, hi = self._backoff
            not_before[spec.id] = self.clock.monotonic() + backoff_delay(h.consecutive_failures - 1, lo, hi,
                                                                          self._rng.random())
        else:
            h.succeeded(self.clock.wall_ms(), log=log, who=spec.id)
            not_before[spec.id] = 0.0
        h.polls += 1  # counted once finished, so a cancelled poll is not a poll
        await self.ingest(spec.id, samples)
        # Next slot on the fixed grid; slots that already passed are missed polls, not a burst.
        due[spec.id], missed = next_slot(due[spec.id], spec.poll_interval_s, self.clock.monotonic())
        h.missed_polls += missed
