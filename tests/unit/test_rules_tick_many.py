"""tick() walks only when a point is due and reads each point's cached due time: with several instruments polled at
different times and cadences, its records must be exactly those of a walk over every point at every tick,
in the same order."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.instruments import InstrumentSpec
from gateway.registry import load_config
from gateway.rules_stage import RulesStage
from tests.helpers import write_config
from tests.unit.test_rules_tick_due import CADENCE, T0, H, WalkEveryTick, readings

INSTRUMENTS = """\
instruments:
  - id: CEMS-01
    name: stack CEMS
    kind: gas_analyzer
    measuring_range: {min: 0, max: 25, unit: "%vol"}
    profile: cems_generic
    only_points: [co2, o2, co2_total]
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15022, unit_id: 1}
    poll_interval_s: 60
  - id: CEMS-02
    name: second stack
    kind: gas_analyzer
    measuring_range: {min: 0, max: 25, unit: "%vol"}
    profile: cems_generic
    only_points: [co2, o2]
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15023, unit_id: 1}
    poll_interval_s: 1
    points:
      - {name: co2, aggregate: {period_s: 60}}
      - {name: o2, aggregate: {period_s: 60}}
"""


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> list[InstrumentSpec]:
    return list(load_config(write_config(tmp_path_factory.mktemp("cfg"), INSTRUMENTS)).instruments)


delta = st.one_of(st.sampled_from([0, 1, 63, 64, 500, 1000, 1500, 1501, 2000, CADENCE, CADENCE + CADENCE // 2 + 1,
                                   H - CADENCE, H + CADENCE]),
                  st.integers(0, 3 * CADENCE))
op = st.one_of(
    st.tuples(st.just("poll"), delta, st.sampled_from([0, 1, 2]), st.sampled_from(["good", "bad", "nan", "same"])),
    st.tuples(st.just("tick"), delta, st.just(0), st.just("")),
    st.tuples(st.just("overload"), st.booleans(), st.just(0), st.just("")),
    st.tuples(st.just("step"), st.integers(-H, H), st.just(0), st.just("")),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, min_size=1, max_size=80))
def test_cached_due_gives_the_records_of_a_walk_at_every_tick(specs: list[InstrumentSpec],
                                                              ops: list[tuple[str, Any, int, str]]) -> None:
    fast, ref = RulesStage(specs, now_ms=T0), WalkEveryTick(specs, now_ms=T0)
    now = T0
    for n, (kind, arg, which, how) in enumerate(ops):
        if kind == "poll":
            now += arg
            polled = specs if which == 2 else [specs[which]]
            batch = [r for s in polled for r in readings(s, now, how, n)]
            assert fast.process(batch) == ref.process(batch)
        elif kind == "tick":
            now += arg
            assert fast.tick(now) == ref.tick(now)
        elif kind == "overload":
            assert fast.set_overloaded(arg, now) == ref.set_overloaded(arg, now)
        else:
            now += arg
            assert fast.on_clock_step(arg, now) == ref.on_clock_step(arg, now)
    assert fast.checkpoint() == ref.checkpoint()
