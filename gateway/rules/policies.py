"""The substitution routines of docs/rules.md §2.2, each a pure function returning an ``Outcome``.

Selectors (selectors.py) decide which routine applies to an hour; these only compute it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from gateway.rules.context import HbHa
from gateway.rules.direction import Direction
from gateway.rules.exact import exact_mean
from gateway.rules.lookback import LookbackWindow
from gateway.rules.percentile import nearest_rank, nearest_rank_k
from gateway.rules.trace import (
    METHOD_BIN_AVERAGE,
    METHOD_DEFAULT,
    METHOD_EXTREME,
    METHOD_MEAN_PLUS_2SIGMA,
    METHOD_OTHER_PERCENTILE,
    METHOD_P90,
    METHOD_P95,
    JsonValue,
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One hour's substitute before clipping, with what the trace needs to explain it."""

    value: float
    routine: str
    method_code: str
    citation: str
    statistics: tuple[tuple[str, JsonValue], ...] = ()
    lookback: LookbackWindow | None = None
    notes: tuple[str, ...] = ()
    alarms: tuple[str, ...] = ()


def fixed_default(value: float, routine: str, citation: str, *, notes: tuple[str, ...] = (),
                  alarms: tuple[str, ...] = (), lookback: LookbackWindow | None = None) -> Outcome:
    return Outcome(value, routine, METHOD_DEFAULT, citation, (("default_value", value),), lookback, notes, alarms)


def hbha_outcome(hbha: HbHa, clause: str, routine: str = "hour_before_after") -> Outcome:
    """HB/HA under ``clause``; a fallback (one side only, default, potential) adds its own citation."""
    assert hbha.value is not None
    citation = clause if hbha.source == "average" else f"{clause}; {hbha.citation}"
    return Outcome(hbha.value, routine, hbha.method_code, citation,
                   (("hbha", hbha.value), ("hbha_source", hbha.source)))


def percentile_method_code(p_effective: Fraction) -> str:
    """MODC 08 is the 90th (10th for low), 09 the 95th (5th); other ranks have no Part 75 code."""
    if p_effective in (90, 10):
        return METHOD_P90
    if p_effective in (95, 5):
        return METHOD_P95
    return METHOD_OTHER_PERCENTILE


def _p_text(p: Fraction) -> str:
    return str(p.numerator) if p.denominator == 1 else str(float(p))


def percentile_outcome(window: LookbackWindow, p_high: Fraction, direction: Direction, citation: str,
                       hbha: HbHa | None) -> Outcome | None:
    """Nearest-rank percentile of the window: p for high, 100 - p for low (docs/rules.md §2.2).

    With ``hbha`` (floor_hbha), the greater of P and HB/HA for high, the lesser for low (§75.33(b)(1)(ii),
    §75.37(d)(1)); the record then carries MODC 06 when HB/HA wins, as ECMPS checks.
    """
    if window.n == 0:
        return None
    p = p_high if direction is Direction.HIGH else 100 - p_high
    statistic = nearest_rank(window.values, p)
    stats: list[tuple[str, JsonValue]] = [(f"p{_p_text(p)}", statistic), ("k", nearest_rank_k(p, window.n)),
                                          ("n", window.n)]
    code = percentile_method_code(p)
    base = f"percentile_lookback({_p_text(p)})"
    if hbha is None:
        return Outcome(statistic, base, code, citation, tuple(stats), window)
    assert hbha.value is not None
    stats += [("hbha", hbha.value), ("hbha_source", hbha.source)]
    if direction is Direction.HIGH:
        routine = f"max({base}, hour_before_after)"
        hbha_wins = hbha.value > statistic
    else:
        routine = f"min({base}, hour_before_after)"
        hbha_wins = hbha.value < statistic
    stats.append(("chosen", "hour_before_after" if hbha_wins else "percentile"))
    if hbha_wins:
        return Outcome(hbha.value, routine, hbha.method_code, citation, tuple(stats), window)
    return Outcome(statistic, routine, code, citation, tuple(stats), window)


def extreme_outcome(window: LookbackWindow, direction: Direction, routine: str, citation: str) -> Outcome | None:
    """Maximum (high) or minimum (low) of the window: MODC 10."""
    if window.n == 0:
        return None
    value = max(window.values) if direction is Direction.HIGH else min(window.values)
    name = "max" if direction is Direction.HIGH else "min"
    return Outcome(value, routine, METHOD_EXTREME, citation, ((name, value), ("n", window.n)), window)


def bin_average_outcome(window: LookbackWindow, routine: str, citation: str, method_code: str = METHOD_BIN_AVERAGE
                        ) -> Outcome | None:
    """Mean of the values recorded in the gap hour's load range (§75.33(c), MODC 11)."""
    if window.n == 0:
        return None
    value = float(exact_mean(window.values))
    return Outcome(value, routine, method_code, citation, (("mean", value), ("n", window.n)), window)


def higher_bin_outcome(window: LookbackWindow, bins: Sequence[int | None], load_bin: int, direction: Direction,
                       routine: str, citation: str, *, average: bool, method_code: str) -> Outcome | None:
    """The next higher load bin that has data: its maximum (§75.33(c)(5), MODC 10) or, for the initial
    procedure, its average (MODC 07 'or a higher load range')."""
    by_bin: dict[int, list[float]] = {}
    for b, v in zip(bins, window.values, strict=True):
        if b is not None and b > load_bin:
            by_bin.setdefault(b, []).append(v)
    if not by_bin:
        return None
    chosen = min(by_bin)
    values = by_bin[chosen]
    extreme = max(values) if direction is Direction.HIGH else min(values)
    value = float(exact_mean(values)) if average else extreme
    stats: tuple[tuple[str, JsonValue], ...] = (("gap_bin", load_bin), ("bin_used", chosen),
                                                ("mean" if average else "max", value), ("n_bin", len(values)))
    return Outcome(value, routine, method_code, citation, stats, window)


def mean_plus_2sigma(values: Sequence[float], ddof: int, direction: Direction) -> Outcome | None:
    """C* = mean + 2 s over the reference period (Reg. (EU) 2018/2066 Art. 45(3), Annex VIII Eq. 4).

    s uses ``ddof`` (1: sample SD, the 'best estimate' design-choice). Low direction (gateway extension,
    not in the MRR): mean - 2 s. Exact sums keep the result independent of the order of the values.
    """
    n = len(values)
    if n < 2 or n - ddof < 1:
        return None
    mean = exact_mean(values)
    ss = sum(((Fraction(v) - mean) ** 2 for v in values), Fraction(0))
    s = math.sqrt(ss / (n - ddof))
    sign = 1 if direction is Direction.HIGH else -1
    value = float(mean) + sign * 2 * s
    routine = "mean_plus_2sigma" if direction is Direction.HIGH else "mean_minus_2sigma"
    return Outcome(value, routine, METHOD_MEAN_PLUS_2SIGMA,
                   "Reg. (EU) 2018/2066 Art. 45(3), Annex VIII Eq. 4 (ddof is a design-choice)",
                   (("n", n), ("mean", float(mean)), ("s", s), ("ddof", ddof)))
