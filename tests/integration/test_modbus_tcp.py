"""Modbus TCP driver against the bundled pymodbus simulator, over real loopback sockets."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from gateway.app import group_by_endpoint, make_connection
from gateway.clock import SystemClock
from gateway.errors import TransientDriverError
from gateway.model import Quality
from gateway.poller import ConnectionPoller
from gateway.queue import ReadingQueue
from gateway.registry import Config, load_config
from simulators.modbus_server import ModbusMeterServer, SimulatedDevice
from simulators.runner import build_servers
from tests.helpers import three_meters, write_config

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")


@pytest.fixture
def cfg(tmp_path: Path, ports: tuple[int, int, int]) -> Config:
    return load_config(write_config(tmp_path, three_meters(ports, interval=0.1)))


async def start(cfg: Config) -> dict[str, tuple[ModbusMeterServer, dict[str, SimulatedDevice]]]:
    servers = build_servers(cfg)
    for srv, _ in servers.values():
        await srv.start()
    return servers


async def stop(servers: dict[str, tuple[ModbusMeterServer, dict[str, SimulatedDevice]]]) -> None:
    for srv, _ in servers.values():
        await srv.stop()


def device(servers: dict[str, tuple[ModbusMeterServer, dict[str, SimulatedDevice]]], iid: str) -> SimulatedDevice:
    return next(devs[iid] for _, devs in servers.values() if iid in devs)


async def test_each_profile_decodes_the_simulators_values(cfg: Config) -> None:
    servers = await start(cfg)
    try:
        for spec in cfg.instruments:
            dev = device(servers, spec.id)
            conn = make_connection(spec, SystemClock())
            try:
                dev.faults.frozen = True  # hold values still so the comparison is exact
                samples = await conn.read(spec.device)
            finally:
                await conn.close()
                dev.faults.frozen = False
            assert {s.point for s in samples} == {p.name for p in spec.points}
            for s in samples:
                assert s.quality is Quality.GOOD, (spec.id, s)
                expected = dev.values[s.point]
                # float32 registers carry ~7 significant digits
                assert s.value == pytest.approx(expected, rel=1e-6, abs=1e-6), (spec.id, s.point)
    finally:
        await stop(servers)


@pytest.mark.parametrize(("code", "reason"), [(0x02, "modbus_exception_02"), (0x04, "modbus_exception_04"),
                                              (0x06, "modbus_exception_06"), (0x0B, "modbus_exception_0b")])
async def test_exception_codes_become_bad_readings(cfg: Config, code: int, reason: str) -> None:
    servers = await start(cfg)
    spec = cfg.instrument("CEMS-01")
    conn = make_connection(spec, SystemClock())
    try:
        device(servers, "CEMS-01").faults.exception = code
        samples = await conn.read(spec.device)
        assert samples
        assert all(s.quality is Quality.BAD and s.reason == reason and s.value is None for s in samples)
        device(servers, "CEMS-01").faults.exception = None
        assert all(s.quality is Quality.GOOD for s in await conn.read(spec.device))
    finally:
        await conn.close()
        await stop(servers)


async def test_timeout_and_nan_knobs(cfg: Config) -> None:
    servers = await start(cfg)
    spec = cfg.instrument("FT-01")
    conn = make_connection(spec, SystemClock())
    try:
        dev = device(servers, "FT-01")
        dev.faults.nan = True
        dev.step(0.0)
        by_point = {s.point: s for s in await conn.read(spec.device)}
        assert by_point["volume_flow"].quality is Quality.BAD
        assert by_point["volume_flow"].reason == "nan"
        assert by_point["totalizer_1"].quality is Quality.BAD  # float64 NaN too
        dev.faults.nan = False
        dev.faults.timeout = True
        with pytest.raises(TransientDriverError) as exc:
            await conn.read(spec.device)
        assert exc.value.reason == "timeout"
    finally:
        await conn.close()
        await stop(servers)


async def test_refused_connection_raises_no_communication(cfg: Config) -> None:
    spec = cfg.instrument("PM-01")  # nothing listens on its port
    conn = make_connection(spec, SystemClock())
    with pytest.raises(TransientDriverError) as exc:
        await conn.read(spec.device)
    assert exc.value.reason == "no_communication"
    await conn.close()


async def test_dead_meter_does_not_disturb_the_others(cfg: Config) -> None:
    """Per-connection tasks: a timing-out meter costs its own schedule only (counted, not timed)."""
    servers = await start(cfg)
    device(servers, "PM-01").faults.timeout = True
    queue = ReadingQueue(100_000)
    clock = SystemClock()
    pollers = [ConnectionPoller(make_connection(specs[0], clock), specs, queue, clock, backoff_min_s=0.1,
                                backoff_max_s=0.2, seed=1) for specs in group_by_endpoint(cfg.instruments).values()]
    tasks = [asyncio.create_task(p.run()) for p in pollers]
    window_s, interval = 2.0, 0.1
    await asyncio.sleep(window_s)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await stop(servers)
    health = {sid: h for p in pollers for sid, h in p.health.items()}
    ideal = window_s / interval
    for sid in ("FT-01", "CEMS-01"):
        h = health[sid]
        assert h.failures == 0
        # polls + missed polls always account for the whole window: the schedule keeps its grid
        assert abs(h.polls + h.missed_polls - ideal) <= 1.5, (sid, h)
        assert h.missed_polls <= 1, (sid, h)
    dead = health["PM-01"]
    assert dead.failures == dead.polls >= 2
    assert dead.missed_polls > 0  # backoff skips slots, and they are counted
    readings = queue.take(len(queue))
    bad = [r for r in readings if r.instrument == "PM-01"]
    assert bad
    assert all(r.quality is Quality.BAD and r.reason == "timeout" for r in bad)


async def test_units_behind_one_gateway_share_a_connection(tmp_path: Path, ports: tuple[int, int, int]) -> None:
    text = three_meters((ports[0], ports[0], ports[0]))
    text = text.replace("unit_id: 2", "unit_id: 3")  # PM-01 unit 1, FT-01 unit 3, CEMS-01 unit 1 -> clash
    text = text.replace("cems_generic\n    connection: {protocol: modbus_tcp, host: 127.0.0.1, "
                        f"port: {ports[0]}, unit_id: 1", f"cems_generic\n    connection: {{protocol: modbus_tcp, "
                        f"host: 127.0.0.1, port: {ports[0]}, unit_id: 7")
    cfg = load_config(write_config(tmp_path, text))
    groups = group_by_endpoint(cfg.instruments)
    assert len(groups) == 1
    servers = await start(cfg)
    (specs,) = groups.values()
    conn = make_connection(specs[0], SystemClock())
    try:
        for spec in specs:
            samples = await conn.read(spec.device)
            assert all(s.quality is Quality.GOOD for s in samples), spec.id
            assert all(math.isfinite(s.value or 0.0) for s in samples)
        assert conn.stats.reconnects == 1  # one connection for all three unit ids
    finally:
        await conn.close()
        await stop(servers)


async def test_frozen_knob_is_flagged_by_the_frozen_value_rule(tmp_path: Path, ports: tuple[int, int, int]) -> None:
    from gateway.rules_stage import RulesStage
    from gateway.tagging import tag

    text = three_meters(ports).replace(
        "    profile: cems_generic\n",
        "    profile: cems_generic\n    points:\n      - {name: co2, validity: {frozen_count: 3}}\n")
    cfg = load_config(write_config(tmp_path, text))
    servers = await start(cfg)
    spec = cfg.instrument("CEMS-01")
    conn = make_connection(spec, SystemClock())
    stage = RulesStage([spec], now_ms=SystemClock().wall_ms())
    try:
        device(servers, "CEMS-01").faults.frozen = True
        judged = []
        for _ in range(4):
            readings, _ = stage.process(tag(spec, await conn.read(spec.device)))
            judged.append(next(r for r in readings if r.point == "co2"))
            await asyncio.sleep(0.01)
    finally:
        await conn.close()
        await stop(servers)
    assert len({r.value for r in judged}) == 1  # the simulator really froze
    assert [r.quality for r in judged] == [Quality.GOOD, Quality.GOOD, Quality.UNCERTAIN, Quality.UNCERTAIN]
    assert judged[-1].reason == "frozen"


async def test_simulate_serves_rtu_over_tcp_instruments_with_rtu_frames(tmp_path: Path,
                                                                         ports: tuple[int, int, int]) -> None:
    text = three_meters(ports).replace("protocol: modbus_tcp", "protocol: modbus_rtu_over_tcp")
    cfg = load_config(write_config(tmp_path, text))
    servers = await start(cfg)
    spec = cfg.instrument("CEMS-01")
    conn = make_connection(spec, SystemClock())
    try:
        samples = await conn.read(spec.device)
    finally:
        await conn.close()
        await stop(servers)
    assert conn.name.startswith("rtu_over_tcp://")
    assert samples
    assert all(s.quality is Quality.GOOD for s in samples)
