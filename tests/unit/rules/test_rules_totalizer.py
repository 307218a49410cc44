"""Totalizer aggregation: differences, rollover, meter replacement, recovered gaps."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.model import Calibration, Quality, Reading
from gateway.rules.totalizer import (
    MeterReplacement,
    RunningTotal,
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


# --- issue 10 item 2: wraps across a long gap, bounded by the meter's maximum flow ---------------------------

def _wrap_gap(direction: str = "high", max_flow: float | None = 1_500.0) -> TotalizerConfig:
    return TotalizerConfig(max_interval_ms=90_000, rollover_at=10_000, max_flow_per_h=max_flow, direction=direction)


GAP_12H = [r(0, 1_000.0), r(12 * H, 3_000.0)]  # 12,000 used: 1,000 + 12,000 = 13,000 -> shows 3,000 (one wrap)


def test_twelve_thousand_across_a_12_hour_gap_is_not_reported_as_two_thousand() -> None:
    """The reported defect: 12,000 units across a 12 h gap, counter wrapping at 10,000, came out 2,000 'recovered'.

    Counter 1,000 -> 3,000: the consumption is 2,000 + k x 10,000 for some k >= 0.
    Maximum flow 1,500/h x 12 h = 18,000: k = 0 (2,000) and k = 1 (12,000) both fit, k = 2 (22,000) does not.
    Two candidates: not exact. Fuel (high direction): the larger, **12,000**, substituted and saying why."""
    (inc,) = increments(GAP_12H, _wrap_gap())
    assert inc.amount == 12_000
    assert (inc.substituted, inc.recovered, inc.reset) == (True, False, False)
    assert inc.note is not None
    assert "2000 to 12000" in inc.note
    periods = totalize_periods(GAP_12H, _wrap_gap())
    assert sum(Fraction(p.consumption_exact) for p in periods) == 12_000
    # 1,000 per hour over the 12 hours the increment spans (the 13th period holds only the closing reading)
    assert [p.consumption for p in periods[:12]] == [1_000.0] * 12
    assert all(p.substituted and not p.recovered and p.note for p in periods[:12])
    assert consumption_between(GAP_12H, _wrap_gap()) is None  # not exact


def test_ambiguous_wraps_on_a_low_direction_point_take_the_smaller_candidate() -> None:
    """Same counter, low direction (e.g. supplied output): of 2,000 and 12,000, the smaller: 2,000, substituted."""
    (inc,) = increments(GAP_12H, _wrap_gap("low"))
    assert (inc.amount, inc.substituted) == (2_000, True)


def test_one_possible_wrap_count_is_exact() -> None:
    """Maximum flow 900/h x 12 h = 10,800: only k = 0 (2,000) fits (12,000 > 10,800): exact, recovered."""
    (inc,) = increments(GAP_12H, _wrap_gap(max_flow=900.0))
    assert (inc.amount, inc.substituted, inc.recovered) == (2_000, False, True)


def test_more_than_the_meter_can_measure_is_a_reset() -> None:
    """Maximum flow 100/h x 12 h = 1,200 < 2,000, the smallest candidate: impossible, so a reset (unknown)."""
    (inc,) = increments(GAP_12H, _wrap_gap(max_flow=100.0))
    assert inc.amount is None
    assert inc.reset
    assert inc.note is not None


def test_without_a_maximum_flow_one_wrap_is_assumed_as_before() -> None:
    (inc,) = increments(GAP_12H, _wrap_gap(max_flow=None))
    assert (inc.amount, inc.recovered, inc.substituted) == (2_000, True, False)


def test_the_running_total_substitutes_alike_and_its_checkpoint_keeps_the_note() -> None:
    total = RunningTotal(H)
    assert total.feed(0, 1_000.0, _wrap_gap()) == []
    restored = RunningTotal.from_json(json.loads(json.dumps(total.to_json())))
    periods = restored.feed(12 * H, 3_000.0, _wrap_gap())
    assert sum(Fraction(p.consumption_exact) for p in periods) == 12_000
    assert all(p.substituted and p.note for p in periods)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 9_999), st.integers(0, 60_000), st.integers(1, 48 * 60), st.integers(1, 5_000),
       st.sampled_from(["high", "low"]))
def test_the_flow_bound_never_reports_below_the_truth_for_high_nor_above_for_low(
        v0: int, used: int, minutes: int, max_flow: int, direction: str) -> None:
    """Any true consumption the meter could have measured (used <= max_flow x interval): the result is that exact
    value when only one wrap count fits, else a conservative candidate congruent to it modulo the rollover and
    within the bound: at least the truth for high, at most for low."""
    duration = minutes * 60_000
    bound = Fraction(max_flow) * Fraction(duration, H)
    assume(used <= bound)
    cfg = TotalizerConfig(max_interval_ms=90_000, rollover_at=10_000, max_flow_per_h=max_flow, direction=direction)
    (inc,) = increments([r(0, float(v0)), r(duration, float((v0 + used) % 10_000))], cfg)
    assert inc.amount is not None
    assert inc.amount <= bound
    assert (inc.amount - used) % 10_000 == 0
    if not inc.substituted:
        assert inc.amount == used
    elif direction == "high":
        assert inc.amount >= used
    else:
        assert inc.amount <= used
