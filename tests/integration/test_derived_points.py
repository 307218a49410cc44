"""Derived points end to end: simulators -> `carbon-gateway run` -> private Mosquitto -> subscriber.

A derived point of the CEMS (CO2 mass rate from its CO2 and flue-gas flow) and one across instruments
(the power meter's power in MW) arrive as ordinary readings, each equal to its formula applied to the
readings of the same poll.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from gateway.derived.builtins import co2_mass_rate
from simulators.broker import PrivateBroker
from tests.helpers import Recorder, three_meters, write_config
from tests.integration.test_end_to_end import simulators, start_gateway, validator  # noqa: F401 (fixture)

DERIVED = """\
    points:
      - name: co2_rate
        unit: kg/h
        formula: co2_mass_rate(co2, q)
        inputs: {co2: co2, q: flue_gas_flow}
        description: CO2 mass rate from the CEMS's own CO2 and flow
      - name: aux_power_mw
        unit: MW
        formula: p
        inputs: {p: PM-01.total_active_power}
        window_s: 2
"""


@pytest.fixture
def config_dir(tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker) -> Path:
    return write_config(tmp_path / "cfg", three_meters(ports) + DERIVED, url=broker.url, store=tmp_path / "gw.db",
                        per_message=5)


@pytest.mark.usefixtures("simulators")  # test_end_to_end's, on this module's config_dir
def test_derived_points_arrive_as_readings_equal_to_their_formula(config_dir: Path, recorder: Recorder,
                                                                  tmp_path: Path) -> None:
    def cems() -> list[dict]:
        return [r for b in recorder.readings() if b["instrument"] == "CEMS-01" for r in b["readings"]]

    def derived(point: str) -> list[dict]:
        return [r for r in cems() if r["point"] == point and r["value"] is not None]

    gw = start_gateway(config_dir, tmp_path / "gw.log")
    try:
        assert recorder.wait_for(lambda: len(derived("co2_rate")) >= 5 and len(derived("aux_power_mw")) >= 5, 30), \
            (tmp_path / "gw.log").read_text()[-2000:]
        assert recorder.wait_for(lambda: any(b.get("derived", {}).get("computed", 0) > 0
                                             for b in recorder.by_topic_suffix("/status")), 10)
    finally:
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(15) == 0
    by_ts: dict[tuple[str, int], dict] = {(r["point"], r["ts"]): r for r in cems()}
    checked = 0
    for r in derived("co2_rate"):
        co2, q = by_ts[("co2", r["ts"])], by_ts[("flue_gas_flow", r["ts"])]
        assert r["unit"] == "kg/h"
        assert r["value"] == pytest.approx(co2_mass_rate(co2["value"], q["value"]), rel=1e-12)
        assert r["quality"] == "good"
        assert r["calibration"] == co2["calibration"]  # due_soon in the test config (due 2026-12-05)
        checked += 1
    assert checked >= 5
    power = {r["ts"]: r for b in recorder.readings() if b["instrument"] == "PM-01" for r in b["readings"]
             if r["point"] == "total_active_power" and r["value"] is not None}
    matched = 0
    for r in derived("aux_power_mw"):
        # evaluated when the power meter's poll arrives: same timestamp, kW -> MW
        assert r["ts"] in power
        assert r["value"] == pytest.approx(power[r["ts"]]["value"] / 1000, rel=1e-12)
        matched += 1
    assert matched >= 5
    v = validator("readings")
    for body in recorder.readings():
        v.validate(body)
    # The status topic counts them; once running, none is listed as failing (every input is read each poll).
    derived_status = [b["derived"] for b in recorder.by_topic_suffix("/status") if "derived" in b]
    assert {d["points"] for d in derived_status} == {2}
    running = [d for d in derived_status if d["computed"] > 0]
    assert running, derived_status
    assert running[-1]["failing"] == {}
    for body in recorder.by_topic_suffix("/status"):
        validator("status").validate(body)
