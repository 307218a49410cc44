"""Hour validity (MRR 80 %, Part 75 quadrants) and period aggregates."""

from __future__ import annotations

from fractions import Fraction

import pytest

from gateway.model import Calibration, Quality, Reading
from gateway.rules.aggregates import PeriodRule, aggregate_period, aggregate_periods
from gateway.rules.hour_validity import fraction_rule, quadrant_rule

MIN = 60_000
H = 3_600_000


def reading(ts: int, value: float | None, quality: Quality = Quality.GOOD, reason: str = "") -> Reading:
    return Reading("cems", "co2", ts, value, "%vol", quality, reason, Calibration.VALID)


def test_mrr_exactly_80_percent_is_valid_and_one_less_is_not() -> None:
    assert fraction_rule([1.0] * 48, 60).valid  # 48/60 = 80 % exactly
    assert not fraction_rule([1.0] * 47 + [None], 60).valid
    result = fraction_rule([2.0] * 12 + [None] * 3, 15)
    assert (result.valid, result.value, result.fraction) == (True, 2.0, Fraction(4, 5))


def test_quadrant_rule_needs_each_quadrant_and_relaxes_for_calibration_hours() -> None:
    every_quadrant = [(0, 1.0), (15 * MIN, 2.0), (30 * MIN, 3.0), (59 * MIN, 4.0)]
    result = quadrant_rule(every_quadrant)
    assert (result.valid, result.value, result.quadrants_covered) == (True, 2.5, 4)
    missing_q3 = [(0, 1.0), (15 * MIN, 2.0), (29 * MIN, 3.0), (45 * MIN, 4.0)]
    assert not quadrant_rule(missing_q3).valid
    assert quadrant_rule(missing_q3, calibration_or_maintenance=True).valid
    two_close = [(0, 1.0), (15 * MIN - 1, 2.0)]
    assert not quadrant_rule(two_close, calibration_or_maintenance=True).valid
    two_apart = [(0, 1.0), (15 * MIN, 2.0)]
    assert quadrant_rule(two_apart, calibration_or_maintenance=True).valid


def test_aggregate_mrr_counts_only_good_finite_readings() -> None:
    samples = [reading(i * MIN, 10.0 + i) for i in range(60)]
    samples[0] = reading(0, 99.0, Quality.UNCERTAIN, "over_range")
    samples[1] = reading(MIN, None, Quality.BAD, "no_communication")
    agg = aggregate_period(samples, 0, cadence_ms=MIN)
    assert (agg.count, agg.valid_count, agg.possible) == (60, 58, 60)
    assert agg.availability_exact == "29/30"
    assert agg.valid
    assert agg.mean == pytest.approx(sum(10.0 + i for i in range(2, 60)) / 58)
    assert (agg.minimum, agg.maximum) == (12.0, 69.0)


def test_aggregate_mrr_below_80_percent_is_a_missing_hour() -> None:
    samples = [reading(i * MIN, 1.0) for i in range(47)]
    agg = aggregate_period(samples, 0, cadence_ms=MIN)
    assert (agg.valid, agg.mean) == (False, None)
    assert agg.availability == pytest.approx(47 / 60)


def test_aggregate_part75_quadrants_and_calibration_relaxation() -> None:
    samples = [reading(m * MIN, 5.0) for m in (1, 16, 31, 46)]
    assert aggregate_period(samples, 0, cadence_ms=MIN, rule=PeriodRule.part75()).valid
    gap_q4 = [reading(m * MIN, 5.0) for m in (1, 16, 31)] + [reading(50 * MIN, None, Quality.BAD, "calibration")]
    agg = aggregate_period(gap_q4, 0, cadence_ms=MIN, rule=PeriodRule.part75())
    assert agg.valid  # calibration hour: two valid points 15 minutes apart suffice
    assert agg.relaxed
    no_cal = [reading(m * MIN, 5.0) for m in (1, 16, 31)]
    assert not aggregate_period(no_cal, 0, cadence_ms=MIN, rule=PeriodRule.part75()).valid


def test_aggregate_configured_fraction_and_hourly_grouping() -> None:
    samples = [reading(i * MIN, 1.0) for i in range(30)] + [reading(H + i * MIN, 2.0) for i in range(60)]
    rule = PeriodRule.fraction(0.5)
    first, second = aggregate_periods(samples, cadence_ms=MIN, rule=rule)
    assert (first.start_ms, first.valid, first.mean) == (0, True, 1.0)
    assert (second.start_ms, second.end_ms, second.valid, second.mean) == (H, 2 * H, True, 2.0)
    with pytest.raises(ValueError, match="share"):
        PeriodRule.fraction(0)


def test_aggregate_inputs_are_not_modified() -> None:
    samples = [reading(i * MIN, float(i)) for i in range(60)][::-1]
    before = list(samples)
    aggregate_periods(samples, cadence_ms=MIN)
    assert samples == before
