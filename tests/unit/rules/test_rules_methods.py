"""The substitution methods are declared once (gateway/rules/methods.py) and everything derives from that."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter

from gateway.rules import selectors
from gateway.rules.methods import FLAT_FIELDS, LATER_FIELDS, METHODS, SELECTORS, DirectionRule, MissingData
from gateway.rules.policy_config import parse_policy_config, validate_policy_config

# The parameter set every trace and config hash covers; it was a 28-field flat dataclass before the methods
# were declared one by one, and stored records carry hashes of exactly this set.
LEGACY_FLAT_FIELDS = {
    "selector", "direction", "kind", "lookback_hours", "max_age_hours", "pma", "pma_window_operating_hours",
    "alpha_pct", "length_rule", "percentile_method", "percentile", "floor_hbha", "max_potential", "min_potential",
    "nox_eq_19_3_4_8", "ddof", "window_short", "window_long", "window_low_alpha", "below_75_fallback",
    "default_value", "provisional_policy", "open_gap_fallback", "no_before_fallback", "physical_min",
    "physical_max", "citation", "plan_approved",
}

# config_hash values computed by the code before this refactoring: a stored record's hash must not change.
GOLDEN_HASHES: list[tuple[dict[str, Any], str]] = [
    ({"selector": "part75_tiered", "direction": "high", "max_potential": 15.0},
     "sha256:7132f372ed3219088666ba291d862843e13bbb6841eecabeb14066414982a439"),
    ({"selector": "part75_tiered", "direction": "high", "kind": "binned", "length_rule": "per_hour_ordinal",
      "lookback_hours": 5, "max_potential": 9000.0, "pma": 95},
     "sha256:8f0b634b5d96e0aa2ec26be0274c49ec93d8318893de0cffe6daa37a8f4306fd"),
    ({"selector": "hj75_tiered", "alpha_pct": 91.5, "default_value": 120.0, "direction": "high", "window_short": 3},
     "sha256:8b989c2143e972c5c89ba8baf65d5a3e979bc2824cf496f07813ae78803ea9ef"),
    ({"selector": "mean_plus_2sigma", "ddof": 0, "default_value": 15.0, "direction": "high"},
     "sha256:69751feaf9ffec4b6c0e3918679a8699c156fdc77967d8aec08a999e9b60ba3b"),
    ({"selector": "hour_before_after", "default_value": 30.0, "direction": "high", "max_potential": 3,
      "no_before_fallback": "potential", "parameter": "ncv", "period": "month"},
     "sha256:e3c2123128740882482ead6d0b7559f023ceb393f35138d87c12067f1e657fd6"),
    ({"selector": "hour_before_after", "default_value": 30.0, "nox_eq_19_3_4_8": False},
     "sha256:02e4a4f86ffc2930ebb4468d636fad6600036bc7209288fb59a559e12a1e6fa9"),
    ({"selector": "percentile_lookback", "default_value": 0.0, "direction": "low", "floor_hbha": True,
      "percentile": 90}, "sha256:1b26587c39c1eb2befad1f9cbe8d3a3976c3246ce74f5163ec29c51da2cd1615"),
    ({"selector": "min_lookback", "default_value": 0.0, "direction": "low", "lookback_note": "scaled",
      "max_age_hours": 100}, "sha256:97ca1203bcc2d0466b304d03e87c9f7d69af23b69551b1cfeb8d25c0931b18f9"),
    ({"selector": "last_good", "default_value": 1.0, "direction": "high", "plan_approved": True,
      "provisional_policy": "selector"}, "sha256:081ba9a769358db63222fcf58865fe39c008815274a853984bc2187cb6a6034d"),
    ({"selector": "fixed_conservative_default", "citation": "power guideline 2022 revision", "default_value": 0.03085,
      "direction": "high", "open_gap_fallback": "default_value", "physical_max": 1, "physical_min": 0},
     "sha256:93e32be81dfb90409509903e05ce3167297220eefa3659b9f8683536d6bcebd7"),
]


def test_every_method_is_declared_once_with_a_matching_tag() -> None:
    assert tuple(METHODS) == SELECTORS
    assert len(set(SELECTORS)) == 10  # best_available_estimate (issue 10 item 9) is the tenth
    for name, method in METHODS.items():
        assert method.name == name
        assert method.params.model_fields["selector"].is_required()
        assert method.params.model_config.get("extra") == "forbid"
        assert method.params.model_config.get("strict") is True
        assert callable(method.select)
        assert method.select.__module__ == selectors.__name__
        assert isinstance(method.direction, DirectionRule)


def test_the_flat_trace_form_is_unchanged() -> None:
    """Parameters added later (LATER_FIELDS, e.g. HJ 75's quarter_utc_offset_hours, issue 10) are traced and
    hashed only when set away from their default: every stored record keeps its form and hash."""
    assert set(FLAT_FIELDS) - LATER_FIELDS == LEGACY_FLAT_FIELDS
    for config, _ in GOLDEN_HASHES:
        assert set(parse_policy_config(config).to_json()) == LEGACY_FLAT_FIELDS


def test_a_later_parameter_set_away_from_its_default_is_traced_and_hashed() -> None:
    base = {"selector": "hj75_tiered", "direction": "high", "default_value": 1.0}
    default = parse_policy_config(base)
    utc = parse_policy_config({**base, "quarter_utc_offset_hours": 0})
    assert utc.to_json()["quarter_utc_offset_hours"] == 0
    assert utc.config_hash() != default.config_hash()
    assert parse_policy_config({**base, "quarter_utc_offset_hours": 8}).config_hash() == default.config_hash()


@pytest.mark.parametrize(("config", "expected"), GOLDEN_HASHES, ids=[c["selector"] for c, _ in GOLDEN_HASHES])
def test_config_hash_is_the_one_stored_records_carry(config: dict[str, Any], expected: str) -> None:
    assert parse_policy_config(config).config_hash() == expected


def test_the_missing_data_union_picks_the_method_by_selector() -> None:
    adapter: TypeAdapter[Any] = TypeAdapter(MissingData)
    for name, method in METHODS.items():
        required = {k: 50 if k == "percentile" else 1.0 for k, f in method.params.model_fields.items()
                    if f.is_required() and k != "selector"}
        assert isinstance(adapter.validate_python({"selector": name, **required}), method.params)


@pytest.mark.parametrize("name", SELECTORS)
def test_each_method_rejects_the_parameters_of_the_others(name: str) -> None:
    own = set(METHODS[name].params.model_fields)
    foreign = sorted(set(FLAT_FIELDS) - own)
    for key in foreign:
        errors = validate_policy_config({"selector": name, key: 1, "direction": "high"}, require_fallbacks=False)
        assert f"{key}: not a parameter of {name}" in errors


def test_free_text_keys_are_accepted_everywhere() -> None:
    for name in SELECTORS:
        config = {"selector": name, "direction": "high", "note": "x", "source": {"doc": 1}, "why_note": "y"}
        errors = validate_policy_config(config, require_fallbacks=False)
        assert not [e for e in errors if "not a parameter" in e], errors


def test_null_means_not_given() -> None:
    assert parse_policy_config({"selector": "max_lookback", "direction": "high", "default_value": 1.0,
                                "lookback_hours": None, "max_age_hours": None}).window == 720
