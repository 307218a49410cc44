"""Substitution policy configuration: one per point, validated once at load time.

The methods and their parameter models are declared in ``methods.py``; this module turns a ``missing_data``
block into a ``SubstitutionPolicy`` and checks what the models cannot: the direction (docs/rules.md §3, standard
10.1.3 f), the rules between parameters, and the fallback values a rare branch will need.
``validate_policy_config`` returns every problem as a ``field: message`` string (the config loader
locates them in the YAML); ``parse_policy_config`` returns the policy or raises ``PolicyConfigError``
with the same list.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, get_args

from pydantic import TypeAdapter, ValidationError

from gateway.rules.direction import Direction
from gateway.rules.errors import PolicyConfigError
from gateway.rules.exact import fraction_text
from gateway.rules.methods import (
    FLAT_FIELDS,
    INFO_KEYS,
    LATER_FIELDS,
    METHODS,
    SELECTORS,
    CommonParams,
    DirectionRule,
    LengthRule,
    Method,
    MissingData,
    NoBeforeFallback,
    OpenGapFallback,
    Part75Kind,
    ProvisionalPolicy,
    error_lines,
    flat_value,
    is_info_key,
)

__all__ = ["INFO_KEYS", "SELECTORS", "Direction", "SubstitutionPolicy", "is_info_key", "parse_policy_config",
           "resolve_policy", "validate_policy_config"]

PROVISIONAL_POLICIES: tuple[str, ...] = get_args(ProvisionalPolicy)
OPEN_GAP_FALLBACKS: tuple[str, ...] = get_args(OpenGapFallback)
NO_BEFORE_FALLBACKS: tuple[str, ...] = get_args(NoBeforeFallback)
LENGTH_RULES: tuple[str, ...] = get_args(LengthRule)
KINDS: tuple[str, ...] = get_args(Part75Kind)

_ADAPTER: TypeAdapter[Any] = TypeAdapter(MissingData)


@dataclass(frozen=True, slots=True)
class SubstitutionPolicy:
    """A validated substitution policy: the method, its parameters and the resolved direction.

    The method's routine reads its own typed parameters; the properties below are the few every routine
    shares. Every parameter is configuration (hashed into ``config_hash``).
    """

    method: Method[Any]
    params: CommonParams
    direction: Direction | None

    @property
    def selector(self) -> str:
        return self.method.name

    @property
    def default_value(self) -> float | None:
        return self.params.default_value

    @property
    def physical_min(self) -> float | None:
        return self.params.physical_min

    @property
    def physical_max(self) -> float | None:
        return self.params.physical_max

    @property
    def citation(self) -> str | None:
        return self.params.citation

    @property
    def provisional_policy(self) -> str:
        return self.params.provisional_policy

    @property
    def open_gap_fallback(self) -> str:
        return self.params.open_gap_fallback

    @property
    def no_before_fallback(self) -> str:
        return str(flat_value(self.params, "no_before_fallback"))

    @property
    def length_rule(self) -> str:
        return str(flat_value(self.params, "length_rule"))

    @property
    def max_age_hours(self) -> int | None:
        return flat_value(self.params, "max_age_hours")  # type: ignore[no-any-return]

    @property
    def kind(self) -> str:
        return str(flat_value(self.params, "kind"))

    @property
    def window(self) -> int:
        """W for lookback selectors: configured, else 720 (conc) or 2,160 (binned) per §75.33(b)/(c)."""
        lookback = flat_value(self.params, "lookback_hours")
        if lookback is not None:
            return int(lookback)
        return 2_160 if self.kind == "binned" else 720

    def potential(self) -> float | None:
        """Maximum potential (high) or minimum potential (low) value, §75.31(b)(2) / §75.33(b)(4)."""
        name = "max_potential" if self.direction is Direction.HIGH else "min_potential"
        return flat_value(self.params, name)  # type: ignore[no-any-return]

    def to_json(self) -> dict[str, Any]:
        """Every parameter of every method (absent ones at their defaults): the traced, hashed form."""
        out: dict[str, Any] = {}
        for name in FLAT_FIELDS:
            value = flat_value(self.params, name)
            if name in LATER_FIELDS and value == FLAT_FIELDS[name][0]:
                continue
            if name == "direction":
                value = None if self.direction is None else self.direction.value
            elif isinstance(value, Fraction):
                value = fraction_text(value)
            out[name] = value
        return out

    def config_hash(self) -> str:
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def validate_policy_config(config: Mapping[str, Any], *, feeds_emissions: bool = True,
                           require_fallbacks: bool = True) -> list[str]:
    """Every problem of one point's policy config, as ``field: message`` strings (empty when valid).

    ``feeds_emissions``: the point feeds an emission figure, so a direction is mandatory (docs/rules.md §3; standard
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


def _parse(config: Mapping[str, Any], *, feeds_emissions: bool,
           require_fallbacks: bool) -> tuple[SubstitutionPolicy | None, list[str]]:
    if not isinstance(config, Mapping):
        return None, [f"policy: expected a mapping, got {type(config).__name__}"]
    try:
        return resolve_policy(_ADAPTER.validate_python(config), feeds_emissions=feeds_emissions,
                              require_fallbacks=require_fallbacks)
    except ValidationError as err:
        lines = error_lines(err.errors())
    errors = [f"{'.'.join(map(str, loc)) or 'policy'}: {message}" for loc, message in lines]
    if any(loc[:1] == ("selector",) for loc, _ in lines):
        return None, errors
    # Report what else is wrong in the same pass: check the rest of the block without the failed keys.
    failed = {loc[0] for loc, _ in lines if loc}
    try:
        partial = _ADAPTER.validate_python({k: v for k, v in config.items() if k not in failed})
    except ValidationError:
        return None, errors
    _, more = resolve_policy(partial, feeds_emissions=feeds_emissions, require_fallbacks=require_fallbacks,
                             skip=failed)
    return None, errors + more


def resolve_policy(params: CommonParams, *, feeds_emissions: bool = True, require_fallbacks: bool = True,
                   skip: frozenset[Any] | set[Any] = frozenset()) -> tuple[SubstitutionPolicy, list[str]]:
    """The policy of a validated ``missing_data`` block and every problem the models cannot state.

    ``skip``: fields already reported as invalid; their follow-up problems are not repeated.
    """
    method: Method[Any] = METHODS[params.selector]  # type: ignore[attr-defined]
    errors: list[str] = []
    direction = None if params.direction is None else Direction(params.direction)
    nox19 = getattr(params, "nox_eq_19_3_4_8", None)
    if nox19 is not None:
        # §75.37(d)(1): moisture is low-direction unless Method 19 Eq. 19-3/4/8 is used for NOx.
        implied = Direction.HIGH if nox19 else Direction.LOW
        if direction is None:
            direction = implied
        elif direction is not implied:
            errors.append(f"direction: {direction.value} contradicts nox_eq_19_3_4_8: {str(nox19).lower()} "
                          f"(§75.37(d): moisture is {implied.value}-direction in that case)")
    fixed = {DirectionRule.HIGH: Direction.HIGH, DirectionRule.LOW: Direction.LOW}.get(method.direction)
    if fixed is not None and direction is not None and direction is not fixed:
        errors.append(f"direction: {method.name} is the {fixed.value}-direction routine; use "
                      f"{'min' if fixed is Direction.HIGH else 'max'}_lookback for {direction.value}")
    if direction is None and fixed is not None and not feeds_emissions:
        direction = fixed
    if direction is None and "direction" not in skip:
        if feeds_emissions:
            errors.append("direction: required (high or low) for a point that feeds an emission figure "
                          "(group standard 10.1.3 f: conservative principle; docs/rules.md §3)")
        elif method.direction is DirectionRule.REQUIRED:
            errors.append(f"direction: {method.name} needs a direction (high or low)")
    errors.extend(method.check(params, direction))
    if params.physical_min is not None and params.physical_max is not None \
            and params.physical_min > params.physical_max:
        errors.append("physical_min: greater than physical_max")
    if params.provisional_policy == "fixed_conservative_default" and params.default_value is None:
        errors.append("default_value: required by provisional_policy fixed_conservative_default")
    if params.open_gap_fallback == "default_value" and params.default_value is None:
        errors.append("default_value: required by open_gap_fallback default_value")
    policy = SubstitutionPolicy(method, params, direction)
    if require_fallbacks:
        errors.extend(_missing_fallbacks(policy))
    return policy, [e for e in errors if e.split(":", 1)[0] not in skip]


def _missing_fallbacks(policy: SubstitutionPolicy) -> list[str]:
    """Values a rare branch needs; a runtime config must carry them before the first gap."""
    errors: list[str] = []
    method = policy.method
    needed_by = method.potential_needed_for(policy.params)
    if needed_by is not None and policy.direction is not None and policy.potential() is None:
        key = "max_potential" if policy.direction is Direction.HIGH else "min_potential"
        errors.append(f"{key}: required by {needed_by}")
    if method.default_needed_for is not None and policy.default_value is None:
        errors.append(f"default_value: required by {method.name} ({method.default_needed_for})")
    return errors
