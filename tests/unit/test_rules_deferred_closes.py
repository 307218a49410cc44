"""Deferred period closes (RulesStage.defer_closes, made by take_closes() a slice per commit so that 10,000
points closing together do not hold the event loop): every point gets exactly the records, in the same
order, that closing at once gives, whatever the slices, readings, silences, overloads and clock steps; a
point whose close is not made yet is left out of the checkpoint."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.instruments import InstrumentSpec
from gateway.model import Derived
from gateway.registry import load_config
from gateway.rules_stage import RulesStage
from tests.helpers import write_config
from tests.unit.test_rules_tick_due import T0, H, readings
from tests.unit.test_rules_tick_many import INSTRUMENTS

CADENCE = 1000


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> list[InstrumentSpec]:
    return list(load_config(write_config(tmp_path_factory.mktemp("cfg"), INSTRUMENTS)).instruments)


def by_point(records: list[Derived]) -> dict[tuple[str, str, str], list[str]]:
    out: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for d in records:
        out[(d.kind, d.instrument, d.point)].append(json.dumps([d.ts_ms, d.body], sort_keys=True))
    return dict(out)


delta = st.one_of(st.sampled_from([0, 1, 1000, 1500, 1501, 59_000, 60_000, 61_000, 61_001, H]),
                  st.integers(0, 200_000))
op = st.one_of(
    st.tuples(st.just("poll"), delta, st.sampled_from([0, 1, 2]), st.sampled_from(["good", "bad", "nan", "same"])),
    st.tuples(st.just("tick"), delta, st.just(0), st.just("")),
    st.tuples(st.just("take"), st.integers(0, 3), st.just(0), st.just("")),
    st.tuples(st.just("overload"), st.booleans(), st.just(0), st.just("")),
    st.tuples(st.just("step"), st.integers(-H, H), st.just(0), st.just("")),
    st.tuples(st.just("checkpoint"), st.just(0), st.just(0), st.just("")),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, min_size=1, max_size=80))
def test_deferred_closes_give_the_records_of_closing_at_once(specs: list[InstrumentSpec],
                                                            ops: list[tuple[str, Any, int, str]]) -> None:
    ref, lazy = RulesStage(specs, now_ms=T0), RulesStage(specs, now_ms=T0)
    lazy.defer_closes = True
    got_ref: list[Derived] = []
    got_lazy: list[Derived] = []
    now = T0
    for n, (kind, arg, which, how) in enumerate(ops):
        if kind == "poll":
            now += arg
            polled = specs if which == 2 else [specs[which]]
            batch = [r for s in polled for r in readings(s, now, how, n)]
            out_ref, d_ref = ref.process(batch)
            out_lazy, d_lazy = lazy.process(batch)
            assert out_ref == out_lazy  # the readings are judged the same
            got_ref += d_ref
            got_lazy += d_lazy
        elif kind == "tick":
            now += arg
            got_ref += ref.tick(now)
            got_lazy += lazy.tick(now)
        elif kind == "take":
            got_lazy += lazy.take_closes(arg)
        elif kind == "overload":
            got_ref += ref.set_overloaded(arg, now)
            got_lazy += lazy.set_overloaded(arg, now)
        elif kind == "step":
            now += arg
            got_ref += ref.on_clock_step(arg, now)
            got_lazy += lazy.on_clock_step(arg, now)
        else:
            cp_ref, cp_lazy = ref.checkpoint(), lazy.checkpoint()
            assert set(cp_lazy) <= set(cp_ref)
            for key, text in cp_lazy.items():
                assert text == cp_ref[key]
    got_lazy += lazy.take_closes()
    assert lazy.closes_pending() == 0
    assert by_point(got_lazy) == by_point(got_ref)
    assert lazy.checkpoint() == ref.checkpoint()


def test_ten_thousand_points_close_in_slices(specs: list[InstrumentSpec]) -> None:
    """A close of every point is O(1) each in process(); the records come a slice at a time."""
    stage = RulesStage(specs, now_ms=T0)
    stage.defer_closes = True
    second = specs[1]  # 60 s periods at 1 s
    for s in range(61):
        _, derived = stage.process(readings(second, T0 + s * CADENCE, "good", s))
        assert not [d for d in derived if d.kind == "aggregates"]
    assert stage.closes_pending() == len(second.points)
    first = stage.take_closes(1)
    assert [d.kind for d in first] == ["aggregates"]
    rest = stage.take_closes(10)
    assert len(rest) == len(second.points) - 1
    assert stage.closes_pending() == 0
