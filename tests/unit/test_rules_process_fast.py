"""process() takes the usual reading (good, no clock step, inside the open period) without the calls of the
step-by-step path: its output, records and state must be exactly those of the step-by-step path, whatever the
readings (bad, NaN, frozen, late, out of order), silences, overloads and clock steps."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import rules_stage
from gateway.instruments import InstrumentSpec
from gateway.model import Calibration, Derived, Quality, Reading
from gateway.registry import load_config
from gateway.rules_stage import RulesStage
from tests.helpers import write_config
from tests.unit.test_rules_tick_due import T0, H
from tests.unit.test_rules_tick_due import readings as basic_readings
from tests.unit.test_rules_tick_many import INSTRUMENTS


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> list[InstrumentSpec]:
    return list(load_config(write_config(tmp_path_factory.mktemp("cfg"), INSTRUMENTS)).instruments)


def readings(spec: InstrumentSpec, ts: int, kind: str, n: int) -> list[Reading]:
    """test_rules_tick_due's kinds, plus over range (uncertain), a reason from the meter, an expired calibration."""
    if kind in ("good", "bad", "nan", "same"):
        return basic_readings(spec, ts, kind, n)
    value = 30.0 if kind == "over" else 5.0 + (n % 3)
    reason = "device_maintenance_required" if kind == "reason" else ""
    calibration = Calibration.EXPIRED if kind == "expired" else Calibration.VALID
    return [Reading(spec.id, p.name, ts, value, p.unit, Quality.GOOD, reason, calibration) for p in spec.points]


class StepByStep(RulesStage):
    def process(self, readings: Sequence[Reading]) -> tuple[list[Reading], list[Derived]]:
        """process() as it was before its fast path: step by step through _judge, feed_reading, _add_sample."""
        out: list[Reading] = []
        derived: list[Derived] = self._startup
        self._startup = []
        for r in readings:
            key = (r.instrument, r.point)
            st = self._points.get(key)
            if st is None:
                out.append(r)
                continue
            if st.step is not None and st.step.is_new_side(r.ts_ms):
                derived.extend(self._apply_step(st))
            r = self._judge(st, r)
            out.append(r)
            if self._overloaded and not st.gap.is_open and r.ts_ms - st.gap.reference_ms > st.rules.gaps.allowed_ms:
                derived.extend(self._overload_open(st))
                st.gap = dataclasses.replace(st.gap, reference_ms=r.ts_ms)
            st.gap, events = rules_stage.gaps.feed_reading(st.gap, r, st.rules.gaps)
            if events:
                derived.extend(self._event(e) for e in events)
            derived.extend(self._add_sample(st, r))
            due = st.due = rules_stage._due(st)
            if due < self._tick_due:
                self._tick_due = due
        return out, derived



delta = st.one_of(st.sampled_from([-1000, -1, 0, 1, 1000, 1500, 1501, 59_000, 60_000, 61_000, 61_001, H]),
                  st.integers(0, 200_000))
op = st.one_of(
    st.tuples(st.just("poll"), delta, st.sampled_from([0, 1, 2]),
              st.sampled_from(["good", "bad", "nan", "same", "over", "reason", "expired"])),
    st.tuples(st.just("tick"), delta, st.just(0), st.just("")),
    st.tuples(st.just("overload"), st.booleans(), st.just(0), st.just("")),
    st.tuples(st.just("step"), st.integers(-H, H), st.just(0), st.just("")),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, min_size=1, max_size=80), defer=st.booleans())
def test_fast_process_equals_the_step_by_step_path(specs: list[InstrumentSpec], ops: list[tuple[str, Any, int, str]],
                                                   defer: bool) -> None:
    fast, ref = RulesStage(specs, now_ms=T0), StepByStep(specs, now_ms=T0)
    fast.defer_closes = ref.defer_closes = defer
    now = T0
    for n, (kind, arg, which, how) in enumerate(ops):
        if kind == "poll":
            now += arg
            polled = specs if which == 2 else [specs[which]]
            batch = [r for s in polled for r in readings(s, now, how, n)]
            assert fast.process(batch) == ref.process(batch)
        elif kind == "tick":
            now += max(0, arg)
            assert fast.tick(now) == ref.tick(now)
        elif kind == "overload":
            assert fast.set_overloaded(arg, now) == ref.set_overloaded(arg, now)
        else:
            now += arg
            assert fast.on_clock_step(arg, now) == ref.on_clock_step(arg, now)
        assert fast.take_closes(1) == ref.take_closes(1)
        assert fast.checkpoint() == ref.checkpoint()
