"""DL/T 645-2007 driver against the simulator, over a real pseudo-terminal pair (socat) and over TCP
(a transparent serial-to-TCP gateway): the same tests run on both transports.

No mocks: frames cross a real pty with pyserial on both sides, or a real TCP socket. The simulator
and the driver share the DI table, so every value read is compared with the value the meter sent.
"""

from __future__ import annotations

import os
import termios
import tty
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from drivers.dlt645.di import data_item, parse_di
from drivers.dlt645.driver import (
    REASON_BAD_FRAME,
    Dlt645Connection,
    Dlt645Device,
    Dlt645Point,
    serial_connection,
    tcp_connection,
)
from drivers.dlt645.frame import parse_address
from gateway.errors import TransientDriverError
from gateway.model import Quality
from simulators.dlt645_server import (
    Dlt645SerialServer,
    Dlt645TcpServer,
    SimulatedMeter,
    meter_from_points,
    profile_points,
)
from simulators.modbus_rtu_server import SocatPtyPair

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

POINTS = profile_points()
A1, A2 = "000012345678", "202311150001"
TIMEOUT = 0.3

Bus = Callable[[list[SimulatedMeter]], AsyncIterator[Dlt645Connection]]


def _make_raw(path: Path) -> None:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(fd)
        assert not termios.tcgetattr(fd)[3] & (termios.ICANON | termios.ECHO)
    finally:
        os.close(fd)


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[SocatPtyPair]:
    with SocatPtyPair(tmp_path / "ttySIM", tmp_path / "ttyGW") as pair:
        _make_raw(pair.a)
        _make_raw(pair.b)
        yield pair


@pytest.fixture(params=["pty", "tcp"])
async def bus(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    """Factory: serve `meters` and return a driver connection to them over the parametrised transport."""
    cleanup: list[Callable[[], object]] = []
    conns: list[Dlt645Connection] = []
    servers: list[Dlt645SerialServer | Dlt645TcpServer] = []

    async def make(meters: list[SimulatedMeter]) -> Dlt645Connection:
        if request.param == "pty":
            pair = SocatPtyPair(tmp_path / "ttySIM", tmp_path / "ttyGW").start()
            cleanup.append(pair.stop)
            _make_raw(pair.a)
            _make_raw(pair.b)
            srv: Dlt645SerialServer | Dlt645TcpServer = Dlt645SerialServer(str(pair.a), meters,
                                                                           update_interval_s=3600)
            await srv.start()
            conn = serial_connection(str(pair.b), baudrate=2400, parity="E")
        else:
            srv = Dlt645TcpServer("127.0.0.1", 0, meters, update_interval_s=3600)
            await srv.start()
            conn = tcp_connection("127.0.0.1", srv.port, timeout_s=TIMEOUT)
        servers.append(srv)
        conns.append(conn)
        return conn

    make.servers = servers  # type: ignore[attr-defined]
    yield make
    for c in conns:
        await c.close()
    for s in servers:
        await s.stop()
    for stop in cleanup:
        stop()


def meter(address: str, seed: int = 5) -> SimulatedMeter:
    return meter_from_points(address, POINTS, seed=seed, start_s=43_200)


def device(address: str, *extra: Dlt645Point, names: tuple[str, ...] | None = None) -> Dlt645Device:
    pts = tuple(Dlt645Point(p["name"], parse_di(p["di"])) for p in POINTS if names is None or p["name"] in names)
    return Dlt645Device(f"EM-{address[-4:]}", parse_address(address), TIMEOUT, pts + extra)


async def test_reads_every_quantity_of_two_meters_on_one_line(bus: Callable[..., object]) -> None:
    m1, m2 = meter(A1, 1), meter(A2, 2)
    conn = await bus([m1, m2])  # type: ignore[misc]
    for m in (m1, m2):
        samples = await conn.read(device(m.nameplate))
        assert [s.point for s in samples] == [p["name"] for p in POINTS]
        for s in samples:
            assert (s.quality, s.reason) == (Quality.GOOD, ""), s
            di = parse_di(next(p["di"] for p in POINTS if p["name"] == s.point))
            step = data_item(di).fmt.step  # the meter rounds to the format's last digit
            assert s.value == pytest.approx(m.table_value(di), abs=step / 2 + 1e-9), s.point
    assert m1.requests == m2.requests == len(POINTS)  # each meter was asked only for its own DIs
    by_name = {s.point: s.value for s in await conn.read(device(A1))}
    assert 200 < by_name["voltage_a"] < 260
    assert by_name["combined_active_energy"] == pytest.approx(by_name["forward_active_energy"] - 12.34)
    assert by_name["frequency"] == pytest.approx(50.0, abs=0.06)


async def test_echo_of_our_own_request_is_skipped(bus: Callable[..., object]) -> None:
    m = meter(A1)
    conn = await bus([m])  # type: ignore[misc]
    server = bus.servers[-1]  # type: ignore[attr-defined]
    server.echo = True  # RS-485 adapters without echo suppression hand the master its own request back
    samples = await conn.read(device(A1))
    assert {(s.quality, s.reason) for s in samples} == {(Quality.GOOD, "")}
    assert await conn.read_address(TIMEOUT) == A1


async def test_discovery_of_the_single_meter_on_the_line(bus: Callable[..., object]) -> None:
    conn = await bus([meter(A2)])  # type: ignore[misc]
    assert await conn.read_address(TIMEOUT) == A2


async def test_discovery_with_two_meters_reports_the_collision(bus: Callable[..., object]) -> None:
    conn = await bus([meter(A1), meter(A2)])  # type: ignore[misc]
    with pytest.raises(TransientDriverError, match="read address") as info:
        await conn.read_address(TIMEOUT)
    assert info.value.reason == REASON_BAD_FRAME


async def test_unknown_di_is_bad_no_data_and_the_others_are_read(bus: Callable[..., object]) -> None:
    conn = await bus([meter(A1)])  # type: ignore[misc]
    phase_b_power = Dlt645Point("phase_b_power", 0x02030200)  # in the DI table, not in this meter
    samples = await conn.read(device(A1, phase_b_power, names=("voltage_a",)))
    assert [(s.point, s.quality, s.reason) for s in samples] == [
        ("voltage_a", Quality.GOOD, ""), ("phase_b_power", Quality.BAD, "dlt645_no_data")]
    assert samples[1].status == 0x02  # the error word travels as the sample's status


@pytest.mark.parametrize(("err", "reason"), [(0x04, "dlt645_unauthorised"), (0x01, "dlt645_other_error"),
                                             (0x40, "dlt645_tariffs")])
async def test_abnormal_answer_maps_the_error_word_to_a_reason(bus: Callable[..., object], err: int,
                                                               reason: str) -> None:
    m = meter(A1)
    m.faults.error = err
    conn = await bus([m])  # type: ignore[misc]
    samples = await conn.read(device(A1))
    assert {(s.quality, s.reason, s.value) for s in samples} == {(Quality.BAD, reason, None)}


async def test_silent_meter_is_a_timeout_and_the_other_meter_is_untouched(bus: Callable[..., object]) -> None:
    dead, alive = meter(A1), meter(A2)
    dead.faults.timeout = True
    conn = await bus([dead, alive])  # type: ignore[misc]
    with pytest.raises(TransientDriverError) as info:
        await conn.read(device(A1))
    assert info.value.reason == "timeout"
    assert dead.requests == 1  # the first silent DI ends the poll: one timeout of bus time, not twelve
    assert {s.quality for s in await conn.read(device(A2))} == {Quality.GOOD}
    dead.faults.clear()
    assert {s.quality for s in await conn.read(device(A1))} == {Quality.GOOD}  # recovers on the next poll


async def test_meter_going_silent_mid_poll_gives_bad_timeout_for_the_rest(bus: Callable[..., object]) -> None:
    m = meter(A1)
    conn = await bus([m])  # type: ignore[misc]
    answered = 0
    original = m.answer

    def answer_three(frame: object) -> bytes | None:
        nonlocal answered
        answered += 1
        return original(frame) if answered <= 3 else None  # type: ignore[arg-type]

    m.answer = answer_three  # type: ignore[method-assign]
    samples = await conn.read(device(A1))
    assert [s.quality for s in samples[:3]] == [Quality.GOOD] * 3
    assert {(s.quality, s.reason) for s in samples[3:]} == {(Quality.BAD, "timeout")}
    assert answered == 5  # two silent DIs in a row, then the rest of the poll is not asked


@pytest.mark.parametrize("knob", ["bad_checksum", "truncated", "garbled"])
async def test_garbled_answers_are_bad_frame_then_recover(bus: Callable[..., object], knob: str) -> None:
    m = meter(A1)
    setattr(m.faults, knob, True)
    conn = await bus([m])  # type: ignore[misc]
    with pytest.raises(TransientDriverError) as info:
        await conn.read(device(A1))
    assert info.value.reason == REASON_BAD_FRAME
    m.faults.clear()
    samples = await conn.read(device(A1))  # no leftover garbage is taken for the next answer
    assert {(s.quality, s.reason) for s in samples} == {(Quality.GOOD, "")}


async def test_lost_serial_port_is_no_communication_until_it_is_back(pty_pair: SocatPtyPair) -> None:
    m = meter(A1)
    srv = Dlt645SerialServer(str(pty_pair.a), [m], update_interval_s=3600)
    await srv.start()
    conn = serial_connection(str(pty_pair.b))
    try:
        assert {s.quality for s in await conn.read(device(A1, names=("voltage_a",)))} == {Quality.GOOD}
        await srv.stop()
        pty_pair.stop()  # the USB adapter is unplugged
        with pytest.raises(TransientDriverError) as info:
            await conn.read(device(A1, names=("voltage_a",)))
        assert info.value.reason in ("no_communication", "timeout")
        with pytest.raises(TransientDriverError) as info:
            await conn.read(device(A1, names=("voltage_a",)))  # reopening fails while it is gone
        assert info.value.reason == "no_communication"
        pty_pair.start()
        _make_raw(pty_pair.a)
        _make_raw(pty_pair.b)
        srv = Dlt645SerialServer(str(pty_pair.a), [m], update_interval_s=3600)
        await srv.start()
        assert {s.quality for s in await conn.read(device(A1, names=("voltage_a",)))} == {Quality.GOOD}
    finally:
        await conn.close()
        await srv.stop()


async def test_tcp_gateway_down_is_no_communication() -> None:
    srv = Dlt645TcpServer("127.0.0.1", 0, [meter(A1)], update_interval_s=3600)
    await srv.start()
    port = srv.port
    await srv.stop()
    conn = tcp_connection("127.0.0.1", port, timeout_s=TIMEOUT)
    with pytest.raises(TransientDriverError) as info:
        await conn.read(device(A1))
    assert info.value.reason == "no_communication"
    await conn.close()


async def test_discover_command_prints_the_address(pty_pair: SocatPtyPair, capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    from drivers.dlt645.discover import main as discover_main

    # Parity N: a Linux pseudo-terminal refuses a second open with parity set (termios EINVAL); real
    # UARTs do not, and the driver turns that refusal into a no_communication DriverError anyway.
    srv = Dlt645SerialServer(str(pty_pair.a), [meter(A2)], parity="N", update_interval_s=3600)
    await srv.start()
    cmd = [str(pty_pair.b), "--timeout", "0.5", "--parity", "N"]
    try:
        assert await asyncio.to_thread(discover_main, cmd) == 0
        assert capsys.readouterr().out.strip() == A2
        srv.meters.append(meter(A1))  # a second meter on the line: the answers collide
        assert await asyncio.to_thread(discover_main, cmd) == 1
        assert "[bad_frame]" in capsys.readouterr().err
    finally:
        await srv.stop()
    tcp = Dlt645TcpServer("127.0.0.1", 0, [meter(A1)], update_interval_s=3600)
    await tcp.start()
    try:
        assert await asyncio.to_thread(discover_main, [f"tcp://127.0.0.1:{tcp.port}"]) == 0
        assert capsys.readouterr().out.strip() == A1
    finally:
        await tcp.stop()
    assert await asyncio.to_thread(discover_main, ["tcp://nowhere"]) == 2


async def test_a_port_that_refuses_its_settings_is_a_driver_error(pty_pair: SocatPtyPair) -> None:
    conn = serial_connection(str(pty_pair.b), parity="E")
    await conn.open()
    await conn.close()
    with pytest.raises(TransientDriverError) as info:  # the pty refuses parity on the second open
        await conn.open()
    assert info.value.reason == "no_communication"
