"""Running summaries (O(1) per point) give exactly what the list-based rules give on the same readings."""

from __future__ import annotations

import json
from dataclasses import astuple
from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.model import REASON_CALIBRATION, REASON_MAINTENANCE, Calibration, Quality, Reading
from gateway.rules.aggregates import PeriodRule, PeriodSummary, aggregate_period, summarize
from gateway.rules.totalizer import RunningTotal, TotalizerConfig, TotalizerPeriod, totalize_periods

MIN = 60_000
H = 3_600_000
T0 = 490_000 * H

any_value = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 1e308, -1e308, 0.1, 0.2, 0.3, 12.5]),
)
qualities = st.sampled_from([Quality.GOOD, Quality.GOOD, Quality.GOOD, Quality.UNCERTAIN, Quality.BAD])
reasons = st.sampled_from(["", "", "over_range", REASON_CALIBRATION, REASON_MAINTENANCE])
rules = st.one_of(st.just(PeriodRule.mrr()), st.just(PeriodRule.part75()),
                  st.fractions(min_value=Fraction(1, 100), max_value=1).map(PeriodRule.fraction))


def _key(x: Any) -> Any:
    """Floats by repr, so 0.0 and -0.0 (or two NaNs) are told apart: identical means identical."""
    return tuple(repr(v) if isinstance(v, float) else v for v in astuple(x))


@st.composite
def periods(draw: st.DrawFn) -> tuple[list[Reading], int, int]:
    period_ms = draw(st.sampled_from([H, 2 * H, 15 * MIN, 30 * MIN]))
    cadence_ms = draw(st.sampled_from([c for c in (1_000, 60_000, 5 * MIN, 15 * MIN) if c <= period_ms]))
    n = draw(st.integers(0, 80))
    readings = [Reading("m", "p", T0 + draw(st.integers(-period_ms // 4, period_ms + period_ms // 4)), draw(any_value),
                        "u", draw(qualities), draw(reasons), Calibration.VALID) for _ in range(n)]
    return readings, period_ms, cadence_ms


@settings(max_examples=400, deadline=None)
@given(periods(), rules, st.integers(0, 80))
def test_running_summary_equals_aggregate_period(case: tuple[list[Reading], int, int], rule: PeriodRule,
                                                 cut: int) -> None:
    readings, period_ms, cadence_ms = case
    expected = aggregate_period(readings, T0, period_ms=period_ms, cadence_ms=cadence_ms, rule=rule)
    summary = PeriodSummary(T0, period_ms)
    for i, r in enumerate(readings):
        if i == cut:  # a checkpoint and a restore in the middle change nothing
            summary = PeriodSummary.from_json(json.loads(json.dumps(summary.to_json(), allow_nan=False)))
        summary.add(r)
    assert _key(summarize(summary, cadence_ms=cadence_ms, rule=rule)) == _key(expected)


def test_running_summary_mean_is_the_exact_mean_not_a_float_sum() -> None:
    summary = PeriodSummary(T0, H)
    values = [0.1] * 10 + [1e16, 1.0, -1e16]
    for i, v in enumerate(values):
        summary.add(Reading("m", "p", T0 + i * MIN, v, "u", Quality.GOOD, "", Calibration.VALID))
    expected = aggregate_period([Reading("m", "p", T0 + i * MIN, v, "u", Quality.GOOD, "", Calibration.VALID)
                                 for i, v in enumerate(values)], T0, cadence_ms=MIN, rule=PeriodRule.fraction("0.1"))
    assert summarize(summary, cadence_ms=MIN, rule=PeriodRule.fraction("0.1")).mean == expected.mean
    assert expected.mean != sum(values) / len(values)  # the naive float sum would differ


def _reference_totals(readings: list[Reading], config: TotalizerConfig, period_ms: int) -> list[TotalizerPeriod]:
    """The runtime's totalizer as it was: the anchor plus every good reading of the open period, re-totalized."""
    out: list[TotalizerPeriod] = []
    anchor: Reading | None = None
    samples: list[Reading] = []
    period_start = 0
    for r in readings:
        if anchor is None:
            anchor, samples, period_start = r, [], r.ts_ms // period_ms * period_ms
            continue
        samples.append(r)
        if r.ts_ms < period_start + period_ms:
            continue
        seq = [anchor, *samples]
        current = r.ts_ms // period_ms * period_ms
        out += [p for p in totalize_periods(seq, config, period_ms=period_ms) if period_start <= p.start_ms < current]
        anchor, samples, period_start = seq[-2], [r], current
    return out


@st.composite
def counters(draw: st.DrawFn) -> list[Reading]:
    ts = T0 + draw(st.integers(0, H))
    value = draw(st.floats(0, 1000, allow_nan=False))
    out = []
    for _ in range(draw(st.integers(0, 60))):
        ts += draw(st.sampled_from([0, 1_000, 60_000, 600_000, 1_800_000, H, 3 * H + 17]))
        step = draw(st.one_of(st.floats(0, 50, allow_nan=False), st.sampled_from([-900.0, -5.0, 0.1, 0.2])))
        value = max(0.0, value + step) if draw(st.integers(0, 9)) else 0.0  # sometimes a reset to 0
        out.append(Reading("m", "t", ts, value, "kWh", Quality.GOOD, "", Calibration.VALID))
    return out


@settings(max_examples=300, deadline=None)
@given(counters(), st.sampled_from([None, 1000.0]), st.sampled_from([None, 100.0]),
       st.sampled_from([H, 15 * MIN]), st.integers(0, 60), st.sampled_from([None, 60.0, 900.0]),
       st.sampled_from(["high", "low"]))
def test_running_total_equals_the_list_based_totalizer(readings: list[Reading], rollover: float | None,
                                                       max_inc: float | None, period_ms: int, cut: int,
                                                       max_flow: float | None, direction: str) -> None:
    """Also with a maximum flow bounding the wraps (issue 10 item 2): substituted increments settle alike."""
    config = TotalizerConfig(max_interval_ms=90_000, rollover_at=rollover, max_increment=max_inc,
                             max_flow_per_h=max_flow, direction=direction)
    expected = _reference_totals(readings, config, period_ms)
    total = RunningTotal(period_ms)
    got: list[TotalizerPeriod] = []
    for i, r in enumerate(readings):
        if i == cut:
            total = RunningTotal.from_json(json.loads(json.dumps(total.to_json(), allow_nan=False)))
        assert r.value is not None
        got += total.feed(r.ts_ms, r.value, config)
    assert [_key(p) for p in got] == [_key(p) for p in expected]
