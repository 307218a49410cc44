"""The lean Modbus TCP client against a peer that answers late, twice, garbled or not at all (real sockets).

The bundled pymodbus simulator cannot answer late, so this peer is a few lines of MBAP over asyncio streams:
it answers FC03 with registers 0, 1, 2, ... and misbehaves as each test asks.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable

import pytest
from pymodbus.exceptions import ConnectionException, ModbusIOException

from drivers.modbus.lean_tcp import LeanTcpClient

Behaviour = Callable[[int, int, int, int, int], list[tuple[float, bytes]]]  # -> (delay, bytes to send)


def answer(tid: int, unit: int, fc: int, address: int, count: int) -> bytes:
    data = struct.pack(f">{count}H", *range(address, address + count))
    pdu = bytes([fc, len(data)]) + data
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


class Peer:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.server: asyncio.Server | None = None
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                req = await reader.readexactly(12)
                tid, _pid, _len, unit, fc, address, count = struct.unpack(">HHHBBHH", req)
                for delay, data in self.behaviour(tid, unit, fc, address, count):
                    if delay:
                        await asyncio.sleep(delay)
                    if data == b"close":
                        writer.close()
                        return
                    writer.write(data)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def peer() -> AsyncIterator[Callable[[Behaviour], asyncio.Future[LeanTcpClient]]]:
    peers: list[Peer] = []
    clients: list[LeanTcpClient] = []

    async def make(behaviour: Behaviour) -> LeanTcpClient:
        p = Peer(behaviour)
        p.server = await asyncio.start_server(p.handle, "127.0.0.1", 0)
        p.port = p.server.sockets[0].getsockname()[1]
        peers.append(p)
        client = LeanTcpClient("127.0.0.1", p.port, timeout=0.3)
        assert await client.connect()
        clients.append(client)
        return client

    yield make  # type: ignore[misc]
    for c in clients:
        c.close()
    for p in peers:
        assert p.server is not None
        p.server.close()
        await p.server.wait_closed()


async def test_registers_and_exception_answers(peer) -> None:  # type: ignore[no-untyped-def]
    def behaviour(tid: int, unit: int, fc: int, address: int, count: int) -> list[tuple[float, bytes]]:
        if address == 99:
            return [(0, struct.pack(">HHHBBB", tid, 0, 3, unit, fc | 0x80, 2))]
        return [(0, answer(tid, unit, fc, address, count))]

    client = await peer(behaviour)
    resp = await client.read_holding_registers(10, count=4, device_id=7)
    assert not resp.isError()
    assert resp.registers == [10, 11, 12, 13]
    err = await client.read_input_registers(99, count=1, device_id=7)
    assert err.isError()
    assert err.exception_code == 2


async def test_a_late_answer_is_not_taken_for_the_next_request(peer) -> None:  # type: ignore[no-untyped-def]
    first = True

    def behaviour(tid: int, unit: int, fc: int, address: int, count: int) -> list[tuple[float, bytes]]:
        nonlocal first
        if first:  # answers only after the client gave up on it
            first = False
            return [(1.0, answer(tid, unit, fc, address, count))]
        return [(0, answer(tid, unit, fc, address, count))]

    client = await peer(behaviour)
    with pytest.raises(ModbusIOException):
        await client.read_holding_registers(0, count=2, device_id=1)
    assert client.connected  # a timeout leaves the connection open, as pymodbus with retries=0 did
    await asyncio.sleep(0.8)  # the late answer to request 1 arrives about now (or during the next): dropped
    resp = await client.read_holding_registers(50, count=2, device_id=1)
    assert resp.registers == [50, 51]


async def test_answers_split_across_segments_and_two_in_one(peer) -> None:  # type: ignore[no-untyped-def]
    def behaviour(tid: int, unit: int, fc: int, address: int, count: int) -> list[tuple[float, bytes]]:
        data = answer(tid, unit, fc, address, count)
        stale = answer((tid - 1) & 0xFFFF, unit, fc, 1000, count)  # an old answer glued in front
        both = stale + data
        return [(0, both[:5]), (0.01, both[5:20]), (0.01, both[20:])]

    client = await peer(behaviour)
    for address in (0, 7, 30):
        resp = await client.read_holding_registers(address, count=12, device_id=3)
        assert resp.registers == list(range(address, address + 12))


async def test_garbled_stream_and_lost_connection_are_connection_errors(peer) -> None:  # type: ignore[no-untyped-def]
    def garbled(tid: int, unit: int, fc: int, address: int, count: int) -> list[tuple[float, bytes]]:
        return [(0, struct.pack(">HHHB", tid, 7, 3, unit) + b"\x03\x00")]  # protocol id 7

    client = await peer(garbled)
    with pytest.raises(ConnectionException):
        await client.read_holding_registers(0, count=1, device_id=1)
    assert not client.connected

    def hang_up(tid: int, unit: int, fc: int, address: int, count: int) -> list[tuple[float, bytes]]:
        return [(0, b"close")]

    client = await peer(hang_up)
    with pytest.raises(ConnectionException):
        await client.read_holding_registers(0, count=1, device_id=1)
    assert not client.connected
    with pytest.raises(ConnectionException):
        await client.read_holding_registers(0, count=1, device_id=1)


async def test_connect_refused_is_false() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    assert await LeanTcpClient("127.0.0.1", port, timeout=0.3).connect() is False
