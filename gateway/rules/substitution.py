"""Missing-data substitution for one point: gap hours in, versioned substitute records out.

Pure: the history, gap and previous records are read, never changed (standard 10.3.1: raw data are never
altered; a substitute is a new record that supersedes, and keeps, the one before it, docs/rules.md §2.4).
Storage and publishing are the runtime's business.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gateway
from gateway.rules.context import GapContext, GapInputs, build_context
from gateway.rules.errors import RuleInputError
from gateway.rules.hours import Gap, HourValue, check_history, find_gaps, resolve_gap
from gateway.rules.policies import Outcome
from gateway.rules.policy_config import SubstitutionPolicy
from gateway.rules.quarters import quarter_of, split_at_quarters
from gateway.rules.selectors import provisional_hour, select_hour
from gateway.rules.trace import (
    STATUS_FINAL,
    STATUS_PROVISIONAL,
    GapTrace,
    HourTrace,
    JsonValue,
    LookbackTrace,
    SubstituteRecord,
    record_id_for,
)

if TYPE_CHECKING:
    from gateway.rules.methods import Hj75Params


@dataclass(frozen=True, slots=True)
class GapSubstitution:
    """The substitutes of one gap evaluation: one record per operating gap hour."""

    requested_hours: tuple[int, ...]
    status: str
    records: tuple[SubstituteRecord, ...]
    gap: GapTrace

    @property
    def alarm(self) -> bool:
        return any(r.alarm for r in self.records)

    def values(self) -> tuple[float | None, ...]:
        """Substitute per requested hour; None for a non-operating hour (never substituted, §75.30(a))."""
        by_hour = {r.hour: r.value for r in self.records}
        return tuple(by_hour.get(h) for h in self.requested_hours)

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "requested_hours": list(self.requested_hours), "alarm": self.alarm,
                "records": [r.to_json() for r in self.records]}


def substitute_gap(history: Sequence[HourValue], gap_hours: Sequence[int], policy: SubstitutionPolicy, *,
                   point: str, instrument: str = "", inputs: GapInputs | None = None,
                   previous: Iterable[SubstituteRecord] = ()) -> GapSubstitution:
    """Substitutes for the hours of one gap.

    ``history`` holds the operating hours of the point in increasing order (non-operating hours absent),
    including the gap hours with value None. With ``inputs.gap_open`` the values are provisional
    (``policy.provisional_policy``); otherwise they are final, except mean + 2 sigma before its reference
    period closes. Each record supersedes the newest record of ``previous`` for the same hour.
    Raises RuleInputError on inconsistent data or a fallback value the policy lacks.
    """
    inputs = inputs or GapInputs()
    hist = tuple(history)
    check_history(hist)
    offset = _quarter_offset(policy)
    requested = tuple(gap_hours)
    if offset is not None:
        requested_part, requested = requested, quarter_part_to_gap(hist, requested, offset)
    gap = resolve_gap(hist, requested)
    if inputs.gap_open and hist[-1].hour > gap.end:
        raise RuleInputError("gap_open: the history has operating hours after the gap")
    provisional = inputs.gap_open or (policy.selector == "mean_plus_2sigma" and not inputs.reference_period_closed)
    status = STATUS_PROVISIONAL if provisional else STATUS_FINAL
    latest = _latest_by_hour(previous, instrument, point)
    by_hour = {item.hour: item for item in hist}
    # HJ 75-2017: alpha is the quarter's, so a gap across a quarter boundary is judged part by part, each
    # by its own quarter's alpha. N, HB/HA and the lookback stay the whole gap's (the outage is one).
    parts = (gap.hours,) if offset is None else split_at_quarters(gap.hours, offset)
    wanted = None if offset is None else set(requested_part)
    records: list[SubstituteRecord] = []
    traces: list[GapTrace] = []
    ordinal = 0
    # One evaluation per (quarter part, N used, load bin): the routines of these selectors read nothing else of
    # the hour, so a gap's hours share it. Without this an open gap re-evaluated every hour cost
    # O(N x (N + W)) per hour once provisional values follow the tier (issue 10 item 3).
    memo: dict[tuple[int, int, int | None], Outcome] | None = {} if policy.selector in _HOUR_FREE else None
    for part_index, part in enumerate(parts):
        ctx = build_context(hist, gap, policy, inputs, alpha_hour=part[0])
        gap_trace = _gap_trace(ctx, instrument, point)
        traces.append(gap_trace)
        for hour in part:
            ordinal += 1
            if wanted is not None and hour not in wanted:
                continue
            n_used = ordinal if policy.length_rule == "per_hour_ordinal" else gap.n
            hv = by_hour[hour]
            key = (part_index, n_used, hv.load_bin)
            outcome = None if memo is None else memo.get(key)
            if outcome is None:
                outcome = _evaluate_hour(ctx, hv, n_used)
                if memo is not None:
                    memo[key] = outcome
            value, clip_notes = _clip(outcome.value, policy)
            detail = _hour_trace(hv, ordinal, n_used, outcome, clip_notes)
            before = latest.get(hour)
            version = 1 if before is None else before.version + 1
            supersedes = None if before is None else before.record_id
            rid = record_id_for(instrument, point, hour, value, status, version, supersedes, gap_trace, detail)
            records.append(SubstituteRecord(rid, instrument, point, hour, value, status, version, supersedes,
                                            gap_trace, detail))
    out_hours = tuple(gap_hours)
    return GapSubstitution(out_hours, status, tuple(records), records[0].gap if records else traces[0])


# Selectors whose routine depends on the hour only through N and its load bin (not e.g. per-hour estimates).
_HOUR_FREE = frozenset({"part75_tiered", "hj75_tiered", "mean_plus_2sigma", "hour_before_after",
                        "percentile_lookback", "max_lookback", "min_lookback", "last_good",
                        "fixed_conservative_default"})


def _quarter_offset(policy: SubstitutionPolicy) -> int | None:
    """The UTC offset of the quarters alpha is computed over, or None when no quarter split applies."""
    if policy.selector != "hj75_tiered":
        return None
    params: Hj75Params = policy.params  # type: ignore[assignment]
    return None if params.given_alpha is not None else params.quarter_utc_offset_hours


def quarter_part_to_gap(history: Sequence[HourValue], requested: Sequence[int], offset: int) -> tuple[int, ...]:
    """The whole gap when ``requested`` is the part of one on one side of a quarter boundary, else ``requested``.

    The one relaxation of the maximality check (``resolve_gap``): HJ 75 judges each quarter's part of a gap by
    that quarter's alpha, so a caller may ask for one part. The rest of the gap is still taken into account
    (N is the whole outage's, never the part's: a shorter N could select a more lenient window).
    """
    if not requested:
        return tuple(requested)
    position = {item.hour: i for i, item in enumerate(history)}
    inside = [position[h] for h in requested if h in position]
    if not inside:
        return tuple(requested)
    first, last = min(inside), max(inside)
    q_start, q_end = quarter_of(history[first].hour, offset)
    if any(not q_start <= h < q_end for h in requested):
        return tuple(requested)
    lo, hi = first, last
    while lo > 0 and history[lo - 1].value is None and history[lo - 1].hour < q_start:
        lo -= 1
    while hi + 1 < len(history) and history[hi + 1].value is None and history[hi + 1].hour >= q_end:
        hi += 1
    if lo == first and hi == last:
        return tuple(requested)
    before = tuple(item.hour for item in history[lo:first])
    after = tuple(item.hour for item in history[last + 1:hi + 1])
    return before + tuple(requested) + after


def substitute_history(history: Sequence[HourValue], policy: SubstitutionPolicy, *, point: str,
                       instrument: str = "", inputs: GapInputs | None = None,
                       previous: Iterable[SubstituteRecord] = ()) -> tuple[GapSubstitution, ...]:
    """Every gap of a history: closed gaps final, a gap reaching the end of the history provisional."""
    base = inputs or GapInputs()
    hist = tuple(history)
    check_history(hist)
    prev = tuple(previous)
    out: list[GapSubstitution] = []
    for gap in find_gaps(hist):
        is_open = gap.end == hist[-1].hour
        run_inputs = GapInputs(is_open, base.qa_hours_since_certification, base.clock_hours_since_certification,
                               base.window_end_hour, base.reference_period_closed, base.as_of_hour)
        out.append(substitute_gap(hist, gap.hours, policy, point=point, instrument=instrument, inputs=run_inputs,
                                  previous=prev))
    return tuple(out)


def provisional_then_final(history: Sequence[HourValue], gap_hours: Sequence[int], policy: SubstitutionPolicy,
                           *, point: str, instrument: str = "", inputs: GapInputs | None = None
                           ) -> tuple[GapSubstitution | None, GapSubstitution]:
    """A closed gap replayed: the last provisional version (history cut at the gap end) and the final
    version that supersedes it. The auditor tool uses it to show both.

    The provisional version is None when nothing could be published while the gap was open (no value before
    it and no default: 40 CFR 98.35(b)(1) then takes the first value after it, which only the closed gap
    has). A closed gap never needs a provisional fallback; the final version is then version 1."""
    base = inputs or GapInputs()
    hist = tuple(history)
    check_history(hist)
    gap = resolve_gap(hist, tuple(gap_hours))
    cut = tuple(item for item in hist if item.hour <= gap.end)
    open_inputs = GapInputs(True, base.qa_hours_since_certification, base.clock_hours_since_certification,
                            base.window_end_hour, base.reference_period_closed, base.as_of_hour)
    first: GapSubstitution | None
    try:
        first = substitute_gap(cut, gap_hours, policy, point=point, instrument=instrument, inputs=open_inputs)
    except RuleInputError:
        first = None  # the runtime could not publish one either (it logs why); the final value stands alone
    final = substitute_gap(hist, gap_hours, policy, point=point, instrument=instrument, inputs=base,
                           previous=() if first is None else first.records)
    return first, final


def _evaluate_hour(ctx: GapContext, hv: HourValue, n_used: int) -> Outcome:
    try:
        outcome = provisional_hour(ctx, hv, n_used) if ctx.inputs.gap_open else select_hour(ctx, hv, n_used)
    except OverflowError:
        outcome = None
    if outcome is None or not math.isfinite(outcome.value):
        raise RuleInputError(f"hour {hv.hour}: the values are too large for a finite substitute")
    return outcome


def _latest_by_hour(previous: Iterable[SubstituteRecord], instrument: str, point: str
                    ) -> dict[int, SubstituteRecord]:
    latest: dict[int, SubstituteRecord] = {}
    for record in previous:
        if record.instrument != instrument or record.point != point:
            continue
        known = latest.get(record.hour)
        if known is None or record.version > known.version:
            latest[record.hour] = record
    return latest


def _clip(value: float, policy: SubstitutionPolicy) -> tuple[float, tuple[str, ...]]:
    """Every substitute stays within the channel's physical range (concentration 0..100 %, flow >= 0)."""
    if policy.physical_max is not None and value > policy.physical_max:
        return policy.physical_max, (f"clipped to physical_max {policy.physical_max} from {value}",)
    if policy.physical_min is not None and value < policy.physical_min:
        return policy.physical_min, (f"clipped to physical_min {policy.physical_min} from {value}",)
    return value, ()


def _gap_trace(ctx: GapContext, instrument: str, point: str) -> GapTrace:
    policy = ctx.policy
    params: tuple[tuple[str, JsonValue], ...] = tuple(sorted(policy.to_json().items()))
    hb, ha = ctx.hb, ctx.ha
    return GapTrace(
        instrument=instrument, point=point, selector=policy.selector,
        direction=None if policy.direction is None else policy.direction.value,
        parameters=params, config_hash=policy.config_hash(), software_version=gateway.__version__,
        gap_start=ctx.gap.start, gap_end=ctx.gap.end, n=ctx.gap.n, gap_open=ctx.inputs.gap_open,
        length_rule=policy.length_rule, non_operating_hours=ctx.gap.non_operating,
        hb_hour=None if hb is None else hb.hour, hb_value=None if hb is None else hb.value,
        ha_hour=None if ha is None else ha.hour, ha_value=None if ha is None else ha.value,
        hbha=ctx.hbha.value, hbha_source=ctx.hbha.source,
        pma=None if ctx.pma is None else ctx.pma.trace("pma"),
        alpha=None if ctx.alpha is None else ctx.alpha.trace("alpha"),
        plan_citation=policy.citation, inputs=ctx.inputs.as_items(),
    )


def _hour_trace(hv: HourValue, ordinal: int, n_used: int, outcome: Outcome, clip_notes: tuple[str, ...]
                ) -> HourTrace:
    return HourTrace(
        hour=hv.hour, ordinal=ordinal, n_used=n_used, routine=outcome.routine, method_code=outcome.method_code,
        citation=outcome.citation, load_bin=hv.load_bin,
        lookback=None if outcome.lookback is None else LookbackTrace.of(outcome.lookback),
        statistics=outcome.statistics, unclipped_value=outcome.value, notes=outcome.notes + clip_notes,
        alarms=outcome.alarms,
    )


__all__ = ["Gap", "GapInputs", "GapSubstitution", "provisional_then_final", "substitute_gap",
           "substitute_history"]
