"""Modbus RTU over a real serial line: a socat pseudo-terminal pair, the pymodbus RTU simulator
serving several unit ids on one end, the gateway's registry, poller and serial driver on the other.

No mocks: bytes cross a real pty with pyserial on both sides. Schedules are judged by counting
polls in a window, never by timing individual polls.
"""

from __future__ import annotations

import asyncio
import os
import termios
import tty
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from drivers.modbus.decode import decode_value, encode_point
from drivers.modbus.rtu import REASON_BAD_FRAME, t35_s
from drivers.modbus.spec import ModbusPoint
from gateway.app import group_by_endpoint, make_connection
from gateway.clock import SystemClock
from gateway.errors import TransientDriverError
from gateway.instruments import InstrumentSpec
from gateway.model import Quality, Reading
from gateway.poller import DeviceHealth
from gateway.registry import Config, load_config
from simulators.modbus_rtu_server import ModbusRtuMeterServer, SocatPtyPair
from simulators.modbus_server import Faults, SimulatedDevice
from simulators.runner import simulated_device
from tests.helpers import PollingHarness as Gateway
from tests.helpers import write_config

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

BAUD = 38400
KINDS = {"eastron_sdm630": "power_meter", "siemens_mag6000": "flow_meter", "cems_generic": "gas_analyzer"}
ONLY = {
    "eastron_sdm630": "[voltage_l1, total_active_power, total_import_active_energy]",
    "siemens_mag6000": "[volume_flow, totalizer_1, good_message_count]",  # float32, float64, uint16
    "cems_generic": None,
}


def _make_raw(path: Path) -> None:
    """Put one end of the pair in raw mode ourselves as well (no line discipline may touch RTU bytes)."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(fd)
        attrs = termios.tcgetattr(fd)
        assert not attrs[3] & (termios.ICANON | termios.ECHO | termios.ISIG)
        assert not attrs[0] & (termios.ICRNL | termios.IXON)
    finally:
        os.close(fd)


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[SocatPtyPair]:
    with SocatPtyPair(tmp_path / "ttySIM", tmp_path / "ttyGW") as pair:
        _make_raw(pair.a)
        _make_raw(pair.b)
        yield pair


def instrument(iid: str, profile: str, unit: int, port: Path, interval: float, *, timeout: float = 0.25) -> str:
    only = ONLY[profile]
    return f"""\
  - id: {iid}
    name: {iid} on the RS-485 bus
    kind: {KINDS[profile]}
    profile: {profile}
    connection: {{protocol: modbus_rtu, port: "{port}", baudrate: {BAUD}, parity: N, stopbits: 1, bytesize: 8,
                  unit_id: {unit}, timeout_s: {timeout}, inter_frame_delay_ms: 2}}
    poll_interval_s: {interval}
""" + (f"    only_points: {only}\n" if only else "")


def bus_config(directory: Path, *instruments: str, backoff: tuple[float, float] = (0.2, 0.4)) -> Config:
    gateway_yaml = (f'gateway: {{id: gw-rtu-test}}\nstore: {{path: "{directory / "gw.db"}"}}\n'
                    f"limits: {{backoff_min_s: {backoff[0]}, backoff_max_s: {backoff[1]}}}\n")
    return load_config(write_config(directory, "instruments:\n" + "".join(instruments), gateway_yaml=gateway_yaml))


def simulate(cfg: Config) -> dict[str, SimulatedDevice]:
    return {s.id: simulated_device(s, seed=11 + i) for i, s in enumerate(cfg.instruments)}


def by_unit(devices: dict[str, SimulatedDevice]) -> dict[int, SimulatedDevice]:
    return {d.unit_id: d for d in devices.values()}


def wire_value(p: ModbusPoint, value: float) -> float:
    """What the meter's registers carry for `value` (float32 rounding, integer truncation) in device units."""
    return float(decode_value(encode_point(p, value), p.dtype, p.order)) * p.scale + p.offset


def expected_reading(spec: InstrumentSpec, dev: SimulatedDevice, point: str) -> float:
    p = spec.point_index[point]
    assert p.wire is not None
    return p.conversion.apply(wire_value(p.wire, dev.values[point]))


@pytest.fixture
async def serving(pty_pair: SocatPtyPair) -> AsyncIterator[Callable[[dict[int, SimulatedDevice], float],
                                                                       ModbusRtuMeterServer]]:
    """Factory for a simulator on the pair's far end; stopped after the test."""
    servers: list[ModbusRtuMeterServer] = []

    def make(devices: dict[int, SimulatedDevice], update_interval_s: float = 3600.0) -> ModbusRtuMeterServer:
        srv = ModbusRtuMeterServer(str(pty_pair.a), devices, baudrate=BAUD, update_interval_s=update_interval_s)
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        await srv.stop()


def test_t35_follows_the_line_settings() -> None:
    assert t35_s(9600, parity="E") == pytest.approx(3.5 * 11 / 9600)  # ~4.0 ms, 11-bit characters
    assert t35_s(9600) == pytest.approx(3.5 * 10 / 9600)  # 8N1: 10 bits per character
    assert t35_s(115200) == pytest.approx(0.00175)  # fixed above 19200 baud


async def test_three_instruments_share_one_bus_with_their_own_intervals(tmp_path: Path, pty_pair: SocatPtyPair,
                                                                        serving: Callable[..., ModbusRtuMeterServer]
                                                                        ) -> None:
    gw_port = pty_pair.b
    intervals = {"PM-01": 0.1, "FT-01": 0.15, "CEMS-01": 0.2}
    cfg = bus_config(tmp_path, instrument("PM-01", "eastron_sdm630", 1, gw_port, intervals["PM-01"]),
                     instrument("FT-01", "siemens_mag6000", 2, gw_port, intervals["FT-01"]),
                     instrument("CEMS-01", "cems_generic", 3, gw_port, intervals["CEMS-01"]))
    groups = group_by_endpoint(cfg.instruments)
    assert list(groups) == [f"modbus_rtu://{gw_port}"]  # one bus, one connection
    devices = simulate(cfg)
    await serving(by_unit(devices)).start()  # values hold still (no ticks) so comparisons are exact
    window_s = 1.2
    async with Gateway(cfg) as gw:
        await asyncio.sleep(window_s)
    for spec in cfg.instruments:
        polls = gw.polls(spec.id)
        assert polls, spec.id
        for poll in polls:
            assert {r.point for r in poll} == {p.name for p in spec.points}
            for r in poll:
                assert (r.quality, r.reason) == (Quality.GOOD, ""), r
                assert r.value == pytest.approx(expected_reading(spec, devices[spec.id], r.point), rel=1e-9,
                                                abs=1e-9), (spec.id, r.point)
        # Each instrument keeps its own grid on the shared bus: polls in the window match its interval.
        h = gw.health(spec.id)
        ideal = window_s / intervals[spec.id]
        assert (h.failures, h.missed_polls) == (0, 0), (spec.id, h)
        assert ideal - 1 <= h.polls <= ideal + 1, (spec.id, h.polls, ideal)
    conn = gw.pollers[0].conn
    assert conn.stats.reconnects == 1  # the port was opened once for all three unit ids


HEALTHY = "PM-01"
FAULTY = "CEMS-01"

FAULTS: list[tuple[str, Callable[[Faults], None], str]] = [
    ("timeout", lambda f: setattr(f, "timeout", True), "timeout"),
    ("exception_02", lambda f: setattr(f, "exception", 0x02), "modbus_exception_02"),
    ("exception_04", lambda f: setattr(f, "exception", 0x04), "modbus_exception_04"),
    ("exception_06", lambda f: setattr(f, "exception", 0x06), "modbus_exception_06"),
    ("exception_0b", lambda f: setattr(f, "exception", 0x0B), "modbus_exception_0b"),
    # pymodbus drops a bad-CRC frame and keeps waiting for a short one; both end in its timeout.
    # The serial driver saw the bytes, so it reports bad_frame rather than timeout.
    ("truncated", lambda f: setattr(f, "truncated", True), REASON_BAD_FRAME),
    ("garbled", lambda f: setattr(f, "garbled", True), REASON_BAD_FRAME),
]


@pytest.mark.parametrize(("knob", "set_fault", "reason"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_fault_knob_gives_bad_quality_with_its_reason(tmp_path: Path, pty_pair: SocatPtyPair,
                                                            serving: Callable[..., ModbusRtuMeterServer],
                                                            knob: str, set_fault: Callable[[Faults], None],
                                                            reason: str) -> None:
    cfg = bus_config(tmp_path, instrument(HEALTHY, "eastron_sdm630", 1, pty_pair.b, 0.1),
                     instrument(FAULTY, "cems_generic", 7, pty_pair.b, 0.1, timeout=0.15),
                     backoff=(0.1, 0.2))
    devices = simulate(cfg)
    set_fault(devices[FAULTY].faults)
    await serving(by_unit(devices)).start()
    async with Gateway(cfg) as gw:
        await gw.wait_for(lambda: len(gw.polls(FAULTY)) >= 3 and len(gw.polls(HEALTHY)) >= 5)
    bad = gw.of(FAULTY)
    assert {(r.quality, r.reason) for r in bad} == {(Quality.BAD, reason)}, knob
    assert all(r.value is None for r in bad)
    good = gw.of(HEALTHY)
    assert {(r.quality, r.reason) for r in good} == {(Quality.GOOD, "")}  # the other unit is untouched
    spec = cfg.instrument(HEALTHY)
    for r in good:
        assert r.value == pytest.approx(expected_reading(spec, devices[HEALTHY], r.point), rel=1e-9, abs=1e-9)


async def test_frozen_values_repeat_while_live_values_move(tmp_path: Path, pty_pair: SocatPtyPair,
                                                           serving: Callable[..., ModbusRtuMeterServer]) -> None:
    cfg = bus_config(tmp_path, instrument("PM-01", "eastron_sdm630", 1, pty_pair.b, 0.1),
                     instrument("CEMS-01", "cems_generic", 3, pty_pair.b, 0.1))
    devices = simulate(cfg)
    devices["CEMS-01"].faults.frozen = True
    await serving(by_unit(devices), update_interval_s=0.03).start()  # values step between polls
    async with Gateway(cfg) as gw:
        await gw.wait_for(lambda: len(gw.polls("CEMS-01")) >= 4 and len(gw.polls("PM-01")) >= 4)

    def series(iid: str) -> list[tuple[float | None, ...]]:
        return [tuple(r.value for r in sorted(poll, key=lambda r: r.point)) for poll in gw.polls(iid)]

    frozen, live = series("CEMS-01"), series("PM-01")
    assert len(set(frozen)) == 1, frozen  # identical values every poll
    assert len(set(live)) == len(live), live  # noise signals: every poll differs
    assert all(r.quality is Quality.GOOD for r in gw.of("CEMS-01"))  # frozen is not detectable per poll


async def test_nan_floats_are_bad_in_the_driver_and_after_tagging(tmp_path: Path, pty_pair: SocatPtyPair,
                                                                  serving: Callable[..., ModbusRtuMeterServer]
                                                                  ) -> None:
    cfg = bus_config(tmp_path, instrument("FT-01", "siemens_mag6000", 2, pty_pair.b, 0.1))
    devices = simulate(cfg)
    devices["FT-01"].faults.nan = True
    await serving(by_unit(devices)).start()
    spec = cfg.instrument("FT-01")
    conn = make_connection(spec, SystemClock())
    try:
        raw = {s.point: s for s in await conn.read(spec.device)}
    finally:
        await conn.close()
    for point in ("volume_flow", "totalizer_1"):  # float32 and float64
        assert (raw[point].quality, raw[point].reason) == (Quality.BAD, "nan"), raw[point]
    assert raw["good_message_count"].quality is Quality.GOOD  # integers cannot be NaN
    assert raw["good_message_count"].value == 4711
    async with Gateway(cfg) as gw:
        await gw.wait_for(lambda: len(gw.polls("FT-01")) >= 2)
    for r in gw.of("FT-01"):
        if r.point == "good_message_count":
            assert (r.quality, r.value) == (Quality.GOOD, 4711)
        else:
            assert (r.quality, r.reason, r.value) == (Quality.BAD, "nan", None)


async def _healthy_polls_in_window(cfg: Config, devices: dict[str, SimulatedDevice], pair: SocatPtyPair,
                                   window_s: float) -> tuple[DeviceHealth, DeviceHealth]:
    sim = ModbusRtuMeterServer(str(pair.a), by_unit(devices), baudrate=BAUD, update_interval_s=3600.0)
    async with sim, Gateway(cfg) as gw:
        await asyncio.sleep(window_s)
    return gw.health("PM-01"), gw.health("FT-01")


@pytest.mark.parametrize("silent_timeout", [0.15, 0.5], ids=["timeout_below_interval", "timeout_above_interval"])
async def test_a_silent_device_costs_bus_time_bounded_by_its_timeout(tmp_path: Path, pty_pair: SocatPtyPair,
                                                                     silent_timeout: float) -> None:
    """Isolation on a shared RS-485 bus, counted over K intervals of the healthy meter.

    A silent device holds the half-duplex bus for its own timeout on every attempt (then backs off),
    so the other devices' polls can be late by up to that timeout, and a poll is lost only when it
    is late by a whole interval. Hence:
    - timeout below the others' poll interval: not a single poll lost or missed (the issue's
      "no more than one poll interval" holds);
    - timeout above it: at most floor(timeout / interval) polls lost per attempt of the silent
      device (its backoff bounds the attempts), and every lost poll is counted as missed."""
    interval, k = 0.2, 15
    cfg = bus_config(tmp_path, instrument("PM-01", "eastron_sdm630", 1, pty_pair.b, interval),
                     instrument("FT-01", "siemens_mag6000", 2, pty_pair.b, interval, timeout=silent_timeout),
                     backoff=(0.2, 0.4))  # short backoff: the silent meter keeps grabbing the bus
    devices = simulate(cfg)
    base_ok, base_other = await _healthy_polls_in_window(cfg, devices, pty_pair, interval * k)
    devices["FT-01"].faults.timeout = True
    ok, silent = await _healthy_polls_in_window(cfg, devices, pty_pair, interval * k)
    assert (base_ok.failures, base_other.failures, base_ok.missed_polls) == (0, 0, 0)
    assert k - 1 <= base_ok.polls <= k + 1
    assert silent.failures == silent.polls >= 3  # it did take the bus several times
    assert silent.missed_polls > 0  # its own backoff skipped slots, counted
    assert ok.failures == 0
    # The healthy meter's grid is intact: every slot in the window was polled or counted as missed.
    assert abs(ok.polls + ok.missed_polls - base_ok.polls) <= 1, (ok, base_ok.polls)
    if silent_timeout < interval:
        assert ok.missed_polls == 0, ok
        assert abs(ok.polls - base_ok.polls) <= 1, (ok.polls, base_ok.polls)
    else:
        per_attempt = int((silent_timeout + 0.05) // interval)  # + the healthy meter's own read time
        assert base_ok.polls - ok.polls <= silent.polls * per_attempt + 1, (ok, silent.polls)


async def test_bus_that_disappears_is_reopened_with_backoff(tmp_path: Path) -> None:
    sim_port, gw_port = tmp_path / "ttySIM", tmp_path / "by-id-usb-FTDI"
    cfg = bus_config(tmp_path, instrument("PM-01", "eastron_sdm630", 1, gw_port, 0.1, timeout=0.2),
                     instrument("FT-01", "siemens_mag6000", 2, gw_port, 0.1, timeout=0.2), backoff=(0.1, 0.3))
    devices = simulate(cfg)
    pair = SocatPtyPair(sim_port, gw_port).start()
    sim = ModbusRtuMeterServer(str(sim_port), by_unit(devices), baudrate=BAUD, update_interval_s=3600.0)

    def count(iid: str, since: int, match: Callable[[Reading], bool]) -> int:
        """Whole polls (every point) matching since reading index `since`."""
        return sum(match(r) for r in gw.of(iid)[since:]) // len(cfg.instrument(iid).points)

    try:
        await sim.start()
        async with Gateway(cfg) as gw:
            await gw.wait_for(lambda: len(gw.polls("PM-01")) >= 2 and len(gw.polls("FT-01")) >= 2)
            # Unplug: both pty ends vanish, like a USB adapter pulled out.
            pair.stop()
            await sim.stop()
            cut = {iid: len(gw.of(iid)) for iid in ("PM-01", "FT-01")}
            await gw.wait_for(lambda: all(count(iid, cut[iid], lambda r: r.reason == "no_communication") >= 2
                                          for iid in cut))
            outage = {iid: len(gw.of(iid)) for iid in cut}
            assert not gw_port.exists()
            # Plug back in: a new pty pair appears at the same path; the poller reopens it.
            pair = SocatPtyPair(sim_port, gw_port).start()
            sim = ModbusRtuMeterServer(str(sim_port), by_unit(devices), baudrate=BAUD, update_interval_s=3600.0)
            await sim.start()
            await gw.wait_for(lambda: all(count(iid, outage[iid], lambda r: r.quality is Quality.GOOD) >= 2
                                          for iid in cut))
        for iid in cut:
            during = gw.of(iid)[cut[iid]:outage[iid]]
            # In flight or not, a vanished port is reported as no_communication, never as a value.
            assert {(r.quality, r.reason) for r in during} == {(Quality.BAD, "no_communication")}, iid
            after = [r for r in gw.of(iid)[outage[iid]:] if r.quality is Quality.GOOD]
            spec = cfg.instrument(iid)
            for r in after:
                assert r.value == pytest.approx(expected_reading(spec, devices[iid], r.point), rel=1e-9, abs=1e-9)
            h = gw.health(iid)
            assert h.consecutive_failures == 0
            assert h.failures >= 2
        assert gw.pollers[0].conn.stats.reconnects >= 2  # opened, lost, reopened
    finally:
        await sim.stop()
        pair.stop()


async def test_port_lost_during_a_request_is_no_communication_not_timeout(tmp_path: Path) -> None:
    pair = SocatPtyPair(tmp_path / "ttySIM", tmp_path / "ttyGW").start()
    cfg = bus_config(tmp_path, instrument("FT-01", "siemens_mag6000", 2, pair.b, 1.0, timeout=0.5))
    devices = simulate(cfg)
    devices["FT-01"].faults.timeout = True  # keeps the request in flight when the port goes
    spec = cfg.instrument("FT-01")
    conn = make_connection(spec, SystemClock())
    try:
        async with ModbusRtuMeterServer(str(pair.a), by_unit(devices), baudrate=BAUD):
            read = asyncio.create_task(conn.read(spec.device))
            await asyncio.sleep(0.1)
            pair.stop()
            with pytest.raises(TransientDriverError) as lost:
                await read
        assert lost.value.reason == "no_communication"
        with pytest.raises(TransientDriverError) as gone:  # the next poll cannot reopen it
            await conn.read(spec.device)
        assert gone.value.reason == "no_communication"
    finally:
        await conn.close()
        pair.stop()


async def test_each_device_keeps_its_own_timeout_on_a_shared_bus(tmp_path: Path, pty_pair: SocatPtyPair,
                                                                 serving: Callable[..., ModbusRtuMeterServer]
                                                                 ) -> None:
    """The bus connection is built from the first instrument (timeout 2 s); a silent fast meter
    configured with 0.1 s must not hold the bus for 2 s."""
    cfg = bus_config(tmp_path, instrument("CEMS-01", "cems_generic", 3, pty_pair.b, 1.0, timeout=2.0),
                     instrument("PM-01", "eastron_sdm630", 1, pty_pair.b, 1.0, timeout=0.1))
    devices = simulate(cfg)
    devices["PM-01"].faults.timeout = True
    await serving(by_unit(devices)).start()
    (specs,) = group_by_endpoint(cfg.instruments).values()
    conn = make_connection(specs[0], SystemClock())
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        with pytest.raises(TransientDriverError) as silent:
            await conn.read(cfg.instrument("PM-01").device)
        held = loop.time() - started
        assert silent.value.reason == "timeout"
        assert held < 1.0, held  # its own 0.1 s, not the bus's 2 s (generous margin for slow runners)
        assert all(s.quality is Quality.GOOD for s in await conn.read(cfg.instrument("CEMS-01").device))
    finally:
        await conn.close()
