"""Operating hours and Part 75 load ranges from process signals (issue 10 items 6 and 7). Pure.

Operating hours. Every regulation substitutes only hours in which the source operated: 40 CFR 75.30(a)
(substitution "for each hour of unit operation"; 40 CFR 72.2 defines an operating hour as any hour in which
fuel is combusted for any part of the hour), HJ 75-2017 (stopped hours are excluded from the capture rate and
are not invalid hours), 40 CFR 98.35 and Reg. (EU) 2018/2066 Art. 45(2) (hours missing while the equipment,
not the process, is out of operation). So an hour is operating when **any** good reading of the signal in it
meets the condition, non-operating when the signal has usable readings and none meets it, and unknown (taken
as operating, the conservative side: it is then a missing hour and substituted) when it has none. Usable:
not bad (an uncertain reading, e.g. a load frozen at 0 while the unit is off, still tells the state).

Load ranges. 40 CFR 75 Appendix C §2: the range of operation (lowest to maximum hourly load) is divided into
ten equal load ranges; each operating hour's range comes from its hourly average load. Zero (or any load at or
below the lowest) is range 1, a load at or above the maximum is the top range. A load exactly on a boundary
goes to the higher range (the edge convention is unverified, missing-data note §5 item 1; the higher range
is the conservative side for flow and NOx); ``edges`` replaces the equal bins when the monitoring plan says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True, slots=True)
class OperatingCondition:
    """``above``: operating when value > above. ``bit``: operating when that bit is set (clear with invert)."""

    above: float | None = None
    bit: int | None = None
    invert: bool = False

    def met(self, value: float) -> bool:
        if self.bit is not None:
            if not math.isfinite(value):
                return False
            on = bool((int(value) >> self.bit) & 1)
            return on != self.invert
        assert self.above is not None
        return value > self.above

    def describe(self) -> str:
        if self.bit is not None:
            return f"bit {self.bit} {'clear' if self.invert else 'set'}"
        return f"value > {self.above:g}"


@dataclass(frozen=True, slots=True)
class LoadBins:
    """Part 75 App. C §2 load ranges: ``bins`` equal ranges of [low, high], or explicit upper ``edges``."""

    low: float
    high: float
    bins: int = 10
    edges: tuple[float, ...] | None = None

    def bin_of(self, load: float) -> int:
        """The load range (1..bins) of an hourly average load. Exact arithmetic: no float boundary drift."""
        if self.edges is not None:
            for i, edge in enumerate(self.edges, start=1):
                if load < edge:
                    return i
            return self.bins
        lo, hi, x = Fraction(self.low), Fraction(self.high), Fraction(load)
        if x <= lo:
            return 1
        if x >= hi:
            return self.bins
        return min(self.bins, int((x - lo) * self.bins // (hi - lo)) + 1)

    def describe(self) -> str:
        if self.edges is not None:
            return f"{self.bins} ranges with upper edges {', '.join(f'{e:g}' for e in self.edges)}"
        return f"{self.bins} equal ranges of [{self.low:g}, {self.high:g}]"


@dataclass(slots=True)
class HourSignal:
    """One hour of a signal, updated reading by reading (O(1) state): whether any good reading met the
    operating condition, how many good readings there were, and the sum of the good values (load average)."""

    good: int = 0
    on: bool = False
    total: float = 0.0

    def add(self, value: float, condition: OperatingCondition | None) -> None:
        self.good += 1
        self.total += value
        if condition is not None and condition.met(value):
            self.on = True

    @property
    def mean(self) -> float | None:
        return self.total / self.good if self.good else None


def operating(signal: HourSignal | None) -> bool:
    """Operating unless the signal has good readings in the hour and none met the condition."""
    return signal is None or signal.good == 0 or signal.on


def hour_load_bin(signal: HourSignal | None, bins: LoadBins) -> int | None:
    """The hour's load range from its average load; None when the load point has no good reading."""
    mean = None if signal is None else signal.mean
    return None if mean is None or not math.isfinite(mean) else bins.bin_of(mean)


def gap_hour_bin(known: int | None, bins: LoadBins) -> tuple[int, bool]:
    """A gap hour needs a load range (§75.33(c)). Unknown load: the top range (design-choice: the highest
    range's values, or its potential-value fallback, never understate flow or NOx). (bin, assumed)."""
    return (known, False) if known is not None else (bins.bins, True)


def bins_by_hour(hours: Sequence[tuple[int, int | None]]) -> dict[int, int]:
    """``{hour: bin}`` for the auditor's ``load_bin_by_hour`` (hours without a bin left out)."""
    return {h: b for h, b in hours if b is not None}
