"""Per-reading validity rules (standard 10.3.1: review raw data for completeness, accuracy, plausibility).

A stateful-but-pure evaluator: ``check(value, ts_ms, state, rules, ...)`` returns the quality, the reason
and the new ``ValidityState``; the caller carries the state to the next call. Nothing is kept anywhere
else, and the raw value is never changed: a failed rule only sets quality and reason.

Quality per failed rule (the worst one wins; the reason is the first failed rule of that quality):

| rule                                   | quality            | reason                        |
|----------------------------------------|--------------------|-------------------------------|
| no value                               | bad                | no_value                      |
| NaN / +-Inf                            | bad                | nan / infinite                |
| timestamp before the previous one      | bad                | out_of_order                  |
| NE 107 failure                         | bad                | device_failure                |
| analyzer in calibration / maintenance  | bad                | calibration / maintenance     |
| NE 107 check function                  | bad                | device_check_function         |
| physical limit (flow < 0, % > 100)     | bad                | physical_limit                |
| calibration expired                    | uncertain (or bad) | calibration_expired           |
| outside the measuring range            | uncertain          | over_range / under_range      |
| rate of change                         | uncertain          | rate_of_change                |
| frozen value                           | uncertain          | frozen                        |
| NE 107 out of specification            | uncertain          | device_out_of_specification   |
| NE 107 maintenance required            | good               | device_maintenance_required   |

NAMUR NE 107: "maintenance required" still means a valid output, so the reading stays good and the reason
records the device state. Over range maps to Uncertain_EngineeringUnitsExceeded / HJ 212 flag T
(docs/rules.md §4). Any uncertain or bad reading is not quality-assured for emissions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

from gateway.model import NE107 as Ne107  # the rules' historical spelling
from gateway.model import (
    REASON_CALIBRATION,
    REASON_MAINTENANCE,
    REASON_NAN,
    REASON_OK,
    Calibration,
    InstrumentKind,
    Quality,
)

REASON_NO_VALUE = "no_value"
REASON_INFINITE = "infinite"
REASON_OUT_OF_ORDER = "out_of_order"
REASON_DEVICE_FAILURE = "device_failure"
REASON_DEVICE_CHECK_FUNCTION = "device_check_function"
REASON_PHYSICAL_LIMIT = "physical_limit"
REASON_CALIBRATION_EXPIRED = "calibration_expired"
REASON_OVER_RANGE = "over_range"
REASON_UNDER_RANGE = "under_range"
REASON_RATE_OF_CHANGE = "rate_of_change"
REASON_FROZEN = "frozen"
REASON_DEVICE_OUT_OF_SPEC = "device_out_of_specification"
REASON_DEVICE_MAINTENANCE_REQUIRED = "device_maintenance_required"

_SEVERITY = {Quality.GOOD: 0, Quality.UNCERTAIN: 1, Quality.BAD: 2}


@dataclass(frozen=True, slots=True)
class DeviceHealth:
    """Device status read with the value (NE 107 categories, analyzer calibration/maintenance bits)."""

    ne107: frozenset[Ne107] = frozenset()
    analyzer_calibrating: bool = False
    analyzer_maintenance: bool = False


HEALTHY = DeviceHealth()


@dataclass(frozen=True, slots=True)
class ValidityRules:
    """Per-point rules; None disables a rule. Built once from the registry and the point config."""

    range_low: float | None = None  # measuring range of the instrument (registry)
    range_high: float | None = None
    physical_min: float | None = None  # impossible values: negative flow, concentration above 100 %
    physical_max: float | None = None
    max_rate_per_s: float | None = None  # |change| per second against the last accepted value
    frozen_count: int | None = None  # N identical readings in a row: the N-th and later fail
    frozen_seconds: float | None = None  # unchanged for at least T seconds
    calibration_expired: Quality = Quality.UNCERTAIN  # configurable: uncertain or bad
    frozen_ignores_zero: bool = False  # a constant 0 is a stopped flow, not a stuck transmitter

    def __post_init__(self) -> None:
        problems = validate_rules(self)
        if problems:
            raise ValueError("; ".join(problems))


def validate_rules(rules: ValidityRules) -> list[str]:
    errors: list[str] = []
    for lo, hi in (("range_low", "range_high"), ("physical_min", "physical_max")):
        a, b = getattr(rules, lo), getattr(rules, hi)
        for name, v in ((lo, a), (hi, b)):
            if v is not None and not math.isfinite(v):
                errors.append(f"{name}: must be a finite number")
        if a is not None and b is not None and a > b:
            errors.append(f"{lo}: greater than {hi}")
    if rules.max_rate_per_s is not None and not (math.isfinite(rules.max_rate_per_s) and rules.max_rate_per_s >= 0):
        errors.append("max_rate_per_s: must be a non-negative number")
    if rules.frozen_count is not None and rules.frozen_count < 2:
        errors.append("frozen_count: must be at least 2")
    if rules.frozen_seconds is not None and not (rules.frozen_seconds > 0):
        errors.append("frozen_seconds: must be positive")
    if rules.calibration_expired not in (Quality.UNCERTAIN, Quality.BAD):
        errors.append("calibration_expired: must be uncertain or bad")
    return errors


_PERCENT_UNITS = frozenset({"%", "%vol", "% vol", "vol%", "percent", "pct"})


def default_rules(kind: InstrumentKind | str, unit: str = "", *, range_low: float | None = None,
                  range_high: float | None = None,
                  calibration_expired: Quality = Quality.UNCERTAIN) -> ValidityRules:
    """Sensible defaults per instrument kind; the measuring range comes from the registry.

    flow_meter: no negative flow; frozen after one hour unchanged (a flow exactly constant for an hour is
    a stuck transmitter), except at 0, which is a stopped flow (the process signal decides operation).
    gas_analyzer: 0..100 for % units, >= 0 otherwise; frozen after one hour unchanged.
    power_meter: power may be negative (export), so no physical limit and no frozen rule (steady loads).
    other: only NaN/Inf, measuring range and calibration.
    """
    k = InstrumentKind(kind)
    percent = unit.strip().lower() in _PERCENT_UNITS
    if k is InstrumentKind.FLOW_METER:
        return ValidityRules(range_low, range_high, physical_min=0.0, frozen_seconds=3600.0,
                             calibration_expired=calibration_expired, frozen_ignores_zero=True)
    if k is InstrumentKind.GAS_ANALYZER:
        return ValidityRules(range_low, range_high, physical_min=0.0, physical_max=100.0 if percent else None,
                             frozen_seconds=3600.0, calibration_expired=calibration_expired)
    return ValidityRules(range_low, range_high, calibration_expired=calibration_expired)


@dataclass(frozen=True, slots=True)
class ValidityState:
    """Carried between calls for one point. A fresh ``ValidityState()`` starts a point."""

    last_ts_ms: int | None = None  # newest timestamp seen (time order)
    ref_value: float | None = None  # last value that passed the rate rule
    ref_ts_ms: int | None = None
    same_value: float | None = None  # frozen-value tracking over finite readings
    same_count: int = 0
    same_since_ms: int | None = None


class CheckResult(NamedTuple):
    quality: Quality
    reason: str
    state: ValidityState
    failed: tuple[str, ...]  # every failed rule, in precedence order


def check(value: float | None, ts_ms: int, state: ValidityState, rules: ValidityRules, *,
          calibration: Calibration = Calibration.VALID, health: DeviceHealth = HEALTHY) -> CheckResult:
    """Judge one reading; return quality, reason, the state for the next reading and all failed rules."""
    if health is HEALTHY:
        new_state = passes(value, ts_ms, state, rules, calibration)
        if new_state is not None:
            return CheckResult(Quality.GOOD, REASON_OK, new_state, ())
    return _check(value, ts_ms, state, rules, calibration, health)


def passes(value: float | None, ts_ms: int, state: ValidityState, rules: ValidityRules,
           calibration: Calibration) -> ValidityState | None:
    """The fast path for a reading of a healthy device that passes every rule (nearly all of them): the state
    for the next reading, else None (then ``check`` judges it). The same tests as ``_check``, in the same
    order, without the list of failures or a CheckResult: the rules stage calls it once per reading."""
    last = state.last_ts_ms
    if (value is not None and (last is None or ts_ms >= last)
            and calibration is not Calibration.EXPIRED and -_INF < value < _INF):
        lo, hi = rules.physical_min, rules.physical_max
        rlo, rhi = rules.range_low, rules.range_high
        if ((lo is None or value >= lo) and (hi is None or value <= hi)
                and (rhi is None or value <= rhi) and (rlo is None or value >= rlo)):
            rate_ok = _rate_ok(value, ts_ms, state, rules)
            if rate_ok:
                new_state = _track(value, ts_ms, state, rate_ok)
                if (rules.frozen_count is None and rules.frozen_seconds is None) or not _frozen(new_state, ts_ms,
                                                                                                rules):
                    return new_state
    return None


_INF = math.inf


def _check(value: float | None, ts_ms: int, state: ValidityState, rules: ValidityRules,
           calibration: Calibration, health: DeviceHealth) -> CheckResult:
    failed: list[tuple[str, Quality]] = []
    if value is None:
        failed.append((REASON_NO_VALUE, Quality.BAD))
    elif math.isnan(value):
        failed.append((REASON_NAN, Quality.BAD))
    elif math.isinf(value):
        failed.append((REASON_INFINITE, Quality.BAD))
    in_order = state.last_ts_ms is None or ts_ms >= state.last_ts_ms
    if not in_order:
        failed.append((REASON_OUT_OF_ORDER, Quality.BAD))
    failed.extend(_health(health))
    new_state = state
    finite = value is not None and math.isfinite(value)
    if finite and in_order:
        assert value is not None
        failed.extend(_limits(value, rules, calibration))
        rate_ok = _rate_ok(value, ts_ms, state, rules)
        if not rate_ok:
            failed.append((REASON_RATE_OF_CHANGE, Quality.UNCERTAIN))
        new_state = _track(value, ts_ms, state, rate_ok)
        if _frozen(new_state, ts_ms, rules):
            failed.append((REASON_FROZEN, Quality.UNCERTAIN))
    elif in_order:
        new_state = replace(state, last_ts_ms=ts_ms)
    if health.ne107 and Ne107.OUT_OF_SPECIFICATION in health.ne107:
        failed.append((REASON_DEVICE_OUT_OF_SPEC, Quality.UNCERTAIN))
    if health.ne107 and Ne107.MAINTENANCE_REQUIRED in health.ne107:
        failed.append((REASON_DEVICE_MAINTENANCE_REQUIRED, Quality.GOOD))
    if not failed:
        return CheckResult(Quality.GOOD, REASON_OK, new_state, ())
    worst = max(failed, key=lambda f: _SEVERITY[f[1]])[1]
    reason = next(r for r, q in failed if q is worst)
    return CheckResult(worst, reason, new_state, tuple(r for r, _ in failed))


def _health(health: DeviceHealth) -> list[tuple[str, Quality]]:
    out: list[tuple[str, Quality]] = []
    if Ne107.FAILURE in health.ne107:
        out.append((REASON_DEVICE_FAILURE, Quality.BAD))
    if health.analyzer_calibrating:
        out.append((REASON_CALIBRATION, Quality.BAD))  # HJ 212 flag C
    if health.analyzer_maintenance:
        out.append((REASON_MAINTENANCE, Quality.BAD))  # HJ 212 flag M
    if Ne107.CHECK_FUNCTION in health.ne107:
        out.append((REASON_DEVICE_CHECK_FUNCTION, Quality.BAD))  # NE 107: output temporarily invalid
    return out


def _limits(value: float, rules: ValidityRules, calibration: Calibration) -> list[tuple[str, Quality]]:
    out: list[tuple[str, Quality]] = []
    if (rules.physical_min is not None and value < rules.physical_min) or (
            rules.physical_max is not None and value > rules.physical_max):
        out.append((REASON_PHYSICAL_LIMIT, Quality.BAD))
    if calibration is Calibration.EXPIRED:
        # Standard 10.5.4: only confirmed instruments stay in use.
        out.append((REASON_CALIBRATION_EXPIRED, rules.calibration_expired))
    if rules.range_high is not None and value > rules.range_high:
        out.append((REASON_OVER_RANGE, Quality.UNCERTAIN))
    elif rules.range_low is not None and value < rules.range_low:
        out.append((REASON_UNDER_RANGE, Quality.UNCERTAIN))
    return out


def _rate_ok(value: float, ts_ms: int, state: ValidityState, rules: ValidityRules) -> bool:
    """Compared with the last value that passed: a spike fails without failing the reading after it, and a
    real step passes once the elapsed time allows the change."""
    if rules.max_rate_per_s is None or state.ref_value is None or state.ref_ts_ms is None:
        return True
    dt_s = (ts_ms - state.ref_ts_ms) / 1000
    return abs(value - state.ref_value) <= rules.max_rate_per_s * dt_s


def _track(value: float, ts_ms: int, state: ValidityState, rate_ok: bool) -> ValidityState:
    if value == state.same_value:
        same_count, same_since = state.same_count + 1, state.same_since_ms
    else:
        same_count, same_since = 1, ts_ms
    ref_value, ref_ts = (value, ts_ms) if rate_ok else (state.ref_value, state.ref_ts_ms)
    # ValidityState(ts_ms, ref_value, ref_ts, value, same_count, same_since), built through the slots directly:
    # the frozen dataclass's __init__ calls object.__setattr__ once per field, about twice the cost, at one
    # state per reading.
    s = _new(ValidityState)
    _set_last_ts(s, ts_ms)
    _set_ref_value(s, ref_value)
    _set_ref_ts(s, ref_ts)
    _set_same_value(s, value)
    _set_same_count(s, same_count)
    _set_same_since(s, same_since)
    return s


_new = object.__new__
_set_last_ts, _set_ref_value, _set_ref_ts, _set_same_value, _set_same_count, _set_same_since = (
    getattr(ValidityState, name).__set__ for name in ValidityState.__slots__)


def _frozen(state: ValidityState, ts_ms: int, rules: ValidityRules) -> bool:
    if rules.frozen_ignores_zero and state.same_value == 0:
        return False
    if rules.frozen_count is not None and state.same_count >= rules.frozen_count:
        return True
    return (rules.frozen_seconds is not None and state.same_since_ms is not None
            and ts_ms - state.same_since_ms >= rules.frozen_seconds * 1000)
