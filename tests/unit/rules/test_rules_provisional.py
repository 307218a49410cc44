"""Provisional values on open gaps (issue 10 item 3).

docs/rules.md §2.4 (design-choice): while a gap is open the gateway publishes the last good value, **or the tier
value once it is computable** with the data so far (N so far; no 'after' value yet, so HB/HA is the 'before'
value per the policy's open_gap_fallback). Of the two, the more conservative for the point's direction. Before
this fix the last good value stood for the whole open gap, below what the final rule gives for a high-direction
parameter.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.rules.context import GapInputs
from gateway.rules.hours import HourValue
from gateway.rules.policy_config import parse_policy_config
from gateway.rules.substitution import substitute_gap

from .rules_vectors import VECTORS

BY_NAME = {v["name"]: v for v in VECTORS}


def _open_run(vector_name: str, last_hour: int, **override: Any) -> Any:
    """The vector's history cut at ``last_hour`` inside its gap: the gap is still open there."""
    vector = BY_NAME[vector_name]
    params = {k: v for k, v in vector["params"].items() if not k.endswith("_note") and k != "parameter"}
    policy = parse_policy_config({"selector": vector["policy"], **params, **override}, require_fallbacks=False)
    history = [HourValue(h, v) for h, v in vector["history"] if h <= last_hour]
    gap = [h for h in vector["gap"] if h <= last_hour]
    return substitute_gap(history, gap, policy, point="p", inputs=GapInputs(gap_open=True))


def test_long_open_gap_provisional_becomes_the_p90_tier_value_not_the_last_good_one() -> None:
    """Vector p75_co2_p90_long_gap_percentile_wins (40 CFR 75.33(b)(1)(ii)), still open at hour 35, N = 26 so far.
    PMA 96 >= 95 and N = 26 > 24 -> greater of P90 and HB/HA.
    Lookback (W = 10) sorted: 8.0 9.1 9.5 9.8 10.0 10.1 10.7 10.9 11.3 12.4; k = ceil(0.9 x 10) = 9 -> P90 = 11.3.
    No 'after' value yet: HB/HA is HB = 10.9 (open_gap_fallback hour_before). Greater: 11.3 (MODC 08).
    The old provisional value: the last good value 10.9, below the final rule's 11.3."""
    res = _open_run("p75_co2_p90_long_gap_percentile_wins", 35)
    assert res.status == "provisional"
    assert set(res.values()) == {11.3}
    assert {r.detail.method_code for r in res.records} == {"08"}
    assert any("more conservative than the last good value 10.9" in n for n in res.records[0].detail.notes)


def test_while_the_tier_is_still_the_short_one_the_last_good_value_stands() -> None:
    """Same vector open at hour 33: N = 24 so far -> PMA >= 95, N <= 24: HB/HA = HB = 10.9 (no 'after' value),
    equal to the last good value, which is kept (method G2)."""
    res = _open_run("p75_co2_p90_long_gap_percentile_wins", 33)
    assert set(res.values()) == {10.9}
    assert {r.detail.routine for r in res.records} == {"last_good"}


def test_low_direction_provisional_takes_the_lesser_tier_value() -> None:
    """Vector p75_o2_low_direction_p10_long_gap (O2 for heat input, low direction), open at hour 34, N = 25.
    PMA 98, N > 24 -> lesser of P10 and HB/HA. Lookback sorted: 4.8 4.9 5.0 5.1 5.2 5.4 5.5 5.8 6.1 6.3;
    k = ceil(0.1 x 10) = 1 -> P10 = 4.8; HB = 5.4. Lesser: 4.8, below the last good 5.4 -> 4.8."""
    res = _open_run("p75_o2_low_direction_p10_long_gap", 34)
    assert set(res.values()) == {4.8}


def test_hj75_open_gap_provisional_is_the_window_maximum() -> None:
    """HJ 75-2017 table 8, alpha given 95 % (>= 90), N = 2 so far (<= 24): max of the window_short = 3 valid hours
    before the outage: hours 1..3 = 47, 41, 42 -> 47.0. The last good value is 42.0."""
    policy = parse_policy_config({"selector": "hj75_tiered", "direction": "high", "alpha_pct": 95,
                                  "window_short": 3, "default_value": 120.0})
    history = [HourValue(0, 50.0), HourValue(1, 47.0), HourValue(2, 41.0), HourValue(3, 42.0), HourValue(4, None),
               HourValue(5, None)]
    res = substitute_gap(history, [4, 5], policy, point="so2", inputs=GapInputs(gap_open=True))
    assert res.values() == (47.0, 47.0)


values = st.floats(min_value=0, max_value=1000, allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(st.lists(values, min_size=1, max_size=40), st.integers(1, 40), st.sampled_from(["high", "low"]),
       st.sampled_from([50, 85, 92, 97]), st.integers(1, 12))
def test_provisional_is_never_less_conservative_than_the_rule_or_the_last_good_value(
        before: list[float], n_open: int, direction: str, pma: int, w: int) -> None:
    """For any history, the published provisional value (provisional_policy last_good) is at least (high) or at
    most (low) both the last good value and the rule's value with the data so far."""
    base = {"selector": "part75_tiered", "direction": direction, "pma": pma, "lookback_hours": w,
            "max_potential": 2000.0, "min_potential": 0.0}
    history = [HourValue(h, v) for h, v in enumerate(before)]
    gap = list(range(len(before), len(before) + n_open))
    history += [HourValue(h, None) for h in gap]
    inputs = GapInputs(gap_open=True)
    published = substitute_gap(history, gap, parse_policy_config(base), point="p", inputs=inputs).values()
    rule = substitute_gap(history, gap, parse_policy_config({**base, "provisional_policy": "selector"}), point="p",
                          inputs=inputs).values()
    held = before[-1]
    for p, r in zip(published, rule, strict=True):
        assert p is not None
        assert r is not None
        if direction == "high":
            assert p >= r
            assert p >= held
        else:
            assert p <= r
            assert p <= held


def test_a_gaps_hours_share_one_evaluation_per_n_and_load_bin(monkeypatch: Any) -> None:
    """Provisional values now follow the tier, so an open gap re-evaluated every hour must not cost one lookback
    per gap hour: a whole_period gap is evaluated once (per quarter part, N and load bin), the records still one
    per hour, identical in value to a per-hour evaluation (per_hour_ordinal evaluates each N)."""
    import gateway.rules.substitution as substitution

    calls: list[int] = []
    real = substitution._evaluate_hour

    def counting(ctx: Any, hv: HourValue, n_used: int) -> Any:
        calls.append(hv.hour)
        return real(ctx, hv, n_used)

    monkeypatch.setattr(substitution, "_evaluate_hour", counting)
    policy = parse_policy_config({"selector": "part75_tiered", "direction": "high", "pma": 97, "max_potential": 20.0})
    history = [HourValue(h, 10 + (h % 7) / 10) for h in range(100)] + [HourValue(h, None) for h in range(100, 160)]
    res = substitute_gap(history, list(range(100, 160)), policy, point="p", inputs=GapInputs(gap_open=True))
    assert len(res.records) == 60
    assert len(calls) == 1
    calls.clear()
    ordinal = parse_policy_config({"selector": "part75_tiered", "direction": "high", "pma": 97, "max_potential": 20.0,
                                   "length_rule": "per_hour_ordinal"})
    substitute_gap(history, list(range(100, 160)), ordinal, point="p", inputs=GapInputs(gap_open=True))
    assert len(calls) == 60
