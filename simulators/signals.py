"""Time-varying point values for meter simulators, driven by the `simulate:` hints of a profile (pure, no I/O).

Hints (values are in the point's device unit):
    {signal: constant, value: X}
    {signal: noise, mean: X, amplitude: A}          uniform in [mean - A, mean + A]
    {signal: daily, mean: X, amplitude: A}          24 h cosine (lowest at midnight, highest at noon)
                                                    plus noise of 2 % of A
    {signal: integrate, of: P, factor: F[, initial: I]}   total += max(P, 0) * dt_s * F
    {signal: derived, of: P, factor: F[, offset: O]}      P * F + O
    {signal: status[, value: V]}                    V (default 0) unless set_status() set a fault
A point without a hint is a constant 0. Everything is reproducible from the seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

_DAY_S = 86_400.0
_DAILY_NOISE = 0.02  # share of the daily amplitude added as noise, so a day is not a perfect curve
_SIGNALS = {
    "constant": {"value"},
    "noise": {"mean", "amplitude"},
    "daily": {"mean", "amplitude"},
    "integrate": {"of", "factor"},
    "derived": {"of", "factor"},
    "status": set(),
}


def _hints(profile: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    hints: dict[str, dict[str, Any]] = {}
    for point in profile.get("points", ()):
        name = point["name"]
        hint = dict(point.get("simulate") or {"signal": "constant", "value": 0.0})
        signal = hint.get("signal")
        if signal not in _SIGNALS:
            raise ValueError(f"{name}: unknown simulate signal {signal!r}")
        missing = _SIGNALS[signal] - hint.keys()
        if missing:
            raise ValueError(f"{name}: simulate {signal} needs {', '.join(sorted(missing))}")
        hints[name] = hint
    return hints


def _evaluation_order(hints: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Points in profile order, except that a point comes after the point its `of` names."""
    for name, hint in hints.items():
        if "of" in hint and hint["of"] not in hints:
            raise ValueError(f"{name}: simulate refers to unknown point {hint['of']!r}")
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = being visited, 2 = placed

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise ValueError(f"simulate hints form a cycle: {' -> '.join((*path, name))}")
        state[name] = 1
        source = hints[name].get("of")
        if source is not None:
            visit(source, (*path, name))
        state[name] = 2
        order.append(name)

    for name in hints:
        visit(name, ())
    return order


class SignalState:
    """The simulated values of one device. `step(dt_s)` advances time and returns the new values."""

    def __init__(self, profile: Mapping[str, Any], *, seed: int = 0, start_s: float = 0.0) -> None:
        """`start_s`: simulated time of the first values, in seconds (time of day matters for `daily`)."""
        self._hints = _hints(profile)
        self._order = _evaluation_order(self._hints)
        self._rng = random.Random(seed)
        self._faults: dict[str, int] = {}
        self._values: dict[str, float] = {}
        self.time_s = float(start_s)
        for name in self._order:  # totals start at their initial value; nothing integrates yet
            hint = self._hints[name]
            self._values[name] = float(hint.get("initial", 0.0)) if hint["signal"] == "integrate" else 0.0
        self._evaluate(0.0)

    @property
    def values(self) -> dict[str, float]:
        """A copy of the current values, {point name: value in device unit}."""
        return dict(self._values)

    def set_status(self, point: str, bits: int) -> None:
        """Fault knob: make a `status` point read `bits` until cleared with `clear_status`."""
        if self._hints.get(point, {}).get("signal") != "status":
            raise ValueError(f"{point} is not a status point")
        self._faults[point] = int(bits)
        self._values[point] = int(bits)

    def clear_status(self, point: str) -> None:
        self._faults.pop(point, None)
        self._values[point] = int(self._hints[point].get("value", 0))

    def step(self, dt_s: float) -> dict[str, float]:
        """Advance by `dt_s` seconds (>= 0) and return the new values."""
        if not (dt_s >= 0 and math.isfinite(dt_s)):
            raise ValueError(f"time step must be a finite number >= 0, got {dt_s!r}")
        self.time_s += dt_s
        self._evaluate(dt_s)
        return self.values

    def _evaluate(self, dt_s: float) -> None:
        v, rng = self._values, self._rng
        for name in self._order:
            h = self._hints[name]
            signal = h["signal"]
            if signal == "constant":
                v[name] = float(h["value"])
            elif signal == "noise":
                v[name] = h["mean"] + h["amplitude"] * rng.uniform(-1.0, 1.0)
            elif signal == "daily":
                phase = 2.0 * math.pi * (self.time_s % _DAY_S) / _DAY_S
                wobble = _DAILY_NOISE * rng.uniform(-1.0, 1.0)
                v[name] = h["mean"] - h["amplitude"] * (math.cos(phase) - wobble)
            elif signal == "integrate":
                # A totalizer never runs backwards, whatever its rate does.
                v[name] += max(v[h["of"]], 0.0) * dt_s * h["factor"]
            elif signal == "derived":
                v[name] = v[h["of"]] * h["factor"] + h.get("offset", 0.0)
            else:  # status
                v[name] = self._faults.get(name, int(h.get("value", 0)))
