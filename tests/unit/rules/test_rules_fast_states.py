"""The per-reading shortcuts in the gap ledger and the validity state build exactly the states of the plain
code: the same fields, equal and hashing alike."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.rules import gaps
from gateway.rules.gaps import GapCause, GapRules, GapState
from gateway.rules.validity import ValidityState, _track

ts = st.integers(0, 10_000_000)
causes = st.none() | st.sampled_from(list(GapCause))


def reference_feed(state: GapState, ts_ms: int, valid: bool, reason: str,
                   rules: GapRules) -> tuple[GapState, gaps.Events]:
    """gaps.feed without its shortcut for the on-time valid reading."""
    if state.last_seen_ms is not None and ts_ms < state.last_seen_ms:
        return state, ()
    state, events = gaps.tick(state, ts_ms, rules)
    if valid:
        if state.open_start_ms is not None and state.open_cause is not None:
            events += (gaps.GapEvent("close", state.instrument, state.point, state.open_start_ms, ts_ms,
                                     state.open_cause),)
        return GapState(state.instrument, state.point, ts_ms, ts_ms), events
    pending = state.pending_cause or gaps.cause_for_reason(reason)
    return replace(state, last_seen_ms=ts_ms, pending_cause=pending), events


@settings(max_examples=2000, deadline=None)
@given(state=st.builds(GapState, st.sampled_from(["m1", "m2"]), st.sampled_from(["p", "q"]), ts, st.none() | ts,
                       st.none() | ts, causes, causes),
       ts_ms=ts, valid=st.booleans(), reason=st.sampled_from(["", "timeout", "nan", "maintenance"]),
       rules=st.builds(GapRules, st.integers(1, 100_000), st.none() | st.integers(0, 100_000)))
def test_feed_matches_the_plain_ledger(state: GapState, ts_ms: int, valid: bool, reason: str, rules: GapRules) -> None:
    got, want = gaps.feed(state, ts_ms, valid, reason, rules), reference_feed(state, ts_ms, valid, reason, rules)
    assert got == want
    assert hash(got[0]) == hash(want[0])
    assert type(got[0]) is GapState


@settings(max_examples=1000, deadline=None)
@given(value=st.floats(-1e6, 1e6), ts_ms=ts,
       state=st.builds(ValidityState, st.none() | ts, st.none() | st.floats(-10, 10), st.none() | ts,
                       st.none() | st.sampled_from([0.0, 1.5, -2.0]), st.integers(0, 5), st.none() | ts),
       rate_ok=st.booleans())
def test_track_builds_the_dataclass_state(value: float, ts_ms: int, state: ValidityState, rate_ok: bool) -> None:
    got = _track(value, ts_ms, state, rate_ok)
    same = value == state.same_value
    want = ValidityState(ts_ms, value if rate_ok else state.ref_value, ts_ms if rate_ok else state.ref_ts_ms, value,
                         state.same_count + 1 if same else 1, state.same_since_ms if same else ts_ms)
    assert got == want
    assert hash(got) == hash(want)
    assert repr(got) == repr(want)
