"""HJ 75-2017 alpha per calendar quarter (issue 10 item 1).

HJ 75-2017 selects the substitute's window by the effective data capture rate alpha of the **calendar
quarter that contains the missing hour**:

    alpha = (hours - stopped hours - invalid hours) / (hours - stopped hours)

    alpha >= 90 %, N <= 24   max of the 180 valid hours before the outage
    alpha >= 90 %, N > 24    max of the 720 valid hours before the outage
    75 % <= alpha < 90 %     max of the 2,160 valid hours before the outage
    alpha < 75 %             (outside the table) configured default and an alarm

Before this fix alpha was taken over the whole history handed in (the runtime hands in up to 26,280 hours),
so good quarters diluted a bad one into a more lenient tier. Hours are epoch hours (UTC); quarters are
China Standard Time quarters (UTC+8) unless configured otherwise.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.rules.context import GapInputs
from gateway.rules.errors import RuleInputError
from gateway.rules.hours import HourValue
from gateway.rules.policy_config import parse_policy_config
from gateway.rules.quarters import days_from_civil, quarter_of, split_at_quarters
from gateway.rules.substitution import substitute_gap

CST = 8  # China Standard Time, hours east of UTC


def epoch_hour(year: int, month: int, day: int, hour: int = 0, offset: int = CST) -> int:
    """The epoch hour (UTC) of a local wall time ``offset`` hours east of UTC."""
    moment = datetime(year, month, day, hour, tzinfo=UTC) - timedelta(hours=offset)
    return int(moment.timestamp()) // 3600


Q2 = epoch_hour(2026, 4, 1)  # 2026-04-01 00:00 CST = 2026-03-31 16:00 UTC
Q3 = epoch_hour(2026, 7, 1)  # 2026-07-01 00:00 CST = 2026-06-30 16:00 UTC; Q2 has 91 days = 2,184 hours


def hj75(**extra: Any) -> Any:
    return parse_policy_config({"selector": "hj75_tiered", "direction": "high", "default_value": 120.0, **extra},
                               require_fallbacks=False)


def q2_then_q3(q3: list[float | None], spike_at: int, spike: float) -> list[HourValue]:
    """Q2 2026 fully valid (30.0, one ``spike``), then the given Q3 hours from the quarter's first hour."""
    out = [HourValue(h, spike if h == spike_at else 30.0) for h in range(Q2, Q3)]
    out += [HourValue(Q3 + i, v) for i, v in enumerate(q3)]
    return out


def q3_hours(invalid_from: int, invalid_to: int, high_at: int) -> list[float | None]:
    """1,000 operating hours of Q3: an earlier closed gap [invalid_from, invalid_to), a 34.0 at ``high_at``,
    the gap under test at 980..989 (N = 10), valid hours 990..999 after it; every other value 30.0."""
    values: list[float | None] = []
    for i in range(1000):
        if invalid_from <= i < invalid_to or 980 <= i <= 989:
            values.append(None)
        else:
            values.append(34.0 if i == high_at else 30.0)
    return values


GAP = [Q3 + i for i in range(980, 990)]


def test_quarter_bounds_are_local_calendar_quarters() -> None:
    assert Q3 - Q2 == 91 * 24
    assert quarter_of(Q3, CST) == (Q3, epoch_hour(2026, 10, 1))
    assert quarter_of(Q3 - 1, CST) == (Q2, Q3)  # 2026-06-30 23:00 CST is still Q2
    assert quarter_of(Q3 - 1, 0) == (epoch_hour(2026, 4, 1, offset=0), epoch_hour(2026, 7, 1, offset=0))
    assert quarter_of(Q3 - 1, 0)[1] == Q3 + 8  # in UTC the same hour is 8 hours before Q3 ends


def test_alpha_81_percent_quarter_takes_the_2160_hour_window_not_the_diluted_180() -> None:
    """The reported defect: 34 came out where 80 is right.

    Q3 so far: 1,000 operating hours; invalid: 180 (an earlier gap, Q3+100..279) + 10 (this gap) = 190.
        alpha(Q3) = (1000 - 190) / 1000 = 810/1000 = 81.0 %  ->  75 <= alpha < 90: max of 2,160 valid hours.
    Valid hours before the gap start Q3+980: 700 (Q3+280..979) + 100 (Q3+0..99) = 800 in Q3, so the other
    1,360 are Q2's last 1,360 hours (Q3-1360..Q3-1); the 80.0 at Q3-500 is inside -> **80.0**.
    The old engine over all 3,184 hours: alpha = (2184 + 810) / 3184 = 94.03 % -> N = 10 <= 24 -> max of the
    180 valid hours Q3+800..979 = 34.0 (the wrong answer).
    """
    history = q2_then_q3(q3_hours(100, 280, 900), Q3 - 500, 80.0)
    res = substitute_gap(history, GAP, hj75(), point="so2", inputs=GapInputs())
    assert res.values() == (80.0,) * 10
    assert {r.detail.routine for r in res.records} == {"max_lookback(2160)"}
    alpha = res.gap.alpha
    assert alpha is not None
    assert (alpha.exact, alpha.rounded, alpha.qa_hours, alpha.operating_hours) == ("81/1", 81.0, 810, 1000)
    assert (alpha.quarter_start, alpha.quarter_end) == quarter_of(Q3, CST)
    assert alpha.quarter_closed is False  # quarter-to-date: re-evaluated at quarter close
    assert res.records[0].detail.citation.startswith("HJ 75-2017 table 8 (75 % <= alpha < 90 %)")


def test_alpha_below_75_percent_quarter_keeps_its_alarm_and_default() -> None:
    """The second reported defect: a quarter below 75 % lost its alarm and its default value.

    Q3 so far: 1,000 operating hours, invalid 300 (Q3+100..399) + 10 (this gap) = 310.
        alpha(Q3) = 690 / 1000 = 69.0 % < 75 %  ->  the configured default 120.0 and an alarm.
    The old engine: (2184 + 690) / 3184 = 90.26 % -> max of 180 valid hours = 34.0, no alarm.
    """
    history = q2_then_q3(q3_hours(100, 400, 900), Q3 - 500, 80.0)
    res = substitute_gap(history, GAP, hj75(), point="so2", inputs=GapInputs())
    assert res.values() == (120.0,) * 10
    assert res.alarm
    assert res.gap.alpha is not None
    assert res.gap.alpha.exact == "69/1"


def spanning_history() -> tuple[list[HourValue], list[int]]:
    """A gap of N = 8 hours, Q3-4 .. Q3+3: four hours in Q2, four in Q3.

    Q2: 2,184 operating hours, 4 invalid -> alpha = 2180/2184 = 99.82 % (closed quarter).
    Q3 so far: Q3+0..3 invalid, Q3+4..9 valid -> alpha = 6/10 = 60 % (< 75 %).
    Values before the gap: Q3-8 = 50.0, Q3-7 = 41.0, Q3-6 = 42.0, Q3-5 = 40.0 (others 30.0).
    """
    special = {Q3 - 8: 50.0, Q3 - 7: 41.0, Q3 - 6: 42.0, Q3 - 5: 40.0}
    gap = list(range(Q3 - 4, Q3 + 4))
    history = [HourValue(h, None if h in gap else special.get(h, 30.0)) for h in range(Q2, Q3 + 10)]
    return history, gap


def test_a_gap_across_a_quarter_boundary_is_judged_part_by_part() -> None:
    """Q2 part: alpha 99.82 % >= 90, N = 8 (the whole outage) <= 24 -> max of the window_short = 3 valid hours
    before the outage (Q3-7, Q3-6, Q3-5: 41, 42, 40) = **42.0**; the 50.0 at Q3-8 is outside.
    Q3 part: alpha 60 % < 75 -> default **120.0** and an alarm.
    The old engine took one alpha over all 2,194 hours, (2180 + 6) / 2194 = 99.64 %, and gave 42.0 to all eight
    hours, with no alarm.
    """
    history, gap = spanning_history()
    res = substitute_gap(history, gap, hj75(window_short=3, window_long=5, window_low_alpha=7), point="so2")
    assert res.values() == (42.0,) * 4 + (120.0,) * 4
    q2_part, q3_part = res.records[:4], res.records[4:]
    assert {r.gap.alpha.exact for r in q2_part if r.gap.alpha} == {"27250/273"}  # 100 x 2180/2184, reduced
    assert all(r.gap.alpha is not None and r.gap.alpha.quarter_closed for r in q2_part)
    assert {r.gap.alpha.exact for r in q3_part if r.gap.alpha} == {"60/1"}
    assert all(r.alarm for r in q3_part)
    assert not any(r.alarm for r in q2_part)
    assert {r.detail.n_used for r in res.records} == {8}  # N is the whole outage in both parts


def test_one_quarter_part_of_a_gap_may_be_asked_for_alone_and_keeps_the_whole_n() -> None:
    """The maximality check is relaxed for a quarter split only: the Q3 part alone is accepted, judged by Q3's
    alpha, with N = 8 (never the part's 4, which could select a more lenient window)."""
    history, gap = spanning_history()
    policy = hj75(window_short=3, window_long=5, window_low_alpha=7)
    q3_part = substitute_gap(history, gap[4:], policy, point="so2")
    assert q3_part.values() == (120.0,) * 4
    q2_part = substitute_gap(history, gap[:4], policy, point="so2")
    assert q2_part.values() == (42.0,) * 4
    assert {r.detail.n_used for r in q2_part.records} == {8}
    assert q2_part.gap.n == 8


def test_a_part_that_is_not_cut_at_a_quarter_boundary_is_still_refused() -> None:
    history, gap = spanning_history()
    policy = hj75(window_short=3, window_long=5, window_low_alpha=7)
    with pytest.raises(RuleInputError, match="not maximal"):
        substitute_gap(history, gap[4:6], policy, point="so2")


def test_a_given_alpha_is_an_audit_override_and_splits_nothing() -> None:
    history, gap = spanning_history()
    res = substitute_gap(history, gap, hj75(alpha_pct=95, window_short=3), point="so2")
    assert res.values() == (42.0,) * 8


def test_quarters_in_utc_when_configured() -> None:
    """With quarter_utc_offset_hours 0, UTC Q2 is [Q2 + 8, Q3 + 8): all eight gap hours (Q3-4 .. Q3+3) lie in it.
    Its operating hours in the history: Q2+8 .. Q3+7 = 2,184, of which 8 invalid -> alpha = 2176/2184 = 99.63 %
    -> N = 8 <= 24 -> max of 3 valid hours before the outage = 42.0 for all eight hours."""
    history, gap = spanning_history()
    res = substitute_gap(history, gap, hj75(window_short=3, quarter_utc_offset_hours=0), point="so2")
    assert res.values() == (42.0,) * 8
    assert res.gap.alpha is not None
    assert res.gap.alpha.exact == "27200/273"


@settings(max_examples=200, deadline=None)
@given(st.integers(-200_000, 600_000), st.lists(st.integers(1, 3000), min_size=1, max_size=40),
       st.integers(-12, 14))
def test_split_parts_cover_the_gap_exactly_each_in_one_quarter(start: int, steps: list[int], offset: int) -> None:
    hours = [start]
    for s in steps:
        hours.append(hours[-1] + s)
    parts = split_at_quarters(hours, offset)
    assert [h for part in parts for h in part] == hours
    quarters = [quarter_of(part[0], offset) for part in parts]
    for part, q in zip(parts, quarters, strict=True):
        assert all(q[0] <= h < q[1] for h in part)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(quarters))


@settings(max_examples=200, deadline=None)
@given(st.integers(-400_000, 900_000), st.integers(-12, 14))
def test_quarter_of_starts_on_the_first_of_jan_apr_jul_oct_local(hour: int, offset: int) -> None:
    start, end = quarter_of(hour, offset)
    assert start <= hour < end
    assert end - start in (90 * 24, 91 * 24, 92 * 24)
    local = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(hours=start + offset)
    assert (local.month, local.day, local.hour) in {(1, 1, 0), (4, 1, 0), (7, 1, 0), (10, 1, 0)}
    assert days_from_civil(local.year, local.month, local.day) * 24 - offset == start


def test_the_auditor_tool_answers_per_quarter_and_takes_as_of_hour(tmp_path: Any) -> None:
    """`carbon-gateway rules evaluate` gives the same per-quarter answer as the engine (42.0 x 4, 120.0 x 4), the
    alpha of the first part with its quarter, and with as_of_hour after Q3's end, Q3 counted as closed."""
    import io
    import json

    from gateway import audit

    history, gap = spanning_history()
    scenario = {"name": "span", "policy": "hj75_tiered",
                "params": {"direction": "high", "default_value": 120.0, "window_short": 3, "window_long": 5,
                           "window_low_alpha": 7, "as_of_hour": quarter_of(Q3, CST)[1]},
                "history": [[h.hour, h.value] for h in history], "gap": gap}
    path = tmp_path / "span.json"
    path.write_text(json.dumps(scenario), encoding="utf-8")
    out = io.StringIO()
    assert audit.main(str(path), out, io.StringIO()) == 0
    answer = json.loads(out.getvalue())
    assert answer["values"] == [42.0] * 4 + [120.0] * 4
    assert answer["alarm"] is True
    assert answer["trace"]["alpha"]["quarter_start"] == Q2
    last = answer["trace"]["hours"][-1]
    assert last["alarms"]
    # The Q3 part's hours carry their own quarter's alpha: 6 valid of 10 operating hours, closed as of Q3's end.
    assert (last["alpha"]["exact"], last["alpha"]["quarter_start"], last["alpha"]["quarter_closed"]) == (
        "60/1", Q3, True)
    assert "alpha" not in answer["trace"]["hours"][0]
