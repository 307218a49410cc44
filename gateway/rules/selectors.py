"""Selectors: which routine applies to one gap hour (docs/rules.md §2.2).

``part75_tier`` and ``hj75_window`` are the pure tier tables. Each method's routine takes the gap context,
the method's own parameters, the hour and the gap length used; ``methods.py`` declares which routine
belongs to which method, and ``select_hour`` runs the configured one.
"""

from __future__ import annotations

from enum import IntEnum
from fractions import Fraction
from typing import TYPE_CHECKING

from gateway.rules.context import GapContext
from gateway.rules.direction import Direction
from gateway.rules.errors import RuleInputError
from gateway.rules.hours import HourValue
from gateway.rules.lookback import PART75_MAX_AGE_HOURS, LookbackWindow, lookback
from gateway.rules.policies import (
    Outcome,
    bin_average_outcome,
    extreme_outcome,
    fixed_default,
    hbha_outcome,
    higher_bin_outcome,
    mean_plus_2sigma,
    percentile_outcome,
)
from gateway.rules.trace import METHOD_ESTIMATE, METHOD_EXTREME, METHOD_INITIAL, METHOD_LAST_GOOD

if TYPE_CHECKING:
    from gateway.rules.methods import (
        BestEstimateParams,
        FixedDefaultParams,
        Hj75Params,
        HourBeforeAfterParams,
        LastGoodParams,
        LookbackParams,
        MeanPlus2SigmaParams,
        Part75Params,
        PercentileLookbackParams,
    )


class Part75Tier(IntEnum):
    """Part 75 standard-procedure tiers; the value grows with severity (less lenient)."""

    SHORT = 0  # HB/HA (conc) or load-range average (binned)
    P90 = 1  # greater of 90th percentile and HB/HA
    P95 = 2  # greater of 95th percentile and HB/HA
    MAX = 3  # maximum in the lookback
    POTENTIAL = 4  # maximum (minimum) potential value


def part75_tier(pma: Fraction, n: int) -> Part75Tier:
    """§75.33(b) Table 1 / §75.33(c): thresholds compared on the exact PMA fraction."""
    if pma >= 95:
        return Part75Tier.SHORT if n <= 24 else Part75Tier.P90
    if pma >= 90:
        return Part75Tier.SHORT if n <= 8 else Part75Tier.P95
    if pma >= 80:
        return Part75Tier.MAX
    return Part75Tier.POTENTIAL


def part75_routine(tier: Part75Tier, direction: Direction, kind: str) -> str:
    """The routine name a tier resolves to (names match the test vectors' ``expected_routine``)."""
    high = direction is Direction.HIGH
    if tier is Part75Tier.SHORT:
        return "bin_average_lookback" if kind == "binned" else "hour_before_after"
    if tier in (Part75Tier.P90, Part75Tier.P95):
        p = (90 if tier is Part75Tier.P90 else 95) if high else (10 if tier is Part75Tier.P90 else 5)
        return f"{'max' if high else 'min'}(percentile_lookback({p}), hour_before_after)"
    if tier is Part75Tier.MAX:
        return "max_lookback" if high else "min_lookback"
    return "fixed_conservative_default(max_potential)" if high else "fixed_conservative_default(min_potential)"


_PART75_CONC_CITATION = {
    (Part75Tier.SHORT, True): "40 CFR 75.33(b)(1)(i)",
    (Part75Tier.SHORT, False): "40 CFR 75.33(b)(2)(i)",
    (Part75Tier.P90, True): "40 CFR 75.33(b)(1)(ii)",
    (Part75Tier.P95, False): "40 CFR 75.33(b)(2)(ii)",
    (Part75Tier.MAX, False): "40 CFR 75.33(b)(3)",
    (Part75Tier.POTENTIAL, False): "40 CFR 75.33(b)(4)",
}
_PART75_BINNED_TEXT = {
    Part75Tier.SHORT: "load-range average",
    Part75Tier.P90: "90th percentile in the load range, floored by HB/HA",
    Part75Tier.P95: "95th percentile in the load range, floored by HB/HA",
    Part75Tier.MAX: "maximum in the load range",
    Part75Tier.POTENTIAL: "maximum potential value",
}
_LOW_NOTE = "; low direction: 40 CFR 75.36 (O2), 75.37(d)(1) (moisture)"


def part75_citation(tier: Part75Tier, pma: Fraction, kind: str, direction: Direction) -> str:
    if kind == "binned":
        return (f"40 CFR 75.33(c): {_PART75_BINNED_TEXT[tier]} (rule text not read; routine corroborated by "
                "EPA ECMPS check tables)")
    cite = _PART75_CONC_CITATION.get((tier, pma >= 95)) or _PART75_CONC_CITATION[(tier, False)]
    return cite + (_LOW_NOTE if direction is Direction.LOW else "")


def hj75_window(alpha: Fraction, n: int, short: int, long: int, low_alpha: int) -> int | None:
    """HJ 75-2017 tables 7/8 (invalid-period substitution); None below 75 % (not covered by the table)."""
    if alpha >= 90:
        return short if n <= 24 else long
    if alpha >= 75:
        return low_alpha
    return None


# The monitoring plan's default (its edition and section are the point's plan_citation): the group standard's
# conservative principle (10.1.3 f) is the rule it serves.
CONSERVATIVE_DEFAULT = "group standard 10.1.3 f: the monitoring plan's conservative default"


def select_hour(ctx: GapContext, hv: HourValue, n_used: int) -> Outcome:
    """The configured method's substitute for one gap hour."""
    return ctx.policy.method.select(ctx, ctx.policy.params, hv, n_used)


def provisional_hour(ctx: GapContext, hv: HourValue, n_used: int) -> Outcome:
    """The value published while the gap is open (docs/rules.md §2.4)."""
    policy = ctx.policy.provisional_policy
    if policy == "selector":
        return select_hour(ctx, hv, n_used)
    if policy == "fixed_conservative_default":
        return fixed_default(ctx.require_default("provisional_policy"), "fixed_conservative_default",
                             CONSERVATIVE_DEFAULT + ", published as provisional")
    return last_good_or_tier(ctx, hv, n_used)


def last_good_or_tier(ctx: GapContext, hv: HourValue, n_used: int) -> Outcome:
    """``provisional_policy: last_good``: the last good value until the tier value is computable with the data so
    far (N so far, no 'after' value yet: the policy's open_gap_fallback), then the tier value; of the two, the
    more conservative for the point's direction (issue 10 item 3). Before, a long open gap kept the last good
    value forever, below what the final rule gives for a high-direction parameter."""
    try:
        held: Outcome | None = last_good(ctx)
    except RuleInputError:
        held = None
    try:
        tier: Outcome | None = select_hour(ctx, hv, n_used)
    except RuleInputError:
        tier = None  # not computable yet (a fallback value it needs is missing): the last good value stands
    if tier is None:
        if held is None:
            return last_good(ctx)  # raises the one-line reason
        return held
    if held is None:
        return _as_provisional_tier(tier, None)
    direction = ctx.policy.direction
    if direction is Direction.HIGH:
        use_tier = tier.value > held.value
    elif direction is Direction.LOW:
        use_tier = tier.value < held.value
    else:  # no direction (not on an emission path): the rule's own value once it exists
        use_tier = tier.value != held.value
    return _as_provisional_tier(tier, held.value) if use_tier else held


def _as_provisional_tier(tier: Outcome, held: float | None) -> Outcome:
    why = ("provisional: the tier value with the data so far" if held is None else
           f"provisional: the tier value with the data so far, more conservative than the last good value {held}")
    return Outcome(tier.value, tier.routine, tier.method_code, tier.citation, tier.statistics, tier.lookback,
                   (*tier.notes, why), tier.alarms)


def last_good(ctx: GapContext) -> Outcome:
    """HB: not conservative by itself, so provisional only unless the plan approves it (40 CFR 98.35(b)(1),
    no 'after' value)."""
    citation = ("gateway design-choice (docs/rules.md §2.4): last usable value, provisional until the final rule "
                "applies (OPC UA Uncertain_LastUsableValue)")
    if ctx.hb is not None and ctx.hb.value is not None:
        return Outcome(ctx.hb.value, "last_good", METHOD_LAST_GOOD, citation,
                       (("hb", ctx.hb.value), ("hb_hour", ctx.hb.hour)))
    if ctx.policy.default_value is not None:
        return fixed_default(ctx.policy.default_value, "fixed_conservative_default",
                             CONSERVATIVE_DEFAULT + ": no value before the gap")
    if ctx.policy.potential() is not None:
        return fixed_default(ctx.require_potential("no value before the gap"), _potential_routine(ctx),
                             "40 CFR 75.31(b)(2): no prior QA data")
    raise RuleInputError(f"{ctx.policy.selector}: no value before the gap for last_good and no default_value "
                         "configured")


def _potential_routine(ctx: GapContext) -> str:
    high = ctx.policy.direction is Direction.HIGH
    return "fixed_conservative_default(max_potential)" if high else "fixed_conservative_default(min_potential)"


def _window(ctx: GapContext, w: int) -> LookbackWindow:
    return lookback(ctx.history, ctx.lookback_end, w, oldest_hour=ctx.oldest_hour)


def _require_hbha(ctx: GapContext) -> None:
    if ctx.hbha.value is None:
        raise RuleInputError(f"{ctx.policy.selector}: no HB/HA value and no {ctx.hbha.source} configured "
                             "for this gap")


def fixed_conservative_default(ctx: GapContext, _p: FixedDefaultParams, _hv: HourValue, _n: int) -> Outcome:
    return fixed_default(ctx.require_default("fixed_conservative_default"), "fixed_conservative_default",
                         CONSERVATIVE_DEFAULT)


ESTIMATE_CITATION = ("40 CFR 98.35(b)(2) best available estimate; Reg. (EU) 2018/2066 Art. 45(4): "
                     "mass or energy balance")


def best_available_estimate(ctx: GapContext, _p: BestEstimateParams, hv: HourValue, _n: int) -> Outcome:
    """The plant's estimate for the hour, with its author, basis and method in the trace; until one is given,
    the configured default (a new version supersedes it when the estimate arrives)."""
    for est in ctx.inputs.estimates:
        if est.hour == hv.hour:
            return Outcome(est.value, "best_available_estimate", METHOD_ESTIMATE, ESTIMATE_CITATION,
                           (("estimate_id", est.estimate_id), ("author", est.author), ("basis", est.basis),
                            ("method", est.method)))
    return fixed_default(ctx.require_default("no estimate given for this hour"), "fixed_conservative_default",
                         f"{CONSERVATIVE_DEFAULT}; no best available estimate given yet",
                         notes=("awaiting a best available estimate (carbon-gateway estimate)",))


def last_good_hour(ctx: GapContext, _p: LastGoodParams, _hv: HourValue, _n: int) -> Outcome:
    return last_good(ctx)


def part75(ctx: GapContext, policy: Part75Params, hv: HourValue, n: int) -> Outcome:
    direction = ctx.policy.direction
    assert direction is not None
    if ctx.prior_qa_hours == 0:
        return fixed_default(ctx.require_potential("no prior QA data"), _potential_routine(ctx),
                             "40 CFR 75.31(b)(2): no prior quality-assured data")
    binned = policy.kind == "binned"
    load_bin = hv.load_bin
    if binned and load_bin is None:
        raise RuleInputError(f"part75_tiered (binned): gap hour {hv.hour} has no load bin")
    window = _window(ctx, policy.window)
    bins = [ctx.bins.get(h) for h in window.hours]
    if _initial_procedure_applies(ctx):
        return _part75_initial(ctx, window, bins, load_bin)
    assert ctx.pma is not None
    tier = part75_tier(ctx.pma.pct, n)
    citation = part75_citation(tier, ctx.pma.pct, policy.kind, direction)
    routine = part75_routine(tier, direction, policy.kind)
    if tier is Part75Tier.POTENTIAL:
        return fixed_default(ctx.require_potential("PMA < 80 %"), routine, citation)
    if binned:
        assert load_bin is not None
        in_bin = window.in_bin(load_bin, ctx.bins)
        if in_bin.n == 0:
            # §75.33(c)(5) as corroborated by ECMPS check 41796: the maximum of the next higher bin.
            out = higher_bin_outcome(window, bins, load_bin, direction, "max_lookback(next_higher_bin)",
                                     "40 CFR 75.33(c)(5) (corroborated by ECMPS check 41796): empty load "
                                     "bin: maximum of the next higher bin with data",
                                     average=False, method_code=METHOD_EXTREME)
            return out or _empty_lookback(ctx, window, "no higher load bin has data in the lookback")
        window = in_bin
    if tier is Part75Tier.SHORT:
        if binned:
            out = bin_average_outcome(window, routine, citation)
            assert out is not None
            return out
        _require_hbha(ctx)
        return hbha_outcome(ctx.hbha, citation)
    if tier in (Part75Tier.P90, Part75Tier.P95):
        _require_hbha(ctx)
        p = Fraction(90 if tier is Part75Tier.P90 else 95)
        out = percentile_outcome(window, p, direction, citation, ctx.hbha)
        return out or _empty_lookback(ctx, window, "empty lookback")
    out = extreme_outcome(window, direction, routine, citation)
    return out or _empty_lookback(ctx, window, "empty lookback")


def _initial_procedure_applies(ctx: GapContext) -> bool:
    """§75.31: the first 720 (2,160) QA hours, and never more than 3 years after certification."""
    qa = ctx.inputs.qa_hours_since_certification
    if qa is None:
        return False  # not given: standard procedures (documented in docs/rules.md)
    clock = ctx.inputs.clock_hours_since_certification
    return qa < ctx.policy.window and (clock is None or clock < PART75_MAX_AGE_HOURS)


def _part75_initial(ctx: GapContext, window: LookbackWindow, bins: list[int | None],
                    load_bin: int | None) -> Outcome:
    if ctx.policy.kind != "binned":
        _require_hbha(ctx)
        hbha = hbha_outcome(ctx.hbha, "40 CFR 75.31(b)(1)", "initial_hour_before_after")
        return Outcome(hbha.value, hbha.routine, METHOD_INITIAL, hbha.citation, hbha.statistics)
    assert load_bin is not None
    assert ctx.policy.direction is not None
    citation = "40 CFR 75.31 and 75.57 MODC 07: average at the corresponding load range (or a higher one)"
    in_bin = window.in_bin(load_bin, ctx.bins)
    out = bin_average_outcome(in_bin, "initial_bin_average_lookback", citation, METHOD_INITIAL)
    if out is None:
        out = higher_bin_outcome(window, bins, load_bin, ctx.policy.direction, "initial_bin_average_lookback",
                                 citation, average=True, method_code=METHOD_INITIAL)
    return out or _empty_lookback(ctx, window, "no QA value in this or a higher load bin")


_EMPTY_LOOKBACK_DEFAULT = ("gateway design-choice (docs/rules.md §2.2): empty lookback: the configured conservative "
                           "default (group standard 10.1.3 f; Reg. (EU) 2018/2066 Art. 66(1))")
_EMPTY_LOOKBACK_CITATION = {
    "hj75_tiered": ("HJ 75-2017 table 8 has no valid hour before the outage: the configured conservative default "
                    "(gateway design-choice, docs/rules.md §2.2)"),
}


def _empty_lookback(ctx: GapContext, window: LookbackWindow, why: str) -> Outcome:
    """docs/rules.md §2.2: an empty lookback falls back to the conservative default (the potential value in Part 75)."""
    if ctx.policy.selector == "part75_tiered":
        return fixed_default(ctx.require_potential(why), _potential_routine(ctx),
                             "40 CFR 75.33(b)(4) by analogy: no usable lookback value", notes=(why,),
                             lookback=window)
    alarm = (why,) if ctx.policy.selector == "hj75_tiered" else ()
    return fixed_default(ctx.require_default(why), "fixed_conservative_default",
                         _EMPTY_LOOKBACK_CITATION.get(ctx.policy.selector, _EMPTY_LOOKBACK_DEFAULT),
                         notes=(why,), alarms=alarm, lookback=window)


def hj75(ctx: GapContext, policy: Hj75Params, _hv: HourValue, n: int) -> Outcome:
    direction = ctx.policy.direction
    assert direction is not None
    if ctx.alpha is None:
        raise RuleInputError("hj75_tiered: no operating hour in the quarter to take alpha over")
    alpha = ctx.alpha.pct
    w = hj75_window(alpha, n, policy.window_short, policy.window_long, policy.window_low_alpha)
    if w is None:
        alarm = "HJ 75 alpha < 75 %: outside the standard's table; configured default used"
        return fixed_default(ctx.require_default("alpha < 75 %"), "fixed_conservative_default",
                             "HJ 75-2017 table 8 covers alpha >= 75 % only: configured conservative default and "
                             "an alarm (gateway design-choice, docs/rules.md §2.2)", alarms=(alarm,))
    window = _window(ctx, w)
    tier = "alpha >= 90 %, N <= 24" if alpha >= 90 and n <= 24 else (
        "alpha >= 90 %, N > 24" if alpha >= 90 else "75 % <= alpha < 90 %")
    name = "max" if direction is Direction.HIGH else "min"
    # Table 7: out-of-control periods, the window ends at the last calibration before them; table 8:
    # maintenance and other invalid periods, it ends at the start of the outage.
    table, end = (7, "last calibration before the out-of-control period") \
        if ctx.inputs.window_end_hour is not None else (8, "start of the outage")
    citation = f"HJ 75-2017 table {table} ({tier}): {name} of the {w} valid hours before the {end}"
    out = extreme_outcome(window, direction, f"{name}_lookback({w})", citation)
    return out or _empty_lookback(ctx, window, "empty lookback")


def mean_plus_2sigma_hour(ctx: GapContext, policy: MeanPlus2SigmaParams, _hv: HourValue, _n: int) -> Outcome:
    direction = ctx.policy.direction
    assert direction is not None
    values = [item.value for item in ctx.history if item.value is not None]
    out = mean_plus_2sigma(values, policy.ddof, direction)
    alarms: tuple[str, ...] = ()
    if ctx.gap.end - ctx.gap.start + 1 > 120:
        alarms = ("Reg. (EU) 2018/2066 Art. 45(1): equipment out of operation for more than five consecutive "
                  "days: inform the competent authority",)
    if out is None:
        return fixed_default(ctx.require_default("fewer than 2 valid hours in the reference period"),
                             "fixed_conservative_default",
                             "Reg. (EU) 2018/2066 Art. 66(1): conservative surrogate data (fewer than 2 valid hours)",
                             alarms=alarms)
    return Outcome(out.value, out.routine, out.method_code, out.citation, out.statistics, None, out.notes,
                   alarms)


def hour_before_after(ctx: GapContext, _p: HourBeforeAfterParams, _hv: HourValue, _n: int) -> Outcome:
    hbha = ctx.hbha
    if hbha.value is None:
        missing = "max_potential/min_potential" if hbha.source == "potential" else "default_value"
        raise RuleInputError(f"hour_before_after: no value before or after the gap and no {missing} "
                             "configured")
    return hbha_outcome(hbha, "40 CFR 98.35(b)(1)")


def percentile_lookback(ctx: GapContext, policy: PercentileLookbackParams, _hv: HourValue, _n: int) -> Outcome:
    direction = ctx.policy.direction
    assert direction is not None
    window = _window(ctx, policy.window)
    hbha = None
    if policy.floor_hbha:
        _require_hbha(ctx)
        hbha = ctx.hbha
    citation = ("gateway design-choice (docs/rules.md §2.2): nearest-rank percentile of the lookback, the form of "
                "40 CFR 75.33(b)(1)(ii) and (b)(2)(ii)")
    out = percentile_outcome(window, policy.exact_percentile, direction, citation, hbha)
    return out or _empty_lookback(ctx, window, "empty lookback")


def extreme_lookback(ctx: GapContext, policy: LookbackParams, _hv: HourValue, _n: int) -> Outcome:
    """max_lookback and min_lookback: the routine's own direction, whatever the point's (docs/rules.md §2.2)."""
    direction = Direction.HIGH if ctx.policy.selector == "max_lookback" else Direction.LOW
    window = _window(ctx, policy.window)
    out = extreme_outcome(window, direction, ctx.policy.selector,
                          f"gateway design-choice (docs/rules.md §2.2): {ctx.policy.selector}(W={policy.window}), the "
                          "form of 40 CFR 75.33(b)(3)")
    return out or _empty_lookback(ctx, window, "empty lookback")
