"""Totalizer aggregation: differences, rollover, meter replacement, recovered gaps."""

from __future__ import annotations

from fractions import Fraction

import pytest

from gateway.model import Calibration, Quality, Reading
from gateway.rules.totalizer import (
    MeterReplacement,
    TotalizerConfig,
    consumption_between,
    increments,
    totalize_periods,
)

H = 3_600_000
CFG = TotalizerConfig(max_interval_ms=90_000, rollover_at=1_000_000)


def r(ts: int, value: float | None, quality: Quality = Quality.GOOD) -> Reading:
    return Reading("fuel", "total", ts, value, "m3", quality, "", Calibration.VALID)


def test_plain_differences_within_one_hour() -> None:
    (period,) = totalize_periods([r(0, 100.0), r(60_000, 105.0), r(120_000, 112.5)], CFG)
    assert (period.consumption, period.recovered, period.rollovers, period.readings) == (12.5, False, 0, 3)
    assert period.covered_ms == 120_000
    assert not period.complete


def test_rollover_is_exact() -> None:
    readings = [r(0, 999_990.0), r(60_000, 5.0)]
    (period,) = totalize_periods(readings, CFG)
    assert period.consumption == 15.0
    assert period.rollovers == 1


def test_decrease_without_rollover_config_is_a_reset_not_consumption() -> None:
    cfg = TotalizerConfig(max_interval_ms=90_000)
    (period,) = totalize_periods([r(0, 500.0), r(60_000, 10.0), r(120_000, 20.0)], cfg)
    assert period.consumption == 10.0  # only 10 -> 20 is known
    assert period.resets == 1
    assert consumption_between([r(0, 500.0), r(60_000, 10.0)], cfg) is None


def test_implausible_wrap_is_a_reset() -> None:
    cfg = TotalizerConfig(max_interval_ms=90_000, rollover_at=1_000_000, max_increment=100.0)
    incs = increments([r(0, 500.0), r(60_000, 10.0)], cfg)
    assert incs[0].amount is None
    assert incs[0].reset


def test_gap_between_good_readings_is_recovered_exactly_not_substituted() -> None:
    readings = [r(0, 100.0), r(60_000, 110.0), r(120_000, None, Quality.BAD), r(600_000, 200.0)]
    (period,) = totalize_periods(readings, CFG)
    assert period.consumption == 100.0
    assert period.recovered
    assert not period.boundary_interpolated
    assert consumption_between(readings, CFG) == Fraction(100)


def test_gap_across_an_hour_boundary_is_split_by_time_and_flagged() -> None:
    readings = [r(H - 600_000, 0.0), r(H + 1_200_000, 90.0)]  # 10 min before, 20 min after the boundary
    first, second = totalize_periods(readings, CFG)
    assert (first.consumption, second.consumption) == (30.0, 60.0)
    assert first.boundary_interpolated
    assert second.boundary_interpolated
    assert first.recovered


def test_meter_replacement_resets_without_counting_the_new_reading() -> None:
    readings = [r(0, 5_000.0), r(60_000, 5_010.0), r(120_000, 3.0)]
    swap = MeterReplacement(ts_ms=90_000, old_final=5_012.0, new_initial=0.0)
    (period,) = totalize_periods(readings, CFG, replacements=[swap])
    assert period.consumption == 15.0  # 10 + (5012 - 5010) + (3 - 0)
    assert period.resets == 0
    unknown_final = MeterReplacement(ts_ms=90_000, old_final=None, new_initial=0.0)
    (period2,) = totalize_periods(readings, CFG, replacements=[unknown_final])
    assert period2.consumption == 13.0  # 10 + unknown + 3
    assert period2.resets == 1


def test_bad_readings_are_ignored_and_no_good_readings_give_no_periods() -> None:
    assert totalize_periods([r(0, None, Quality.BAD)], CFG) == ()
    (period,) = totalize_periods([r(0, 1.0), r(1_000, 999.0, Quality.UNCERTAIN), r(2_000, 2.0)], CFG)
    assert period.consumption == 1.0


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="max_interval_ms"):
        TotalizerConfig(max_interval_ms=0)
    with pytest.raises(ValueError, match="rollover_at"):
        TotalizerConfig(max_interval_ms=1, rollover_at=0)
