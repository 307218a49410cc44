"""Compile each point's rules configuration (validity, cadence, aggregation, missing data) once at load.

The rules themselves are pure functions in gateway/rules/; this module only turns YAML into their
parameter objects and reports mistakes per field.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from gateway.model import Quality
from gateway.periods import PeriodKind
from gateway.registry_schema import Kind, PointBase, Range
from gateway.rules.aggregates import PeriodRule
from gateway.rules.gaps import GapRules
from gateway.rules.operating import LoadBins, OperatingCondition
from gateway.rules.policy_config import SubstitutionPolicy, resolve_policy
from gateway.rules.totalizer import TotalizerConfig
from gateway.rules.validity import ValidityRules, default_rules
from gateway.units import UnitError, conversion


@dataclass(frozen=True, slots=True)
class PointRules:
    validity: ValidityRules
    gaps: GapRules
    cadence_ms: int
    period_ms: int
    aggregate: PeriodRule
    substitution: SubstitutionPolicy | None
    totalizer: TotalizerConfig | None
    feeds_emissions: bool
    # Issue 10: the process signal that says which hours operate, the load ranges, the reporting period.
    operating: OperatingSignal | None = None
    load: LoadSignal | None = None
    reporting: Reporting | None = None


@dataclass(frozen=True, slots=True)
class OperatingSignal:
    point: str  # a point of the same instrument
    condition: OperatingCondition


@dataclass(frozen=True, slots=True)
class LoadSignal:
    point: str  # a point of the same instrument
    bins: LoadBins


@dataclass(frozen=True, slots=True)
class Reporting:
    """When a point's substitutes are finalised by a period close (gateway/rules/periods.py)."""

    period: PeriodKind
    due_hours: int
    tz: tzinfo


# The period each selector's close handler finalises when the point does not say (docs/rules.md §0.2).
DEFAULT_REPORTING_PERIOD: dict[str, PeriodKind] = {
    "mean_plus_2sigma": "year",  # Reg. (EU) 2018/2066 Art. 45(3), Annex VIII Eq. 4: the reporting period
    "hour_before_after": "month",  # 40 CFR 98.35(b)(1): "before" value when the report is due
    "hj75_tiered": "quarter",  # HJ 75-2017: alpha of the calendar quarter
}


def _range_in(unit: str, measuring_range: Range | None) -> tuple[float | None, float | None]:
    """The instrument's measuring range expressed in this point's unit, when the units are comparable."""
    if measuring_range is None:
        return None, None
    try:
        conv = conversion(measuring_range.unit, unit)
    except UnitError:
        return None, None  # e.g. a CEMS range in %vol says nothing about its flow point
    return conv.apply(measuring_range.min), conv.apply(measuring_range.max)


def default_gap_grace_ms(cadence_ms: int, timeout_s: float, *, change_driven: bool) -> int:
    """How late a reading may be before a gap opens, when the point does not say (`gap_after_s`).

    Half a cadence alone would call every poll delayed by a slow meter or a busy store a gap, and flood
    the ledger exactly when the gateway is under load; a poll may legitimately be late by its timeout
    plus a commit. Change-driven points (OPC UA subscriptions) send nothing while the value holds, so
    they get at least a minute.
    """
    grace = max(cadence_ms // 2, round(timeout_s * 1000) + 250)
    return max(grace, 60_000) if change_driven else grace


def compile_point_rules(kind: Kind, p: PointBase, unit: str, measuring_range: Range | None,
                        poll_interval_s: float, *, timeout_s: float = 1.0,
                        change_driven: bool = False, tz: str = "UTC"
                        ) -> tuple[PointRules | None, list[tuple[str, str]]]:
    """(rules, [(sub-field, message)]). Errors name the point field they come from."""
    errors: list[tuple[str, str]] = []
    v = p.validity
    lo, hi = v.range if v is not None and v.range is not None else _range_in(unit, measuring_range)
    expired = Quality.BAD if v is not None and v.calibration_expired == "bad" else Quality.UNCERTAIN
    base = default_rules(kind.value, unit, range_low=lo, range_high=hi, calibration_expired=expired)
    if v is not None:
        overrides: dict[str, Any] = {k: getattr(v, k) for k in ("physical_min", "physical_max", "max_rate_per_s",
                                                                "frozen_count", "frozen_seconds")
                                     if getattr(v, k) is not None}
        try:
            base = replace(base, **overrides)
        except ValueError as err:
            errors.append(("validity", str(err)))
    cadence_s = p.cadence_s or poll_interval_s
    cadence_ms = max(1, round(cadence_s * 1000))
    agg = p.aggregate
    period_ms = (agg.period_s if agg else 3600) * 1000
    if cadence_ms > period_ms:
        errors.append(("cadence_s", f"cadence {cadence_s:g} s is longer than the aggregation period"))
    rule_name = agg.rule if agg else "mrr"
    if rule_name == "part75":
        rule = PeriodRule.part75()
    elif rule_name == "fraction":
        if agg is None or agg.min_fraction is None:
            errors.append(("aggregate.min_fraction", "required for rule: fraction"))
            rule = PeriodRule.mrr()
        else:
            rule = PeriodRule.fraction(agg.min_fraction)
    else:
        rule = PeriodRule.mrr()
    feeds = bool(p.feeds_emissions)
    policy = None
    if p.totalizer and (p.missing_data is not None or feeds):
        # A counter's gaps are recovered from its difference; only a reset leaves consumption unknown, and
        # substituting that is not supported yet: say so rather than accept a policy that never runs.
        errors.append(("missing_data", "totalizer points are recovered from the counter difference; "
                                       "missing_data/feeds_emissions are not supported on totalizers"))
    elif p.missing_data is None and feeds:
        errors.append(("missing_data", "a point that feeds an emission figure needs a missing_data policy"))
    elif p.missing_data is not None:
        # The block's own types were checked with the registry (MissingData); what is left is the direction,
        # which the point may give for the block, and the rules between parameters.
        params = p.missing_data
        if params.direction is None and p.direction is not None:
            params = params.model_copy(update={"direction": p.direction})
        resolved, problems = resolve_policy(params, feeds_emissions=feeds)
        errors.extend((f"missing_data.{m.split(':', 1)[0].strip()}" if ":" in m else "missing_data",
                       m.split(":", 1)[1].strip() if ":" in m else m) for m in problems)
        if not problems:
            policy = resolved
    totalizer = None
    if p.totalizer:
        # Readings further apart than 1.5 cadences bound a gap; across it the counter difference recovers
        # the consumption exactly.
        # The meter's maximum flow bounds the consumption of an interval, so the number of wraps across a long
        # gap; when several fit, the increment is substituted in the point's direction (issue 10 item 2).
        max_flow = p.max_flow_per_h
        if max_flow is None and measuring_range is not None and measuring_range.unit == f"{unit}/h":
            max_flow = measuring_range.max
        totalizer = TotalizerConfig(max_interval_ms=cadence_ms * 3 // 2, rollover_at=p.rollover_at,
                                    max_flow_per_h=max_flow if max_flow is not None and max_flow > 0 else None,
                                    direction=p.direction or "high")
    operating = None if p.operating is None else OperatingSignal(
        p.operating.point, OperatingCondition(p.operating.above, p.operating.bit, p.operating.invert))
    load = None if p.load is None else LoadSignal(
        p.load.point, LoadBins(p.load.range[0], p.load.range[1], p.load.bins, p.load.edges))
    if p.operating is not None and p.operating.point == p.name:
        errors.append(("operating.point", "a point cannot be its own operating signal"))
    if policy is not None and policy.selector == "part75_tiered" and getattr(policy.params, "kind", "") == "binned" \
            and load is None:
        errors.append(("load", "missing_data kind binned needs the hour's load range: give load: {point, range} "
                               "(40 CFR 75 App. C §2)"))
    reporting = None
    period = p.reporting_period or (DEFAULT_REPORTING_PERIOD.get(policy.selector) if policy is not None else None)
    if period is not None:
        reporting = Reporting(period, (p.report_due_days or 0) * 24, ZoneInfo(tz))
    if p.report_due_days is not None and period != "month":
        errors.append(("report_due_days", "applies to a monthly reporting period (40 CFR 98.35(b)(1))"))
    if errors:
        return None, errors
    if p.gap_after_s is not None and p.gap_after_s * 1000 < cadence_ms:
        return None, [("gap_after_s", "must not be shorter than the cadence")]
    grace = (default_gap_grace_ms(cadence_ms, timeout_s, change_driven=change_driven) if p.gap_after_s is None
             else round(p.gap_after_s * 1000) - cadence_ms)
    return PointRules(base, GapRules(cadence_ms, grace), cadence_ms, period_ms, rule, policy, totalizer, feeds,
                      operating, load, reporting), []
