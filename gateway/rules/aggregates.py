"""Period aggregates per point: mean, count, valid count, availability and validity (default hourly).

Validity per the configured rule: ``mrr`` (>= 80 % of the possible points, Reg. (EU) 2018/2066 Art. 44(2)),
``part75`` (one valid point per 15-minute quadrant, 40 CFR 75.10(d)(1)) or ``fraction`` (a configured
share). A valid point is a GOOD reading with a finite value: any Bad or Uncertain reading is not
quality-assured (missing-data.md §4). Totalizers are aggregated by totalizer.py instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

from gateway.model import REASON_CALIBRATION, REASON_MAINTENANCE, Quality
from gateway.rules.exact import fraction_text, to_fraction
from gateway.rules.hour_validity import MRR_MIN_FRACTION, fraction_rule, quadrant_rule

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
