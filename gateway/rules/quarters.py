"""Calendar quarters in hour indices, and a gap split at quarter boundaries (HJ 75-2017 alpha, issue 10 item 1).

HJ 75-2017 takes the effective data capture rate alpha over the **calendar quarter** that contains the
missing hour, so a gap that runs across a quarter boundary is judged in two (or more) parts, each by its
own quarter's alpha. Hour indices are epoch hours (``ts_ms // 3_600_000``, UTC); a quarter is a local
calendar quarter, ``utc_offset_hours`` east of UTC (8 for China Standard Time, which has no daylight
saving). Integer civil-calendar arithmetic (proleptic Gregorian), so no clock and no time-zone database.
"""

from __future__ import annotations

from collections.abc import Sequence

HOURS_PER_DAY = 24


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a Gregorian date (H. Hinnant's days_from_civil, integer only)."""
    y = year - (1 if month <= 2 else 0)
    era = y // 400
    yoe = y - era * 400
    mp = (month + 9) % 12  # March = 0
    doy = (153 * mp + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day count since 1970-01-01 (inverse of ``days_from_civil``)."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (1 if month <= 2 else 0), month, day


def quarter_of(hour: int, utc_offset_hours: int = 0) -> tuple[int, int]:
    """The calendar quarter containing ``hour``: (first hour, first hour of the next quarter), in the same
    UTC epoch-hour indices as ``hour``."""
    local_day = (hour + utc_offset_hours) // HOURS_PER_DAY
    year, month, _ = civil_from_days(local_day)
    first_month = 3 * ((month - 1) // 3) + 1
    next_year, next_month = (year + 1, 1) if first_month == 10 else (year, first_month + 3)
    start = days_from_civil(year, first_month, 1) * HOURS_PER_DAY - utc_offset_hours
    end = days_from_civil(next_year, next_month, 1) * HOURS_PER_DAY - utc_offset_hours
    return start, end


def split_at_quarters(hours: Sequence[int], utc_offset_hours: int = 0) -> tuple[tuple[int, ...], ...]:
    """``hours`` (increasing) cut into runs that each lie in one calendar quarter, in order.

    The parts cover ``hours`` exactly: their concatenation is ``hours`` (property-tested).
    """
    parts: list[list[int]] = []
    end: int | None = None
    for h in hours:
        if end is None or h >= end:
            parts.append([])
            end = quarter_of(h, utc_offset_hours)[1]
        parts[-1].append(h)
    return tuple(tuple(p) for p in parts)
