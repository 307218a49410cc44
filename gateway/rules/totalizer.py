"""Totalizer points (energy, fuel totals): consumption per period from counter differences.

- Rollover: the counter wraps to 0 at ``rollover_at`` (the configured counter max: a register showing
  0..999 999 has rollover_at = 1 000 000), so a decrease is a wrap and the difference is still exact.
- Meter replacement (standard 10.7.1 d): the new meter's reading is not consumption. A ``MeterReplacement``
  event (from the instrument registry) splits the interval: old meter up to its final reading, new meter
  from its initial reading. An unexplained decrease is treated as a reset: the interval's consumption is
  unknown and left uncovered (for missing-data substitution), never guessed.
- A gap between two good readings is recovered exactly from the counter difference: flagged
  ``recovered``, not substituted. Exact arithmetic (fractions of the binary values) keeps the sum of the
  periods equal to the counter difference.
Increments that straddle a period boundary are split in proportion to time (the counter value at the
boundary is interpolated); when such an increment spans a gap the period is flagged ``boundary_interpolated``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from gateway.model import Quality
from gateway.rules.aggregates import HOUR_MS, Sample
from gateway.rules.exact import fraction_text


@dataclass(frozen=True, slots=True)
class TotalizerConfig:
    max_interval_ms: int  # readings further apart than this bound a gap (cadence plus tolerance)
    rollover_at: float | None = None  # None: the counter never wraps, a decrease is a reset
    max_increment: float | None = None  # plausibility bound: a larger (wrapped) increment is a reset

    def __post_init__(self) -> None:
        if self.max_interval_ms < 1:
            raise ValueError("max_interval_ms must be positive")
        if self.rollover_at is not None and not (math.isfinite(self.rollover_at) and self.rollover_at > 0):
            raise ValueError("rollover_at must be a positive number")


@dataclass(frozen=True, slots=True)
class MeterReplacement:
    ts_ms: int
    old_final: float | None  # the old meter's last reading; None when it was not recorded
    new_initial: float  # the new meter's first reading (often 0)


@dataclass(frozen=True, slots=True)
class Increment:
    """Consumption between two known counter states; ``amount`` None means unknown (a reset)."""

    start_ms: int
    end_ms: int
    amount: Fraction | None
    rollover: bool = False
    reset: bool = False
    recovered: bool = False  # spans a gap between two good readings


@dataclass(frozen=True, slots=True)
class TotalizerPeriod:
    start_ms: int
    end_ms: int
    consumption: float
    consumption_exact: str
    covered_ms: int  # time of the period covered by known increments
    complete: bool  # covered_ms == the whole period
    recovered: bool  # includes consumption recovered across a gap from the counter difference
    boundary_interpolated: bool  # a gap-spanning increment was split at a period boundary
    rollovers: int
    resets: int
    readings: int  # good readings in the period


def _good(s: Sample) -> bool:
    return s.quality is Quality.GOOD and s.value is not None and math.isfinite(s.value)


def _delta(v0: float, v1: float, config: TotalizerConfig) -> tuple[Fraction | None, bool]:
    """Counter difference v0 -> v1: (amount, rolled_over); amount None when only a reset explains it."""
    d = Fraction(v1) - Fraction(v0)
    rolled = False
    if d < 0:
        if config.rollover_at is None:
            return None, False
        d += Fraction(config.rollover_at)
        rolled = True
        if d < 0:
            return None, False
    if config.max_increment is not None and d > Fraction(config.max_increment):
        return None, False
    return d, rolled


def increments(samples: Sequence[Sample], config: TotalizerConfig,
               replacements: Sequence[MeterReplacement] = ()) -> tuple[Increment, ...]:
    """Increments between consecutive good readings (sorted by time; inputs are not modified)."""
    good = sorted((s for s in samples if _good(s)), key=lambda s: s.ts_ms)
    swaps = sorted(replacements, key=lambda r: r.ts_ms)
    out: list[Increment] = []
    for a, b in itertools.pairwise(good):
        assert a.value is not None
        assert b.value is not None
        gap = b.ts_ms - a.ts_ms > config.max_interval_ms
        inside = [r for r in swaps if a.ts_ms < r.ts_ms <= b.ts_ms]
        if not inside:
            amount, rolled = _delta(a.value, b.value, config)
            out.append(Increment(a.ts_ms, b.ts_ms, amount, rolled, amount is None, gap and amount is not None))
            continue
        # Old meter up to its final reading, then each new meter from its initial reading (10.7.1 d).
        t, v = a.ts_ms, a.value
        for r in inside:
            if r.old_final is None:
                out.append(Increment(t, r.ts_ms, None, reset=True))
            else:
                amount, rolled = _delta(v, r.old_final, config)
                out.append(Increment(t, r.ts_ms, amount, rolled, amount is None, gap and amount is not None))
            t, v = r.ts_ms, r.new_initial
        amount, rolled = _delta(v, b.value, config)
        out.append(Increment(t, b.ts_ms, amount, rolled, amount is None, gap and amount is not None))
    return tuple(out)


@dataclass(slots=True)
class _Accumulator:
    amount: Fraction = Fraction(0)
    covered_ms: int = 0
    recovered: bool = False
    interpolated: bool = False
    rollovers: int = 0
    resets: int = 0
    readings: int = 0


def totalize_periods(samples: Sequence[Sample], config: TotalizerConfig, *, period_ms: int = HOUR_MS,
                     replacements: Sequence[MeterReplacement] = (), origin_ms: int = 0
                     ) -> tuple[TotalizerPeriod, ...]:
    """Consumption per period, for every period from the first to the last good reading."""
    good_ts = sorted(s.ts_ms for s in samples if _good(s))
    if not good_ts:
        return ()

    def start_of(ts: int) -> int:
        return origin_ms + ((ts - origin_ms) // period_ms) * period_ms

    acc = {s: _Accumulator() for s in range(start_of(good_ts[0]), start_of(good_ts[-1]) + period_ms, period_ms)}
    for ts in good_ts:
        acc[start_of(ts)].readings += 1
    for inc in increments(samples, config, replacements):
        duration = inc.end_ms - inc.start_ms
        if duration == 0:  # two readings with one timestamp: nothing to split
            a = acc[start_of(inc.end_ms)]
            if inc.amount is None:
                a.resets += 1
            else:
                a.amount += inc.amount
            continue
        last_period = start_of(inc.end_ms - 1)
        for s in range(start_of(inc.start_ms), last_period + period_ms, period_ms):
            overlap = min(inc.end_ms, s + period_ms) - max(inc.start_ms, s)
            a = acc[s]
            if inc.amount is None:
                a.resets += 1
                continue
            a.amount += inc.amount * Fraction(overlap, duration)
            a.covered_ms += overlap
            a.recovered = a.recovered or inc.recovered
            a.interpolated = a.interpolated or (inc.recovered and overlap < duration)
            a.rollovers += 1 if inc.rollover and s == last_period else 0
    return tuple(
        TotalizerPeriod(s, s + period_ms, float(a.amount), fraction_text(a.amount), a.covered_ms,
                        a.covered_ms == period_ms, a.recovered, a.interpolated, a.rollovers, a.resets, a.readings)
        for s, a in acc.items()
    )


def consumption_between(samples: Sequence[Sample], config: TotalizerConfig,
                        replacements: Sequence[MeterReplacement] = ()) -> Fraction | None:
    """Total consumption from the first to the last good reading; None if a reset makes it unknown."""
    total = Fraction(0)
    for inc in increments(samples, config, replacements):
        if inc.amount is None:
            return None
        total += inc.amount
    return total


@dataclass(slots=True)
class RunningTotal:
    """Totalizer consumption settled increment by increment: O(1) memory per point (issue 8).

    Keeps only the last good reading and the accumulators of the open period (and, transiently, of the
    periods one increment spans). ``feed`` takes good readings in time order and returns the periods that
    the reading settled: every period from the open one up to, not including, the reading's own period.
    This is what the runtime got before from ``totalize_periods`` over the anchor and the readings of the
    open period; each increment's share of a period is counted in exactly one returned period.
    """

    period_ms: int
    origin_ms: int = 0
    last_ts_ms: int | None = None  # the last good reading
    last_value: float | None = None
    period_start: int | None = None  # the open period
    acc: dict[int, _Accumulator] | None = None  # open (and spanned) periods' accumulators

    def _start_of(self, ts: int) -> int:
        return self.origin_ms + ((ts - self.origin_ms) // self.period_ms) * self.period_ms

    def _acc(self, s: int) -> _Accumulator:
        assert self.acc is not None
        a = self.acc.get(s)
        if a is None:
            a = self.acc[s] = _Accumulator()
        return a

    def feed(self, ts_ms: int, value: float, config: TotalizerConfig) -> list[TotalizerPeriod]:
        """One good reading (finite value, not before the previous good one)."""
        period_ms = self.period_ms
        current = self._start_of(ts_ms)
        if self.last_ts_ms is None or self.last_value is None or self.period_start is None or self.acc is None:
            self.last_ts_ms, self.last_value, self.period_start = ts_ms, value, current
            self.acc = {}
            self._acc(current).readings += 1
            return []
        prev_ts, prev_value = self.last_ts_ms, self.last_value
        self.last_ts_ms, self.last_value = ts_ms, value
        self._acc(current).readings += 1
        amount, rolled = _delta(prev_value, value, config)
        recovered = ts_ms - prev_ts > config.max_interval_ms and amount is not None
        duration = ts_ms - prev_ts
        if duration == 0:  # two readings with one timestamp: nothing to split
            a = self._acc(current)
            if amount is None:
                a.resets += 1
            else:
                a.amount += amount
        else:
            last_period = self._start_of(ts_ms - 1)
            for s in range(max(self._start_of(prev_ts), self.period_start), last_period + period_ms, period_ms):
                overlap = min(ts_ms, s + period_ms) - max(prev_ts, s)
                a = self._acc(s)
                if amount is None:
                    a.resets += 1
                    continue
                # Exact either way; the common increment inside one period needs no split.
                a.amount += amount if overlap == duration else amount * Fraction(overlap, duration)
                a.covered_ms += overlap
                a.recovered = a.recovered or recovered
                a.interpolated = a.interpolated or (recovered and overlap < duration)
                a.rollovers += 1 if rolled and s == last_period else 0
        if current <= self.period_start:
            return []
        settled = []
        for s in range(self.period_start, current, period_ms):
            a = self.acc.pop(s, None) or _Accumulator()
            settled.append(TotalizerPeriod(s, s + period_ms, float(a.amount), fraction_text(a.amount), a.covered_ms,
                                           a.covered_ms == period_ms, a.recovered, a.interpolated, a.rollovers,
                                           a.resets, a.readings))
        self.period_start = current
        return settled

    def skip(self, delta_ms: int) -> list[TotalizerPeriod]:
        """A forward wall-clock step: the periods it jumps over were never lived and get no record. The open
        period settles with what it holds; the last good reading moves into the new timeline, so the next
        increment (the counter difference across the step) is counted there and nothing is lost."""
        if self.last_ts_ms is None or self.period_start is None or self.acc is None:
            return []
        self.last_ts_ms += delta_ms
        new_start = self._start_of(self.last_ts_ms)
        settled = []
        for s in sorted(k for k in self.acc if k < new_start):
            a = self.acc.pop(s)
            settled.append(TotalizerPeriod(s, s + self.period_ms, float(a.amount), fraction_text(a.amount),
                                           a.covered_ms, a.covered_ms == self.period_ms, a.recovered, a.interpolated,
                                           a.rollovers, a.resets, a.readings))
        self.period_start = max(self.period_start, new_start)
        return settled

    def to_json(self) -> dict[str, object]:
        acc = self.acc or {}
        return {"period_ms": self.period_ms, "origin_ms": self.origin_ms, "last_ts_ms": self.last_ts_ms,
                "last_value": self.last_value, "period_start": self.period_start,
                "acc": None if self.acc is None else [
                    [s, fraction_text(a.amount), a.covered_ms, a.recovered, a.interpolated, a.rollovers, a.resets,
                     a.readings] for s, a in acc.items()]}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> RunningTotal:
        raw = d.get("acc")
        acc = None if raw is None else {
            int(s): _Accumulator(Fraction(amount), int(cov), bool(rec), bool(interp), int(roll), int(res), int(n))
            for s, amount, cov, rec, interp, roll, res, n in raw}  # type: ignore[attr-defined]
        return cls(int(d["period_ms"]), int(d.get("origin_ms", 0)), d.get("last_ts_ms"),  # type: ignore[arg-type]
                   d.get("last_value"), d.get("period_start"), acc)  # type: ignore[arg-type]
