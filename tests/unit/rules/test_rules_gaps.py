"""Gap ledger: open and close events, causes, start-up after the gateway was down."""

from __future__ import annotations

import pytest

from gateway.model import Calibration, Quality, Reading
from gateway.rules import gaps
from gateway.rules.gaps import GapCause, GapEvent, GapRules, GapState

RULES = GapRules(cadence_ms=1_000, grace_ms=500)  # a gap opens after more than 1.5 s without a valid reading


def run(state: GapState, readings: list[tuple[int, bool, str]]) -> tuple[GapState, list[GapEvent]]:
    events: list[GapEvent] = []
    for ts, valid, reason in readings:
        state, new = gaps.feed(state, ts, valid, reason, RULES)
        events.extend(new)
    return state, events


def test_no_gap_at_exactly_the_allowed_silence() -> None:
    state, events = run(gaps.start("i", "p", 0), [(1_000, True, ""), (2_500, True, "")])
    assert events == []
    assert not state.is_open


def test_gap_opens_just_past_the_allowed_silence_and_closes_on_the_next_valid_reading() -> None:
    state, events = run(gaps.start("i", "p", 0), [(1_000, True, ""), (2_501, True, "")])
    assert not state.is_open
    assert [e.kind for e in events] == ["open", "close"]
    assert events[0] == GapEvent("open", "i", "p", 1_000, None, GapCause.COMMUNICATION_LOSS)
    assert events[1] == GapEvent("close", "i", "p", 1_000, 2_501, GapCause.COMMUNICATION_LOSS)


@pytest.mark.parametrize(
    ("reason", "cause"),
    [("nan", GapCause.INVALID_DATA), ("physical_limit", GapCause.INVALID_DATA),
     ("no_communication", GapCause.COMMUNICATION_LOSS), ("timeout", GapCause.COMMUNICATION_LOSS),
     ("maintenance", GapCause.DEVICE_MAINTENANCE), ("calibration", GapCause.DEVICE_MAINTENANCE)],
)
def test_cause_comes_from_the_first_invalid_reading(reason: str, cause: GapCause) -> None:
    state, events = run(gaps.start("i", "p", 0), [(0, True, ""), (1_000, False, reason), (2_000, False, "nan")])
    assert events == [GapEvent("open", "i", "p", 0, None, cause)]
    assert state.is_open


def test_tick_opens_a_gap_on_silence_and_never_closes_one() -> None:
    state = gaps.feed(gaps.start("i", "p", 0), 0, True, "", RULES)[0]
    same, none = gaps.tick(state, 1_500, RULES)
    assert none == ()
    assert same == state
    opened, events = gaps.tick(state, 1_501, RULES)
    assert events == (GapEvent("open", "i", "p", 0, None, GapCause.COMMUNICATION_LOSS),)
    assert gaps.tick(opened, 99_000, RULES) == (opened, ())


def test_out_of_order_reading_is_ignored() -> None:
    state, _ = run(gaps.start("i", "p", 0), [(5_000, True, "")])
    assert gaps.feed(state, 4_000, True, "", RULES) == (state, ())


def test_feed_reading_treats_uncertain_as_not_valid() -> None:
    state = gaps.start("i", "p", 0)
    r = Reading("i", "p", 2_000, 1.0, "kg/h", Quality.UNCERTAIN, "over_range", Calibration.VALID)
    state, events = gaps.feed_reading(state, r, RULES)
    assert events[0].cause is GapCause.COMMUNICATION_LOSS  # silence 0..2 s came first
    good = Reading("i", "p", 3_000, 1.0, "kg/h", Quality.GOOD, "", Calibration.VALID)
    state, events = gaps.feed_reading(state, good, RULES)
    assert events == (GapEvent("close", "i", "p", 0, 3_000, GapCause.COMMUNICATION_LOSS),)


def test_resume_after_gateway_down_opens_a_gateway_down_gap() -> None:
    state, events = gaps.resume("i", "p", now_ms=100_000, rules=RULES, last_record_ms=10_000, last_valid_ms=10_000)
    assert events == (GapEvent("open", "i", "p", 10_000, None, GapCause.GATEWAY_DOWN),)
    state, events2 = gaps.feed(state, 101_000, True, "", RULES)
    assert events2 == (GapEvent("close", "i", "p", 10_000, 101_000, GapCause.GATEWAY_DOWN),)


def test_resume_recent_record_no_gap_and_stored_open_gap_stays_open() -> None:
    state, events = gaps.resume("i", "p", now_ms=11_000, rules=RULES, last_record_ms=10_000, last_valid_ms=10_000)
    assert events == ()
    assert not state.is_open
    state, events = gaps.resume("i", "p", now_ms=99_000, rules=RULES, last_record_ms=50_000, last_valid_ms=1_000,
                                open_gap=(1_000, GapCause.DEVICE_MAINTENANCE))
    assert events == ()
    assert state.open_cause is GapCause.DEVICE_MAINTENANCE
    _, close = gaps.feed(state, 99_500, True, "", RULES)
    assert close == (GapEvent("close", "i", "p", 1_000, 99_500, GapCause.DEVICE_MAINTENANCE),)


def test_resume_with_recent_invalid_records_opens_invalid_data_gap() -> None:
    _, events = gaps.resume("i", "p", now_ms=10_100, rules=RULES, last_record_ms=10_000, last_valid_ms=5_000)
    assert events == (GapEvent("open", "i", "p", 5_000, None, GapCause.INVALID_DATA),)
    state, events = gaps.resume("i", "p", now_ms=10_100, rules=RULES, last_record_ms=None, last_valid_ms=None)
    assert (state.reference_ms, events) == (10_100, ())


def test_default_grace_is_half_a_cadence_and_events_serialise() -> None:
    assert GapRules(cadence_ms=10_000).allowed_ms == 15_000
    event = GapEvent("open", "i", "p", 1, None, GapCause.GATEWAY_DOWN)
    assert event.to_json() == {"kind": "open", "instrument": "i", "point": "p", "start_ms": 1, "end_ms": None,
                               "cause": "gateway_down"}
    with pytest.raises(ValueError, match="cadence_ms"):
        GapRules(cadence_ms=0)
