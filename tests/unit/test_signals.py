"""Simulated signals from profile hints: determinism, shapes, integration order, fault knob."""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

import pytest

from simulators.signals import SignalState


def profile(*points: tuple[str, dict[str, Any] | None]) -> dict[str, Any]:
    return {"profile": "t", "points": [{"name": n, **({"simulate": h} if h else {})} for n, h in points]}


POWER_AND_ENERGY = profile(
    ("energy", {"signal": "integrate", "of": "power", "factor": 0.5, "initial": 100.0}),  # before its source
    ("power", {"signal": "constant", "value": 10.0}),
    ("current", {"signal": "derived", "of": "power", "factor": 0.1, "offset": 1.0}),
    ("voltage", {"signal": "noise", "mean": 230.0, "amplitude": 3.0}),
    ("load", {"signal": "daily", "mean": 1000.0, "amplitude": 400.0}),
    ("status", {"signal": "status"}),
    ("live", {"signal": "status", "value": 1}),
    ("spare", None),
)


def run(seed: int, steps: int = 50) -> list[dict[str, float]]:
    state = SignalState(POWER_AND_ENERGY, seed=seed)
    return [state.step(60.0) for _ in range(steps)]


def test_same_seed_same_values_other_seed_other_values() -> None:
    assert run(1) == run(1)
    assert [v["voltage"] for v in run(1)] != [v["voltage"] for v in run(2)]


def test_initial_values() -> None:
    v = SignalState(POWER_AND_ENERGY).values
    assert v["energy"] == 100.0
    assert v["power"] == 10.0
    assert v["current"] == pytest.approx(2.0)
    assert v["status"] == 0
    assert v["live"] == 1
    assert v["spare"] == 0.0


def test_integrate_follows_its_source_whatever_the_declaration_order() -> None:
    state = SignalState(POWER_AND_ENERGY)
    for _ in range(10):
        state.step(2.0)  # += 10 * 2 * 0.5 per step
    assert state.values["energy"] == pytest.approx(200.0)
    assert state.time_s == 20.0


def test_totals_never_run_backwards() -> None:
    p = profile(("rate", {"signal": "noise", "mean": 0.0, "amplitude": 5.0}),
                ("total", {"signal": "integrate", "of": "rate", "factor": 1.0}))
    state = SignalState(p, seed=3)
    totals = [state.step(1.0)["total"] for _ in range(200)]
    assert all(b >= a for a, b in itertools.pairwise(totals))
    assert totals[-1] > 0


def test_noise_is_bounded_and_varies() -> None:
    volts = [v["voltage"] for v in run(5, 500)]
    assert all(227.0 <= x <= 233.0 for x in volts)
    assert max(volts) - min(volts) > 4.0


def test_daily_shape_low_at_midnight_high_at_noon() -> None:
    state = SignalState(POWER_AND_ENERGY, seed=0, start_s=0.0)
    by_hour = [state.values["load"]] + [state.step(3600.0)["load"] for _ in range(24)]
    assert by_hour[0] == pytest.approx(600.0, abs=0.02 * 400 + 1e-9)
    assert by_hour[12] == pytest.approx(1400.0, abs=0.02 * 400 + 1e-9)
    assert by_hour[24] == pytest.approx(600.0, abs=0.02 * 400 + 1e-9)  # repeats every day
    assert by_hour[0] < by_hour[6] < by_hour[12] > by_hour[18] > by_hour[24]
    assert all(1000.0 - 408.0 <= x <= 1000.0 + 408.0 for x in by_hour)


def test_status_fault_knob() -> None:
    state = SignalState(POWER_AND_ENERGY)
    state.set_status("status", 0b1001)
    assert state.values["status"] == 9
    assert state.step(1.0)["status"] == 9  # stays set across steps
    state.clear_status("status")
    assert state.values["status"] == 0
    assert state.step(1.0)["status"] == 0
    state.set_status("live", 0)
    assert state.step(1.0)["live"] == 0
    with pytest.raises(ValueError, match="power"):
        state.set_status("power", 1)


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ((("a", {"signal": "derived", "of": "b", "factor": 1.0}),
          ("b", {"signal": "integrate", "of": "a", "factor": 1.0})), "cycle"),
        ((("a", {"signal": "derived", "of": "ghost", "factor": 1.0}),), "ghost"),
        ((("a", {"signal": "sawtooth"}),), "sawtooth"),
        ((("a", {"signal": "noise", "mean": 1.0}),), "amplitude"),
    ],
)
def test_bad_hints_are_rejected(points: tuple[tuple[str, dict[str, Any]], ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SignalState(profile(*points))


@pytest.mark.parametrize("dt", [-1.0, math.nan, math.inf])
def test_bad_time_steps_are_rejected(dt: float) -> None:
    with pytest.raises(ValueError, match="time step"):
        SignalState(POWER_AND_ENERGY).step(dt)


def test_profile_is_not_modified_and_values_are_a_copy() -> None:
    before = copy.deepcopy(POWER_AND_ENERGY)
    state = SignalState(POWER_AND_ENERGY)
    state.step(10.0)
    state.values["power"] = -1.0
    assert state.values["power"] == 10.0
    assert before == POWER_AND_ENERGY
