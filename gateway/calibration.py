"""Calibration status of an instrument at a reading's own timestamp (pure).

Dates in the registry are calendar dates at the site, so they are resolved in the site's time
zone. An instrument stays `valid` through the whole of its due date, becomes `due_soon`
`window_days` before it, and `expired` from the first instant of the following day.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from gateway.model import Calibration


def add_months(day: date, months: int) -> date:
    """Calendar month arithmetic, clamping to the month's last day (29 Feb + 12 months = 28 Feb)."""
    month_index = day.month - 1 + months
    year = day.year + month_index // 12
    month = month_index % 12 + 1
    last = calendar.monthrange(year, month)[1]
    return date(year, month, min(day.day, last))


def due_date(last_date: date | None, interval_months: int | None, explicit_due: date | None) -> date | None:
    if explicit_due is not None:
        return explicit_due
    if last_date is not None and interval_months is not None:
        return add_months(last_date, interval_months)
    return None


@dataclass(frozen=True, slots=True)
class CalibrationWindow:
    """Precomputed instants (UTC ms) at which an instrument's status changes."""

    valid_from_ms: int | None  # start of the last calibration day; before it the status is unknown
    due_soon_from_ms: int | None
    expired_from_ms: int | None

    def status_at(self, ts_ms: int) -> Calibration:
        if self.expired_from_ms is None:
            return Calibration.UNKNOWN
        if self.valid_from_ms is not None and ts_ms < self.valid_from_ms:
            return Calibration.UNKNOWN
        if ts_ms >= self.expired_from_ms:
            return Calibration.EXPIRED
        if self.due_soon_from_ms is not None and ts_ms >= self.due_soon_from_ms:
            return Calibration.DUE_SOON
        return Calibration.VALID


UNKNOWN_WINDOW = CalibrationWindow(None, None, None)


def _start_of_day_ms(day: date, tz: ZoneInfo) -> int:
    return int(datetime.combine(day, time.min, tzinfo=tz).timestamp() * 1000)


def window_for(last_date: date | None, due: date | None, *, due_soon_days: int, tz: ZoneInfo) -> CalibrationWindow:
    if due is None:
        return UNKNOWN_WINDOW
    expired = _start_of_day_ms(due + timedelta(days=1), tz)
    due_soon = _start_of_day_ms(due - timedelta(days=due_soon_days), tz)
    valid_from = _start_of_day_ms(last_date, tz) if last_date is not None else None
    return CalibrationWindow(valid_from, due_soon, expired)
