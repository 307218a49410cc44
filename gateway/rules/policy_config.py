"""Substitution policy configuration: one per point, validated once at load time.

The vocabulary is the one of missing-data.md §2 and docs/rules.md. ``validate_policy_config`` returns every
problem as a string (the config loader locates them in the YAML); ``parse_policy_config`` returns the typed
policy or raises ``PolicyConfigError`` with the same list.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from fractions import Fraction
from typing import Any

from gateway.rules.errors import PolicyConfigError
from gateway.rules.exact import fraction_text, to_fraction
from gateway.rules.lookback import PART75_MAX_AGE_HOURS


class Direction(StrEnum):
    """Direction of conservatism: the sign of dE/dx in the plant's emission equation (missing-data.md §2.4)."""

    HIGH = "high"  # a larger value gives more emissions (or less credit)
    LOW = "low"


SELECTORS = (
    "part75_tiered",
    "hj75_tiered",
    "mean_plus_2sigma",
    "hour_before_after",
    "percentile_lookback",
    "max_lookback",
    "min_lookback",
    "last_good",
    "fixed_conservative_default",
)

PROVISIONAL_POLICIES = ("last_good", "selector", "fixed_conservative_default")
OPEN_GAP_FALLBACKS = ("hour_before", "default_value")
NO_BEFORE_FALLBACKS = ("hour_after", "potential", "default_value")
LENGTH_RULES = ("whole_period", "per_hour_ordinal")
KINDS = ("conc", "binned")

# Keys every selector accepts.
_COMMON = frozenset({
    "selector", "direction", "citation", "default_value", "physical_min", "physical_max",
    "provisional_policy", "open_gap_fallback",
})
_LOOKBACK = frozenset({"lookback_hours", "max_age_hours"})
_ALLOWED: dict[str, frozenset[str]] = {
    "part75_tiered": _COMMON | _LOOKBACK | {
        "kind", "pma", "pma_window_operating_hours", "length_rule", "percentile_method",
        "max_potential", "min_potential", "nox_eq_19_3_4_8",
    },
    "hj75_tiered": _COMMON | {
        "alpha_pct", "window_short", "window_long", "window_low_alpha", "below_75_fallback", "length_rule",
        "max_age_hours",
    },
    "mean_plus_2sigma": _COMMON | {"ddof"},
    "hour_before_after": _COMMON | {"no_before_fallback", "max_potential", "min_potential", "nox_eq_19_3_4_8"},
    "percentile_lookback": _COMMON | _LOOKBACK | {"percentile", "floor_hbha", "percentile_method"},
    "max_lookback": _COMMON | _LOOKBACK,
    "min_lookback": _COMMON | _LOOKBACK,
    "last_good": _COMMON | {"plan_approved"},
    "fixed_conservative_default": _COMMON,
}

# Free-text keys that document a config or a test vector and change nothing.
INFO_KEYS = frozenset({"parameter", "period", "reference_period", "note", "description", "unit", "source"})


def is_info_key(key: str) -> bool:
    return key in INFO_KEYS or key.endswith("_note")


@dataclass(frozen=True, slots=True)
class SubstitutionPolicy:
    """A validated substitution policy. Every field is configuration (hashed into ``config_hash``)."""

    selector: str
    direction: Direction | None
    kind: str = "conc"
    lookback_hours: int | None = None  # None: the selector's default (720 conc, 2,160 binned)
    max_age_hours: int | None = PART75_MAX_AGE_HOURS
    pma: Fraction | None = None  # None: computed from the history (§75.32); a number: audit override
    pma_window_operating_hours: int = 8_760
    alpha_pct: Fraction | None = None  # None: computed from the history (HJ 75 effective capture rate)
    length_rule: str = "whole_period"
    percentile_method: str = "nearest_rank"
    percentile: Fraction | None = None
    floor_hbha: bool = False
    max_potential: float | None = None
    min_potential: float | None = None
    nox_eq_19_3_4_8: bool | None = None
    ddof: int = 1
    window_short: int = 180
    window_long: int = 720
    window_low_alpha: int = 2_160
    below_75_fallback: str = "fixed_conservative_default"
    default_value: float | None = None
    provisional_policy: str = "last_good"
    open_gap_fallback: str = "hour_before"
    no_before_fallback: str = "hour_after"
    physical_min: float | None = None
    physical_max: float | None = None
    citation: str | None = None
    plan_approved: bool = False

    @property
    def window(self) -> int:
        """W for lookback selectors: configured, else 720 (conc) or 2,160 (binned) per §75.33(b)/(c)."""
        if self.lookback_hours is not None:
            return self.lookback_hours
        return 2_160 if self.kind == "binned" else 720

    def potential(self) -> float | None:
        """Maximum potential (high) or minimum potential (low) value, §75.31(b)(2) / §75.33(b)(4)."""
        return self.max_potential if self.direction is Direction.HIGH else self.min_potential

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field in fields(self):
            name = field.name
            value = getattr(self, name)
            if isinstance(value, Fraction):
                value = fraction_text(value)
            elif isinstance(value, Direction):
                value = value.value
            out[name] = value
        return out

    def config_hash(self) -> str:
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def validate_policy_config(config: Mapping[str, Any], *, feeds_emissions: bool = True,
                           require_fallbacks: bool = True) -> list[str]:
    """Every problem of one point's policy config, as ``field: message`` strings (empty when valid).

    ``feeds_emissions``: the point feeds an emission figure, so a direction is mandatory (§2.4; standard
    10.1.3 f). ``require_fallbacks``: demand every value a rarely taken branch may need (maximum potential,
    default) now, at load time, instead of failing in the middle of a gap. The auditor tool turns this off
    and reports a missing value only when its scenario reaches the branch.
    """
    return _parse(config, feeds_emissions=feeds_emissions, require_fallbacks=require_fallbacks)[1]


def parse_policy_config(config: Mapping[str, Any], *, feeds_emissions: bool = True,
                        require_fallbacks: bool = True) -> SubstitutionPolicy:
    policy, errors = _parse(config, feeds_emissions=feeds_emissions, require_fallbacks=require_fallbacks)
    if errors or policy is None:
        raise PolicyConfigError(errors)
    return policy


class _Reader:
    """Typed access to a config mapping that collects errors instead of stopping at the first."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config
        self.errors: list[str] = []

    def get(self, key: str, convert: Callable[[Any], Any], default: Any = None) -> Any:
        if key not in self.config or self.config[key] is None:
            return default
        try:
            return convert(self.config[key])
        except (TypeError, ValueError, ArithmeticError) as exc:
            self.errors.append(f"{key}: {exc}")
            return default


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"expected a number, got {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(f"expected a finite number, got {v!r}")
    return f


def _positive_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"expected a positive integer, got {v!r}")
    return v


def _non_negative_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"expected a non-negative integer, got {v!r}")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"expected true or false, got {v!r}")
    return v


def _text(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise TypeError(f"expected a non-empty string, got {v!r}")
    return v


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(v: Any) -> str:
        if v not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {v!r}")
        return str(v)
    return convert


def _percent_or_compute(v: Any) -> Fraction | None:
    if v == "compute":
        return None
    _number(v)
    f = to_fraction(v)
    if not 0 <= f <= 100:
        raise ValueError(f"expected a percentage within 0..100 or \"compute\", got {v!r}")
    return f


def _percentile(v: Any) -> Fraction:
    _number(v)
    f = to_fraction(v)
    if not 0 < f <= 100:
        raise ValueError(f"expected a percentile within (0, 100], got {v!r}")
    return f


def _max_age(v: Any) -> int | None:
    return _positive_int(v)


def _parse(config: Mapping[str, Any], *, feeds_emissions: bool,
           require_fallbacks: bool) -> tuple[SubstitutionPolicy | None, list[str]]:
    if not isinstance(config, Mapping):
        return None, [f"policy: expected a mapping, got {type(config).__name__}"]
    r = _Reader(config)
    selector = config.get("selector")
    if selector not in SELECTORS:
        return None, [f"selector: expected one of {', '.join(SELECTORS)}, got {selector!r}"]
    allowed = _ALLOWED[selector]
    for key in config:
        if not isinstance(key, str):
            r.errors.append(f"{key!r}: keys must be strings")
        elif key not in allowed and not is_info_key(key):
            r.errors.append(f"{key}: not a parameter of {selector}")

    n_errors = len(r.errors)
    direction = r.get("direction", lambda v: Direction(_choice(("high", "low"))(v)))
    direction_invalid = len(r.errors) > n_errors
    nox19 = r.get("nox_eq_19_3_4_8", _bool)
    if nox19 is not None:
        # §75.37(d)(1): moisture is low-direction unless Method 19 Eq. 19-3/4/8 is used for NOx.
        implied = Direction.HIGH if nox19 else Direction.LOW
        if direction is None:
            direction = implied
        elif direction is not implied:
            r.errors.append(f"direction: {direction.value} contradicts nox_eq_19_3_4_8: {str(nox19).lower()} "
                            f"(§75.37(d): moisture is {implied.value}-direction in that case)")
    by_selector = {"max_lookback": Direction.HIGH, "min_lookback": Direction.LOW}.get(selector)
    if by_selector is not None and direction is not None and direction is not by_selector:
        r.errors.append(f"direction: {selector} is the {by_selector.value}-direction routine; use "
                        f"{'min' if by_selector is Direction.HIGH else 'max'}_lookback for {direction.value}")
    if direction is None and by_selector is not None and not feeds_emissions:
        direction = by_selector
    directional = selector in ("part75_tiered", "hj75_tiered", "percentile_lookback", "mean_plus_2sigma")
    if direction is None and not direction_invalid:
        if feeds_emissions:
            r.errors.append("direction: required (high or low) for a point that feeds an emission figure "
                            "(missing-data.md §2.4, standard 10.1.3 f)")
        elif directional:
            r.errors.append(f"direction: {selector} needs a direction (high or low)")

    kind = r.get("kind", _choice(KINDS), "conc")
    if kind == "binned" and direction is Direction.LOW:
        r.errors.append("kind: binned (flow, NOx; §75.33(c)) is defined for direction high only")

    policy = SubstitutionPolicy(
        selector=selector,
        direction=direction,
        kind=kind,
        lookback_hours=r.get("lookback_hours", _positive_int),
        max_age_hours=r.get("max_age_hours", _max_age, PART75_MAX_AGE_HOURS),
        pma=r.get("pma", _percent_or_compute),
        pma_window_operating_hours=r.get("pma_window_operating_hours", _positive_int, 8_760),
        alpha_pct=r.get("alpha_pct", _percent_or_compute),
        length_rule=r.get("length_rule", _choice(LENGTH_RULES), "whole_period"),
        percentile_method=r.get("percentile_method", _nearest_rank_only, "nearest_rank"),
        percentile=r.get("percentile", _percentile),
        floor_hbha=r.get("floor_hbha", _bool, False),
        max_potential=r.get("max_potential", _number),
        min_potential=r.get("min_potential", _number),
        nox_eq_19_3_4_8=nox19,
        ddof=r.get("ddof", _non_negative_int, 1),
        window_short=r.get("window_short", _positive_int, 180),
        window_long=r.get("window_long", _positive_int, 720),
        window_low_alpha=r.get("window_low_alpha", _positive_int, 2_160),
        below_75_fallback=r.get("below_75_fallback", _choice(("fixed_conservative_default",)),
                                "fixed_conservative_default"),
        default_value=r.get("default_value", _number),
        provisional_policy=r.get("provisional_policy", _choice(PROVISIONAL_POLICIES), "last_good"),
        open_gap_fallback=r.get("open_gap_fallback", _choice(OPEN_GAP_FALLBACKS), "hour_before"),
        no_before_fallback=r.get("no_before_fallback", _choice(NO_BEFORE_FALLBACKS), "hour_after"),
        physical_min=r.get("physical_min", _number),
        physical_max=r.get("physical_max", _number),
        citation=r.get("citation", _text),
        plan_approved=r.get("plan_approved", _bool, False),
    )
    errors = r.errors
    if selector == "percentile_lookback" and policy.percentile is None:
        errors.append("percentile: required for percentile_lookback")
    if (policy.physical_min is not None and policy.physical_max is not None
            and policy.physical_min > policy.physical_max):
        errors.append("physical_min: greater than physical_max")
    if selector == "last_good" and not policy.plan_approved:
        errors.append("selector: last_good is not conservative; use it as provisional_policy, or set "
                      "plan_approved: true where the monitoring plan approves it (§98.35(b)(1) no-'after' case)")
    if selector == "fixed_conservative_default" and policy.default_value is None:
        errors.append("default_value: required for fixed_conservative_default")
    if policy.provisional_policy == "fixed_conservative_default" and policy.default_value is None:
        errors.append("default_value: required by provisional_policy fixed_conservative_default")
    if policy.open_gap_fallback == "default_value" and policy.default_value is None:
        errors.append("default_value: required by open_gap_fallback default_value")
    if selector == "hour_before_after" and policy.no_before_fallback == "default_value" \
            and policy.default_value is None:
        errors.append("default_value: required by no_before_fallback default_value")
    if require_fallbacks:
        errors.extend(_missing_fallbacks(policy))
    return policy, errors


def _nearest_rank_only(v: Any) -> str:
    if v != "nearest_rank":
        raise ValueError(f"only nearest_rank is supported, got {v!r}: an interpolated percentile is not a "
                         "recorded hourly value (missing-data.md §1.1)")
    return "nearest_rank"


def _missing_fallbacks(policy: SubstitutionPolicy) -> list[str]:
    """Values a rare branch needs; a runtime config must carry them before the first gap."""
    errors: list[str] = []
    potential_key = "max_potential" if policy.direction is Direction.HIGH else "min_potential"
    if policy.selector == "part75_tiered" and policy.direction is not None and policy.potential() is None:
        errors.append(f"{potential_key}: required by part75_tiered (PMA < 80 % or no prior QA data, "
                      "§75.31(b)(2), §75.33(b)(4))")
    if policy.selector == "hour_before_after" and policy.no_before_fallback == "potential" \
            and policy.direction is not None and policy.potential() is None:
        errors.append(f"{potential_key}: required by no_before_fallback potential")
    needs_default = {
        "hj75_tiered": "alpha < 75 % (below_75_fallback) or an empty lookback",
        "mean_plus_2sigma": "fewer than 2 valid hours in the reference period",
        "percentile_lookback": "an empty lookback",
        "max_lookback": "an empty lookback",
        "min_lookback": "an empty lookback",
        "last_good": "no value before the gap",
        "hour_before_after": "no value before or after the gap",
    }
    if policy.selector in needs_default and policy.default_value is None:
        errors.append(f"default_value: required by {policy.selector} ({needs_default[policy.selector]})")
    return errors
