"""Properties that must hold for any data, checked with hypothesis."""

from __future__ import annotations

import copy
import itertools
import json
from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.model import Calibration, Quality, Reading
from gateway.rules.context import GapInputs
from gateway.rules.hours import HourValue
from gateway.rules.lookback import PART75_MAX_AGE_HOURS, lookback
from gateway.rules.percentile import nearest_rank, nearest_rank_k
from gateway.rules.policy_config import Direction, parse_policy_config
from gateway.rules.selectors import Part75Tier, part75_tier
from gateway.rules.substitution import substitute_gap
from gateway.rules.totalizer import TotalizerConfig, totalize_periods

values = st.floats(min_value=0, max_value=1000, allow_nan=False, allow_infinity=False)
pcts = st.fractions(min_value=0, max_value=100)


@st.composite
def gap_scenarios(draw: st.DrawFn, *, min_gap: int = 1, max_gap: int = 40) -> dict[str, Any]:
    """A history with sparse operating hours, earlier gaps, and one closed gap at the end."""
    n_before = draw(st.integers(1, 60))
    hours: list[HourValue] = []
    hour = draw(st.integers(0, 50))
    for _ in range(n_before):
        hour += draw(st.sampled_from([1, 1, 1, 2, 5, 4_000]))  # absent hours are non-operating
        valid = draw(st.booleans()) or not hours
        hours.append(HourValue(hour, draw(values) if valid else None))
    if hours[-1].value is None:
        hours[-1] = HourValue(hours[-1].hour, draw(values))  # the gap below must be maximal
    gap = []
    for _ in range(draw(st.integers(min_gap, max_gap))):
        hour += draw(st.sampled_from([1, 1, 2]))
        gap.append(hour)
        hours.append(HourValue(hour, None))
    hours.append(HourValue(hour + 1, draw(values)))
    return {"history": hours, "gap": gap}


def _policy(**config: Any) -> Any:
    return parse_policy_config(config, require_fallbacks=False)


@settings(max_examples=150, deadline=None)
@given(gap_scenarios(min_gap=25), st.fractions(min_value=90, max_value=100), st.sampled_from(["high", "low"]),
       st.integers(1, 30))
def test_greater_of_never_below_hbha_and_lesser_of_never_above(scn: dict[str, Any], pma: Fraction, direction: str,
                                                               w: int) -> None:
    """§75.33(b)(1)(ii)/(2)(ii): high is the greater of P and HB/HA; low (§75.37(d)(1)) the lesser."""
    pol = _policy(selector="part75_tiered", direction=direction, pma=float(pma), lookback_hours=w,
                  max_potential=2000.0, min_potential=0.0)
    res = substitute_gap(scn["history"], scn["gap"], pol, point="p")
    hbha = res.gap.hbha
    assert hbha is not None
    for rec in res.records:
        assert "percentile_lookback" in rec.detail.routine  # N > 24 and PMA >= 90: a greater-of tier
        if direction == "high":
            assert rec.value >= hbha
        else:
            assert rec.value <= hbha


@settings(max_examples=150, deadline=None)
@given(gap_scenarios(), st.integers(1, 50), st.sampled_from(["max_lookback", "min_lookback"]))
def test_lookback_never_reaches_past_its_bounds(scn: dict[str, Any], w: int, selector: str) -> None:
    direction = "high" if selector == "max_lookback" else "low"
    res = substitute_gap(scn["history"], scn["gap"], _policy(selector=selector, direction=direction,
                                                             lookback_hours=w, default_value=-1.0), point="p")
    start = scn["gap"][0]
    for rec in res.records:
        lb = rec.detail.lookback
        assert lb is not None
        assert lb.n <= w
        if lb.n:
            assert lb.last_hour is not None
            assert lb.first_hour is not None
            assert lb.last_hour < start
            assert start - lb.first_hour <= PART75_MAX_AGE_HOURS
    # and directly: the hours used are QA hours before the gap, newest first within W
    window = lookback(scn["history"], start, w, oldest_hour=start - PART75_MAX_AGE_HOURS)
    eligible = [hv for hv in scn["history"] if hv.value is not None and start - PART75_MAX_AGE_HOURS <= hv.hour < start]
    assert list(window.hours) == [hv.hour for hv in eligible][-w:]


@settings(max_examples=100, deadline=None)
@given(gap_scenarios(), st.sampled_from(["part75_tiered", "hj75_tiered", "mean_plus_2sigma", "hour_before_after",
                                         "max_lookback", "percentile_lookback", "fixed_conservative_default"]),
       st.booleans())
def test_inputs_unchanged_and_reruns_identical(scn: dict[str, Any], selector: str, gap_open: bool) -> None:
    config: dict[str, Any] = {"selector": selector, "direction": "high", "default_value": 5.0,
                              "max_potential": 2000.0, "lookback_hours": 7}
    if selector in ("hj75_tiered", "mean_plus_2sigma", "hour_before_after", "fixed_conservative_default"):
        config.pop("lookback_hours")
    if selector not in ("part75_tiered", "hour_before_after"):
        config.pop("max_potential")
    if selector == "percentile_lookback":
        config["percentile"] = 90
    pol = _policy(**config)
    history = scn["history"] if not gap_open else [hv for hv in scn["history"] if hv.hour <= scn["gap"][-1]]
    gap = scn["gap"]
    snapshot = (copy.deepcopy(history), list(gap), json.dumps(config, sort_keys=True))
    first = substitute_gap(history, gap, pol, point="p", inputs=GapInputs(gap_open=gap_open))
    second = substitute_gap(history, gap, pol, point="p", inputs=GapInputs(gap_open=gap_open))
    assert (history, gap, json.dumps(config, sort_keys=True)) == snapshot
    assert first == second
    assert [r.to_json() for r in first.records] == [r.to_json() for r in second.records]
    assert json.dumps(first.to_json(), sort_keys=True) == json.dumps(second.to_json(), sort_keys=True)
    # a final run that supersedes the first keeps the first records intact
    again = substitute_gap(history, gap, pol, point="p", inputs=GapInputs(gap_open=gap_open),
                           previous=first.records)
    assert first == second
    assert [r.supersedes for r in again.records] == [r.record_id for r in first.records]


@given(st.lists(values, min_size=1, max_size=60), pcts)
def test_nearest_rank_returns_a_member_at_the_exact_rank(data: list[float], p: Fraction) -> None:
    result = nearest_rank(data, p)
    assert result in data
    k = nearest_rank_k(p, len(data))
    assert 1 <= k <= len(data)
    assert sorted(data)[k - 1] == result
    # k is the smallest rank with k/n >= p/100 (exact), clamped at 1
    assert k == 1 or Fraction(k - 1, len(data)) < p / 100
    assert Fraction(k, len(data)) >= p / 100


@given(pcts, pcts, st.integers(1, 100), st.integers(1, 100))
def test_part75_tier_is_monotone_in_pma_and_n(p1: Fraction, p2: Fraction, n1: int, n2: int) -> None:
    lo_pma, hi_pma = sorted((p1, p2))
    assert part75_tier(lo_pma, n1) >= part75_tier(hi_pma, n1)  # lower PMA never more lenient
    lo_n, hi_n = sorted((n1, n2))
    assert part75_tier(p1, hi_n) >= part75_tier(p1, lo_n)  # a longer gap never more lenient
    assert isinstance(part75_tier(p1, n1), Part75Tier)


def _reading(ts: int, value: float) -> Reading:
    return Reading("m1", "energy", ts, value, "kWh", Quality.GOOD, "", Calibration.VALID)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 999_999), st.lists(st.tuples(st.integers(1, 600_000), st.integers(0, 999_999)),
                                         min_size=1, max_size=40), st.integers(1, 5))
def test_totalizer_with_rollover_equals_true_consumption(start: int, steps: list[tuple[int, int]],
                                                         periods: int) -> None:
    modulus = 1_000_000
    ts, counter, true_total = 0, start, 0
    readings = [_reading(ts, float(counter))]
    for dt, used in steps:
        ts += dt
        counter = (counter + used) % modulus
        true_total += used
        readings.append(_reading(ts, float(counter)))
    period_ms = max(1, (ts + 1) // periods)
    shuffled = readings[::-1]
    snapshot = list(shuffled)
    result = totalize_periods(shuffled, TotalizerConfig(max_interval_ms=60_000, rollover_at=modulus),
                              period_ms=period_ms)
    assert shuffled == snapshot  # sorted internally, the input list is untouched
    assert sum(Fraction(p.consumption_exact) for p in result) == true_total
    one = totalize_periods(readings, TotalizerConfig(max_interval_ms=60_000, rollover_at=modulus),
                           period_ms=ts + 1)
    assert len(one) == 1
    assert one[0].consumption == true_total
    counters = [float(x.value or 0.0) for x in readings]
    assert one[0].rollovers == sum(1 for a, b in itertools.pairwise(counters) if b < a)


def test_direction_enum_is_what_policies_store() -> None:
    assert _policy(selector="max_lookback", direction="high").direction is Direction.HIGH
