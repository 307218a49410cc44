"""The Modbus ceiling: the bare pymodbus async client reading as fast as it can (no gateway code).

One client (one connection) per endpoint, each in its own task cycling over that endpoint's unit ids
with the same FC03 request the gateway plans for cems_generic (23 holding registers from address 0),
back to back. The same shape of work as the gateway's pollers, minus decoding, tagging, scheduling and
everything after. Used in-process by bench.polling and as a subprocess by bench.throughput:

    python -m bench.rawmodbus --endpoint 127.0.0.1:5020:1,2,3 --endpoint ... --seconds 4
    python -m bench.rawmodbus --serial /tmp/ttyGW:115200:1,2,3,4 --seconds 4

prints one JSON line: requests, errors, elapsed_s, cpu_pct.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psutil
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from bench.common import CEMS_REGISTERS, cpu_seconds


@dataclass
class RawResult:
    requests: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    cpu_pct: float | None = None

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "elapsed_s": self.elapsed_s,
                "cpu_pct": self.cpu_pct, "req_per_s": self.rate}


async def _loop(client: Any, units: Sequence[int], stop_at: float, max_requests: int, res: RawResult,
                count: int) -> None:
    loop = asyncio.get_running_loop()
    i = 0
    while i < max_requests and loop.time() < stop_at:
        unit = units[i % len(units)]
        i += 1
        try:
            resp = await client.read_holding_registers(0, count=count, device_id=unit)
        except (ModbusException, OSError):
            res.errors += 1
            continue
        if resp.isError() or len(resp.registers) != count:
            res.errors += 1
        else:
            res.requests += 1


async def run_clients(clients: Sequence[tuple[Any, Sequence[int]]], *, seconds: float,
                      count: int = CEMS_REGISTERS, max_requests: int = 2_000_000) -> RawResult:
    """Connect every client, then run one tight loop per client for `seconds`; closes the clients."""
    res = RawResult()
    try:
        for client, _ in clients:
            if not await client.connect():
                raise RuntimeError(f"raw pymodbus client cannot connect: {client}")
        me = psutil.Process()
        loop = asyncio.get_running_loop()
        cpu0, t0 = cpu_seconds(me), time.monotonic()
        stop_at = loop.time() + seconds
        await asyncio.gather(*(_loop(c, units, stop_at, max_requests, res, count) for c, units in clients))
        res.elapsed_s = time.monotonic() - t0
        res.cpu_pct = 100.0 * (cpu_seconds(me) - cpu0) / res.elapsed_s if res.elapsed_s else None
    finally:
        for client, _ in clients:
            client.close()
    return res


def tcp_clients(endpoints: dict[int, Sequence[int]], *, host: str = "127.0.0.1",
                timeout_s: float = 1.0) -> list[tuple[Any, Sequence[int]]]:
    return [(AsyncModbusTcpClient(host, port=port, timeout=timeout_s, retries=0, reconnect_delay=0), units)
            for port, units in endpoints.items()]


def serial_client(port: str, units: Sequence[int], *, baudrate: int, timeout_s: float = 0.5
                  ) -> list[tuple[Any, Sequence[int]]]:
    from pymodbus.framer import FramerType

    return [(AsyncModbusSerialClient(port, framer=FramerType.RTU, baudrate=baudrate, parity="N", stopbits=1,
                                     bytesize=8, timeout=timeout_s, retries=0, reconnect_delay=0), units)]


def _units(text: str) -> list[int]:
    return [int(u) for u in text.split(",") if u]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.rawmodbus", description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", action="append", default=[], metavar="HOST:PORT:UNITS",
                    help="a loopback TCP endpoint and its comma-separated unit ids (repeatable)")
    ap.add_argument("--serial", metavar="PORT:BAUD:UNITS", help="one serial bus and its unit ids")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--count", type=int, default=CEMS_REGISTERS, help="registers per request")
    args = ap.parse_args(argv)

    async def go() -> RawResult:
        clients: list[tuple[Any, Sequence[int]]] = []
        for ep in args.endpoint:
            host, port, units = ep.split(":")
            if host not in ("127.0.0.1", "localhost"):
                raise SystemExit("only loopback endpoints")
            clients += tcp_clients({int(port): _units(units)}, host=host)
        if args.serial:
            port, baud, units = args.serial.rsplit(":", 2)
            clients += serial_client(port, _units(units), baudrate=int(baud))
        return await run_clients(clients, seconds=args.seconds, count=args.count)

    print(json.dumps(asyncio.run(go()).as_dict()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
