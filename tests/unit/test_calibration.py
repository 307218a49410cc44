from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.calibration import add_months, due_date, window_for
from gateway.model import Calibration

UTC_TZ = ZoneInfo("UTC")
SHANGHAI = ZoneInfo("Asia/Shanghai")


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def test_due_today_is_still_valid_and_expires_at_midnight() -> None:
    w = window_for(date(2025, 6, 1), date(2026, 6, 1), due_soon_days=0, tz=UTC_TZ)
    assert w.status_at(ms(datetime(2026, 6, 1, 0, 0, tzinfo=UTC))) is Calibration.DUE_SOON  # window 0: due day
    assert w.status_at(ms(datetime(2026, 6, 1, 23, 59, 59, 999000, tzinfo=UTC))) is Calibration.DUE_SOON
    assert w.status_at(ms(datetime(2026, 6, 2, 0, 0, tzinfo=UTC))) is Calibration.EXPIRED


def test_due_soon_window_edges() -> None:
    w = window_for(date(2025, 6, 1), date(2026, 6, 1), due_soon_days=30, tz=UTC_TZ)
    start = datetime(2026, 5, 2, tzinfo=UTC)  # 30 days before the due date
    assert w.status_at(ms(start) - 1) is Calibration.VALID
    assert w.status_at(ms(start)) is Calibration.DUE_SOON
    assert w.status_at(ms(datetime(2025, 6, 1, tzinfo=UTC))) is Calibration.VALID


def test_dates_are_site_local() -> None:
    # Due 2026-06-01 in Shanghai (UTC+8) expires at 2026-06-01T16:00Z, not at UTC midnight.
    w = window_for(date(2025, 6, 1), date(2026, 6, 1), due_soon_days=30, tz=SHANGHAI)
    assert w.status_at(ms(datetime(2026, 6, 1, 15, 59, tzinfo=UTC))) is Calibration.DUE_SOON
    assert w.status_at(ms(datetime(2026, 6, 1, 16, 0, tzinfo=UTC))) is Calibration.EXPIRED


def test_reading_before_last_calibration_is_unknown() -> None:
    w = window_for(date(2026, 3, 1), date(2027, 3, 1), due_soon_days=30, tz=UTC_TZ)
    assert w.status_at(ms(datetime(2026, 2, 28, 23, 0, tzinfo=UTC))) is Calibration.UNKNOWN
    assert w.status_at(ms(datetime(2026, 3, 1, 0, 0, tzinfo=UTC))) is Calibration.VALID


def test_missing_record_is_unknown() -> None:
    w = window_for(None, None, due_soon_days=30, tz=UTC_TZ)
    assert w.status_at(0) is Calibration.UNKNOWN
    assert due_date(date(2026, 1, 1), None, None) is None  # a date without an interval gives no due date


def test_leap_day_plus_twelve_months_is_28_february() -> None:
    assert add_months(date(2024, 2, 29), 12) == date(2025, 2, 28)
    assert add_months(date(2024, 2, 29), 48) == date(2028, 2, 29)
    assert add_months(date(2026, 1, 31), 1) == date(2026, 2, 28)
    assert due_date(date(2024, 2, 29), 12, None) == date(2025, 2, 28)


def test_explicit_due_date_wins() -> None:
    assert due_date(date(2026, 1, 1), 12, date(2026, 6, 30)) == date(2026, 6, 30)


@given(st.dates(min_value=date(1990, 1, 1), max_value=date(2090, 12, 31)), st.integers(1, 240))
def test_add_months_properties(day: date, months: int) -> None:
    out = add_months(day, months)
    assert (out.year * 12 + out.month) - (day.year * 12 + day.month) == months
    assert out.day <= day.day


@given(st.integers(0, 3650), st.integers(-400, 400))
def test_status_is_monotone_in_time(window: int, offset_days: int) -> None:
    w = window_for(date(2026, 1, 1), date(2027, 1, 1), due_soon_days=window, tz=UTC_TZ)
    order = [Calibration.UNKNOWN, Calibration.VALID, Calibration.DUE_SOON, Calibration.EXPIRED]
    t = ms(datetime(2027, 1, 1, tzinfo=UTC) + timedelta(days=offset_days))
    a, b = w.status_at(t), w.status_at(t + 86_400_000)
    assert order.index(b) >= order.index(a)


@pytest.mark.parametrize("window", [0, 30])
def test_expired_strictly_after_due_date(window: int) -> None:
    w = window_for(date(2026, 1, 1), date(2026, 12, 31), due_soon_days=window, tz=UTC_TZ)
    assert w.status_at(ms(datetime(2027, 1, 1, tzinfo=UTC))) is Calibration.EXPIRED
