"""Sub-hour samples to one hour value: is the hour valid, and what is its mean?
(Reg. (EU) 2018/2066 Art. 44(2); 40 CFR 75.10(d).)

- ``fraction_rule``: MRR Art. 44(2), valid when the valid points are at least 80 % of the maximum possible
  (the fraction is configurable); the hour value is the mean of the valid points (pro rata).
- ``quadrant_rule``: 40 CFR 75.10(d)(1) (paraphrase), one valid point in each 15-minute quadrant; during an
  hour with required calibration or maintenance, two valid points at least 15 minutes apart suffice.
Comparisons are exact (integers and fractions), so exactly 80 % is valid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from gateway.rules.exact import exact_mean

QUADRANT_MS = 15 * 60 * 1000
MRR_MIN_FRACTION = Fraction(4, 5)


@dataclass(frozen=True, slots=True)
class HourValidity:
    valid: bool
    value: float | None  # mean of the valid points when the hour is valid, else None (a missing hour)
    valid_points: int
    possible_points: int
    fraction: Fraction  # valid points / possible points (capped at 1)
    rule: str
    quadrants_covered: int | None = None
    quadrants: int | None = None
    relaxed: bool = False


def _is_valid(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def fraction_rule(points: Sequence[float | None], max_points: int, min_fraction: Fraction = MRR_MIN_FRACTION,
                  rule: str = "mrr") -> HourValidity:
    """Valid when valid points >= min_fraction x max_points (Reg. (EU) 2018/2066 Art. 44(2))."""
    if max_points < 1:
        raise ValueError("max_points must be at least 1")
    valid = [v for v in points if v is not None and _is_valid(v)]
    fraction = min(Fraction(len(valid), max_points), Fraction(1))
    ok = bool(valid) and fraction >= min_fraction
    return HourValidity(ok, float(exact_mean(valid)) if ok else None, len(valid), max_points, fraction, rule)


def quadrant_rule(samples: Sequence[tuple[int, float | None]], *, period_ms: int = 3_600_000,
                  calibration_or_maintenance: bool = False) -> HourValidity:
    """Part 75 hour validity from (offset_ms within the period, value) samples."""
    if period_ms < QUADRANT_MS or period_ms % QUADRANT_MS:
        raise ValueError("period_ms must be a whole number of 15-minute quadrants")
    n_quadrants = period_ms // QUADRANT_MS
    valid = [(t, v) for t, v in samples if 0 <= t < period_ms and v is not None and _is_valid(v)]
    covered = len({t // QUADRANT_MS for t, _ in valid})
    ok = covered == n_quadrants
    if not ok and calibration_or_maintenance and valid:
        times = [t for t, _ in valid]
        ok = len(valid) >= 2 and max(times) - min(times) >= QUADRANT_MS
    value = float(exact_mean(v for _, v in valid if v is not None)) if ok else None
    possible = max(len(samples), 1)
    return HourValidity(ok, value, len(valid), possible, min(Fraction(len(valid), possible), Fraction(1)),
                        "part75", covered, n_quadrants, calibration_or_maintenance)
