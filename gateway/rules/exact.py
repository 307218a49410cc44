"""Exact arithmetic for regulatory thresholds and means.

Thresholds (PMA >= 95 %, alpha >= 75 %, 80 % of points) are compared on exact fractions so that
rounding can never promote an hour to a more lenient tier (docs/rules.md §2.2).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from fractions import Fraction


def to_fraction(x: int | float | str | Fraction) -> Fraction:
    """A configured number as the exact decimal the user wrote.

    Floats go through ``repr`` (the shortest decimal that round-trips), so ``94.95`` is 9495/100 and not
    its binary neighbour 94.9500000000000028...: a threshold comparison then means what the plan says.
    """
    if isinstance(x, bool):
        raise TypeError("a boolean is not a number")
    if isinstance(x, Fraction):
        return x
    if isinstance(x, int):
        return Fraction(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            raise ValueError(f"not a finite number: {x!r}")
        return Fraction(repr(x))
    if isinstance(x, str):
        return Fraction(x.strip())
    raise TypeError(f"not a number: {x!r}")


def exact_mean(values: Iterable[float]) -> Fraction:
    """Mean of measured values, exact over their binary values (deterministic, order independent)."""
    total = Fraction(0)
    n = 0
    for v in values:
        total += Fraction(v)
        n += 1
    if n == 0:
        raise ValueError("mean of no values")
    return total / n


def round_half_up(x: Fraction, places: int = 1) -> Fraction:
    """Round half away from zero at ``places`` decimals (Python's round() is half-to-even)."""
    scale = 10**places
    scaled = abs(x) * scale
    rounded = math.floor(scaled + Fraction(1, 2))
    return Fraction(rounded if x >= 0 else -rounded, scale)


def fraction_text(x: Fraction) -> str:
    """'195/2' style text: the exact value, stored in the trace beside the rounded one."""
    return f"{x.numerator}/{x.denominator}"
