"""Health, backoff and schedule: the one implementation every driver and the poller share (pure).

- `backoff_delay`: capped exponential backoff with jitter after failed attempts;
- `next_slot`: the fixed monotonic grid of a periodic read, late slots skipped and counted;
- `LinkHealth`: the per-device counters and state the status topic publishes, with the one log line
  when a failure starts and the one when it ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any


def backoff_delay(attempt: int, initial_s: float, max_s: float, jitter: float) -> float:
    """Capped exponential backoff with jitter. `attempt` counts from 0, `jitter` is uniform in [0, 1).

    The delay lies in [0.5, 1.0) x min(max_s, initial_s * 2**attempt): never above the cap, and spread so
    a fleet of gateways does not reconnect to a restarted device in lock step.
    """
    base = min(max_s, initial_s * 2.0 ** min(max(0, attempt), 60))
    return base * (0.5 + 0.5 * jitter)


def next_slot(scheduled: float, interval: float, now: float) -> tuple[float, int]:
    """Next time on the grid `scheduled + k*interval` strictly after `now`, and how many slots were skipped.

    Monotonic-clock schedule: a late read does not shift the grid, and slots that passed while we were
    busy (slow sink, slow device, backoff) are skipped and counted rather than fired in a burst.
    """
    slot = scheduled + interval
    if slot > now:
        return slot, 0
    missed = int((now - slot) // interval) + 1
    return slot + missed * interval, missed


@dataclass
class LinkHealth:
    """Communication health of one device, as the status topic reports it."""

    polls: int = 0
    failures: int = 0  # failed attempts (polls or connects), over the whole run
    consecutive_failures: int = 0
    missed_polls: int = 0
    last_ok_ms: int | None = None
    last_error: str = ""

    @property
    def state(self) -> str:
        return "failing" if self.consecutive_failures else "ok"

    def failed(self, error: object, *, log: logging.Logger | None = None, who: str = "",
               consequence: str = "") -> bool:
        """Count a failed attempt; True (and one error line) when it starts an outage."""
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = str(error)
        first = self.consecutive_failures == 1
        if first and log is not None:
            log.error("%s: %s%s", who, error, f" ({consequence})" if consequence else "")
        return first

    def succeeded(self, now_ms: int, *, log: logging.Logger | None = None, who: str = "") -> int:
        """Count a successful attempt; returns the failures it ends (one info line when > 0)."""
        ended = self.consecutive_failures
        if ended and log is not None:
            log.info("%s: communication restored after %d failed attempt(s)", who, ended)
        self.consecutive_failures = 0
        self.last_ok_ms = now_ms
        return ended

    def status(self) -> dict[str, Any]:
        """The per-instrument body of the status topic (docs/schema/status.schema.json)."""
        return {"state": self.state, "polls": self.polls, "failures": self.failures,
                "missed_polls": self.missed_polls, "last_ok": self.last_ok_ms, "last_error": self.last_error}
