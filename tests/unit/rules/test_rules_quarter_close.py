"""HJ 75 quarter close (issue 10 items 1 and 8): the closed quarter's alpha re-judges the substitutes issued in it
with a quarter-to-date alpha; a changed tier is a new version that supersedes the old one, never an edit."""

from __future__ import annotations

from typing import Any

from gateway.rules.context import GapInputs
from gateway.rules.hours import HourValue
from gateway.rules.policy_config import parse_policy_config
from gateway.rules.quarter_close import quarter_offset, reissue_at_quarter_close
from gateway.rules.quarters import quarter_of
from gateway.rules.substitution import substitute_gap

from .test_rules_hj75_quarters import CST, Q3

Q3_END = quarter_of(Q3, CST)[1]  # 2026-10-01 00:00 CST; Q3 has 92 days = 2,208 hours
GAP = list(range(Q3 + 100, Q3 + 105))  # N = 5
SPECIAL = {Q3 + 93: 70.0, Q3 + 97: 41.0, Q3 + 98: 42.0, Q3 + 99: 40.0}


def hj75(**extra: Any) -> Any:
    return parse_policy_config({"selector": "hj75_tiered", "direction": "high", "default_value": 120.0,
                                "window_short": 3, "window_long": 5, "window_low_alpha": 7, **extra})


def quarter(later_invalid: range, until: int = Q3_END) -> list[HourValue]:
    """Q3 operating hours from its first hour to ``until``: the gap, ``later_invalid``, the special values."""
    return [HourValue(h, None if h in GAP or h in later_invalid else SPECIAL.get(h, 30.0)) for h in range(Q3, until)]


def issued_when_the_gap_closed() -> Any:
    """At Q3+105 (the first valid hour after the gap) Q3 so far has 106 operating hours, 5 invalid:
    alpha = 101/106 = 95.28 % >= 90, N = 5 <= 24 -> max of the 3 valid hours before the outage (41, 42, 40) = 42."""
    history = quarter(range(0), until=Q3 + 106)
    first = substitute_gap(history, GAP, hj75(), point="so2", instrument="CEMS")
    assert first.values() == (42.0,) * 5
    assert first.records[0].gap.alpha is not None
    assert first.records[0].gap.alpha.quarter_closed is False
    return first


def test_a_tier_changed_by_the_closed_quarters_alpha_is_reissued_as_a_new_version() -> None:
    """By the quarter's end 400 more hours were invalid (Q3+1000..1399). Closed Q3: 2,208 operating hours,
    405 invalid -> alpha = 1803/2208 = 81.66 % -> 75 <= alpha < 90 -> max of the window_low_alpha = 7 valid hours
    before the outage, Q3+93..99, which holds 70.0 -> **70.0**, version 2, superseding the 42.0 of version 1."""
    first = issued_when_the_gap_closed()
    history = quarter(range(Q3 + 1000, Q3 + 1400))
    again = reissue_at_quarter_close(history, hj75(), point="so2", instrument="CEMS", quarter_end_hour=Q3_END,
                                     previous=first.records)
    assert [r.hour for r in again] == GAP
    assert {r.value for r in again} == {70.0}
    assert {r.version for r in again} == {2}
    assert [r.supersedes for r in again] == [r.record_id for r in first.records]
    assert {r.detail.routine for r in again} == {"max_lookback(7)"}
    alpha = again[0].gap.alpha
    assert alpha is not None
    assert (alpha.qa_hours, alpha.operating_hours, alpha.quarter_closed) == (1803, 2208, True)


def test_an_unchanged_tier_gets_no_new_version() -> None:
    """100 more invalid hours: alpha = (2208 - 105)/2208 = 95.24 % -> still the 3-hour window, 42.0: nothing."""
    first = issued_when_the_gap_closed()
    history = quarter(range(Q3 + 1000, Q3 + 1100))
    assert reissue_at_quarter_close(history, hj75(), point="so2", instrument="CEMS", quarter_end_hour=Q3_END,
                                    previous=first.records) == ()


def test_the_closed_quarter_falling_below_75_percent_raises_the_alarm_on_reissue() -> None:
    """700 more invalid: alpha = (2208 - 705)/2208 = 68.07 % < 75 -> the default 120.0 and an alarm."""
    first = issued_when_the_gap_closed()
    history = quarter(range(Q3 + 1000, Q3 + 1700))
    again = reissue_at_quarter_close(history, hj75(), point="so2", instrument="CEMS", quarter_end_hour=Q3_END,
                                     previous=first.records)
    assert {r.value for r in again} == {120.0}
    assert all(r.alarm for r in again)


def test_only_hj75_with_a_computed_alpha_is_rejudged() -> None:
    assert quarter_offset(hj75()) == CST
    assert quarter_offset(hj75(alpha_pct=95)) is None
    assert quarter_offset(parse_policy_config({"selector": "part75_tiered", "direction": "high",
                                               "max_potential": 1.0})) is None
    first = issued_when_the_gap_closed()
    history = quarter(range(Q3 + 1000, Q3 + 1400))
    assert reissue_at_quarter_close(history, hj75(alpha_pct=95), point="so2", instrument="CEMS",
                                    quarter_end_hour=Q3_END, previous=first.records) == ()


def test_the_same_close_twice_issues_nothing_the_second_time() -> None:
    first = issued_when_the_gap_closed()
    history = quarter(range(Q3 + 1000, Q3 + 1400))
    again = reissue_at_quarter_close(history, hj75(), point="so2", instrument="CEMS", quarter_end_hour=Q3_END,
                                     previous=first.records)
    assert reissue_at_quarter_close(history, hj75(), point="so2", instrument="CEMS", quarter_end_hour=Q3_END,
                                    previous=first.records + again) == ()


def test_inputs_are_not_modified() -> None:
    first = issued_when_the_gap_closed()
    history = quarter(range(Q3 + 1000, Q3 + 1400))
    snapshot = (list(history), [r.to_json() for r in first.records])
    reissue_at_quarter_close(history, hj75(), point="so2", instrument="CEMS", quarter_end_hour=Q3_END,
                             previous=first.records)
    assert (history, [r.to_json() for r in first.records]) == snapshot
    assert GapInputs().as_of_hour is None
