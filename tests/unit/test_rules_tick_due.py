"""tick() skips the walk over every point until one of them is due: the records must be exactly those of a
walk at every tick, whatever the readings, silences, overloads and clock steps in between."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway import rules_stage
from gateway.instruments import InstrumentSpec
from gateway.model import Calibration, Quality, Reading
from gateway.registry import load_config
from gateway.rules_stage import RulesStage
from tests.helpers import write_config

H = 3_600_000
T0 = 490_000 * H
CADENCE = 60_000

INSTRUMENT = """\
instruments:
  - id: CEMS-01
    name: stack CEMS
    kind: gas_analyzer
    measuring_range: {min: 0, max: 25, unit: "%vol"}
    profile: cems_generic
    only_points: [co2, o2, co2_total]
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15022, unit_id: 1}
    poll_interval_s: 60
    points:
      - name: co2
        feeds_emissions: true
        direction: high
        missing_data: {selector: part75_tiered, kind: conc, max_potential: 15.0,
                       citation: "40 CFR 75.33(b) via 75.35(d)"}
"""


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> list[InstrumentSpec]:
    return list(load_config(write_config(tmp_path_factory.mktemp("cfg"), INSTRUMENT)).instruments)


class WalkEveryTick(RulesStage):
    """The reference: the walk over every point at every tick, as before the due time existed."""

    def tick(self, now_ms: int) -> list[Any]:
        self._tick_due = rules_stage._FORCE
        return super().tick(now_ms)


# Time moves by amounts that land on the edges: a gap opens after 1.5 cadences, a period closes one cadence
# after its end.
delta = st.one_of(st.sampled_from([0, 1, CADENCE // 2, CADENCE, CADENCE + CADENCE // 2, CADENCE + CADENCE // 2 + 1,
                                   H - CADENCE, H, H + CADENCE, H + CADENCE + 1]),
                  st.integers(0, 2 * H))
op = st.one_of(
    st.tuples(st.just("poll"), delta, st.sampled_from(["good", "bad", "nan", "same"])),
    st.tuples(st.just("tick"), delta, st.just("")),
    st.tuples(st.just("overload"), st.booleans(), st.just("")),
    st.tuples(st.just("step"), st.integers(-2 * H, 2 * H), st.just("")),
)


def readings(spec: InstrumentSpec, ts: int, kind: str, n: int) -> list[Reading]:
    out = []
    for p in spec.points:
        if kind == "bad":
            out.append(Reading(spec.id, p.name, ts, None, p.unit, Quality.BAD, "no_communication",
                               Calibration.VALID))
        else:
            value = float("nan") if kind == "nan" else 5.0 if kind == "same" else 5.0 + (n % 7) * 0.5
            out.append(Reading(spec.id, p.name, ts, value, p.unit, Quality.GOOD, "", Calibration.VALID))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, min_size=1, max_size=60))
@example(ops=[("poll", 0, "good"), ("tick", H + CADENCE - 1, ""), ("tick", 1, ""), ("tick", 1, "")])
@example(ops=[("poll", 0, "good"), ("overload", True, ""), ("tick", 2 * CADENCE, ""), ("tick", H, ""),
              ("poll", 0, "good"), ("tick", 2 * CADENCE, ""), ("overload", False, ""), ("tick", 2 * CADENCE, "")])
@example(ops=[("poll", 0, "good"), ("tick", CADENCE + CADENCE // 2, ""), ("tick", 1, ""), ("tick", 1, "")])
@example(ops=[("poll", 0, "bad"), ("poll", 0, "good"), ("tick", CADENCE + CADENCE // 2, ""), ("tick", 1, "")])
def test_tick_due_gives_the_records_of_a_walk_at_every_tick(specs: list[InstrumentSpec],
                                                            ops: list[tuple[str, Any, str]]) -> None:
    fast, ref = RulesStage(specs, now_ms=T0), WalkEveryTick(specs, now_ms=T0)
    now = T0
    for n, (kind, arg, how) in enumerate(ops):
        if kind == "poll":
            now += arg
            batch = [r for s in specs for r in readings(s, now, how, n)]
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
