"""Reporting periods and their closes (issue 10 item 8): pure functions on epoch hour indices.

Outside gateway/rules/ only because calendar periods need ``datetime`` and time zones, which the rules
package's purity test keeps out (the functions here read no clock).

The regulations finalise some substitutes only when a calendar period ends:
- Reg. (EU) 2018/2066 Art. 45(3), Annex VIII Eq. 4: the mean + 2 sigma substitute is taken over the
  reporting period (the calendar year), so it is final only when that period closes;
- 40 CFR 98.35(b)(1): when the "after" value has not been obtained by the time the report is due, the
  "before" value is used (the gateway closes each month, ``report_due_days`` after its end);
- HJ 75-2017: alpha is the valid-data capture rate of the calendar quarter, final when the quarter closes.

One mechanism serves all three (``gateway/rules_stage.py`` calls ``closes_between`` whenever a point's hour
history advances and runs the selector's close handler for each period returned). Periods are calendar
periods in the site's time zone (``gateway.timezone``); an hour index is ``ts_ms // 3_600_000``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Literal

PeriodKind = Literal["month", "quarter", "year"]
PERIOD_KINDS: tuple[PeriodKind, ...] = ("month", "quarter", "year")
HOUR_S = 3600
MAX_CLOSES = 120  # closes reported by one call at most (ten years of months): a bound, never reached in use


@dataclass(frozen=True, slots=True)
class Period:
    """A calendar period as hour indices: ``start`` inclusive, ``end`` exclusive."""

    kind: PeriodKind
    start: int
    end: int

    def __contains__(self, hour: object) -> bool:
        return isinstance(hour, int) and self.start <= hour < self.end

    def label(self, tz: tzinfo = UTC) -> str:
        """e.g. ``2026-Q4``, ``2026-11``, ``2026``."""
        d = datetime.fromtimestamp(self.start * HOUR_S, tz)
        if self.kind == "year":
            return f"{d.year}"
        if self.kind == "quarter":
            return f"{d.year}-Q{(d.month - 1) // 3 + 1}"
        return f"{d.year}-{d.month:02d}"


def _first_month(kind: PeriodKind, month: int) -> int:
    if kind == "year":
        return 1
    if kind == "quarter":
        return (month - 1) // 3 * 3 + 1
    return month


def _hour_of(d: datetime) -> int:
    return int(d.timestamp()) // HOUR_S


def period_of(hour: int, kind: PeriodKind, tz: tzinfo = UTC) -> Period:
    """The calendar period (in ``tz``) that contains ``hour``."""
    d = datetime.fromtimestamp(hour * HOUR_S, tz)
    first = _first_month(kind, d.month)
    start = datetime(d.year, first, 1, tzinfo=tz)
    step = {"month": 1, "quarter": 3, "year": 12}[kind]
    year, month = divmod(first - 1 + step, 12)
    end = datetime(d.year + year, month + 1, 1, tzinfo=tz)
    return Period(kind, _hour_of(start), _hour_of(end))


def closes_between(last_hour: int, new_hour: int, kind: PeriodKind, tz: tzinfo = UTC, *,
                   due_hours: int = 0) -> Iterator[Period]:
    """The periods whose close falls due when a history advances from ``last_hour`` to ``new_hour``.

    A period ``[start, end)`` is due at hour ``end + due_hours``: due when ``last_hour < end + due_hours
    <= new_hour``. Oldest first; each period is returned by exactly one call of a sequence of calls over
    increasing hours, so a close is never run twice and never skipped (a restart resumes from the last
    stored hour, whose closes were committed with it)."""
    if new_hour <= last_hour:
        return
    p = period_of(last_hour - due_hours, kind, tz)
    for _ in range(MAX_CLOSES):
        if p.end + due_hours > new_hour:
            return
        yield p
        p = period_of(p.end, kind, tz)
