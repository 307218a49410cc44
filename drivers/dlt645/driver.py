"""DL/T 645-2007 polling driver over a serial line (RS-485) or a serial-to-TCP transparent gateway.

One `Dlt645Connection` per bus (a serial port, or one host:port of a transparent gateway); every
meter configured on it is polled through it, one request at a time (RS-485 is half duplex and a
DL/T 645 meter answers only when asked). Each meter is read DI by DI with "read data" (control
code 0x11, DL/T 645-2007 7.1): one request, one answer per point. The frame codec and its
references to the standard are in drivers/dlt645/frame.py, the DI formats in drivers/dlt645/di.py.

Per point the answer decides the sample:
* normal answer (0x91, or 0xB1 when the meter flags subsequent frames: the value we asked for is in
  this frame): the decoded value, good;
* abnormal answer (0xD1 + error word): bad, with the error word's reason (`dlt645_no_data`, ...);
* no answer within `timeout_s`: bad/`timeout`; bytes that never form a valid frame (checksum,
  truncated, garbage): bad/`bad_frame`; a value that is not BCD: bad/`decode_error`.
When the meter gives no frame at all in a poll, `read` raises TransientDriverError (reason `timeout`
or `bad_frame`) and the poller backs off; after two silent DIs in a row the rest of the poll is not
asked (a dead meter costs at most two timeouts of bus time per poll, not one per point).

On the line: each request starts with the FE FE FE FE wake-up bytes; answers may carry them too.
Before sending, stale input is discarded and the bus is left silent for `min_gap_s` after the
previous answer. Frames that are not the answer (our own echo on adapters that hear themselves,
a late answer from another meter) are skipped by direction bit and address.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drivers.dlt645.di import BcdError, DataItem, data_item, decode_value
from drivers.dlt645.frame import (
    WILDCARD,
    AbnormalAnswer,
    Frame,
    FrameError,
    extract,
    format_address,
    read_address_answer,
    read_address_request,
    read_answer_value,
    read_request,
)
from gateway.errors import TransientDriverError
from gateway.model import REASON_NO_COMMUNICATION, REASON_TIMEOUT, Quality, RawSample

REASON_BAD_FRAME = "bad_frame"
"""Bytes came back but never a valid answer frame: checksum error, truncated frame or line noise."""
REASON_DECODE = "decode_error"

WallClock = Callable[[], int]
QUIET_S = 0.05  # after a garbled answer, wait until the line has been silent this long (bounded by the timeout)
GIVE_UP_AFTER = 2  # silent DIs in a row after which the rest of a poll is not asked


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def char_time_s(baudrate: int, *, bytesize: int = 8, parity: str = "E", stopbits: int = 1) -> float:
    return (1 + bytesize + (0 if parity == "N" else 1) + stopbits) / baudrate


@dataclass(frozen=True, slots=True)
class Dlt645Point:
    """One value of one meter: the DI to read; engineering value = table value * scale + offset."""

    name: str
    di: int
    scale: float = 1.0
    offset: float = 0.0

    @property
    def item(self) -> DataItem:
        return data_item(self.di)


@dataclass(frozen=True, slots=True)
class Dlt645Device:
    """What the driver needs to poll one meter. `address` in wire order (frame.parse_address)."""

    instrument_id: str
    address: bytes
    timeout_s: float
    points: tuple[Dlt645Point, ...]


class _Silent(Exception):
    """No answer frame (internal): `reason` is timeout or bad_frame."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Link:
    """A byte pipe to the bus. Received bytes collect in `buffer`; subclasses open the transport."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.buffer = bytearray()
        self.lost: BaseException | None = None
        self._arrived = asyncio.Event()

    @property
    def is_open(self) -> bool:
        raise NotImplementedError

    async def open(self) -> None:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _received(self, data: bytes) -> None:
        self.buffer += data
        self._arrived.set()

    def _lost(self, exc: BaseException | None) -> None:
        self.lost = exc or ConnectionError("connection closed")
        self._arrived.set()

    def discard_input(self) -> None:
        self.buffer.clear()
        self._arrived.clear()

    async def wait_data(self, timeout: float) -> bool:
        """Wait until bytes arrive or the link is lost (True), or `timeout` seconds pass (False)."""
        if timeout <= 0:
            return False
        self._arrived.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._arrived.wait()
        except TimeoutError:
            return False
        return True


class SerialLink(Link):
    """A serial port through pyserial, non-blocking, read by the event loop (POSIX file descriptors:
    /dev/ttyUSB*, /dev/ttyS*, pseudo-terminals)."""

    def __init__(self, port: str, *, baudrate: int, parity: str, stopbits: int, bytesize: int) -> None:
        super().__init__(f"dlt645://{port}")
        self.port = port
        self.settings = {"baudrate": baudrate, "parity": parity, "stopbits": stopbits, "bytesize": bytesize}
        self._serial: Any = None

    @property
    def is_open(self) -> bool:
        return self._serial is not None and self.lost is None

    async def open(self) -> None:
        import termios

        import serial

        self.close()
        self.lost = None
        self.buffer.clear()
        try:
            ser = serial.serial_for_url(self.port, timeout=0, write_timeout=2, **self.settings)
        except (serial.SerialException, OSError, ValueError, termios.error) as err:
            # termios.error: the driver refuses the line settings (e.g. a pseudo-terminal reopened with parity)
            raise TransientDriverError(f"{self.name}: cannot open serial port: {err}") from err
        self._serial = ser
        asyncio.get_running_loop().add_reader(ser.fileno(), self._readable)

    def _readable(self) -> None:
        import serial

        ser = self._serial
        if ser is None:
            return
        try:
            data = ser.read(max(1, ser.in_waiting))
        except (serial.SerialException, OSError) as err:  # pyserial: readable but no data = port gone
            self._detach()
            self._lost(err)
            return
        if data:
            self._received(data)

    def write(self, data: bytes) -> None:
        import serial

        try:
            self._serial.write(data)
        except (serial.SerialException, OSError, AttributeError) as err:
            self._detach()
            self._lost(err)
            raise TransientDriverError(f"{self.name}: write failed: {err}") from err

    def discard_input(self) -> None:
        if self._serial is not None:
            with contextlib.suppress(Exception):
                self._serial.reset_input_buffer()
        super().discard_input()

    def _detach(self) -> None:
        ser, self._serial = self._serial, None
        if ser is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(ser.fileno())
        with contextlib.suppress(Exception):
            ser.close()

    def close(self) -> None:
        self._detach()


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, link: TcpLink) -> None:
        self.link = link

    def data_received(self, data: bytes) -> None:
        self.link._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._lost(exc)


class TcpLink(Link):
    """A TCP connection to a transparent serial device server (raw bytes both ways, no framing)."""

    def __init__(self, host: str, port: int, *, connect_timeout_s: float) -> None:
        super().__init__(f"dlt645_over_tcp://{host}:{port}")
        self.host, self.port = host, port
        self.connect_timeout_s = connect_timeout_s
        self._transport: asyncio.Transport | None = None

    @property
    def is_open(self) -> bool:
        return self._transport is not None and self.lost is None

    async def open(self) -> None:
        self.close()
        self.lost = None
        self.buffer.clear()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                transport, _ = await loop.create_connection(lambda: _TcpProtocol(self), self.host, self.port)
        except (OSError, TimeoutError) as err:
            raise TransientDriverError(f"{self.name}: cannot connect: {err or 'timed out'}") from err
        self._transport = transport  # type: ignore[assignment]

    def write(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise TransientDriverError(f"{self.name}: connection closed")
        self._transport.write(data)

    def close(self) -> None:
        t, self._transport = self._transport, None
        if t is not None:
            t.close()


class Dlt645Connection:
    """PollingDriver for every DL/T 645 meter on one bus (drivers/base.py)."""

    def __init__(self, link: Link, *, min_gap_s: float = 0.0, clock: WallClock = wall_ms) -> None:
        self.link = link
        self.name = link.name
        self.min_gap_s = min_gap_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._last_end = -1e9
        self.requests = 0
        self.failures = 0

    @property
    def connected(self) -> bool:
        return self.link.is_open

    async def open(self) -> None:
        if not self.link.is_open:
            await self.link.open()

    async def close(self) -> None:
        self.link.close()

    async def read(self, device: Dlt645Device) -> list[RawSample]:
        """One poll of one meter: one sample per point. Raises TransientDriverError when the meter
        gave no answer frame at all (or the port/connection is gone)."""
        async with self._lock:
            await self.open()
            out: list[RawSample] = []
            answered = False
            silent_run = 0
            last_silence: _Silent | None = None
            for p in device.points:
                item = p.item
                if silent_run >= GIVE_UP_AFTER and last_silence is not None:
                    out.append(RawSample(p.name, self._clock(), None, Quality.BAD, last_silence.reason))
                    continue
                try:
                    frame = await self._transact(read_request(device.address, p.di), device.address, device.timeout_s)
                except _Silent as s:
                    silent_run += 1
                    last_silence = s
                    if not answered:
                        raise TransientDriverError(
                            f"{self.name} meter {format_address(device.address)}: DI {p.di:08X}: {s}",
                            reason=s.reason) from None
                    out.append(RawSample(p.name, self._clock(), None, Quality.BAD, s.reason))
                    continue
                answered = True
                silent_run = 0
                out.append(self._sample(p, item, frame, device.address))
            return out

    def _sample(self, p: Dlt645Point, item: DataItem, frame: Frame, address: bytes) -> RawSample:
        ts = self._clock()
        try:
            raw = read_answer_value(frame, p.di, item.fmt.nbytes)
            value = decode_value(item.fmt, raw) * p.scale + p.offset
        except AbnormalAnswer as err:
            self.failures += 1
            return RawSample(p.name, ts, None, Quality.BAD, err.reason, status=err.err)
        except BcdError:
            self.failures += 1
            return RawSample(p.name, ts, None, Quality.BAD, REASON_DECODE)
        except FrameError:
            self.failures += 1
            return RawSample(p.name, ts, None, Quality.BAD, REASON_BAD_FRAME)
        return RawSample(p.name, ts, value)

    async def read_address(self, timeout_s: float = 1.0) -> str:
        """Commissioning: ask "read address" on the wildcard address and return the nameplate
        address of the one meter that answers. With several meters on the line their answers
        collide, which shows up as a bad frame: disconnect all but one."""
        async with self._lock:
            await self.open()
            try:
                frame = await self._transact(read_address_request(), WILDCARD, timeout_s)
                return format_address(read_address_answer(frame))
            except _Silent as s:
                raise TransientDriverError(f"{self.name}: no meter answered read address ({s}); with several "
                                           "meters on the line their answers collide: connect one at a time",
                                           reason=s.reason) from None
            except FrameError as err:
                raise TransientDriverError(f"{self.name}: read address: {err}", reason=REASON_BAD_FRAME) from err

    async def _transact(self, request: bytes, address: bytes, timeout_s: float) -> Frame:
        """Send one request and return the answer frame from `address` (any meter for the wildcard)."""
        link = self.link
        wait = self._last_end + self.min_gap_s - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        loop = asyncio.get_running_loop()
        link.discard_input()
        self.requests += 1
        try:
            link.write(request)
            deadline = loop.time() + timeout_s
            while True:
                try:
                    frame, used = extract(link.buffer)
                except FrameError as err:
                    self.failures += 1
                    await self._drain(deadline)
                    raise _Silent(REASON_BAD_FRAME, f"invalid answer: {err}") from None
                if frame is not None:
                    del link.buffer[:used]
                    if frame.is_answer and (address == WILDCARD or frame.address == address):
                        return frame
                    continue  # our own echo, or a late answer of another meter
                if link.lost is not None:
                    self.failures += 1
                    err = link.lost
                    await self.close()
                    raise TransientDriverError(f"{self.name}: connection lost ({err})",
                                               reason=REASON_NO_COMMUNICATION)
                if not await link.wait_data(deadline - loop.time()):
                    self.failures += 1
                    if link.buffer:
                        raise _Silent(REASON_BAD_FRAME, f"incomplete answer ({len(link.buffer)} bytes "
                                                        f"{bytes(link.buffer[:24]).hex(' ')})")
                    raise _Silent(REASON_TIMEOUT, f"no answer within {timeout_s:g} s")
        finally:
            self._last_end = time.monotonic()

    async def _drain(self, deadline: float) -> None:
        """After garbage, let the rest of it arrive (until QUIET_S of silence) so it cannot be taken
        for the start of the next answer."""
        loop = asyncio.get_running_loop()
        while await self.link.wait_data(min(QUIET_S, deadline - loop.time())):
            self.link.buffer.clear()
        self.link.discard_input()


def serial_connection(port: str, *, baudrate: int = 2400, parity: str = "E", stopbits: int = 1, bytesize: int = 8,
                      inter_frame_delay_s: float = 0.0, clock: WallClock = wall_ms) -> Dlt645Connection:
    """One connection per RS-485 bus; every meter on it must use the same line settings."""
    link = SerialLink(port, baudrate=baudrate, parity=parity, stopbits=stopbits, bytesize=bytesize)
    # No inter-frame timer is defined by DL/T 645 (frames are delimited by 68 .. 16); a few character
    # times of silence keep slow meters and RS-485 converters that turn the line around happy.
    gap = max(4 * char_time_s(baudrate, bytesize=bytesize, parity=parity, stopbits=stopbits), inter_frame_delay_s)
    return Dlt645Connection(link, min_gap_s=gap, clock=clock)


def tcp_connection(host: str, port: int, *, timeout_s: float, inter_frame_delay_s: float = 0.0,
                   clock: WallClock = wall_ms) -> Dlt645Connection:
    """Meters behind a transparent serial-to-TCP gateway (raw DL/T 645 frames over the socket)."""
    return Dlt645Connection(TcpLink(host, port, connect_timeout_s=timeout_s), min_gap_s=inter_frame_delay_s,
                            clock=clock)


async def discover(conn: Dlt645Connection, timeout_s: float = 1.0) -> str:
    """The nameplate address of the single meter on `conn`'s line (see Dlt645Connection.read_address)."""
    return await conn.read_address(timeout_s)


