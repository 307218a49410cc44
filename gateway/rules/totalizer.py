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
- Wraps across a long gap (issue 10 item 2): a wrapping counter shows only the consumption modulo
  ``rollover_at``; the meter's maximum flow (``max_flow_per_h``, its measuring range) times the interval
  bounds how many wraps are possible. One possible count: the difference is exact. More than one: it is not
  exact, so the increment is **substituted** conservatively (the largest possible consumption for a
  high-direction point, the smallest for a low one) and says why; none (more than the meter can measure):
  a reset. Without ``max_flow_per_h`` at most one wrap is assumed, as before.
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
    # Issue 10 item 2: the meter's maximum flow (counter units per hour, its measuring range) bounds the
    # consumption of an interval, hence the number of wraps; direction picks the conservative candidate.
    max_flow_per_h: float | None = None
    direction: str = "high"  # "high": a larger consumption is conservative (fuel); "low": output, credits

    def __post_init__(self) -> None:
        if self.max_interval_ms < 1:
            raise ValueError("max_interval_ms must be positive")
        if self.rollover_at is not None and not (math.isfinite(self.rollover_at) and self.rollover_at > 0):
            raise ValueError("rollover_at must be a positive number")
        if self.max_flow_per_h is not None and not (math.isfinite(self.max_flow_per_h)
                                                    and self.max_flow_per_h > 0):
            raise ValueError("max_flow_per_h must be a positive number")
        if self.direction not in ("high", "low"):
            raise ValueError("direction must be high or low")


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
    substituted: bool = False  # the number of wraps was ambiguous: a conservative candidate, not exact
    note: str | None = None  # why it was substituted (or reset by the flow bound)


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
    substituted: bool = False  # includes an increment whose wraps were ambiguous (issue 10 item 2)
    note: str | None = None  # why


def _good(s: Sample) -> bool:
    return s.quality is Quality.GOOD and s.value is not None and math.isfinite(s.value)


@dataclass(frozen=True, slots=True)
class Delta:
    """One counter difference: the amount (None: unknown, a reset), whether it wrapped, and for an ambiguous
    number of wraps the conservative candidate with the reason."""

    amount: Fraction | None
    rolled: bool = False
    substituted: bool = False
    note: str | None = None


def _delta(v0: float, v1: float, config: TotalizerConfig, duration_ms: int = 0) -> Delta:
    """Counter difference v0 -> v1 over ``duration_ms``.

    Possible consumptions are d + k x R (k >= 0 wraps beyond the one a decrease shows), R = rollover_at. With a
    maximum flow F the consumption is at most B = F x duration: the candidates <= B are counted. One: exact.
    Several: substituted by the largest (high direction) or the smallest (low). None: a reset.
    """
    d = Fraction(v1) - Fraction(v0)
    rolled = False
    if d < 0:
        if config.rollover_at is None:
            return Delta(None)
        d += Fraction(config.rollover_at)
        rolled = True
        if d < 0:
            return Delta(None)
    if config.max_increment is not None and d > Fraction(config.max_increment):
        return Delta(None)
    if config.max_flow_per_h is None or duration_ms <= 0:
        return Delta(d, rolled)
    bound = Fraction(config.max_flow_per_h) * Fraction(duration_ms, 3_600_000)
    if d > bound:
        return Delta(None, note=f"difference {float(d):g} exceeds max_flow_per_h x interval = {float(bound):g}")
    if config.rollover_at is None:
        return Delta(d, rolled)
    r = Fraction(config.rollover_at)
    extra = math.floor((bound - d) / r)  # wraps beyond the minimum that still fit under the bound
    if extra == 0:
        return Delta(d, rolled)
    low, high = d, d + extra * r
    chosen = high if config.direction == "high" else low
    note = (f"ambiguous rollovers: {float(low):g} to {float(high):g} in steps of {float(r):g} fit under "
            f"max_flow_per_h x interval = {float(bound):g}; {config.direction} direction: {float(chosen):g}")
    return Delta(chosen, rolled or chosen != d, True, note)


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
            out.append(_increment(a.ts_ms, b.ts_ms, _delta(a.value, b.value, config, b.ts_ms - a.ts_ms), gap))
            continue
        # Old meter up to its final reading, then each new meter from its initial reading (10.7.1 d).
        t, v = a.ts_ms, a.value
        for r in inside:
            if r.old_final is None:
                out.append(Increment(t, r.ts_ms, None, reset=True))
            else:
                out.append(_increment(t, r.ts_ms, _delta(v, r.old_final, config, r.ts_ms - t), gap))
            t, v = r.ts_ms, r.new_initial
        out.append(_increment(t, b.ts_ms, _delta(v, b.value, config, b.ts_ms - t), gap))
    return tuple(out)


def _increment(start_ms: int, end_ms: int, delta: Delta, gap: bool) -> Increment:
    known = delta.amount is not None
    return Increment(start_ms, end_ms, delta.amount, delta.rolled, not known, gap and known and not delta.substituted,
                     delta.substituted, delta.note)


@dataclass(slots=True)
class _Accumulator:
    amount: Fraction = Fraction(0)
    covered_ms: int = 0
    recovered: bool = False
    interpolated: bool = False
    rollovers: int = 0
    resets: int = 0
    readings: int = 0
    substituted: bool = False
    note: str | None = None

    def period(self, s: int, period_ms: int) -> TotalizerPeriod:
        return TotalizerPeriod(s, s + period_ms, float(self.amount), fraction_text(self.amount), self.covered_ms,
                               self.covered_ms == period_ms, self.recovered, self.interpolated, self.rollovers,
                               self.resets, self.readings, self.substituted, self.note)

    def add_note(self, note: str | None) -> None:
        if note is not None and note != self.note:
            self.note = note if self.note is None else f"{self.note}; {note}"


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
            a.add_note(inc.note)
            if inc.amount is None:
                a.resets += 1
                continue
            a.amount += inc.amount * Fraction(overlap, duration)
            a.covered_ms += overlap
            a.recovered = a.recovered or inc.recovered
            a.substituted = a.substituted or inc.substituted
            a.interpolated = a.interpolated or ((inc.recovered or inc.substituted) and overlap < duration)
            a.rollovers += 1 if inc.rollover and s == last_period else 0
    return tuple(a.period(s, period_ms) for s, a in acc.items())


def consumption_between(samples: Sequence[Sample], config: TotalizerConfig,
                        replacements: Sequence[MeterReplacement] = ()) -> Fraction | None:
    """Total consumption from the first to the last good reading; None if a reset or an ambiguous number of
    wraps makes it unknown (not exact)."""
    total = Fraction(0)
    for inc in increments(samples, config, replacements):
        if inc.amount is None or inc.substituted:
            return None  # unknown, or not exact (ambiguous wraps)
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
        delta = _delta(prev_value, value, config, ts_ms - prev_ts)
        amount, rolled = delta.amount, delta.rolled
        recovered = ts_ms - prev_ts > config.max_interval_ms and amount is not None and not delta.substituted
        substituted = delta.substituted
        duration = ts_ms - prev_ts
        if duration == 0:  # two readings with one timestamp: nothing to split
            a = self._acc(current)
            a.add_note(delta.note)
            if amount is None:
                a.resets += 1
            else:
                a.amount += amount
        else:
            last_period = self._start_of(ts_ms - 1)
            for s in range(max(self._start_of(prev_ts), self.period_start), last_period + period_ms, period_ms):
                overlap = min(ts_ms, s + period_ms) - max(prev_ts, s)
                a = self._acc(s)
                a.add_note(delta.note)
                if amount is None:
                    a.resets += 1
                    continue
                # Exact either way; the common increment inside one period needs no split.
                a.amount += amount if overlap == duration else amount * Fraction(overlap, duration)
                a.covered_ms += overlap
                a.recovered = a.recovered or recovered
                a.substituted = a.substituted or substituted
                a.interpolated = a.interpolated or ((recovered or substituted) and overlap < duration)
                a.rollovers += 1 if rolled and s == last_period else 0
        if current <= self.period_start:
            return []
        settled = []
        for s in range(self.period_start, current, period_ms):
            a = self.acc.pop(s, None) or _Accumulator()
            settled.append(a.period(s, period_ms))
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
            settled.append(a.period(s, self.period_ms))
        self.period_start = max(self.period_start, new_start)
        return settled

    def to_json(self) -> dict[str, object]:
        acc = self.acc or {}
        return {"period_ms": self.period_ms, "origin_ms": self.origin_ms, "last_ts_ms": self.last_ts_ms,
                "last_value": self.last_value, "period_start": self.period_start,
                "acc": None if self.acc is None else [
                    [s, fraction_text(a.amount), a.covered_ms, a.recovered, a.interpolated, a.rollovers, a.resets,
                     a.readings, *([a.substituted, a.note] if a.substituted or a.note else [])]
                    for s, a in acc.items()]}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> RunningTotal:
        raw = d.get("acc")
        # Eight items per period, ten when it holds a substituted increment (older checkpoints have eight).
        acc = None if raw is None else {
            int(s): _Accumulator(Fraction(amount), int(cov), bool(rec), bool(interp), int(roll), int(res), int(n),
                                 bool(more[0]) if more else False, more[1] if len(more) > 1 else None)
            for s, amount, cov, rec, interp, roll, res, n, *more in raw}  # type: ignore[attr-defined]
        return cls(int(d["period_ms"]), int(d.get("origin_ms", 0)), d.get("last_ts_ms"),  # type: ignore[arg-type]
                   d.get("last_value"), d.get("period_start"), acc)  # type: ignore[arg-type]
