"""The substitution methods, each declared once: name, parameter model, direction rule and function.

A method is one ``Method`` record below, next to its pydantic parameter model (strict, unknown keys
forbidden). Everything else derives from ``METHODS``: the selector names, the ``missing_data`` block of an
instrument point (``MissingData``, a discriminated union on ``selector``, so the generated JSON Schema
shows every parameter of every method), the flat trace/hash form of a policy, and the dispatch of
``selectors.select_hour``. Parameters and their meaning: docs/rules.md §1.2; the routines: §2.2.

Adding a method: write its routine in ``selectors.py``, its parameter model and ``Method`` here, and add
it to ``METHODS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, NoReturn, TypeVar, Union, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from gateway.rules import selectors
from gateway.rules.direction import Direction
from gateway.rules.exact import to_fraction
from gateway.rules.lookback import PART75_MAX_AGE_HOURS

if TYPE_CHECKING:
    from gateway.rules.context import GapContext
    from gateway.rules.hours import HourValue
    from gateway.rules.policies import Outcome

# Free-text keys that document a config or a test vector and change nothing (docs/rules.md §1.2).
INFO_KEYS = frozenset({"parameter", "period", "reference_period", "note", "description", "unit", "source"})
INFO_SUFFIX = "_note"


def is_info_key(key: object) -> bool:
    return isinstance(key, str) and (key in INFO_KEYS or key.endswith(INFO_SUFFIX))


# -- parameter types: the messages are the ones `validate` prints after `field:` --------------------------

VALUE_ERROR = "policy_value"  # the pydantic error type of every message below


def _fail(message: str) -> NoReturn:
    raise PydanticCustomError(VALUE_ERROR, "{message}", {"message": message})


def _number(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, int | float):
        _fail(f"expected a number, got {v!r}")
    if not math.isfinite(v):
        _fail(f"expected a finite number, got {v!r}")
    return v


def _positive_int(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        _fail(f"expected a positive integer, got {v!r}")
    return v


def _non_negative_int(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        _fail(f"expected a non-negative integer, got {v!r}")
    return v


def _utc_offset(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, int) or not -12 <= v <= 14:
        _fail(f"expected a whole number of hours within -12..14, got {v!r}")
    return v


def _bool(v: Any) -> Any:
    if not isinstance(v, bool):
        _fail(f"expected true or false, got {v!r}")
    return v


def _text(v: Any) -> Any:
    if not isinstance(v, str) or not v.strip():
        _fail(f"expected a non-empty string, got {v!r}")
    return v


def _one_of(choices: Any) -> Callable[[Any], Any]:
    options = get_args(choices)

    def check(v: Any) -> Any:
        if v not in options:
            _fail(f"expected one of {', '.join(options)}, got {v!r}")
        return v
    return check


def _percent_or_compute(v: Any) -> Any:
    if v == "compute":
        return v
    _number(v)
    if not 0 <= to_fraction(v) <= 100:
        _fail(f"expected a percentage within 0..100 or \"compute\", got {v!r}")
    return v


def _percentile(v: Any) -> Any:
    _number(v)
    if not 0 < to_fraction(v) <= 100:
        _fail(f"expected a percentile within (0, 100], got {v!r}")
    return v


def _nearest_rank_only(v: Any) -> Any:
    if v != "nearest_rank":
        _fail(f"only nearest_rank is supported, got {v!r}: an interpolated percentile is not a recorded hourly "
              "value (40 CFR 75.33(b): 'the 90th percentile hourly value recorded')")
    return v


class Exact:
    """Marks a parameter compared as the exact decimal written (a threshold); traced as a fraction text."""


DirectionName = Literal["high", "low"]
ProvisionalPolicy = Literal["last_good", "selector", "fixed_conservative_default"]
OpenGapFallback = Literal["hour_before", "default_value"]
NoBeforeFallback = Literal["hour_after", "potential", "default_value"]
LengthRule = Literal["whole_period", "per_hour_ordinal"]
Part75Kind = Literal["conc", "binned"]

Number = Annotated[float, BeforeValidator(_number)]
PositiveInt = Annotated[int, Field(ge=1), BeforeValidator(_positive_int)]
NonNegativeInt = Annotated[int, Field(ge=0), BeforeValidator(_non_negative_int)]
Flag = Annotated[bool, BeforeValidator(_bool)]
UtcOffset = Annotated[int, Field(ge=-12, le=14), BeforeValidator(_utc_offset)]
Text = Annotated[str, Field(pattern=r"\S"), BeforeValidator(_text)]
PercentOrCompute = Annotated[Annotated[float, Field(ge=0, le=100)] | Literal["compute"], Exact(),
                             BeforeValidator(_percent_or_compute)]
Percentile = Annotated[float, Field(gt=0, le=100), Exact(), BeforeValidator(_percentile)]
PercentileMethod = Annotated[Literal["nearest_rank"], BeforeValidator(_nearest_rank_only)]


def _choice(choices: Any) -> Any:
    return Annotated[choices, BeforeValidator(_one_of(choices))]


def _info_schema(schema: dict[str, Any]) -> None:
    props = schema.setdefault("properties", {})
    for key in sorted(INFO_KEYS):
        props[key] = {"description": "free text documenting the policy; accepted and ignored"}
    schema["patternProperties"] = {f"^.*{INFO_SUFFIX}$": {"description": "free-text note; accepted and ignored"}}


# -- parameter models ----------------------------------------------------------------------------------------

class CommonParams(BaseModel):
    """Keys every method accepts (docs/rules.md §1.2, 'Common to every selector')."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False,
                              json_schema_extra=_info_schema)

    direction: _choice(DirectionName) | None = Field(  # type: ignore[valid-type]
        default=None, description="high: a larger value gives more emissions; low: the opposite (docs/rules.md §3)")
    default_value: Number | None = Field(
        default=None, description="the configured conservative default, and every method's last fallback")
    citation: Text | None = Field(default=None, description="plan reference, stored as plan_citation")
    physical_min: Number | None = Field(default=None, description="every substitute is clipped to this minimum")
    physical_max: Number | None = Field(default=None, description="every substitute is clipped to this maximum")
    provisional_policy: _choice(ProvisionalPolicy) = Field(  # type: ignore[valid-type]
        default="last_good", description="the value published while the gap is open (docs/rules.md §2.4)")
    open_gap_fallback: _choice(OpenGapFallback) = Field(  # type: ignore[valid-type]
        default="hour_before", description="replaces HA while no value after the gap exists yet")

    @model_validator(mode="before")
    @classmethod
    def _drop_free_text(cls, data: Any) -> Any:
        """Free-text keys document and change nothing; an explicit null means 'not given'."""
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if v is not None and not is_info_key(k)}
        return data


class LookbackParams(CommonParams):
    lookback_hours: PositiveInt | None = Field(
        default=None, description="W: the last W QA operating hours before the gap (default 720; 2,160 binned)")
    max_age_hours: PositiveInt = Field(
        default=PART75_MAX_AGE_HOURS, description="lookback values older than this many clock hours are dropped")

    @property
    def window(self) -> int:
        return 720 if self.lookback_hours is None else self.lookback_hours


class PotentialParams(CommonParams):
    max_potential: Number | None = Field(default=None, description="maximum potential value (direction high)")
    min_potential: Number | None = Field(default=None, description="minimum potential value (direction low)")
    nox_eq_19_3_4_8: Flag | None = Field(
        default=None, description="moisture: true makes it high-direction, false low (§75.37(d)(1))")


class Part75Params(LookbackParams, PotentialParams):
    """40 CFR Part 75 tiers (§75.33(b) Table 1; §75.33(c) per load range)."""

    selector: Literal["part75_tiered"]
    kind: _choice(Part75Kind) = Field(  # type: ignore[valid-type]
        default="conc", description="conc: SO2, CO2, O2, H2O (§75.33(b)); binned: flow and NOx (§75.33(c))")
    pma: PercentOrCompute = Field(default="compute", description="PMA in percent, or computed (§75.32)")
    pma_window_operating_hours: PositiveInt = Field(default=8_760, description="the Eq. 9 window")
    length_rule: _choice(LengthRule) = "whole_period"  # type: ignore[valid-type]
    percentile_method: PercentileMethod = "nearest_rank"

    @property
    def window(self) -> int:
        if self.lookback_hours is not None:
            return self.lookback_hours
        return 2_160 if self.kind == "binned" else 720

    @property
    def given_pma(self) -> Fraction | None:
        return None if self.pma == "compute" else to_fraction(self.pma)


class Hj75Params(CommonParams):
    """HJ 75-2017 data-invalid-period table."""

    selector: Literal["hj75_tiered"]
    alpha_pct: PercentOrCompute = Field(default="compute", description="effective data capture rate, or computed")
    window_short: PositiveInt = 180
    window_long: PositiveInt = 720
    window_low_alpha: PositiveInt = 2_160
    below_75_fallback: _choice(Literal["fixed_conservative_default"]) = "fixed_conservative_default"  # type: ignore[valid-type]
    length_rule: _choice(LengthRule) = "whole_period"  # type: ignore[valid-type]
    max_age_hours: PositiveInt = PART75_MAX_AGE_HOURS
    # Issue 10 item 1: alpha is taken over the calendar quarter of the missing hour, in local time.
    quarter_utc_offset_hours: UtcOffset = Field(
        default=8, description="the local time of the calendar quarters alpha is taken over, in hours east of "
                               "UTC (8: China Standard Time)")

    @property
    def given_alpha(self) -> Fraction | None:
        return None if self.alpha_pct == "compute" else to_fraction(self.alpha_pct)


class MeanPlus2SigmaParams(CommonParams):
    """Reg. (EU) 2018/2066 Art. 45(3), Annex VIII Eq. 4."""

    selector: Literal["mean_plus_2sigma"]
    ddof: NonNegativeInt = Field(default=1, description="1: the sample SD; 0: the population SD")


class HourBeforeAfterParams(PotentialParams):
    """40 CFR 98.35(b)(1)."""

    selector: Literal["hour_before_after"]
    no_before_fallback: _choice(NoBeforeFallback) = Field(  # type: ignore[valid-type]
        default="hour_after", description="with no value before the gap")


class PercentileLookbackParams(LookbackParams):
    """Nearest-rank percentile of Lookback(W), optionally floored by HB/HA (docs/rules.md §2.2, design-choice)."""

    selector: Literal["percentile_lookback"]
    percentile: Percentile = Field(description="p for direction high; low uses 100 - p")
    floor_hbha: Flag = Field(default=False, description="floor (high) or cap (low) by HB/HA")
    percentile_method: PercentileMethod = "nearest_rank"

    @property
    def exact_percentile(self) -> Fraction:
        return to_fraction(self.percentile)


class MaxLookbackParams(LookbackParams):
    """Maximum of Lookback(W): the high-direction routine (docs/rules.md §2.2)."""

    selector: Literal["max_lookback"]


class MinLookbackParams(LookbackParams):
    """Minimum of Lookback(W): the low-direction routine (docs/rules.md §2.2)."""

    selector: Literal["min_lookback"]


class LastGoodParams(CommonParams):
    """HB, the last good value: not conservative, so final only where the plan approves it (§98.35(b)(1))."""

    selector: Literal["last_good"]
    plan_approved: Flag = Field(default=False, description="must be true: last_good is not conservative")


class BestEstimateParams(CommonParams):
    """A plant-supplied estimate per hour (40 CFR 98.35(b)(2), Reg. (EU) 2018/2066 Art. 45(4)); the configured
    default until one is given (`carbon-gateway estimate`, docs/rules.md §0.3)."""

    selector: Literal["best_available_estimate"]


class FixedDefaultParams(CommonParams):
    """The configured conservative default (value and provenance in configuration)."""

    selector: Literal["fixed_conservative_default"]
    default_value: Number = Field(description="the value substituted (value and provenance in configuration)")


# -- the declarations ----------------------------------------------------------------------------------------

class DirectionRule(StrEnum):
    """How a method treats the point's direction (docs/rules.md §3)."""

    REQUIRED = "required"  # the routine needs it even on a point that feeds no emission figure
    OPTIONAL = "optional"  # needed only when the point feeds an emission figure
    HIGH = "high"  # the routine is the high-direction one; a low direction is an error
    LOW = "low"


P = TypeVar("P", bound=CommonParams)


@dataclass(frozen=True)
class Method(Generic[P]):
    """One substitution method. ``select`` is the routine for one gap hour; ``check`` adds the rules
    between parameters the model cannot state; ``default_needed_for`` says when a ``default_value`` must
    be configured at load time (None: never)."""

    name: str
    params: type[P]
    direction: DirectionRule
    select: Callable[[GapContext, P, HourValue, int], Outcome]
    check: Callable[[P, Direction | None], list[str]] = field(default=lambda _p, _d: [])
    default_needed_for: str | None = None
    potential_needed_for: Callable[[P], str | None] = field(default=lambda _p: None)


def _part75_check(p: Part75Params, direction: Direction | None) -> list[str]:
    if p.kind == "binned" and direction is Direction.LOW:
        return ["kind: binned (flow, NOx; §75.33(c)) is defined for direction high only"]
    return []


def _hbha_check(p: HourBeforeAfterParams, _direction: Direction | None) -> list[str]:
    if p.no_before_fallback == "default_value" and p.default_value is None:
        return ["default_value: required by no_before_fallback default_value"]
    return []


def _last_good_check(p: LastGoodParams, _direction: Direction | None) -> list[str]:
    if not p.plan_approved:
        return ["selector: last_good is not conservative; use it as provisional_policy, or set plan_approved: "
                "true where the monitoring plan approves it (§98.35(b)(1) no-'after' case)"]
    return []


_EMPTY_LOOKBACK = "an empty lookback"

PART75 = Method("part75_tiered", Part75Params, DirectionRule.REQUIRED, selectors.part75,
                check=_part75_check,
                potential_needed_for=lambda _p: "part75_tiered (PMA < 80 % or no prior QA data, §75.31(b)(2), "
                                                "§75.33(b)(4))")
HJ75 = Method("hj75_tiered", Hj75Params, DirectionRule.REQUIRED, selectors.hj75,
              default_needed_for="alpha < 75 % (below_75_fallback) or an empty lookback")
MEAN_PLUS_2SIGMA = Method("mean_plus_2sigma", MeanPlus2SigmaParams, DirectionRule.REQUIRED,
                          selectors.mean_plus_2sigma_hour,
                          default_needed_for="fewer than 2 valid hours in the reference period")
HOUR_BEFORE_AFTER = Method("hour_before_after", HourBeforeAfterParams, DirectionRule.OPTIONAL,
                           selectors.hour_before_after, check=_hbha_check,
                           default_needed_for="no value before or after the gap",
                           potential_needed_for=lambda p: ("no_before_fallback potential"
                                                           if p.no_before_fallback == "potential" else None))
PERCENTILE_LOOKBACK = Method("percentile_lookback", PercentileLookbackParams, DirectionRule.REQUIRED,
                             selectors.percentile_lookback,
                             default_needed_for=_EMPTY_LOOKBACK)
MAX_LOOKBACK = Method("max_lookback", MaxLookbackParams, DirectionRule.HIGH, selectors.extreme_lookback,
                      default_needed_for=_EMPTY_LOOKBACK)
MIN_LOOKBACK = Method("min_lookback", MinLookbackParams, DirectionRule.LOW, selectors.extreme_lookback,
                      default_needed_for=_EMPTY_LOOKBACK)
LAST_GOOD = Method("last_good", LastGoodParams, DirectionRule.OPTIONAL, selectors.last_good_hour,
                   check=_last_good_check, default_needed_for="no value before the gap")
FIXED_DEFAULT = Method("fixed_conservative_default", FixedDefaultParams, DirectionRule.OPTIONAL,
                       selectors.fixed_conservative_default)
BEST_ESTIMATE = Method("best_available_estimate", BestEstimateParams, DirectionRule.OPTIONAL,
                       selectors.best_available_estimate, default_needed_for="an hour no estimate was given for")

METHODS: Mapping[str, Method[Any]] = {m.name: m for m in (
    PART75, HJ75, MEAN_PLUS_2SIGMA, HOUR_BEFORE_AFTER, PERCENTILE_LOOKBACK, MAX_LOOKBACK, MIN_LOOKBACK, LAST_GOOD,
    FIXED_DEFAULT, BEST_ESTIMATE,
)}
SELECTORS: tuple[str, ...] = tuple(METHODS)

# The `missing_data` block of an instrument point: one of the parameter models, chosen by `selector`.
MissingData = Annotated[Union[tuple(m.params for m in METHODS.values())],  # type: ignore[valid-type]  # noqa: UP007
                        Field(discriminator="selector")]


def _check_registry() -> None:
    for name, method in METHODS.items():
        tag = method.params.model_fields["selector"].annotation
        assert get_args(tag) == (name,), f"{method.params.__name__}.selector must be Literal[{name!r}]"


_check_registry()


# -- the flat form every trace and config hash uses -----------------------------------------------------------

def _flat_fields() -> dict[str, tuple[Any, bool]]:
    """Every parameter of every method with its default, and whether it is an exact (fraction) value.

    The trace's ``parameters`` and the ``config_hash`` cover this whole set (a method's absent keys at
    their defaults), so a record's hash is the same whichever way the configuration was spelled, and the
    same as before the methods were declared one by one.
    """
    out: dict[str, tuple[Any, bool]] = {}
    for method in METHODS.values():
        for name, info in method.params.model_fields.items():
            default = None if info.is_required() else info.default
            exact = any(isinstance(m, Exact) for m in info.metadata) or _has_exact(info.annotation)
            known = out.setdefault(name, (default, exact))
            if name not in ("selector", "default_value") and known != (default, exact):
                raise AssertionError(f"parameter {name!r} has different defaults across methods")
    out["default_value"] = (None, False)
    return out


def _has_exact(annotation: Any) -> bool:
    return any(isinstance(a, Exact) or _has_exact(a) for a in getattr(annotation, "__metadata__", ()))


FLAT_FIELDS: Mapping[str, tuple[Any, bool]] = _flat_fields()
# Parameters added after records were first stored: traced and hashed only when not at their default, so
# every record stored before them keeps its config_hash and record_id.
LATER_FIELDS: frozenset[str] = frozenset({"quarter_utc_offset_hours"})


def flat_value(params: CommonParams, name: str) -> Any:
    """A parameter as the trace records it: the method's value, or the default of the method that has it."""
    default, exact = FLAT_FIELDS[name]
    value = getattr(params, name, default)
    if exact:
        return None if value in (None, "compute") else to_fraction(value)
    return value


# -- errors, in the words `validate` prints -------------------------------------------------------------------

def error_line(loc: Sequence[int | str], error: Mapping[str, Any]) -> tuple[tuple[int | str, ...], str]:
    """One pydantic error of a ``MissingData`` value as (field path inside the block, message).

    ``loc`` is the error's location inside the block. The discriminator tag pydantic puts in front of a
    method's field is dropped, and the generic messages name the method ('not a parameter of
    part75_tiered', 'required for percentile_lookback')."""
    path = tuple(loc)
    selector: Any = None
    if path and path[0] in METHODS:
        selector, path = path[0], path[1:]
    kind = error["type"]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        data = error.get("input")
        given = data.get("selector") if isinstance(data, Mapping) else None
        return ("selector",), f"expected one of {', '.join(METHODS)}, got {given!r}"
    if kind in ("model_attributes_type", "model_type", "dict_type"):
        return path, f"expected a mapping, got {type(error.get('input')).__name__}"
    if kind == "extra_forbidden":
        return path, f"not a parameter of {selector}"
    if kind == "missing":
        return path, f"required for {selector}"
    return path, str(error["msg"])


def error_lines(errors: Sequence[Mapping[str, Any]]) -> list[tuple[tuple[int | str, ...], str]]:
    """``error_line`` of every error of a validation of the block itself."""
    return [error_line(e["loc"], e) for e in errors]
