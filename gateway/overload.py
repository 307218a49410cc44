"""Overload: the gateway is too busy to keep its polling schedule (issue 8: plateau, do not collapse).

A poll that starts late because the event loop was busy, or because the store writer fell behind and
the bounded queue pushed back, is the gateway's fault, not the meter's. The monitor looks at each
window of `window_s` seconds:

- the share of polled instruments whose poll started later than `late_fraction` of its interval
  after its due time (most instruments late: the gateway, not one meter, is slow);
- the event loop's lag (how late a timer fires);
- producers blocked on the full reading queue.

Overload starts after `start_windows` bad windows in a row and ends after `end_windows` good ones:
one log line each, `status()` for the status topic, and the rules stage is told (so late polls are
not counted as communication failures per point).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("gateway.overload")


@dataclass
class _Window:
    polled: set[str] = field(default_factory=set)
    late: set[str] = field(default_factory=set)
    late_polls: int = 0
    max_late_s: float = 0.0


class OverloadMonitor:
    def __init__(self, *, late_fraction: float = 0.5, majority: float = 0.5, lag_threshold_s: float = 0.5,
                 start_windows: int = 2, end_windows: int = 3) -> None:
        self.late_fraction = late_fraction
        self.majority = majority
        self.lag_threshold_s = lag_threshold_s
        self.start_windows = start_windows
        self.end_windows = end_windows
        self.active = False
        self.since_ms: int | None = None
        self.late_polls = 0  # polls that started late, since the gateway started
        self.episodes = 0
        self._window = _Window()
        self._bad_run = 0
        self._good_run = 0
        self._blocked_seen = 0
        self._why = ""
        self._start_late = 0

    def poll_started(self, instrument: str, late_s: float, interval_s: float) -> None:
        """A poller starts a poll `late_s` after its due time (called by ConnectionPoller)."""
        w = self._window
        w.polled.add(instrument)
        if late_s > self.late_fraction * interval_s:
            w.late.add(instrument)
            w.late_polls += 1
            self.late_polls += 1
            w.max_late_s = max(w.max_late_s, late_s)

    def tick(self, *, now_ms: int, loop_lag_s: float, blocked_puts: int) -> bool | None:
        """Close a window. Returns True when overload starts, False when it ends, None otherwise."""
        w, self._window = self._window, _Window()
        blocked = blocked_puts - self._blocked_seen
        self._blocked_seen = blocked_puts
        reasons = []
        if w.polled and len(w.late) > self.majority * len(w.polled):
            reasons.append(f"{len(w.late)} of {len(w.polled)} instruments polled late (up to {w.max_late_s:.1f} s)")
        if loop_lag_s > self.lag_threshold_s:
            reasons.append(f"event loop {loop_lag_s:.2f} s behind")
        if blocked > 0:
            reasons.append(f"reading queue full ({blocked} blocked puts)")
        if reasons:
            if not self._bad_run and not self.active:
                self._start_late = self.late_polls - w.late_polls  # the episode counts from its first bad window
            self._bad_run += 1
            self._good_run = 0
            self._why = "; ".join(reasons)
        else:
            self._good_run += 1
            self._bad_run = 0
        if not self.active and self._bad_run >= self.start_windows:
            self.active, self.since_ms = True, now_ms
            self.episodes += 1
            log.warning("overload: the gateway cannot keep its polling schedule (%s); late polls are not "
                        "counted as communication failures", self._why)
            return True
        if self.active and self._good_run >= self.end_windows:
            log.info("overload ended after %.1f s (%d late polls)", (now_ms - (self.since_ms or now_ms)) / 1000,
                     self.late_polls - self._start_late)
            self.active, self.since_ms = False, None
            return False
        return None

    def status(self) -> dict[str, Any]:
        return {"active": self.active, "since": self.since_ms, "late_polls": self.late_polls}


class LoopLag:
    """How late the event loop runs a timer: the longest stall of everything on the loop (issue 8: an
    hour close that stalled the loop for 13 s went unseen). A task sleeps `interval_s` at a time and
    records how much later than asked it woke. `status()` gives the longest lag since the previous
    call (the previous status message) and since start; it is a measurement, it triggers nothing.

    The same stall is also measured in CPU time of the loop's thread (`cpu_ms`): what the loop itself
    spent while the probe waited. On a machine shared with other work the wall lag includes the time
    the loop waited for a core; the CPU figure does not, so it shows the loop's own longest stretch."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.max_s = 0.0  # since the previous status()
        self.max_total_s = 0.0
        self.max_cpu_s = 0.0  # the same in the loop thread's CPU time
        self.max_cpu_total_s = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.interval_s
        cpu = time.thread_time
        while True:
            before, cpu_before = loop.time(), cpu()
            await asyncio.sleep(interval)
            lag = loop.time() - before - interval
            busy = cpu() - cpu_before
            if lag > self.max_s:
                self.max_s = lag
                if lag > self.max_total_s:
                    self.max_total_s = lag
            if busy > self.max_cpu_s:
                self.max_cpu_s = busy
                if busy > self.max_cpu_total_s:
                    self.max_cpu_total_s = busy

    def status(self) -> dict[str, Any]:
        body = {"max_ms": round(self.max_s * 1000, 1), "max_ms_total": round(self.max_total_s * 1000, 1),
                "probe_ms": round(self.interval_s * 1000, 1), "cpu_ms": round(self.max_cpu_s * 1000, 1),
                "cpu_ms_total": round(self.max_cpu_total_s * 1000, 1)}
        self.max_s = self.max_cpu_s = 0.0
        return body
