"""Each of the six meter profiles, served by the simulator and read back through the gateway.

The simulator is set to documented engineering values (device units, as a manual would print them);
the gateway must report them in the reporting unit, through the real register encoding, a real
Modbus TCP gateway with six unit ids, decoding and tagging.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.app import group_by_endpoint, make_connection
from gateway.clock import SystemClock
from gateway.model import Quality
from gateway.registry import load_config
from gateway.tagging import tag
from simulators.runner import build_servers
from tests.helpers import write_config

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

PROFILES = ["eastron_sdm630", "siemens_pac3200", "schneider_iem3000", "siemens_mag6000", "sick_marsic300",
            "cems_generic"]

# (profile, point): (value the meter holds in its device unit, value the gateway must report)
DOCUMENTED = {
    ("eastron_sdm630", "voltage_l1"): (230.125, 230.125),  # V
    ("eastron_sdm630", "total_active_power"): (12_345.0, 12.345),  # W -> kW
    ("eastron_sdm630", "total_import_active_energy"): (98_765.5, 98.7655),  # kWh -> MWh
    ("siemens_pac3200", "voltage_l1_n"): (231.5, 231.5),  # V
    ("siemens_pac3200", "total_active_power"): (50_000.0, 50.0),  # W -> kW
    ("siemens_pac3200", "active_energy_import_t1"): (123_456_789.25, 123.45678925),  # float64 Wh -> MWh
    ("schneider_iem3000", "total_active_power"): (12.5, 12.5),  # kW
    ("schneider_iem3000", "active_energy_import"): (9_876_543_210, 9_876.54321),  # int64 Wh -> MWh
    ("siemens_mag6000", "volume_flow"): (0.05, 180.0),  # m3/s -> m3/h
    ("siemens_mag6000", "totalizer_1"): (123_456.789, 123_456.789),  # float64 m3
    ("sick_marsic300", "co2"): (5.25, 5.25),  # %vol
    ("sick_marsic300", "o2"): (13.5, 13.5),  # %vol
    ("cems_generic", "co2"): (12.0, 12.0),  # %vol
    ("cems_generic", "flue_gas_flow"): (300_000.0, 300_000.0),  # Nm3/h
    ("cems_generic", "co2_total"): (1_234_567.875, 1_234_567.875),  # float64 t
}


def instruments_yaml(port: int) -> str:
    items = []
    for unit, profile in enumerate(PROFILES, start=1):
        items.append(f"""\
  - id: M{unit}-{profile.split("_")[0].upper()}
    name: {profile}
    kind: other
    profile: {profile}
    connection: {{protocol: modbus_tcp, host: 127.0.0.1, port: {port}, unit_id: {unit}, timeout_s: 1.0}}
""")
    return "instruments:\n" + "".join(items)


@pytest.fixture
def cfg(tmp_path: Path, ports: tuple[int, int, int]):
    return load_config(write_config(tmp_path, instruments_yaml(ports[0])))


async def test_six_profiles_decode_to_documented_values(cfg) -> None:
    servers = build_servers(cfg)
    (server, devices), = servers.values()
    (specs,) = group_by_endpoint(cfg.instruments).values()
    assert sorted(s.profile for s in specs) == sorted(PROFILES)
    for spec in specs:
        dev = devices[spec.id]
        values = dict(dev.source(0.0))
        for (profile, point), (device_value, _) in DOCUMENTED.items():
            if profile == spec.profile:
                values[point] = device_value
        if spec.profile == "sick_marsic300":
            values["measured_data_live"] = 1.0  # active-low "held" bit: live
        dev.source = lambda _dt, v=values: v
        dev.step(0.0)
    await server.start()
    conn = make_connection(specs[0], SystemClock())
    try:
        for spec in specs:
            readings = {r.point: r for r in tag(spec, await conn.read(spec.device))}
            assert readings, spec.id
            assert all(r.quality is Quality.GOOD for r in readings.values()), (spec.id, readings)
            checked = 0
            for (profile, point), (_, reported) in DOCUMENTED.items():
                if profile != spec.profile:
                    continue
                assert readings[point].value == pytest.approx(reported, rel=1e-7), (profile, point)
                checked += 1
            assert checked >= 2, spec.profile
    finally:
        await conn.close()
        await server.stop()


async def test_marsic_status_bits_mark_readings(cfg) -> None:
    servers = build_servers(cfg)
    (server, devices), = servers.values()
    spec = next(s for s in cfg.instruments if s.profile == "sick_marsic300")
    dev = devices[spec.id]
    base = dict(dev.source(0.0))
    await server.start()
    conn = make_connection(spec, SystemClock())
    try:
        for bits, quality, reason in [({"measured_data_live": 1.0}, Quality.GOOD, ""),
                                      ({"measured_data_live": 1.0, "zeroing": 1.0}, Quality.BAD, "calibration"),
                                      ({"measured_data_live": 1.0, "maintenance": 1.0}, Quality.BAD, "maintenance"),
                                      ({"measured_data_live": 0.0}, Quality.BAD, "value_held"),
                                      ({"measured_data_live": 1.0, "malfunction": 1.0}, Quality.BAD, "fault")]:
            dev.source = lambda _dt, v={**base, **bits}: v
            dev.step(0.0)
            co2 = next(r for r in tag(spec, await conn.read(spec.device)) if r.point == "co2")
            assert (co2.quality, co2.reason) == (quality, reason), bits
            assert co2.value is not None  # the analyzer's value is kept, flagged
    finally:
        await conn.close()
        await server.stop()
