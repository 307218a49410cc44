"""HJ 75 quarter close: alpha of the closed quarter re-judges the substitutes issued in it (issue 10 items 1, 8).

While a quarter runs only its quarter-to-date alpha exists, so the substitutes issued in it were chosen with a
provisional alpha. When the quarter closes its alpha is final: every gap hour of the quarter that already has a
substitute is evaluated again, and where the result changes (another tier, so another routine or value) a new
version is issued that supersedes the old one. Nothing is edited; unchanged hours get no new version.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from gateway.rules.context import GapInputs
from gateway.rules.hours import HourValue, check_history, find_gaps
from gateway.rules.policy_config import SubstitutionPolicy
from gateway.rules.quarters import quarter_of
from gateway.rules.substitution import substitute_gap
from gateway.rules.trace import SubstituteRecord

if TYPE_CHECKING:
    from gateway.rules.methods import Hj75Params


def quarter_offset(policy: SubstitutionPolicy | None) -> int | None:
    """The UTC offset of the quarters a policy's alpha is taken over; None when it re-judges nothing at a
    quarter close (not HJ 75, or alpha given as a number)."""
    if policy is None or policy.selector != "hj75_tiered":
        return None
    params: Hj75Params = policy.params  # type: ignore[assignment]
    return None if params.given_alpha is not None else params.quarter_utc_offset_hours


def reissue_at_quarter_close(history: Sequence[HourValue], policy: SubstitutionPolicy, *, point: str,
                             instrument: str = "", quarter_end_hour: int,
                             previous: Iterable[SubstituteRecord]) -> tuple[SubstituteRecord, ...]:
    """New versions for the hours of the quarter ending at ``quarter_end_hour`` whose substitute changes now that
    the quarter's alpha is final.

    ``history`` reaches at least the quarter's last hour; ``previous`` holds the substitutes issued so far (the
    newest version of each hour is the one compared and superseded; anything with the record's record_id,
    instrument, point, hour, version, value, status, routine and method_code will do). A gap still open at
    the close is evaluated as open (provisional); a gap running on into the next quarter keeps its whole N.
    """
    offset = quarter_offset(policy)
    if offset is None:
        return ()
    hist = tuple(history)
    check_history(hist)
    if not hist:
        return ()
    q_start, q_end = quarter_of(quarter_end_hour - 1, offset)
    prev = tuple(previous)
    latest: dict[int, Any] = {}
    for record in prev:
        if record.instrument == instrument and record.point == point and q_start <= record.hour < q_end:
            known = latest.get(record.hour)
            if known is None or record.version > known.version:
                latest[record.hour] = record
    if not latest:
        return ()
    out: list[SubstituteRecord] = []
    for gap in find_gaps(hist):
        if not any(h in latest for h in gap.hours):
            continue
        is_open = gap.end == hist[-1].hour
        result = substitute_gap(hist, gap.hours, policy, point=point, instrument=instrument,
                                inputs=GapInputs(gap_open=is_open), previous=prev)
        for record in result.records:
            before = latest.get(record.hour)
            if before is None:
                continue  # not issued yet (an hour of the next quarter): its own evaluation issues it
            # A previous record without its routine (restored from an older trace) is compared on the rest.
            routine = getattr(before, "routine", "") or record.routine
            if (record.value, record.routine, record.method_code, record.status) != (
                    before.value, routine, before.method_code, before.status):
                out.append(record)
    return tuple(out)


__all__ = ["quarter_offset", "reissue_at_quarter_close"]
