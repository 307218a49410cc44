"""Modbus meter simulator: a real pymodbus server serving the same register maps the gateway reads.

The register image is built by our own encoder from the instrument's compiled points (profile plus
overrides), so the simulator and the driver check each other. pymodbus only provides the protocol
stack: a small ModbusServerContext adapter hands it our registers or an exception code.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer

from drivers.modbus.decode import encode_point
from drivers.modbus.spec import REGISTER_COUNT, DataType, ModbusPoint, Table
from gateway.errors import DecodeError

log = logging.getLogger("simulators.modbus")

_FC_TABLE = {3: Table.HOLDING, 4: Table.INPUT, 1: Table.COIL, 2: Table.DISCRETE}


@dataclass
class Faults:
    """Fault knobs, settable while the server runs."""

    timeout: bool = False  # accept the request, never answer
    exception: int | None = None  # answer every read with this Modbus exception code (2, 4, 6, 0x0B...)
    frozen: bool = False  # values stop changing
    nan: bool = False  # floats read NaN
    status_bits: int = 0  # OR-ed into the profile's health status point (calibration, maintenance...)
    # RTU framing only (serial, RTU over TCP), applied to outgoing frames by fault_trace():
    truncated: bool = False  # answer with the first half of the frame (the CRC never arrives)
    garbled: bool = False  # flip one data byte, so the frame fails its CRC check

    def clear(self) -> None:
        self.timeout, self.exception, self.frozen, self.nan, self.status_bits = False, None, False, False, 0
        self.truncated = self.garbled = False


ValueSource = Callable[[float], dict[str, float]]
"""dt seconds -> {point name: value in the device unit} (the next simulated state)."""


@dataclass
class SimulatedDevice:
    unit_id: int
    points: Sequence[ModbusPoint]
    source: ValueSource
    status_point: str | None = None
    allow_gaps: bool = False  # real SDM630s answer reads across reserved registers with zeros
    faults: Faults = field(default_factory=Faults)
    values: dict[str, float] = field(default_factory=dict)
    _image: dict[tuple[Table, int], int] = field(default_factory=dict)
    _starts: set[tuple[Table, int]] = field(default_factory=set)
    _inside: set[tuple[Table, int]] = field(default_factory=set)

    def __post_init__(self) -> None:
        for p in self.points:
            self._starts.add((p.table, p.address))
            for a in range(p.address + 1, p.address + REGISTER_COUNT[p.dtype]):
                self._inside.add((p.table, a))

    def step(self, dt: float) -> None:
        if not self.faults.frozen or not self.values:
            self.values = dict(self.source(dt))
        image: dict[tuple[Table, int], int] = {}
        for p in self.points:
            v = self.values.get(p.name, 0.0)
            if p.name == self.status_point:
                v = float(int(v) | self.faults.status_bits)
            elif self.faults.nan and p.dtype in (DataType.FLOAT32, DataType.FLOAT64):
                v = math.nan
            try:
                regs = encode_point(p, v)
            except DecodeError:
                regs = encode_point(p, 0.0)
            for i, r in enumerate(regs):
                image[(p.table, p.address + i)] = r
        self._image = image

    def read(self, table: Table, address: int, count: int) -> list[int] | ExcCodes:
        if self.faults.exception is not None:
            return ExcCodes(self.faults.exception)
        if (table, address) in self._inside:
            return ExcCodes.ILLEGAL_ADDRESS  # a read may not start in the middle of a value
        out = []
        for a in range(address, address + count):
            v = self._image.get((table, a))
            if v is None:
                if not self.allow_gaps:
                    return ExcCodes.ILLEGAL_ADDRESS
                v = 0
            out.append(v)
        return [bool(v) for v in out] if table.is_bits else out


class _Context(ModbusServerContext):
    """Adapter to pymodbus' server datastore interface, without its deprecated data blocks."""

    def __init__(self, devices: dict[int, SimulatedDevice]) -> None:  # no super(): we hold our own data
        self._sim_devices = devices
        self.stalled: set[asyncio.Task[object]] = set()  # requests held by the timeout knob
        self.old_simulator = True  # tells the server to call async_getValues on us
        self.simdevices = []

    async def async_getValues(self, device_id: int, func_code: int, address: int, count: int = 1):
        dev = self._sim_devices.get(device_id)
        if dev is None:
            raise NoSuchIdException(f"no simulated device {device_id}")
        if dev.faults.timeout:
            task = asyncio.current_task()
            if task is not None:
                self.stalled.add(task)  # type: ignore[arg-type]
            try:
                await asyncio.sleep(3600)  # the client times out; the server stays up
            finally:
                self.stalled.discard(task)  # type: ignore[arg-type]
        table = _FC_TABLE.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        return dev.read(table, address, count)

    async def async_setValues(self, device_id: int, func_code: int, address: int, values):
        return ExcCodes.ILLEGAL_FUNCTION  # meters are read-only here

    def device_ids(self) -> list[int]:
        return list(self._sim_devices)


def fault_trace(devices: Mapping[int, SimulatedDevice]) -> Callable[[bool, bytes], bytes]:
    """pymodbus `trace_packet` hook for RTU-framed servers: applies the `truncated` and `garbled`
    knobs to outgoing frames. Byte 0 of an RTU frame is the unit id; the last two are the CRC."""

    def trace(sending: bool, data: bytes) -> bytes:
        dev = devices.get(data[0]) if sending and data else None
        if dev is None:
            return data
        if dev.faults.truncated:
            return data[: max(1, len(data) // 2)]
        if dev.faults.garbled and len(data) > 3:
            frame = bytearray(data)
            frame[-3] ^= 0xFF  # last byte before the CRC: same length, wrong checksum
            return bytes(frame)
        return data

    return trace


async def tick_devices(devices: dict[int, SimulatedDevice], interval_s: float, time_scale: float = 1.0) -> None:
    """Advance every device's simulated values by the real time elapsed (x time_scale, for a gateway on an
    accelerated plant clock: totals then count plant hours), forever (cancel to stop)."""
    loop = asyncio.get_running_loop()
    last = loop.time()
    while True:
        await asyncio.sleep(interval_s)
        now = loop.time()
        for dev in devices.values():
            dev.step((now - last) * time_scale)
        last = now


class ModbusMeterServer:
    """One listening endpoint (host:port) with one or more unit ids behind it."""

    def __init__(self, host: str, port: int, devices: dict[int, SimulatedDevice], *,
                 update_interval_s: float = 0.2, rtu_framing: bool = False, time_scale: float = 1.0) -> None:
        self.host, self.port = host, port
        self.devices = devices
        self.time_scale = time_scale
        # On an accelerated clock a total would otherwise grow in coarse steps (0.2 s real = 4 plant minutes at
        # x1200): tick as often as needed for steps of at most ~10 plant seconds, down to 10 ms real.
        if time_scale > 1:
            update_interval_s = max(0.01, min(update_interval_s, 10.0 / time_scale))
        self.update_interval_s = update_interval_s
        self.refuse = False  # knob: stop listening (connection refused) until cleared
        self._framer = FramerType.RTU if rtu_framing else FramerType.SOCKET
        self._server: ModbusTcpServer | None = None
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for dev in self.devices.values():
            dev.step(0.0)
        await self._listen()
        self._ticker = asyncio.create_task(self._tick(), name=f"sim-tick-{self.port}")

    async def _listen(self) -> None:
        # ignore_missing_devices: an unknown unit id times out, like a silent device behind a gateway.
        self._server = ModbusTcpServer(_Context(self.devices), address=(self.host, self.port),
                                       framer=self._framer, ignore_missing_devices=True,
                                       trace_packet=fault_trace(self.devices) if self._framer is FramerType.RTU
                                       else None)
        await self._server.serve_forever(background=True)

    async def _unlisten(self) -> None:
        if self._server is not None:
            context = self._server.context
            await self._server.shutdown()
            self._server = None
            if isinstance(context, _Context):
                for task in list(context.stalled):
                    task.cancel()
                await asyncio.gather(*context.stalled, return_exceptions=True)

    async def set_refuse(self, refuse: bool) -> None:
        """Connection refused while set: the listener is closed, existing connections dropped."""
        self.refuse = refuse
        if refuse:
            await self._unlisten()
        elif self._server is None:
            await self._listen()

    async def _tick(self) -> None:
        await tick_devices(self.devices, self.update_interval_s, self.time_scale)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass
            self._ticker = None
        await self._unlisten()
