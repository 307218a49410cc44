"""Policy configuration validation: every problem reported, as 'field: message'."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.rules.errors import PolicyConfigError
from gateway.rules.policy_config import Direction, parse_policy_config, validate_policy_config


def test_emission_point_without_direction_is_a_config_error() -> None:
    errors = validate_policy_config({"selector": "hour_before_after", "default_value": 1.0})
    assert errors == ["direction: required (high or low) for a point that feeds an emission figure "
                      "(group standard 10.1.3 f: conservative principle; docs/rules.md §3)"]
    assert validate_policy_config({"selector": "hour_before_after", "default_value": 1.0},
                                  feeds_emissions=False) == []


def test_directional_selector_needs_a_direction_even_off_the_emission_path() -> None:
    assert validate_policy_config({"selector": "percentile_lookback", "percentile": 90, "default_value": 1.0},
                                  feeds_emissions=False) == ["direction: percentile_lookback needs a direction "
                                                             "(high or low)"]


def test_complete_runtime_configs_are_valid() -> None:
    good: list[dict[str, Any]] = [
        {"selector": "part75_tiered", "direction": "high", "max_potential": 15.0},
        {"selector": "part75_tiered", "direction": "low", "min_potential": 0.0, "pma": "compute"},
        {"selector": "part75_tiered", "kind": "binned", "direction": "high", "max_potential": 9e3},
        {"selector": "hj75_tiered", "direction": "high", "default_value": 120.0},
        {"selector": "mean_plus_2sigma", "direction": "high", "default_value": 15.0, "ddof": 0},
        {"selector": "hour_before_after", "direction": "high", "parameter": "ncv", "period": "month",
         "default_value": 30.0},
        {"selector": "percentile_lookback", "direction": "low", "percentile": 90, "default_value": 0.0},
        {"selector": "min_lookback", "direction": "low", "default_value": 0.0, "lookback_note": "scaled"},
        {"selector": "last_good", "direction": "high", "plan_approved": True, "default_value": 1.0},
        {"selector": "fixed_conservative_default", "direction": "high", "default_value": 0.03085,
         "citation": "power guideline 2022 revision"},
    ]
    for config in good:
        assert validate_policy_config(config) == [], config


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"selector": "nope"}, "selector: expected one of"),
        ({"selector": "part75_tiered", "direction": "high"}, "max_potential: required by part75_tiered"),
        ({"selector": "part75_tiered", "direction": "low"}, "min_potential: required by part75_tiered"),
        ({"selector": "part75_tiered", "direction": "low", "kind": "binned", "min_potential": 0},
         "kind: binned"),
        ({"selector": "part75_tiered", "direction": "high", "max_potential": 1, "ddof": 1},
         "ddof: not a parameter of part75_tiered"),
        ({"selector": "part75_tiered", "direction": "high", "max_potential": 1, "percentile_method": "linear"},
         "only nearest_rank"),
        ({"selector": "part75_tiered", "direction": "high", "max_potential": 1, "pma": 100.5}, "pma: expected"),
        ({"selector": "part75_tiered", "direction": "high", "max_potential": True}, "max_potential: expected a number"),
        ({"selector": "part75_tiered", "direction": "high", "max_potential": 1, "lookback_hours": 1.5},
         "lookback_hours: expected a positive integer"),
        ({"selector": "hj75_tiered", "direction": "high"}, "default_value: required by hj75_tiered"),
        ({"selector": "hj75_tiered", "direction": "high", "default_value": 1, "below_75_fallback": "max"},
         "below_75_fallback"),
        ({"selector": "max_lookback", "direction": "low", "default_value": 1}, "max_lookback is the high-direction"),
        ({"selector": "min_lookback", "direction": "high", "default_value": 1}, "min_lookback is the low-direction"),
        ({"selector": "last_good", "direction": "high", "default_value": 1}, "last_good is not conservative"),
        ({"selector": "fixed_conservative_default", "direction": "high"}, "default_value: required"),
        ({"selector": "percentile_lookback", "direction": "high", "default_value": 1}, "percentile: required"),
        ({"selector": "percentile_lookback", "direction": "high", "default_value": 1, "percentile": 0},
         "percentile: expected"),
        ({"selector": "hour_before_after", "direction": "high", "no_before_fallback": "potential"},
         "max_potential: required by no_before_fallback"),
        ({"selector": "hour_before_after", "direction": "high", "open_gap_fallback": "default_value"},
         "default_value: required by open_gap_fallback"),
        ({"selector": "hour_before_after", "direction": "high", "physical_min": 5, "physical_max": 1},
         "physical_min: greater than physical_max"),
        ({"selector": "hour_before_after", "direction": "low", "nox_eq_19_3_4_8": True},
         "contradicts nox_eq_19_3_4_8"),
        ({"selector": "mean_plus_2sigma", "direction": "high", "default_value": 1, "ddof": -1}, "ddof"),
        ({"selector": "hour_before_after", "direction": "up"}, "direction: expected one of high, low"),
    ],
)
def test_invalid_configs_are_reported(config: dict[str, Any], fragment: str) -> None:
    errors = validate_policy_config(config)
    assert any(fragment in e for e in errors), errors
    with pytest.raises(PolicyConfigError) as info:
        parse_policy_config(config)
    assert info.value.errors == errors


def test_all_problems_are_reported_at_once() -> None:
    errors = validate_policy_config({"selector": "part75_tiered", "lookback_hours": 0, "typo": 1, "pma": "x"})
    assert len(errors) == 4
    assert {e.split(":")[0] for e in errors} == {"typo", "lookback_hours", "pma", "direction"}


def test_nox_eq_19_implies_the_moisture_direction() -> None:
    moisture = {"selector": "hour_before_after", "default_value": 5.0}
    assert parse_policy_config({**moisture, "nox_eq_19_3_4_8": True}).direction is Direction.HIGH
    assert parse_policy_config({**moisture, "nox_eq_19_3_4_8": False}).direction is Direction.LOW


def test_a_point_with_no_data_at_all_needs_a_default_at_load_time() -> None:
    errors = validate_policy_config({"selector": "hour_before_after", "direction": "high"})
    assert errors == ["default_value: required by hour_before_after (no value before or after the gap)"]
    assert validate_policy_config({"selector": "hour_before_after", "direction": "high"},
                                  require_fallbacks=False) == []


def test_config_hash_is_stable_and_changes_with_the_config() -> None:
    a = parse_policy_config({"selector": "part75_tiered", "direction": "high", "max_potential": 15.0})
    b = parse_policy_config({"max_potential": 15.0, "direction": "high", "selector": "part75_tiered"})
    c = parse_policy_config({"selector": "part75_tiered", "direction": "high", "max_potential": 15.5})
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != c.config_hash()
    assert a.config_hash().startswith("sha256:")
    assert (a.window, parse_policy_config({"selector": "part75_tiered", "direction": "high", "kind": "binned",
                                           "max_potential": 1.0}).window) == (720, 2160)


def test_non_mapping_config() -> None:
    assert validate_policy_config([1, 2]) == ["policy: expected a mapping, got list"]  # type: ignore[arg-type]
