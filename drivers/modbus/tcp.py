"""Modbus TCP driver (MBAP framing), and RTU framing over a TCP serial server."""

from __future__ import annotations

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.framer import FramerType

from drivers.modbus.client import ModbusConnection, WallClock, wall_ms
from drivers.modbus.lean_tcp import LeanTcpClient


def tcp_connection(host: str, port: int, *, timeout_s: float, rtu_framing: bool = False,
                   clock: WallClock = wall_ms) -> ModbusConnection:
    def make() -> AsyncModbusTcpClient | LeanTcpClient:
        if not rtu_framing:
            return LeanTcpClient(host, port, timeout=timeout_s)  # MBAP: about half pymodbus's CPU a request
        # retries=0 and no library reconnect: the gateway's poller owns retry and backoff, so a
        # dead meter costs exactly one timeout per poll and never a 4x-timeout stall.
        return AsyncModbusTcpClient(host, port=port, timeout=timeout_s, retries=0, reconnect_delay=0,
                                    framer=FramerType.RTU)

    scheme = "rtu_over_tcp" if rtu_framing else "modbus_tcp"
    return ModbusConnection(make, name=f"{scheme}://{host}:{port}", clock=clock)
