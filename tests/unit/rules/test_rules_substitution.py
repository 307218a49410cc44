"""Substitution engine: routines, fallbacks, provisional/final versions, input checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

import gateway
from gateway.rules.context import GapInputs
from gateway.rules.errors import RuleInputError
from gateway.rules.hours import HourValue, find_gaps
from gateway.rules.policy_config import SubstitutionPolicy, parse_policy_config
from gateway.rules.substitution import (
    GapSubstitution,
    provisional_then_final,
    substitute_gap,
    substitute_history,
)


def hist(pairs: Sequence[tuple[int, float | None]], bins: dict[int, int] | None = None) -> list[HourValue]:
    return [HourValue(h, v, (bins or {}).get(h)) for h, v in pairs]


def policy(**config: Any) -> SubstitutionPolicy:
    return parse_policy_config(config, require_fallbacks=False)


def run(history: list[HourValue], gap: Sequence[int], pol: SubstitutionPolicy, **inputs: Any) -> GapSubstitution:
    return substitute_gap(history, gap, pol, point="p", instrument="i", inputs=GapInputs(**inputs))


SERIES: list[tuple[int, float | None]] = [(h, 10.0 + (h % 5)) for h in range(40)]  # values 10..14 repeating


def with_gap(pairs: Sequence[tuple[int, float | None]], gap: range) -> list[tuple[int, float | None]]:
    return [(h, None if h in gap else v) for h, v in pairs]


# --- Part 75 tiers -----------------------------------------------------------------------------------------

def test_part75_pma_exactly_95_with_24_hours_is_the_short_tier() -> None:
    h = hist(with_gap(SERIES, range(10, 34)))  # N = 24
    res = run(h, range(10, 34), policy(selector="part75_tiered", direction="high", pma=95.0))
    assert {r.detail.routine for r in res.records} == {"hour_before_after"}
    assert res.records[0].detail.citation == "40 CFR 75.33(b)(1)(i)"
    assert res.values()[0] == pytest.approx((14.0 + 14.0) / 2)  # HB hour 9 = 14, HA hour 34 = 14


def test_part75_pma_just_below_95_uses_the_90_tier_exactly() -> None:
    # 94.99999999999999 would round to 95.0 at one decimal; the exact comparison keeps it below 95.
    h = hist(with_gap(SERIES, range(10, 19)))  # N = 9 > 8
    res = run(h, range(10, 19), policy(selector="part75_tiered", direction="high", pma=94.99999999999999,
                                       lookback_hours=10))
    assert res.records[0].detail.routine == "max(percentile_lookback(95), hour_before_after)"
    assert res.gap.pma is not None
    assert res.gap.pma.exact == "9499999999999999/100000000000000"
    assert res.gap.pma.rounded == 95.0


def test_part75_hbha_wins_the_greater_of_with_method_06() -> None:
    pairs = [(h, 10.0) for h in range(10)] + [(h, None) for h in range(10, 40)] + [(40, 30.0)]
    res = run(hist(pairs), range(10, 40), policy(selector="part75_tiered", direction="high", pma=99, lookback_hours=10))
    rec = res.records[0]
    assert rec.value == 20.0  # HB/HA (10 + 30) / 2 beats P90 = 10
    assert rec.detail.method_code == "06"
    assert dict(rec.detail.statistics)["chosen"] == "hour_before_after"


def test_part75_below_80_uses_max_potential_and_low_uses_min_potential() -> None:
    h = hist(with_gap(SERIES, range(10, 12)))
    high = run(h, range(10, 12), policy(selector="part75_tiered", direction="high", pma=79.9, max_potential=15.0))
    low = run(h, range(10, 12), policy(selector="part75_tiered", direction="low", pma=79.9, min_potential=2.0))
    assert high.values() == (15.0, 15.0)
    assert high.records[0].detail.method_code == "12"
    assert high.records[0].detail.routine == "fixed_conservative_default(max_potential)"
    assert low.values() == (2.0, 2.0)


def test_part75_missing_potential_is_an_input_error_naming_the_key() -> None:
    h = hist(with_gap(SERIES, range(10, 12)))
    with pytest.raises(RuleInputError, match="max_potential"):
        run(h, range(10, 12), policy(selector="part75_tiered", direction="high", pma=50))


def test_part75_no_prior_qa_data_uses_potential() -> None:
    h = hist([(0, None), (1, None), (2, 5.0)])
    res = run(h, [0, 1], policy(selector="part75_tiered", direction="high", pma="compute", max_potential=15.0))
    assert res.values() == (15.0, 15.0)
    assert "75.31(b)(2)" in res.records[0].detail.citation


def test_part75_pma_compute_counts_operating_hours_before_the_gap() -> None:
    pairs = [(h, None if h in (3, 7) else 10.0) for h in range(20)] + [(20, None), (21, 11.0)]
    res = run(hist(pairs), [20], policy(selector="part75_tiered", direction="high",
                                        pma_window_operating_hours=10, max_potential=99.0))
    assert res.gap.pma is not None
    # last 10 operating hours before hour 20 are 10..19, all QA: PMA 100
    assert (res.gap.pma.exact, res.gap.pma.qa_hours, res.gap.pma.operating_hours) == ("100/1", 10, 10)
    res_all = run(hist(pairs), [20], policy(selector="part75_tiered", direction="high", max_potential=99.0))
    assert res_all.gap.pma is not None
    assert res_all.gap.pma.exact == "90/1"  # 18 of 20


def test_part75_binned_empty_bin_takes_max_of_next_higher_bin_modc_10() -> None:
    pairs = [(h, float(100 + h)) for h in range(12)] + [(12, None), (13, 200.0)]
    bins = {h: (3 if h % 2 else 7) for h in range(12)} | {12: 5, 13: 5}
    res = run(hist(pairs, bins), [12], policy(selector="part75_tiered", kind="binned", direction="high", pma=97))
    rec = res.records[0]
    assert rec.detail.method_code == "10"
    assert rec.detail.routine == "max_lookback(next_higher_bin)"
    assert rec.value == 110.0  # bin 7 holds the even hours 0..10
    assert dict(rec.detail.statistics)["bin_used"] == 7


def test_part75_binned_uses_the_bin_of_each_gap_hour() -> None:
    pairs = [(h, float(h)) for h in range(10)] + [(10, None), (11, None), (12, 50.0)]
    bins = {h: (1 if h < 5 else 2) for h in range(10)} | {10: 1, 11: 2, 12: 2}
    res = run(hist(pairs, bins), [10, 11], policy(selector="part75_tiered", kind="binned", direction="high", pma=99))
    assert res.values() == (2.0, 7.0)  # mean(0..4), mean(5..9)
    assert [r.detail.load_bin for r in res.records] == [1, 2]


def test_part75_binned_gap_hour_without_bin_is_an_input_error() -> None:
    h = hist([(0, 1.0), (1, None), (2, 1.0)], {0: 1, 2: 1})
    with pytest.raises(RuleInputError, match="no load bin"):
        run(h, [1], policy(selector="part75_tiered", kind="binned", direction="high", pma=99))


def test_part75_initial_procedure_before_w_qa_hours_is_modc_07() -> None:
    h = hist(with_gap(SERIES, range(10, 12)))
    res = run(h, [10, 11], policy(selector="part75_tiered", direction="high", pma=50, max_potential=99.0),
              qa_hours_since_certification=10, clock_hours_since_certification=100)
    assert res.records[0].detail.method_code == "07"
    assert res.records[0].detail.routine == "initial_hour_before_after"
    assert res.values() == (13.0, 13.0)  # HB hour 9 = 14, HA hour 12 = 12


def test_part75_initial_procedure_ends_after_three_years() -> None:
    h = hist(with_gap(SERIES, range(10, 12)))
    res = run(h, [10, 11], policy(selector="part75_tiered", direction="high", pma=50, max_potential=99.0),
              qa_hours_since_certification=10, clock_hours_since_certification=26_280)
    assert res.records[0].detail.method_code == "12"


def test_part75_per_hour_ordinal_uses_short_rule_for_the_first_24_hours() -> None:
    h = hist(with_gap(SERIES, range(5, 35)))  # N = 30
    pol = policy(selector="part75_tiered", direction="high", pma=99, lookback_hours=5, length_rule="per_hour_ordinal")
    res = run(h, range(5, 35), pol)
    routines = [r.detail.routine for r in res.records]
    assert routines[:24] == ["hour_before_after"] * 24
    assert routines[24:] == ["max(percentile_lookback(90), hour_before_after)"] * 6
    assert [r.detail.n_used for r in res.records][:3] == [1, 2, 3]
    whole = run(h, range(5, 35), policy(selector="part75_tiered", direction="high", pma=99, lookback_hours=5))
    assert {r.detail.routine for r in whole.records} == {"max(percentile_lookback(90), hour_before_after)"}


# --- lookback bounds --------------------------------------------------------------------------------------

def test_lookback_drops_values_older_than_26280_clock_hours() -> None:
    pairs = [(0, 999.0), (1, 1.0), (26_281, 2.0), (26_282, None), (26_283, 3.0)]
    res = run(hist(pairs), [26_282], policy(selector="max_lookback", direction="high", lookback_hours=720))
    assert res.values() == (2.0,)
    lb = res.records[0].detail.lookback
    assert lb is not None
    assert (lb.first_hour, lb.oldest_hour, lb.n) == (26_281, 2, 1)


def test_lookback_keeps_a_value_exactly_26280_hours_old() -> None:
    pairs = [(0, 999.0), (26_280, None), (26_281, 3.0)]
    res = run(hist(pairs), [26_280], policy(selector="max_lookback", direction="high"))
    assert res.values() == (999.0,)


def test_lookback_counts_valid_hours_not_clock_hours() -> None:
    # Invalid hours 6 and 8 inside the window: W = 3 reaches back to hour 5.
    pairs = [(5, 50.0), (6, None), (7, 1.0), (8, None), (9, 2.0), (10, 3.0), (11, None), (12, 4.0)]
    res = run(hist(pairs), [11], policy(selector="max_lookback", direction="high", lookback_hours=3))
    assert res.values() == (3.0,)
    res4 = run(hist(pairs), [11], policy(selector="max_lookback", direction="high", lookback_hours=4))
    assert res4.values() == (50.0,)


def test_hj75_window_end_hour_moves_the_window_before_the_last_calibration() -> None:
    pairs = [(h, 10.0 if h != 3 else 90.0) for h in range(10)] + [(10, None), (11, 10.0)]
    pol = policy(selector="hj75_tiered", direction="high", alpha_pct=95, window_short=3, default_value=1.0)
    assert run(hist(pairs), [10], pol).values() == (10.0,)
    assert run(hist(pairs), [10], pol, window_end_hour=5).values() == (90.0,)  # hours 2, 3, 4


def test_empty_lookback_falls_back_to_default_with_hj75_alarm() -> None:
    pairs = [(0, 5.0), (30_000, None), (30_001, 6.0)]
    res = run(hist(pairs), [30_000], policy(selector="hj75_tiered", direction="high", alpha_pct=99,
                                            default_value=77.0))
    assert res.values() == (77.0,)
    assert res.alarm
    assert res.records[0].detail.notes == ("empty lookback",)


# --- HJ 75 ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("alpha", "n", "w"), [(90, 24, 3), (90, 25, 5), (89.99, 1, 7), (75, 30, 7)])
def test_hj75_windows_at_their_edges(alpha: float, n: int, w: int) -> None:
    pairs = [(h, float(h)) for h in range(20)] + [(20 + i, None) for i in range(n)] + [(20 + n, 1.0)]
    pol = policy(selector="hj75_tiered", direction="high", alpha_pct=alpha, window_short=3, window_long=5,
                 window_low_alpha=7, default_value=0.0)
    res = run(hist(pairs), range(20, 20 + n), pol)
    assert res.records[0].detail.routine == f"max_lookback({w})"
    assert res.values()[0] == 19.0
    assert res.records[0].detail.lookback is not None
    assert res.records[0].detail.lookback.first_hour == 20 - w


def test_hj75_alpha_compute_over_the_quarter_history_including_the_gap() -> None:
    pairs = [(h, 10.0) for h in range(6)] + [(6, None), (7, None), (8, 10.0)]
    res = run(hist(pairs), [6, 7], policy(selector="hj75_tiered", direction="high", default_value=99.0))
    assert res.gap.alpha is not None
    assert res.gap.alpha.exact == "700/9"  # 7 of 9 operating hours: 77.8 % -> 2,160-hour window
    assert res.records[0].detail.routine == "max_lookback(2160)"


def test_hj75_low_direction_uses_the_minimum() -> None:
    pairs = [(0, 3.0), (1, 1.0), (2, 2.0), (3, None), (4, 5.0)]
    res = run(hist(pairs), [3], policy(selector="hj75_tiered", direction="low", alpha_pct=95, default_value=0.0))
    assert res.values() == (1.0,)
    assert res.records[0].detail.routine == "min_lookback(180)"


# --- other policies -----------------------------------------------------------------------------------------

def test_mean_plus_2sigma_low_direction_and_ddof_zero() -> None:
    pairs = [(0, 1.0), (1, 3.0), (2, None), (3, 5.0)]  # mean 3, ss 8
    hi = run(hist(pairs), [2], policy(selector="mean_plus_2sigma", direction="high", ddof=0))
    lo = run(hist(pairs), [2], policy(selector="mean_plus_2sigma", direction="low", physical_min=0.0))
    assert hi.values()[0] == pytest.approx(3 + 2 * (8 / 3) ** 0.5)
    assert lo.values() == (0.0,)  # s = sqrt(8 / 2) = 2: 3 - 4 = -1, clipped at physical_min
    assert lo.records[0].detail.unclipped_value == pytest.approx(-1.0)
    assert lo.records[0].detail.notes[0].startswith("clipped to physical_min")


def test_mean_plus_2sigma_with_one_value_uses_the_default() -> None:
    res = run(hist([(0, 1.0), (1, None)]), [1], policy(selector="mean_plus_2sigma", direction="high",
                                                         default_value=9.0))
    assert res.values() == (9.0,)
    assert res.records[0].detail.method_code == "12"


def test_mean_plus_2sigma_alarms_after_five_days_art_45_1() -> None:
    short = [(0, 1.0), (1, 2.0)] + [(h, None) for h in range(2, 122)] + [(122, 1.0)]  # 120 clock hours
    long = [(0, 1.0), (1, 2.0)] + [(h, None) for h in range(2, 123)] + [(123, 1.0)]  # 121
    pol = policy(selector="mean_plus_2sigma", direction="high")
    assert not run(hist(short), range(2, 122), pol).alarm
    long_run = run(hist(long), range(2, 123), pol)
    assert long_run.alarm
    assert "Art. 45(1)" in long_run.records[0].detail.alarms[0]


def test_mean_plus_2sigma_is_provisional_until_the_reference_period_closes() -> None:
    res = run(hist([(0, 1.0), (1, None), (2, 3.0)]), [1], policy(selector="mean_plus_2sigma", direction="high"),
              reference_period_closed=False)
    assert res.status == "provisional"


@pytest.mark.parametrize(
    ("pairs", "config", "expected", "code"),
    [
        ([(0, 2.0), (1, None), (2, None)], {"open_gap_fallback": "hour_before"}, 2.0, "G3"),
        ([(0, None), (1, 4.0)], {}, 4.0, "G3"),
        ([(0, None), (1, 4.0)], {"no_before_fallback": "default_value", "default_value": 7.0}, 7.0, "12"),
        ([(0, None), (1, 4.0)], {"no_before_fallback": "potential", "max_potential": 8.0}, 8.0, "12"),
        ([(0, 2.0), (1, None)], {"open_gap_fallback": "default_value", "default_value": 6.0}, 6.0, "12"),
    ],
)
def test_hour_before_after_fallbacks_98_35_b_1(pairs: list[tuple[int, float | None]], config: dict[str, Any],
                                              expected: float, code: str) -> None:
    gap = [h for h, v in pairs if v is None]
    res = run(hist(pairs), gap, policy(selector="hour_before_after", direction="high", **config))
    assert res.status == "final"
    assert set(res.values()) == {expected}
    assert res.records[0].detail.method_code == code


def test_hour_before_after_without_any_value_or_default_is_an_input_error() -> None:
    with pytest.raises(RuleInputError, match="default_value"):
        run(hist([(0, None)]), [0], policy(selector="hour_before_after", direction="high"))


def test_percentile_lookback_generic_rank_and_floor() -> None:
    pairs = [(h, float(h + 1)) for h in range(10)] + [(10, None), (11, 100.0)]
    res = run(hist(pairs), [10], policy(selector="percentile_lookback", direction="high", percentile=50,
                                        lookback_hours=10))
    assert res.values() == (5.0,)
    assert res.records[0].detail.method_code == "G4"
    floored = run(hist(pairs), [10], policy(selector="percentile_lookback", direction="high", percentile=50,
                                            lookback_hours=10, floor_hbha=True))
    assert floored.values() == (55.0,)  # (10 + 100) / 2


def test_min_lookback_and_fixed_default() -> None:
    pairs = [(0, 3.0), (1, 1.0), (2, None), (3, 0.5)]
    assert run(hist(pairs), [2], policy(selector="min_lookback", direction="low")).values() == (1.0,)
    fixed = run(hist(pairs), [2], policy(selector="fixed_conservative_default", direction="high", default_value=4.2,
                                         citation="guideline 2022, annex table"))
    assert fixed.values() == (4.2,)
    assert fixed.gap.plan_citation == "guideline 2022, annex table"


# --- provisional and final versions --------------------------------------------------------------------------

def test_open_gap_is_provisional_last_good_and_final_supersedes_it() -> None:
    pol = policy(selector="part75_tiered", direction="high", pma=99)
    pairs = [(0, 10.0), (1, 12.0), (2, None), (3, None), (4, 14.0)]
    first, final = provisional_then_final(hist(pairs), [2, 3], pol, point="p", instrument="i")
    assert first.status == "provisional"
    assert first.values() == (12.0, 12.0)
    assert {r.detail.routine for r in first.records} == {"last_good"}
    assert {r.version for r in first.records} == {1}
    assert final.status == "final"
    assert final.values() == (13.0, 13.0)
    assert [r.supersedes for r in final.records] == [r.record_id for r in first.records]
    assert {r.version for r in final.records} == {2}
    assert first.records[0].record_id != final.records[0].record_id


def test_provisional_policy_selector_uses_hb_for_missing_ha() -> None:
    pol = policy(selector="part75_tiered", direction="high", pma=99, provisional_policy="selector")
    res = run(hist([(0, 10.0), (1, 12.0), (2, None)]), [2], pol, gap_open=True)
    assert res.values() == (12.0,)
    assert res.gap.hbha_source == "hour_before"


def test_gap_open_with_hours_after_the_gap_is_refused() -> None:
    with pytest.raises(RuleInputError, match="gap_open"):
        run(hist([(0, 1.0), (1, None), (2, 1.0)]), [1], policy(selector="hour_before_after", direction="high"),
            gap_open=True)


def test_previous_records_of_other_points_are_not_superseded() -> None:
    pol = policy(selector="hour_before_after", direction="high")
    h = hist([(0, 1.0), (1, None), (2, 3.0)])
    other = substitute_gap(h, [1], pol, point="other", instrument="i")
    res = substitute_gap(h, [1], pol, point="p", instrument="i", previous=other.records)
    assert res.records[0].supersedes is None
    assert res.records[0].version == 1


def test_record_trace_carries_config_hash_version_and_citation() -> None:
    pol = policy(selector="hour_before_after", direction="high")
    rec = run(hist([(0, 1.0), (1, None), (2, 3.0)]), [1], pol).records[0]
    data = rec.to_json()
    assert data["trace"]["config_hash"] == pol.config_hash()
    assert data["trace"]["software_version"] == gateway.__version__
    assert data["trace"]["citation"] == "40 CFR 98.35(b)(1)"
    assert data["trace"]["hb"] == {"hour": 0, "value": 1.0}
    assert data["record_id"].startswith("sub-")


# --- input checks ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("pairs", "gap", "message"),
    [
        ([(0, 1.0), (0, 2.0)], [0], "strictly increasing"),
        ([(0, 1.0), (1, None), (2, 1.0)], [2], "quality-assured value"),
        ([(0, 1.0), (1, None), (2, None), (3, 1.0)], [1], "not maximal"),
        ([(0, 1.0), (1, None), (2, None), (3, 1.0)], [2], "not maximal"),
        ([(0, None), (1, 1.0), (2, None), (3, 1.0)], [0, 2], "inside the gap has a quality-assured value"),
        ([(0, 1.0), (1, None), (2, 1.0)], [5], "none of its hours"),
        ([(0, 1.0), (1, None), (2, 1.0)], [], "no hours"),
        ([(0, 1.0), (1, None), (2, 1.0)], [1, 1], "strictly increasing"),
        ([(0, float("nan")), (1, None)], [1], "non-finite"),
    ],
)
def test_inconsistent_gap_or_history_is_refused(pairs: list[tuple[int, float | None]], gap: list[int],
                                                message: str) -> None:
    with pytest.raises(RuleInputError, match=message):
        run(hist(pairs), gap, policy(selector="hour_before_after", direction="high"))


def test_non_operating_hours_are_not_substituted_and_do_not_count_toward_n() -> None:
    # Hours 12..14 absent (unit off) inside the gap: N stays 22 (<= 24), short tier.
    pairs = [(h, 10.0) for h in range(10)] + [(h, None) for h in range(10, 35) if h not in (12, 13, 14)] + [(35, 12.0)]
    res = run(hist(pairs), range(10, 35), policy(selector="part75_tiered", direction="high", pma=99))
    assert res.gap.n == 22
    assert res.gap.non_operating_hours == (12, 13, 14)
    values = res.values()
    assert values[2:5] == (None, None, None)
    assert {v for v in values if v is not None} == {11.0}
    assert {r.detail.routine for r in res.records} == {"hour_before_after"}


def test_substitute_history_finalises_closed_gaps_and_keeps_the_last_one_open() -> None:
    h = hist([(0, 1.0), (1, None), (2, 3.0), (3, None)])
    assert find_gaps(h)[1].hours == (3,)
    closed, still_open = substitute_history(h, policy(selector="hour_before_after", direction="high"), point="p")
    assert (closed.status, closed.values()) == ("final", (2.0,))
    assert (still_open.status, still_open.values()) == ("provisional", (3.0,))
