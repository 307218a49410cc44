"""Nearest-rank percentile (design-choice for 40 CFR 75.33(b)'s 'percentile hourly value recorded'; docs/rules.md §2.2).

Part 75 asks for "the 90th percentile hourly value recorded": nearest rank always returns a value that
was actually recorded, where interpolating methods (numpy's default) invent one.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from gateway.rules.exact import to_fraction


def nearest_rank_k(p: int | float | str | Fraction, n: int) -> int:
    """Rank k = ceil(p*n/100) in exact integer arithmetic, clamped to [1, n]."""
    if n < 1:
        raise ValueError("percentile of no values")
    pf = to_fraction(p)
    if not 0 <= pf <= 100:
        raise ValueError(f"percentile must be within 0..100, got {p}")
    num = pf.numerator * n
    den = pf.denominator * 100
    k = -(-num // den)  # ceiling division on integers: no float rounding at the rank boundary
    return min(max(k, 1), n)


def nearest_rank(values: Sequence[float], p: int | float | str | Fraction) -> float:
    """The nearest-rank p-th percentile of ``values`` (a member of ``values``)."""
    ordered = sorted(values)
    return ordered[nearest_rank_k(p, len(ordered)) - 1]
