"""Commissioning: find the address of the one DL/T 645 meter on a line ("read address" on AA..AA).

    python -m drivers.dlt645.discover /dev/ttyUSB0 [--baudrate 2400 --parity E]
    python -m drivers.dlt645.discover tcp://10.0.0.20:8899

Prints the 12-digit address to put in the instrument's `connection.address`. Connect one meter at a
time: with several on the line their answers collide (reported as a bad frame). Exit 0 with the
address, 1 when no meter answered or the answer was garbled, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from drivers.dlt645.driver import Dlt645Connection, serial_connection, tcp_connection
from gateway.errors import DriverError


def connection_for(target: str, *, baudrate: int, parity: str, timeout_s: float) -> Dlt645Connection:
    if target.startswith("tcp://"):
        host, sep, port = target[len("tcp://"):].rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"{target}: expected tcp://HOST:PORT")
        return tcp_connection(host, int(port), timeout_s=timeout_s)
    return serial_connection(target, baudrate=baudrate, parity=parity)


async def discover(target: str, *, baudrate: int = 2400, parity: str = "E", timeout_s: float = 1.0) -> str:
    conn = connection_for(target, baudrate=baudrate, parity=parity, timeout_s=timeout_s)
    try:
        return await conn.read_address(timeout_s)
    finally:
        await conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m drivers.dlt645.discover", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", help="serial port (/dev/ttyUSB0) or tcp://HOST:PORT of a transparent gateway")
    ap.add_argument("--baudrate", type=int, default=2400)
    ap.add_argument("--parity", choices=("N", "E", "O"), default="E")
    ap.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for the answer")
    args = ap.parse_args(argv)
    try:
        address = asyncio.run(discover(args.target, baudrate=args.baudrate, parity=args.parity,
                                       timeout_s=args.timeout))
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    except DriverError as err:
        print(f"{err} [{err.reason}]", file=sys.stderr)
        return 1
    print(address)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
