"""Hour records and gaps: the data model of docs/rules.md §2.1.

History is a sequence of operating hours in strictly increasing order. An hour absent from the history is
a non-operating hour: Part 75 §75.30(a) substitutes only hours in which the unit operated, so absent hours
are never substituted, never break a gap and never count toward N.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.rules.errors import RuleInputError


@dataclass(frozen=True, slots=True)
class HourValue:
    """One operating hour of one point. ``value`` is None when no quality-assured (QA) value exists.

    ``hour`` is an hour index (the runtime uses epoch hours, ts_ms // 3_600_000), so differences are clock
    hours. ``load_bin`` is the Part 75 App. C load range of the hour (1..20) when the point is binned.
    """

    hour: int
    value: float | None
    load_bin: int | None = None


@dataclass(frozen=True, slots=True)
class Gap:
    """A maximal run of operating hours without a QA value (docs/rules.md §2.1)."""

    hours: tuple[int, ...]
    non_operating: tuple[int, ...] = ()

    @property
    def start(self) -> int:
        return self.hours[0]

    @property
    def end(self) -> int:
        return self.hours[-1]

    @property
    def n(self) -> int:
        """N: the gap length in operating hours."""
        return len(self.hours)


def check_history(history: Sequence[HourValue]) -> None:
    """Reject histories the rules cannot interpret: unsorted or repeated hours, non-finite values."""
    previous: int | None = None
    for item in history:
        if isinstance(item.hour, bool) or not isinstance(item.hour, int):
            raise RuleInputError(f"history: hour {item.hour!r} is not an integer")
        if previous is not None and item.hour <= previous:
            raise RuleInputError(f"history: hour {item.hour} does not follow hour {previous} "
                                 "(hours must be strictly increasing)")
        if item.value is not None and not math.isfinite(item.value):
            raise RuleInputError(f"history: hour {item.hour} has a non-finite value")
        previous = item.hour


def find_gaps(history: Sequence[HourValue]) -> tuple[Gap, ...]:
    """Every gap of a history, oldest first. A gap at the end of the history is still open."""
    gaps: list[Gap] = []
    run: list[int] = []
    for item in history:
        if item.value is None:
            run.append(item.hour)
        elif run:
            gaps.append(Gap(tuple(run)))
            run = []
    if run:
        gaps.append(Gap(tuple(run)))
    return tuple(gaps)


def resolve_gap(history: Sequence[HourValue], requested: Sequence[int]) -> Gap:
    """Check that ``requested`` is one maximal gap of ``history`` and split off non-operating hours.

    A gap that is not maximal would understate N and could select a more lenient tier, so it is refused
    rather than guessed at.
    """
    if not requested:
        raise RuleInputError("gap: no hours given")
    for a, b in itertools.pairwise(requested):
        if b <= a:
            raise RuleInputError(f"gap: hour {b} does not follow hour {a} (hours must be strictly increasing)")
    position = {item.hour: i for i, item in enumerate(history)}
    operating = [h for h in requested if h in position]
    absent = tuple(h for h in requested if h not in position)
    if not operating:
        raise RuleInputError("gap: none of its hours is an operating hour in the history "
                             "(non-operating hours are never substituted)")
    for h in operating:
        if history[position[h]].value is not None:
            raise RuleInputError(f"gap: hour {h} has a quality-assured value in the history")
    first, last = position[operating[0]], position[operating[-1]]
    if last - first + 1 != len(operating):
        listed = set(operating)
        for item in history[first:last + 1]:
            if item.hour not in listed:
                what = "has a quality-assured value" if item.value is not None else "has no value but is not listed"
                raise RuleInputError(f"gap: operating hour {item.hour} inside the gap {what}")
    if first > 0 and history[first - 1].value is None:
        raise RuleInputError(f"gap: not maximal, operating hour {history[first - 1].hour} before it has no "
                             "quality-assured value either")
    if last + 1 < len(history) and history[last + 1].value is None:
        raise RuleInputError(f"gap: not maximal, operating hour {history[last + 1].hour} after it has no "
                             "quality-assured value either")
    return Gap(tuple(operating), absent)


def hour_before(history: Sequence[HourValue], gap: Gap) -> HourValue | None:
    """HB: the last QA value in an operating hour before the gap."""
    for item in reversed(history):
        if item.hour < gap.start and item.value is not None:
            return item
    return None


def hour_after(history: Sequence[HourValue], gap: Gap) -> HourValue | None:
    """HA: the first QA value in an operating hour after the gap."""
    for item in history:
        if item.hour > gap.end and item.value is not None:
            return item
    return None
