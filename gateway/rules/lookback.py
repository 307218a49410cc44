"""Lookback(W): the last W quality-assured values before a gap (docs/rules.md §2.1).

Counted in valid operating hours, not clock hours: a clock-hour window gives a different (wrong) answer
whenever an invalid hour falls inside it. Values older than 26,280 clock hours (3 years) before the gap
are dropped (40 CFR 75.33(a)).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.rules.hours import HourValue

PART75_MAX_AGE_HOURS = 26_280


@dataclass(frozen=True, slots=True)
class LookbackWindow:
    """The values a statistic was taken from, with what bounded them (kept in the trace)."""

    w: int
    end_hour: int  # exclusive: no hour at or after it is used
    oldest_hour: int | None  # inclusive age limit, None when no age limit applies
    hours: tuple[int, ...]
    values: tuple[float, ...]
    load_bin: int | None = None  # set when the window was filtered to one load bin
    n_before_bin_filter: int | None = None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def first_hour(self) -> int | None:
        return self.hours[0] if self.hours else None

    @property
    def last_hour(self) -> int | None:
        return self.hours[-1] if self.hours else None

    def in_bin(self, load_bin: int, bins: Mapping[int, int | None]) -> LookbackWindow:
        """The same window restricted to hours recorded in ``load_bin`` (Part 75 §75.33(c))."""
        kept = [(h, v) for h, v in zip(self.hours, self.values, strict=True) if bins.get(h) == load_bin]
        return LookbackWindow(self.w, self.end_hour, self.oldest_hour, tuple(h for h, _ in kept),
                              tuple(v for _, v in kept), load_bin, self.n)


def lookback(history: Sequence[HourValue], end_hour: int, w: int, *, oldest_hour: int | None) -> LookbackWindow:
    """The last ``w`` QA values strictly before ``end_hour`` and not before ``oldest_hour``, oldest first."""
    if w < 1:
        raise ValueError("lookback window must hold at least one hour")
    picked: list[HourValue] = []
    for item in reversed(history):
        if len(picked) == w:
            break
        if item.hour >= end_hour or item.value is None:
            continue
        if oldest_hour is not None and item.hour < oldest_hour:
            break  # history is sorted: everything further back is older still
        picked.append(item)
    picked.reverse()
    return LookbackWindow(w, end_hour, oldest_hour, tuple(p.hour for p in picked),
                          tuple(p.value for p in picked if p.value is not None))
