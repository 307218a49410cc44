"""The shipped configuration's counters: the measuring range that bounds a counter's possible consumption
(issue 10 item 2: more than that between two readings is a reset or an ambiguous wrap, never exact) must
cover the flow the bundled simulator integrates into it. A range below it made every counter step of the
demo's gas meter a reset, and the hourly fuel CO2 `incomplete`."""

from __future__ import annotations

from pathlib import Path

from gateway.registry import load_config

SHIPPED = Path(__file__).resolve().parents[2] / "config"


def simulated_max(simulate: dict[str, float]) -> float:
    """The largest value a `noise` or `daily` signal takes (device unit)."""
    return float(simulate["mean"]) + abs(float(simulate["amplitude"]))


def test_every_shipped_counter_bound_covers_its_simulated_flow() -> None:
    config = load_config(SHIPPED)
    checked = 0
    for inst in config.instruments:
        points = {p.name: p for p in inst.points}
        for p in inst.points:
            tot = p.rules.totalizer if p.rules else None
            if tot is None or tot.max_flow_per_h is None or not p.simulate or p.simulate.get("signal") != "integrate":
                continue
            flow = points[p.simulate["of"]]
            assert flow.simulate is not None, (inst.id, flow.name)
            assert flow.simulate["signal"] in ("noise", "daily"), (inst.id, flow.name)
            # The flow in its reporting unit (m3/h, from the device's m3/s), times the simulator's integration factor.
            per_h = simulated_max(flow.simulate) * flow.conversion.factor * float(p.simulate.get("factor", 1.0))
            assert flow.unit == f"{p.unit}/h", (inst.id, flow.unit, p.unit)
            assert per_h <= tot.max_flow_per_h, (
                f"{inst.id}.{p.name}: the simulator's flow reaches {per_h:.0f} {flow.unit}, above the measuring "
                f"range's {tot.max_flow_per_h:g} that bounds the counter")
            checked += 1
    assert checked >= 1  # FT-01's totalizer_1 at least
