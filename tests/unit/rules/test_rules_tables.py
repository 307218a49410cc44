"""Nearest-rank percentile, Part 75 tier table and HJ 75 windows at their edges."""

from __future__ import annotations

from fractions import Fraction

import pytest

from gateway.rules.exact import round_half_up, to_fraction
from gateway.rules.percentile import nearest_rank, nearest_rank_k
from gateway.rules.policy_config import Direction
from gateway.rules.selectors import Part75Tier, hj75_window, part75_routine, part75_tier


@pytest.mark.parametrize(("p", "n", "k"), [(90, 10, 9), (10, 10, 1), (95, 20, 19), (5, 20, 1), (0, 7, 1),
                                           (100, 7, 7), (90, 1, 1), (90, 11, 10), (Fraction(1, 3), 300, 1),
                                           (Fraction(1, 3), 301, 2)])
def test_nearest_rank_k_exact(p: int | Fraction, n: int, k: int) -> None:
    assert nearest_rank_k(p, n) == k


def test_nearest_rank_vector_2_and_4_values() -> None:
    lookback = [8.0, 9.5, 10.1, 11.3, 9.8, 10.7, 12.4, 10.0, 9.1, 10.9]
    assert nearest_rank(lookback, 90) == 11.3  # numpy's linear method would give 11.41
    o2 = [5.2, 4.8, 6.1, 5.5, 4.9, 5.0, 5.8, 6.3, 5.1, 5.4]
    assert nearest_rank(o2, 10) == 4.8  # linear would give 4.89


def test_nearest_rank_rejects_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="no values"):
        nearest_rank([], 50)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        nearest_rank([1.0], 101)


@pytest.mark.parametrize(
    ("pma", "n", "tier"),
    [("95", 24, Part75Tier.SHORT), ("95", 25, Part75Tier.P90), ("94.99999999999999", 1, Part75Tier.SHORT),
     ("94.99999999999999", 9, Part75Tier.P95), ("90", 8, Part75Tier.SHORT), ("90", 9, Part75Tier.P95),
     ("89.95", 1, Part75Tier.MAX), ("80", 100, Part75Tier.MAX), ("79.99", 1, Part75Tier.POTENTIAL),
     ("100", 1000, Part75Tier.P90), ("0", 1, Part75Tier.POTENTIAL)],
)
def test_part75_tier_table_edges(pma: str, n: int, tier: Part75Tier) -> None:
    assert part75_tier(Fraction(pma), n) is tier


def test_rounding_never_promotes_a_tier() -> None:
    pma = Fraction(8999, 100) + Fraction(9, 1000)  # 89.999 rounds to 90.0 for the record
    assert round_half_up(pma, 1) == 90
    assert part75_tier(pma, 1) is Part75Tier.MAX
    assert to_fraction(94.95) == Fraction(9495, 100)  # the decimal written, not the binary neighbour


def test_part75_routine_names() -> None:
    assert part75_routine(Part75Tier.P95, Direction.LOW, "conc") == "min(percentile_lookback(5), hour_before_after)"
    assert part75_routine(Part75Tier.SHORT, Direction.HIGH, "binned") == "bin_average_lookback"
    assert part75_routine(Part75Tier.POTENTIAL, Direction.LOW, "conc") == "fixed_conservative_default(min_potential)"


@pytest.mark.parametrize(("alpha", "n", "w"), [("90", 24, 180), ("90", 25, 720), ("89.999", 1, 2160),
                                               ("75", 1, 2160), ("74.999", 1, None)])
def test_hj75_windows(alpha: str, n: int, w: int | None) -> None:
    assert hj75_window(Fraction(alpha), n, 180, 720, 2160) == w


def test_round_half_up() -> None:
    assert round_half_up(Fraction(9725, 100), 1) == Fraction(973, 10)  # Python's round() would give 97.2
    assert round_half_up(Fraction(-25, 100), 1) == Fraction(-3, 10)
