"""Per-reading validity rules at their edges."""

from __future__ import annotations

import math

import pytest

from gateway.model import Calibration, Quality
from gateway.rules.validity import (
    HEALTHY,
    DeviceHealth,
    InstrumentKind,
    Ne107,
    ValidityRules,
    ValidityState,
    check,
    default_rules,
    validate_rules,
)

FRESH = ValidityState()


def q(value: float | None, rules: ValidityRules, *, calibration: Calibration = Calibration.VALID,
      health: DeviceHealth = HEALTHY) -> tuple[Quality, str]:
    result = check(value, 1_000, FRESH, rules, calibration=calibration, health=health)
    return result.quality, result.reason


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.0, (Quality.GOOD, "")), (-1e-9, (Quality.BAD, "physical_limit")), (100.0, (Quality.GOOD, "")),
     (100.000001, (Quality.BAD, "physical_limit"))],
)
def test_physical_limits_are_inclusive(value: float, expected: tuple[Quality, str]) -> None:
    assert q(value, ValidityRules(physical_min=0.0, physical_max=100.0)) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(10.0, (Quality.GOOD, "")), (10.5, (Quality.UNCERTAIN, "over_range")), (2.0, (Quality.GOOD, "")),
     (1.999, (Quality.UNCERTAIN, "under_range"))],
)
def test_measuring_range_edges(value: float, expected: tuple[Quality, str]) -> None:
    assert q(value, ValidityRules(range_low=2.0, range_high=10.0)) == expected


@pytest.mark.parametrize(("value", "reason"), [(math.nan, "nan"), (math.inf, "infinite"), (-math.inf, "infinite"),
                                               (None, "no_value")])
def test_not_a_number_is_bad_and_does_not_move_the_references(value: float | None, reason: str) -> None:
    rules = ValidityRules(max_rate_per_s=1.0)
    state = check(5.0, 0, FRESH, rules).state
    result = check(value, 1_000, state, rules)
    assert (result.quality, result.reason) == (Quality.BAD, reason)
    assert result.state.ref_value == 5.0
    assert result.state.last_ts_ms == 1_000


def test_rate_of_change_edge_and_recovery_after_a_spike() -> None:
    rules = ValidityRules(max_rate_per_s=2.0)
    s = check(10.0, 0, FRESH, rules).state
    at_limit = check(12.0, 1_000, s, rules)  # exactly 2 per second: allowed
    assert at_limit.quality is Quality.GOOD
    spike = check(20.0, 2_000, at_limit.state, rules)
    assert (spike.quality, spike.reason) == (Quality.UNCERTAIN, "rate_of_change")
    back = check(12.5, 3_000, spike.state, rules)  # compared with 12.0 at t=1 s, not with the spike
    assert back.quality is Quality.GOOD


def test_rate_of_change_real_step_passes_once_time_allows_it() -> None:
    rules = ValidityRules(max_rate_per_s=1.0)
    s = check(0.0, 0, FRESH, rules).state
    results = []
    for t in range(1, 8):
        r = check(5.0, t * 1_000, s, rules)
        results.append(r.quality)
        s = r.state
    assert results == [Quality.UNCERTAIN] * 4 + [Quality.GOOD] * 3  # 5 units allowed after 5 s


def test_frozen_after_n_identical_readings() -> None:
    rules = ValidityRules(frozen_count=3)
    s = FRESH
    qualities = []
    for t in range(4):
        r = check(7.0, t * 1_000, s, rules)
        qualities.append(r.reason)
        s = r.state
    assert qualities == ["", "", "frozen", "frozen"]
    changed = check(7.5, 5_000, s, rules)
    assert changed.quality is Quality.GOOD


def test_frozen_after_t_seconds_inclusive() -> None:
    rules = ValidityRules(frozen_seconds=60)
    s = check(3.0, 0, FRESH, rules).state
    assert check(3.0, 59_999, s, rules).quality is Quality.GOOD
    assert check(3.0, 60_000, s, rules).reason == "frozen"


def test_flow_meter_default_does_not_call_a_stopped_flow_frozen() -> None:
    rules = default_rules(InstrumentKind.FLOW_METER, "m3/h")
    s = check(0.0, 0, FRESH, rules).state
    assert check(0.0, 7_200_000, s, rules).quality is Quality.GOOD
    s = check(5.0, 0, FRESH, rules).state
    assert check(5.0, 3_600_000, s, rules).reason == "frozen"
    assert check(-0.1, 0, FRESH, rules).reason == "physical_limit"


@pytest.mark.parametrize(
    ("kind", "unit", "low", "high"),
    [("gas_analyzer", "%vol", 0.0, 100.0), ("gas_analyzer", "mg/m3", 0.0, None), ("power_meter", "kW", None, None),
     ("other", "", None, None)],
)
def test_default_physical_limits_per_kind(kind: str, unit: str, low: float | None, high: float | None) -> None:
    rules = default_rules(kind, unit, range_low=0.0, range_high=50.0)
    assert (rules.physical_min, rules.physical_max) == (low, high)
    assert (rules.range_low, rules.range_high) == (0.0, 50.0)


@pytest.mark.parametrize("setting", [Quality.UNCERTAIN, Quality.BAD])
def test_calibration_expired_is_configurable(setting: Quality) -> None:
    rules = ValidityRules(calibration_expired=setting)
    assert q(1.0, rules, calibration=Calibration.EXPIRED) == (setting, "calibration_expired")
    assert q(1.0, rules, calibration=Calibration.DUE_SOON) == (Quality.GOOD, "")


@pytest.mark.parametrize(
    ("health", "expected"),
    [
        (DeviceHealth(frozenset({Ne107.FAILURE})), (Quality.BAD, "device_failure")),
        (DeviceHealth(frozenset({Ne107.CHECK_FUNCTION})), (Quality.BAD, "device_check_function")),
        (DeviceHealth(frozenset({Ne107.OUT_OF_SPECIFICATION})), (Quality.UNCERTAIN, "device_out_of_specification")),
        (DeviceHealth(frozenset({Ne107.MAINTENANCE_REQUIRED})), (Quality.GOOD, "device_maintenance_required")),
        (DeviceHealth(analyzer_calibrating=True), (Quality.BAD, "calibration")),
        (DeviceHealth(analyzer_maintenance=True), (Quality.BAD, "maintenance")),
        (DeviceHealth(frozenset({Ne107.MAINTENANCE_REQUIRED, Ne107.FAILURE})), (Quality.BAD, "device_failure")),
    ],
)
def test_device_health_ne107_and_analyzer_states(health: DeviceHealth, expected: tuple[Quality, str]) -> None:
    assert q(1.0, ValidityRules(), health=health) == expected


def test_worst_quality_wins_and_all_failures_are_listed() -> None:
    rules = ValidityRules(range_high=10.0, physical_max=100.0)
    result = check(150.0, 0, FRESH, rules, calibration=Calibration.EXPIRED)
    assert (result.quality, result.reason) == (Quality.BAD, "physical_limit")
    assert result.failed == ("physical_limit", "calibration_expired", "over_range")


def test_out_of_order_reading_is_bad_and_keeps_the_state() -> None:
    rules = ValidityRules(max_rate_per_s=1.0)
    s = check(1.0, 10_000, FRESH, rules).state
    late = check(1.0, 9_000, s, rules)
    assert (late.quality, late.reason) == (Quality.BAD, "out_of_order")
    assert late.state == s


def test_state_is_a_value_the_old_one_is_untouched() -> None:
    rules = ValidityRules(frozen_count=2)
    s0 = FRESH
    s1 = check(1.0, 0, s0, rules).state
    assert s0 == ValidityState()
    assert s1 != s0
    assert check(1.0, 1, s1, rules) == check(1.0, 1, s1, rules)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"range_low": 5.0, "range_high": 1.0}, "range_low"), ({"frozen_count": 1}, "frozen_count"),
     ({"max_rate_per_s": -1.0}, "max_rate_per_s"), ({"calibration_expired": Quality.GOOD}, "calibration_expired"),
     ({"physical_min": math.nan}, "finite"), ({"frozen_seconds": 0}, "frozen_seconds")],
)
def test_invalid_rules_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ValidityRules(**kwargs)  # type: ignore[arg-type]
    assert validate_rules(ValidityRules()) == []
