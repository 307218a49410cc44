"""A bounded queue of reading batches, bounded by the number of readings (not batches).

Producers block when it is full: backpressure reaches the pollers instead of memory growing
(perf-limits.md: an unbounded queue grew to 600 MB).
"""

from __future__ import annotations

import asyncio

from gateway.model import Reading


class ReadingQueue:
    def __init__(self, max_readings: int) -> None:
        self.max_readings = max_readings
        self._items: list[Reading] = []
        self._not_full = asyncio.Event()
        self._not_full.set()
        self._not_empty = asyncio.Event()
        self.blocked_puts = 0  # how often a producer had to wait: published on the status topic
        # Readings ever queued and ever taken: a reload waits until the writer has taken (and committed) every
        # reading queued before it (gateway/reload.py).
        self.total_in = 0
        self.total_out = 0

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, batch: list[Reading]) -> None:
        while len(self._items) >= self.max_readings:
            self.blocked_puts += 1
            self._not_full.clear()
            await self._not_full.wait()
        self._items.extend(batch)
        self.total_in += len(batch)
        if self._items:
            self._not_empty.set()

    async def wait(self, timeout: float) -> None:
        """Wait until something is queued, or the timeout passes."""
        if self._items:
            return
        try:
            async with asyncio.timeout(timeout):  # not wait_for: it can swallow a cancellation on 3.11
                await self._not_empty.wait()
        except TimeoutError:
            pass

    def oldest_ts(self) -> int | None:
        """Source time of the oldest queued reading (batches are queued in poll order), or None when empty."""
        return self._items[0].ts_ms if self._items else None

    def take(self, limit: int) -> list[Reading]:
        out, self._items = self._items[:limit], self._items[limit:]
        self.total_out += len(out)
        if not self._items:
            self._not_empty.clear()
        if len(self._items) < self.max_readings:
            self._not_full.set()
        return out
