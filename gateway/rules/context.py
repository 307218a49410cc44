"""Everything about one gap that does not depend on the hour being substituted.

HB/HA with their fallbacks, PMA (§75.32) and HJ 75 alpha (per calendar quarter), the 3-year age limit:
computed once per gap evaluation (per quarter part for HJ 75), so the hours are judged on the same facts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType
from typing import TYPE_CHECKING

from gateway.rules.errors import RuleInputError
from gateway.rules.exact import exact_mean, fraction_text, round_half_up
from gateway.rules.hours import Gap, HourValue, hour_after, hour_before
from gateway.rules.quarters import quarter_of
from gateway.rules.trace import METHOD_DEFAULT, METHOD_HBHA, METHOD_ONE_SIDED, AvailabilityTrace

if TYPE_CHECKING:
    from gateway.rules.methods import Hj75Params, Part75Params
    from gateway.rules.policy_config import SubstitutionPolicy


@dataclass(frozen=True, slots=True)
class Estimate:
    """A value the gateway cannot compute, given by the plant for one hour (40 CFR 98.35(b)(2) "best available
    estimate", Reg. (EU) 2018/2066 Art. 45(4) mass or energy balance), with who made it and how."""

    hour: int
    value: float
    estimate_id: str
    author: str
    basis: str
    method: str


@dataclass(frozen=True, slots=True)
class GapInputs:
    """Per-run facts that are not configuration (so they are traced but not hashed)."""

    gap_open: bool = False  # no QA hour after the gap yet: values are provisional
    qa_hours_since_certification: int | None = None  # with the next: selects the §75.31 initial procedure
    clock_hours_since_certification: int | None = None
    window_end_hour: int | None = None  # HJ 75 out-of-control: the last calibration before the period
    reference_period_closed: bool = True  # MRR: mean + 2 sigma is provisional until the period closes
    # HJ 75: the hour the evaluation is made at (None: the last hour of the history). A quarter whose last
    # hour is before it is closed, so its alpha is final; otherwise alpha is quarter-to-date.
    as_of_hour: int | None = None
    # Issue 10 item 9: plant estimates for gap hours (best_available_estimate). Traced in the hour's statistics.
    estimates: tuple[Estimate, ...] = ()

    def as_items(self) -> tuple[tuple[str, int | bool | None], ...]:
        items: tuple[tuple[str, int | bool | None], ...] = (
            ("qa_hours_since_certification", self.qa_hours_since_certification),
            ("clock_hours_since_certification", self.clock_hours_since_certification),
            ("window_end_hour", self.window_end_hour),
            ("reference_period_closed", self.reference_period_closed))
        # Traced only when given, so records made without it keep their record ids.
        return items if self.as_of_hour is None else (*items, ("as_of_hour", self.as_of_hour))


@dataclass(frozen=True, slots=True)
class Availability:
    pct: Fraction
    source: str  # "given" | "computed"
    qa_hours: int | None = None
    operating_hours: int | None = None
    first_hour: int | None = None
    last_hour: int | None = None
    quarter: tuple[int, int] | None = None  # HJ 75: the calendar quarter alpha is taken over
    quarter_closed: bool | None = None

    def trace(self, name: str) -> AvailabilityTrace:
        start, end = self.quarter if self.quarter is not None else (None, None)
        return AvailabilityTrace(name, fraction_text(self.pct), float(round_half_up(self.pct, 1)), self.source,
                                 self.qa_hours, self.operating_hours, self.first_hour, self.last_hour,
                                 start, end, self.quarter_closed)


@dataclass(frozen=True, slots=True)
class HbHa:
    """The HB/HA term: the average when both exist, else the configured fallback (value None if none)."""

    value: float | None
    source: str | None
    method_code: str
    citation: str


@dataclass(frozen=True, slots=True)
class GapContext:
    history: tuple[HourValue, ...]
    gap: Gap
    policy: SubstitutionPolicy
    inputs: GapInputs
    hb: HourValue | None
    ha: HourValue | None
    hbha: HbHa
    pma: Availability | None
    alpha: Availability | None
    oldest_hour: int | None  # the 26,280-clock-hour limit, relative to the gap start
    prior_qa_hours: int
    bins: Mapping[int, int | None]  # load bin of every history hour (Part 75 App. C)

    @property
    def lookback_end(self) -> int:
        end = self.inputs.window_end_hour
        return self.gap.start if end is None else min(end, self.gap.start)

    def require_default(self, why: str) -> float:
        if self.policy.default_value is None:
            raise RuleInputError(f"{self.policy.selector}: default_value is needed ({why}) but not configured")
        return self.policy.default_value

    def require_potential(self, why: str) -> float:
        value = self.policy.potential()
        if value is None:
            key = "max_potential" if self.policy.direction == "high" else "min_potential"
            raise RuleInputError(f"{self.policy.selector}: {key} is needed ({why}) but not configured")
        return value


def build_context(history: tuple[HourValue, ...], gap: Gap, policy: SubstitutionPolicy,
                  inputs: GapInputs, *, alpha_hour: int | None = None) -> GapContext:
    """The facts of one gap. ``alpha_hour``: HJ 75 takes alpha over the calendar quarter of this hour
    (default the gap start); a gap across a quarter boundary is evaluated once per quarter part."""
    hb = hour_before(history, gap)
    ha = None if inputs.gap_open else hour_after(history, gap)
    oldest = None if policy.max_age_hours is None else gap.start - policy.max_age_hours
    prior_qa = sum(1 for item in history if item.hour < gap.start and item.value is not None)
    pma = alpha = None
    if policy.selector == "part75_tiered":
        part75: Part75Params = policy.params  # type: ignore[assignment]
        given = part75.given_pma
        pma = Availability(given, "given") if given is not None else compute_pma(
            history, gap.start, part75.pma_window_operating_hours)
    if policy.selector == "hj75_tiered":
        hj75: Hj75Params = policy.params  # type: ignore[assignment]
        given = hj75.given_alpha
        if given is not None:
            alpha = Availability(given, "given")
        else:
            as_of = inputs.as_of_hour if inputs.as_of_hour is not None else history[-1].hour
            alpha = compute_quarter_alpha(history, gap.start if alpha_hour is None else alpha_hour,
                                          hj75.quarter_utc_offset_hours, as_of)
    bins = MappingProxyType({item.hour: item.load_bin for item in history})
    return GapContext(history, gap, policy, inputs, hb, ha, resolve_hbha(hb, ha, policy), pma, alpha, oldest,
                      prior_qa, bins)


def compute_pma(history: tuple[HourValue, ...], gap_start: int, window: int) -> Availability | None:
    """PMA = 100 x QA hours / operating hours over the last ``window`` operating hours before the gap.

    §75.32 Eq. 8 (since certification, before 8,760 operating hours) and Eq. 9 (previous 8,760 operating
    hours) are the same ratio once the history starts at certification. None when no operating hour exists.
    """
    before = [item for item in history if item.hour < gap_start][-window:]
    if not before:
        return None
    qa = sum(1 for item in before if item.value is not None)
    return Availability(Fraction(100 * qa, len(before)), "computed", qa, len(before), before[0].hour,
                        before[-1].hour)


def compute_alpha(history: tuple[HourValue, ...]) -> Availability | None:
    """HJ 75 effective data capture rate over the whole history given (``compute_quarter_alpha`` is the rule).

    alpha = (hours - stopped - invalid) / (hours - stopped): stopped hours are absent from the history, so
    this is QA operating hours over operating hours, gap hours included.
    """
    if not history:
        return None
    qa = sum(1 for item in history if item.value is not None)
    return Availability(Fraction(100 * qa, len(history)), "computed", qa, len(history), history[0].hour,
                        history[-1].hour)


def compute_quarter_alpha(history: tuple[HourValue, ...], hour: int, utc_offset_hours: int,
                          as_of_hour: int) -> Availability | None:
    """HJ 75-2017 alpha of the calendar quarter containing ``hour``, over the operating hours of that quarter
    in the history (quarter-to-date while ``as_of_hour`` is inside the quarter).

    alpha = (hours - stopped - invalid) / (hours - stopped): stopped hours are absent from the history, so
    this is QA operating hours over operating hours of the quarter, the gap hours counted as invalid. Other
    quarters never dilute it (issue 10 item 1: 26,280 hours of history turned a quarter at 81 % into 94 %).
    """
    start, end = quarter_of(hour, utc_offset_hours)
    inside = [item for item in history if start <= item.hour < end]
    closed = as_of_hour >= end - 1
    if not inside:
        return None
    qa = sum(1 for item in inside if item.value is not None)
    return Availability(Fraction(100 * qa, len(inside)), "computed", qa, len(inside), inside[0].hour,
                        inside[-1].hour, (start, end), closed)


def resolve_hbha(hb: HourValue | None, ha: HourValue | None, policy: SubstitutionPolicy) -> HbHa:
    """HB/HA average, or the §98.35(b)(1) / §75.31(b)(2) fallback the policy names."""
    if hb is not None and hb.value is not None and ha is not None and ha.value is not None:
        mean = float(exact_mean((hb.value, ha.value)))
        return HbHa(mean, "average", METHOD_HBHA, "HB/HA average")  # the selector names its clause (never shown)
    if hb is not None and hb.value is not None:
        if policy.open_gap_fallback == "hour_before":
            return HbHa(hb.value, "hour_before", METHOD_ONE_SIDED,
                        "40 CFR 98.35(b)(1): no 'after' value obtained yet: the 'before' value")
        return HbHa(policy.default_value, "default_value", METHOD_DEFAULT,
                    "group standard 10.1.3 f: the monitoring plan's conservative default while no 'after' value "
                    "exists (open_gap_fallback default_value)")
    if ha is not None and ha.value is not None and policy.no_before_fallback == "hour_after":
        return HbHa(ha.value, "hour_after", METHOD_ONE_SIDED,
                    "40 CFR 98.35(b)(1): no QA value before the incident: the first QA value after it")
    if policy.no_before_fallback == "potential":
        return HbHa(policy.potential(), "potential", METHOD_DEFAULT,
                    "40 CFR 75.31(b)(2): no prior QA data: maximum (minimum) potential value")
    return HbHa(policy.default_value, "default_value", METHOD_DEFAULT,
                "group standard 10.1.3 f: the monitoring plan's conservative default (no QA value before the gap)")
