"""Period aggregates per point: mean, count, valid count, availability and validity (default hourly).

Validity per the configured rule: ``mrr`` (>= 80 % of the possible points, Reg. (EU) 2018/2066 Art. 44(2)),
``part75`` (one valid point per 15-minute quadrant, 40 CFR 75.10(d)(1)) or ``fraction`` (a configured
share). A valid point is a GOOD reading with a finite value: any Bad or Uncertain reading is not
quality-assured (docs/rules.md §4). Totalizers are aggregated by totalizer.py instead.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

from gateway.model import REASON_CALIBRATION, REASON_MAINTENANCE, Quality
from gateway.rules.exact import fraction_text, to_fraction
from gateway.rules.hour_validity import MRR_MIN_FRACTION, QUADRANT_MS, fraction_rule, quadrant_rule

HOUR_MS = 3_600_000


class Sample(Protocol):
    """What aggregation reads from a reading (gateway.model.Reading satisfies it)."""

    @property
    def ts_ms(self) -> int: ...

    @property
    def value(self) -> float | None: ...

    @property
    def quality(self) -> Quality: ...

    @property
    def reason(self) -> str: ...


@dataclass(frozen=True, slots=True)
class PeriodRule:
    kind: str  # "mrr" | "part75" | "fraction"
    min_fraction: Fraction = MRR_MIN_FRACTION

    @classmethod
    def mrr(cls) -> PeriodRule:
        return cls("mrr", MRR_MIN_FRACTION)

    @classmethod
    def part75(cls) -> PeriodRule:
        return cls("part75", Fraction(0))

    @classmethod
    def fraction(cls, share: float | str | Fraction) -> PeriodRule:
        f = to_fraction(share)
        if not 0 < f <= 1:
            raise ValueError("the valid share must be within (0, 1]")
        return cls("fraction", f)


@dataclass(frozen=True, slots=True)
class PeriodAggregate:
    start_ms: int
    end_ms: int  # exclusive
    count: int  # readings in the period, any quality
    valid_count: int
    possible: int  # period / cadence: the maximum possible number of points
    availability: float  # valid_count / possible, capped at 1
    availability_exact: str
    valid: bool
    mean: float | None  # mean of the valid points; None when the period is not valid (a missing hour)
    minimum: float | None
    maximum: float | None
    rule: str
    relaxed: bool = False  # part75: calibration/maintenance hour, two points 15 min apart sufficed


def is_valid_sample(s: Sample) -> bool:
    return s.quality is Quality.GOOD and s.value is not None and math.isfinite(s.value)


def aggregate_period(samples: Sequence[Sample], start_ms: int, *, period_ms: int = HOUR_MS, cadence_ms: int,
                     rule: PeriodRule | None = None) -> PeriodAggregate:
    """The aggregate of the samples with start_ms <= ts_ms < start_ms + period_ms (others are ignored)."""
    if cadence_ms < 1 or period_ms < cadence_ms:
        raise ValueError("cadence_ms must be positive and not longer than the period")
    rule = rule or PeriodRule.mrr()
    end_ms = start_ms + period_ms
    inside = [s for s in samples if start_ms <= s.ts_ms < end_ms]
    possible = period_ms // cadence_ms
    valid_values = [s.value for s in inside if is_valid_sample(s) and s.value is not None]
    relaxed = False
    if rule.kind == "part75":
        relaxed = any(s.reason in (REASON_CALIBRATION, REASON_MAINTENANCE) for s in inside)
        result = quadrant_rule([(s.ts_ms - start_ms, s.value if is_valid_sample(s) else None) for s in inside],
                               period_ms=period_ms, calibration_or_maintenance=relaxed)
        valid, mean = result.valid, result.value
    else:
        result = fraction_rule(valid_values, possible, rule.min_fraction, rule.kind)
        valid, mean = result.valid, result.value
    share = min(Fraction(len(valid_values), possible), Fraction(1))
    return PeriodAggregate(start_ms, end_ms, len(inside), len(valid_values), possible, float(share),
                           fraction_text(share), valid, mean, min(valid_values, default=None),
                           max(valid_values, default=None), rule.kind, relaxed)


def aggregate_periods(samples: Sequence[Sample], *, period_ms: int = HOUR_MS, cadence_ms: int,
                      rule: PeriodRule | None = None, origin_ms: int = 0) -> tuple[PeriodAggregate, ...]:
    """One aggregate per period that holds at least one sample, in time order.

    Periods are aligned on ``origin_ms`` (0: UTC hours for the default period); periods without any
    sample are left to the gap ledger, which knows whether the point should have reported.
    """
    groups: dict[int, list[Sample]] = {}
    for s in samples:  # one pass: each period then only scans its own samples
        groups.setdefault(origin_ms + ((s.ts_ms - origin_ms) // period_ms) * period_ms, []).append(s)
    return tuple(aggregate_period(groups[start], start, period_ms=period_ms, cadence_ms=cadence_ms, rule=rule)
                 for start in sorted(groups))


@dataclass(slots=True)
class PeriodSummary:
    """The running summary of one open period: what ``aggregate_period`` needs, updated reading by reading.

    Memory is O(1) per point whatever the number of readings (issue 8): counts, the exact sum of the
    valid values (an integer numerator over a power of two, so the mean is exactly today's
    ``exact_mean``), min/max in the same first-wins order as ``min()``/``max()``, the Part 75 quadrants
    covered (a bit mask), the first and last offset of a valid point (the relaxed calibration-hour
    rule) and whether a calibration or maintenance reason occurred. ``summarize`` turns it into the
    same ``PeriodAggregate`` that ``aggregate_period`` gives for the same readings (a property test
    checks that over random reading sequences).
    """

    start_ms: int
    period_ms: int
    count: int = 0
    valid_count: int = 0
    sum_num: int = 0  # exact sum of the valid values = sum_num / 2**sum_exp
    sum_exp: int = 0
    minimum: float | None = None
    maximum: float | None = None
    quadrants: int = 0  # bit q: a valid point in 15-minute quadrant q
    valid_lo_ms: int | None = None  # smallest and largest offset of a valid point in the period
    valid_hi_ms: int | None = None
    cal_or_maint: bool = False  # a reading with a calibration or maintenance reason

    def add(self, s: Sample) -> None:
        """One reading; readings outside [start_ms, start_ms + period_ms) are ignored, like aggregate_period."""
        t = s.ts_ms - self.start_ms
        if t < 0 or t >= self.period_ms:
            return
        self.count += 1
        if s.reason == REASON_CALIBRATION or s.reason == REASON_MAINTENANCE:
            self.cal_or_maint = True
        v = s.value
        if s.quality is not Quality.GOOD or v is None or not math.isfinite(v):
            return
        self.valid_count += 1
        num, den = v.as_integer_ratio()
        exp = den.bit_length() - 1  # den is a power of two for a float
        if exp > self.sum_exp:
            self.sum_num <<= exp - self.sum_exp
            self.sum_exp = exp
        self.sum_num += num << (self.sum_exp - exp)
        if self.minimum is None or v < self.minimum:
            self.minimum = v
        if self.maximum is None or v > self.maximum:
            self.maximum = v
        self.quadrants |= 1 << (t // QUADRANT_MS)
        if self.valid_lo_ms is None or t < self.valid_lo_ms:
            self.valid_lo_ms = t
        if self.valid_hi_ms is None or t > self.valid_hi_ms:
            self.valid_hi_ms = t

    def mean(self) -> float:
        if not self.valid_count:
            raise ValueError("mean of no values")
        return float(Fraction(self.sum_num, self.valid_count << self.sum_exp))

    def to_json(self) -> dict[str, Any]:
        """A checkpoint of the summary (JSON-safe: the exact sum as a hex string)."""
        return {"start_ms": self.start_ms, "period_ms": self.period_ms, "count": self.count,
                "valid_count": self.valid_count, "sum_num": hex(self.sum_num), "sum_exp": self.sum_exp,
                "min": self.minimum, "max": self.maximum, "quadrants": self.quadrants,
                "valid_lo_ms": self.valid_lo_ms, "valid_hi_ms": self.valid_hi_ms, "cal_or_maint": self.cal_or_maint}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PeriodSummary:
        return cls(int(d["start_ms"]), int(d["period_ms"]), int(d["count"]), int(d["valid_count"]),
                   int(d["sum_num"], 16), int(d["sum_exp"]), d["min"], d["max"], int(d["quadrants"]),
                   d["valid_lo_ms"], d["valid_hi_ms"], bool(d["cal_or_maint"]))


def summarize(summary: PeriodSummary, *, cadence_ms: int, rule: PeriodRule | None = None) -> PeriodAggregate:
    """The aggregate of a running summary: equal to ``aggregate_period`` over the readings it was fed."""
    period_ms = summary.period_ms
    if cadence_ms < 1 or period_ms < cadence_ms:
        raise ValueError("cadence_ms must be positive and not longer than the period")
    rule = rule or PeriodRule.mrr()
    start_ms = summary.start_ms
    possible = period_ms // cadence_ms
    n_valid = summary.valid_count
    relaxed = False
    if rule.kind == "part75":
        if period_ms < QUADRANT_MS or period_ms % QUADRANT_MS:
            raise ValueError("period_ms must be a whole number of 15-minute quadrants")
        relaxed = summary.cal_or_maint
        valid = summary.quadrants.bit_count() == period_ms // QUADRANT_MS
        if not valid and relaxed and n_valid:
            assert summary.valid_lo_ms is not None
            assert summary.valid_hi_ms is not None
            valid = n_valid >= 2 and summary.valid_hi_ms - summary.valid_lo_ms >= QUADRANT_MS
    else:
        valid = n_valid > 0 and _share(n_valid, possible)[0] >= rule.min_fraction
    mean = summary.mean() if valid else None
    _exact, share, share_text = _share(n_valid, possible)
    return PeriodAggregate(start_ms, start_ms + period_ms, summary.count, n_valid, possible, share,
                           share_text, valid, mean, summary.minimum, summary.maximum, rule.kind, relaxed)


@functools.lru_cache(maxsize=4096)
def _share(n_valid: int, possible: int) -> tuple[Fraction, float, str]:
    """valid / possible capped at 1, as (exact, float, text): points closing together mostly share it."""
    share = min(Fraction(n_valid, possible), Fraction(1))
    return share, float(share), fraction_text(share)
