"""RTU frames over TCP (serial device servers) and Modbus TCP endpoints, through real loopback sockets.

Several unit ids behind one address share one connection (one request at a time); separate
endpoints get separate connections, so a fault on one cannot touch the other's schedule.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from drivers.modbus.decode import decode_value, encode_point
from gateway.app import group_by_endpoint
from gateway.instruments import InstrumentSpec
from gateway.model import Quality
from gateway.poller import DeviceHealth
from gateway.registry import Config, load_config
from simulators.broker import free_port
from simulators.modbus_server import ModbusMeterServer, SimulatedDevice
from simulators.runner import simulated_device
from tests.helpers import PollingHarness, write_config

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

KINDS = {"eastron_sdm630": "power_meter", "siemens_mag6000": "flow_meter", "cems_generic": "gas_analyzer"}
ONLY = {
    "eastron_sdm630": "[voltage_l1, total_active_power, total_import_active_energy]",
    "siemens_mag6000": "[volume_flow, totalizer_1]",
    "cems_generic": None,
}


def instrument(iid: str, profile: str, protocol: str, port: int, unit: int, interval: float, *,
               timeout: float = 0.2) -> str:
    only = ONLY[profile]
    return f"""\
  - id: {iid}
    name: {iid} behind a serial device server
    kind: {KINDS[profile]}
    profile: {profile}
    connection: {{protocol: {protocol}, host: 127.0.0.1, port: {port}, unit_id: {unit}, timeout_s: {timeout}}}
    poll_interval_s: {interval}
""" + (f"    only_points: {only}\n" if only else "")


def config(directory: Path, *instruments: str, backoff: tuple[float, float] = (0.2, 0.4)) -> Config:
    gateway_yaml = (f'gateway: {{id: gw-rtu-tcp-test}}\nstore: {{path: "{directory / "gw.db"}"}}\n'
                    f"limits: {{backoff_min_s: {backoff[0]}, backoff_max_s: {backoff[1]}}}\n")
    return load_config(write_config(directory, "instruments:\n" + "".join(instruments), gateway_yaml=gateway_yaml))


def expected_reading(spec: InstrumentSpec, dev: SimulatedDevice, point: str) -> float:
    p = spec.point_index[point]
    mp = p.wire
    assert mp is not None
    on_wire = float(decode_value(encode_point(mp, dev.values[point]), mp.dtype, mp.order)) * mp.scale + mp.offset
    return p.conversion.apply(on_wire)


def rtu_over_tcp_bus(directory: Path, port: int, *, silent_unit: int = 9) -> Config:
    """Two meters answering and a third unit id nobody answers for, all behind one device server."""
    return config(directory,
                  instrument("PM-01", "eastron_sdm630", "modbus_rtu_over_tcp", port, 1, 0.1),
                  instrument("FT-01", "siemens_mag6000", "modbus_rtu_over_tcp", port, 2, 0.1),
                  instrument("CEMS-01", "cems_generic", "modbus_rtu_over_tcp", port, silent_unit, 0.1, timeout=0.15))


async def test_units_behind_one_device_server_share_one_connection(tmp_path: Path) -> None:
    port = free_port()
    cfg = rtu_over_tcp_bus(tmp_path, port)
    groups = group_by_endpoint(cfg.instruments)
    assert list(groups) == [f"rtu_over_tcp://127.0.0.1:{port}"]
    assert [s.id for s in groups[f"rtu_over_tcp://127.0.0.1:{port}"]] == ["PM-01", "FT-01", "CEMS-01"]
    devices = {s.id: simulated_device(s, seed=21 + i) for i, s in enumerate(cfg.instruments[:2])}
    server = ModbusMeterServer("127.0.0.1", port, {d.unit_id: d for d in devices.values()},
                               update_interval_s=3600.0, rtu_framing=True)  # unit 9 is not served: silent
    await server.start()
    try:
        async with PollingHarness(cfg, seed=5) as gw:
            await gw.wait_for(lambda: len(gw.of("CEMS-01")) >= 3 * len(cfg.instrument("CEMS-01").points)
                              and len(gw.of("PM-01")) >= 5 * len(cfg.instrument("PM-01").points))
    finally:
        await server.stop()
    assert len(gw.pollers) == 1
    assert gw.pollers[0].conn.stats.reconnects == 1  # one TCP connection for all three unit ids
    for iid in ("PM-01", "FT-01"):
        spec = cfg.instrument(iid)
        readings = gw.of(iid)
        assert len(readings) >= 5 * len(spec.points), iid  # kept delivering while unit 9 timed out
        for r in readings:
            assert (r.quality, r.reason) == (Quality.GOOD, ""), r
            assert r.value == pytest.approx(expected_reading(spec, devices[iid], r.point), rel=1e-9, abs=1e-9)
        assert gw.health(iid).failures == 0
    silent = gw.of("CEMS-01")
    assert {(r.quality, r.reason) for r in silent} == {(Quality.BAD, "timeout")}


@pytest.mark.parametrize("knob", ["timeout", "truncated", "garbled"])
async def test_one_unit_faulty_the_other_keeps_delivering(tmp_path: Path, knob: str) -> None:
    """Over RTU-over-TCP a truncated or garbled frame is dropped by pymodbus' RTU framer and the
    request ends in its timeout: the TCP driver reports `timeout` (the serial driver, which watches
    the received bytes, reports `bad_frame`)."""
    port = free_port()
    cfg = rtu_over_tcp_bus(tmp_path, port, silent_unit=3)
    devices = {s.id: simulated_device(s, seed=31 + i) for i, s in enumerate(cfg.instruments)}
    setattr(devices["CEMS-01"].faults, knob, True)
    server = ModbusMeterServer("127.0.0.1", port, {d.unit_id: d for d in devices.values()},
                               update_interval_s=3600.0, rtu_framing=True)
    await server.start()
    try:
        async with PollingHarness(cfg, seed=5) as gw:
            await gw.wait_for(lambda: len(gw.of("CEMS-01")) >= 3 * len(cfg.instrument("CEMS-01").points)
                              and len(gw.of("FT-01")) >= 4 * len(cfg.instrument("FT-01").points))
    finally:
        await server.stop()
    assert {(r.quality, r.reason) for r in gw.of("CEMS-01")} == {(Quality.BAD, "timeout")}
    for iid in ("PM-01", "FT-01"):
        assert {(r.quality, r.reason) for r in gw.of(iid)} == {(Quality.GOOD, "")}, iid
    # A garbled answer on one unit did not desynchronise the stream for the next unit's request.
    spec = cfg.instrument("FT-01")
    for r in gw.of("FT-01"):
        assert r.value == pytest.approx(expected_reading(spec, devices["FT-01"], r.point), rel=1e-9, abs=1e-9)


async def _polls_of_healthy(tmp_path: Path, fault: str | None, window_s: float, interval: float) -> tuple[
        DeviceHealth, DeviceHealth]:
    """Two Modbus TCP meters on separate endpoints (separate connections and poller tasks)."""
    ports = free_port(), free_port()
    cfg = config(tmp_path,
                 instrument("PM-01", "eastron_sdm630", "modbus_tcp", ports[0], 1, interval),
                 instrument("FT-01", "siemens_mag6000", "modbus_tcp", ports[1], 1, interval, timeout=0.5),
                 backoff=(0.1, 0.2))
    assert len(group_by_endpoint(cfg.instruments)) == 2
    servers = [ModbusMeterServer("127.0.0.1", p, {1: simulated_device(s, seed=41)}, update_interval_s=3600.0)
               for p, s in zip(ports, cfg.instruments, strict=True)]
    for srv in servers:
        await srv.start()
    if fault == "timeout":
        servers[1].devices[1].faults.timeout = True  # 0.5 s timeout per attempt: longer than the interval
    elif fault == "refused":
        await servers[1].set_refuse(True)
    try:
        async with PollingHarness(cfg, seed=5) as gw:
            await asyncio.sleep(window_s)
    finally:
        for srv in servers:
            await srv.stop()
    if fault is not None:
        reason = {"timeout": "timeout", "refused": "no_communication"}[fault]
        assert {(r.quality, r.reason) for r in gw.of("FT-01")} == {(Quality.BAD, reason)}
    return gw.health("PM-01"), gw.health("FT-01")


async def test_fault_on_another_endpoint_leaves_the_schedule_untouched(tmp_path: Path) -> None:
    interval, k = 0.1, 20
    base, _ = await _polls_of_healthy(tmp_path / "base", None, interval * k, interval)
    for fault in ("timeout", "refused"):
        ok, bad = await _polls_of_healthy(tmp_path / fault, fault, interval * k, interval)
        assert bad.failures == bad.polls >= 2, fault
        assert ok.failures == 0, fault
        assert ok.missed_polls == 0, (fault, ok)
        assert abs(ok.polls - base.polls) <= 1, (fault, ok.polls, base.polls)
        assert k - 1 <= ok.polls <= k + 1, (fault, ok.polls)
