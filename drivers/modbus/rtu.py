"""Modbus RTU over a serial line (RS-485 / RS-232): one pymodbus AsyncModbusSerialClient per bus.

Every instrument configured on the same port shares the connection returned here; the gateway's
ConnectionPoller runs one task per connection, so the half-duplex bus carries exactly one
outstanding request at a time (protocols.md 2, "RS-485 bus sharing").

Timing choices (pymodbus 3.16.1, read in its source):

* Receive side. The *async* serial client has no inter-character (t1.5) or inter-frame (t3.5)
  timer; only the sync client has one. It finds the end of a response by decoding its length
  (function code + byte count) and checking the CRC. A response that is cut short therefore just
  waits, and one with a bad CRC is silently discarded: both end when the response timeout expires.
  We watch the received bytes (pymodbus' `trace_packet` hook) so such a poll is reported as
  `bad_frame` (bytes arrived but never a valid frame) instead of `timeout` (nothing arrived): the
  first points at wiring, termination, baud rate or parity, the second at a dead or misaddressed
  device.
* Transmit side. After a response the client would send the next request immediately, which on a
  real bus can break the t3.5 silence a slave needs to see a new frame start. We keep the bus
  silent for max(t3.5, inter_frame_delay) between the end of one transaction and the start of the
  next, across devices as well as between the requests of one device. t3.5 is 3.5 characters of
  the configured framing below 19200 baud and the spec's fixed 1.75 ms above.
* timeout_s is the whole response budget: request and response time on the wire (an 80-register
  read at 9600 baud is ~170 ms of wire time alone) plus the device's turnaround. It is applied per
  device (each instrument's own `timeout_s`), not once per bus. On a shared bus a silent device
  costs this much bus time per attempt, so keep it short (0.2-1 s) and below the poll interval of
  the other devices on the bus (docs/modbus-rtu.md, "Bus sharing").
* retries=0 and reconnect_delay=0: the poller owns retry and backoff, so a dead meter costs exactly
  one timeout per poll, never timeout x (retries+1), and the library never reopens the port
  behind our back. When the adapter disappears (USB unplugged) pyserial reports an error, the
  transport closes, the poll is reported as `no_communication`, and the next poll reopens the
  port (failing with `no_communication` until it is back), paced by the poller's backoff.
* A late answer (after its timeout) lands while the bus waits for another unit id and is skipped by
  the framer's unit-id check, so it cannot be taken for another device's data; the late device
  itself is asked again only after its backoff. pymodbus also clears its receive buffer on every
  send, so bytes that straggle in between two transactions are discarded.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pymodbus.client import AsyncModbusSerialClient
from pymodbus.framer import FramerRTU, FramerType

from drivers.modbus.client import ModbusConnection, ModbusDeviceLike, WallClock, wall_ms
from drivers.modbus.spec import ReadRequest
from gateway.errors import TransientDriverError
from gateway.model import REASON_NO_COMMUNICATION, REASON_TIMEOUT, RawSample

REASON_BAD_FRAME = "bad_frame"
"""Bytes came back but never a valid response frame: CRC error, truncated frame or line noise."""

T35_ABOVE_19200_S = 0.00175  # Modbus over Serial Line V1.02, 2.5.1.1: fixed value above 19200 baud


def char_bits(*, bytesize: int, parity: str, stopbits: int) -> int:
    """Bits on the wire per character: start + data + optional parity + stop."""
    return 1 + bytesize + (0 if parity == "N" else 1) + stopbits


def t35_s(baudrate: int, *, bytesize: int = 8, parity: str = "N", stopbits: int = 1) -> float:
    """The RTU inter-frame silence (3.5 character times) for a line setting, in seconds."""
    if baudrate > 19200:
        return T35_ABOVE_19200_S
    return 3.5 * char_bits(bytesize=bytesize, parity=parity, stopbits=stopbits) / baudrate


class _RxWatch:
    """Remembers what pymodbus received during the current transaction (client trace_packet hook)."""

    def __init__(self) -> None:
        self.last = b""

    def reset(self) -> None:
        self.last = b""

    def trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self.last = data  # pymodbus passes its whole receive buffer, not just the new chunk
        return data

    def saw_garbage(self) -> bool:
        """True if bytes arrived that were not one complete frame with a good CRC.

        A complete, CRC-valid frame that did not satisfy the request (a late answer from another
        unit id) is not garbage: the device we asked is simply silent."""
        buf = self.last
        if not buf:
            return False
        complete = len(buf) >= FramerRTU.MIN_SIZE and FramerRTU.check_CRC(buf[:-2], int.from_bytes(buf[-2:], "big"))
        return not complete


class SerialBusConnection(ModbusConnection):
    """ModbusConnection for one serial bus: bus-wide inter-frame silence and serial-specific reasons."""

    def __init__(self, make_client: Any, *, name: str, clock: WallClock, inter_request_delay_s: float,
                 min_gap_s: float, watch: _RxWatch) -> None:
        super().__init__(make_client, name=name, clock=clock, inter_request_delay_s=inter_request_delay_s)
        self.min_gap_s = min_gap_s
        self._watch = watch
        self._last_end = -1e9  # monotonic end of the previous transaction on this bus

    async def _read_request(self, device: ModbusDeviceLike, req: ReadRequest) -> list[RawSample]:
        wait = self._last_end + self.min_gap_s - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        _set_response_timeout(self._client, device.timeout_s)
        self._watch.reset()
        try:
            return await super()._read_request(device, req)
        except TransientDriverError as err:
            if err.reason != REASON_TIMEOUT:
                raise
            if not self.connected:
                # pyserial reported the port gone while we waited (adapter unplugged, pty closed).
                await self.close()
                raise TransientDriverError(f"{self.name}: serial port lost ({err})",
                                           reason=REASON_NO_COMMUNICATION) from err
            if self._watch.saw_garbage():
                raise TransientDriverError(
                    f"{self.name} unit {device.unit_id}: invalid response frame ({len(self._watch.last)} bytes "
                    f"{self._watch.last[:16].hex()}): check baud rate, parity, termination and bias",
                    reason=REASON_BAD_FRAME) from err
            raise
        finally:
            self._last_end = time.monotonic()


def _set_response_timeout(client: Any, seconds: float) -> None:
    """Per-device response timeout on a shared client. pymodbus 3.16 reads it from the transaction
    manager's comm_params on every request; if a later version moves it, the client-wide timeout
    given at construction stays in force (the first instrument's, as before)."""
    params = getattr(getattr(client, "ctx", None), "comm_params", None)
    if params is not None and hasattr(params, "timeout_connect") and seconds > 0:
        params.timeout_connect = seconds


def serial_connection(port: str, *, baudrate: int, parity: str, stopbits: int, bytesize: int, timeout_s: float,
                      inter_frame_delay_s: float, clock: WallClock = wall_ms) -> ModbusConnection:
    """One connection per serial bus. `port` is a device path (/dev/ttyUSB0, /dev/serial/by-id/...)
    or any pyserial URL; every instrument on the bus must use the same line settings."""
    watch = _RxWatch()

    def make() -> AsyncModbusSerialClient:
        return AsyncModbusSerialClient(port, framer=FramerType.RTU, baudrate=baudrate, parity=parity,
                                       stopbits=stopbits, bytesize=bytesize, timeout=timeout_s, retries=0,
                                       reconnect_delay=0, name=f"rtu:{port}", trace_packet=watch.trace)

    gap = max(t35_s(baudrate, bytesize=bytesize, parity=parity, stopbits=stopbits), inter_frame_delay_s)
    return SerialBusConnection(make, name=f"modbus_rtu://{port}", clock=clock,
                               inter_request_delay_s=inter_frame_delay_s, min_gap_s=gap, watch=watch)
