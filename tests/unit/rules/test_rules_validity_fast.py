"""check() has a fast path for readings that pass every rule: it must judge exactly as the general path."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.model import NE107, Calibration, Quality
from gateway.rules.validity import HEALTHY, DeviceHealth, ValidityRules, ValidityState, _check, check

finite = st.floats(-1e6, 1e6, allow_nan=False)
maybe = st.none() | finite
values = st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 5.0, 100.0])
ts = st.integers(0, 10_000_000)


@st.composite
def rules(draw: st.DrawFn) -> ValidityRules:
    lo, hi = sorted([draw(finite), draw(finite)])
    plo, phi = sorted([draw(finite), draw(finite)])
    return ValidityRules(
        range_low=draw(st.none() | st.just(lo)), range_high=draw(st.none() | st.just(hi)),
        physical_min=draw(st.none() | st.just(plo)), physical_max=draw(st.none() | st.just(phi)),
        max_rate_per_s=draw(st.none() | st.floats(0, 1e3)), frozen_count=draw(st.none() | st.integers(2, 5)),
        frozen_seconds=draw(st.none() | st.floats(0.001, 1e4)),
        calibration_expired=draw(st.sampled_from([Quality.UNCERTAIN, Quality.BAD])),
        frozen_ignores_zero=draw(st.booleans()))


states = st.builds(ValidityState, st.none() | ts, maybe | st.sampled_from([5.0, 0.0]), st.none() | ts,
                   maybe | st.sampled_from([5.0, 0.0]), st.integers(0, 6), st.none() | ts)
healths = st.just(HEALTHY) | st.builds(DeviceHealth, st.frozensets(st.sampled_from(list(NE107))), st.booleans(),
                                       st.booleans())


@settings(max_examples=3000, deadline=None)
@given(value=values, ts_ms=ts, state=states, rules=rules(), calibration=st.sampled_from(list(Calibration)),
       health=healths)
def test_fast_path_judges_as_the_general_path(value: float | None, ts_ms: int, state: ValidityState,
                                              rules: ValidityRules, calibration: Calibration,
                                              health: DeviceHealth) -> None:
    got = check(value, ts_ms, state, rules, calibration=calibration, health=health)
    want = _check(value, ts_ms, state, rules, calibration, health)
    # NaN in a state compares unequal to itself: then compare the text
    assert got == want or ((got.quality, got.reason, got.failed) == (want.quality, want.reason, want.failed)
                           and str(got.state) == str(want.state))
