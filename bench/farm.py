"""Meter farm for the plant benchmarks: N Modbus TCP meters in one asyncio process (stdlib only).

    python -m bench.farm --meters 500 --base-port 21000 [--per-port 1] --duration 600 --stats out.json

Each meter has 20 float32 values in 40 holding (= input) registers 0..39, big-endian words (ABCD),
recomputed each second, as in the shared peer bench's farm (so the same generated configuration fits):

    point 0 = unix second % 1,000,000 (exact in float32: the second the value was produced)
    point 1 = the meter's index
    point p = meter + 10 p + (second % 100) / 100 for p = 2..19

Layout: port `base_port + i // per_port` serves unit ids 1..per_port (meter i = unit i % per_port + 1);
with `--per-port 1` every meter has its own port and any unit id is answered. Only FC 3 and 4 are
served (others: exception 1); every complete frame in a segment is answered (pipelining is safe).
A light server on purpose: the pymodbus simulator costs more CPU per request than the gateway under
test, and this farm shares the machine with it. The process exits by itself after `--duration` s and
writes its request counts to `--stats`. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import struct
import time

REGS = 40


class Farm:
    def __init__(self, meters: int, per_port: int) -> None:
        self.meters = meters
        self.per_port = per_port
        self.sec = 0
        self.blocks: list[bytes | None] = [None] * meters
        self.requests = 0
        self.errors = 0

    def block(self, meter: int) -> bytes:
        sec = int(time.time())
        if sec != self.sec:
            self.sec = sec
            self.blocks = [None] * self.meters
        b = self.blocks[meter]
        if b is None:
            frac = (sec % 100) / 100.0
            b = struct.pack(">20f", float(sec % 1_000_000), float(meter),
                            *(meter + p * 10 + frac for p in range(2, 20)))
            self.blocks[meter] = b
        return b

    def answer(self, port_idx: int, frame: bytes) -> bytes:
        tid_pid = frame[:4]
        unit, fc = frame[6], frame[7]
        self.requests += 1
        meter = port_idx if self.per_port == 1 else port_idx * self.per_port + unit - 1
        if fc not in (3, 4) or len(frame) < 12 or not (self.per_port == 1 or 1 <= unit <= self.per_port) \
                or meter >= self.meters:
            self.errors += 1
            return tid_pid + struct.pack(">HBBB", 3, unit, fc | 0x80, 1)
        addr, count = struct.unpack(">HH", frame[8:12])
        if count < 1 or addr + count > REGS:
            self.errors += 1
            return tid_pid + struct.pack(">HBBB", 3, unit, fc | 0x80, 2)
        data = self.block(meter)[2 * addr:2 * (addr + count)]
        return tid_pid + struct.pack(">HBBB", 3 + len(data), unit, fc, len(data)) + data


class MeterPort(asyncio.Protocol):
    def __init__(self, farm: Farm, port_idx: int) -> None:
        self.farm = farm
        self.port_idx = port_idx
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        out = []
        while len(buf) >= 7:
            length = (buf[4] << 8) | buf[5]
            end = 6 + length
            if len(buf) < end:
                break
            out.append(self.farm.answer(self.port_idx, buf[:end]))
            buf = buf[end:]
        self.buf = buf
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def serve(a: argparse.Namespace) -> Farm:
    farm = Farm(a.meters, a.per_port)
    loop = asyncio.get_running_loop()
    ports = -(-a.meters // a.per_port)
    servers = []
    for j in range(ports):
        servers.append(await loop.create_server(lambda j=j: MeterPort(farm, j), "127.0.0.1", a.base_port + j,
                                                reuse_address=True))
    print(f"farm: {a.meters} meters on 127.0.0.1:{a.base_port}..{a.base_port + ports - 1}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), a.duration)
    for s in servers:
        s.close()
    return farm


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meters", type=int, required=True)
    ap.add_argument("--base-port", type=int, required=True)
    ap.add_argument("--per-port", type=int, default=1)
    ap.add_argument("--duration", type=float, default=600.0, help="hard bound in seconds")
    ap.add_argument("--stats", default="")
    a = ap.parse_args(argv)
    farm = asyncio.run(serve(a))
    if a.stats:
        with open(a.stats, "w") as f:
            json.dump({"requests": farm.requests, "errors": farm.errors}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
