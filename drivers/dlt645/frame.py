"""DL/T 645-2007 frame codec (pure, no I/O): build requests, find and check answers in a byte stream.

References are to DL/T 645-2007 "Multi-function watt-hour meter communication protocol"
(多功能电能表通信协议). Clause numbers are quoted from the 2007 edition's layout as far as could be
confirmed without the text at hand; the ones marked [verify] could not be checked.

* 5.1 character format: 1 start bit, 8 data bits, even parity, 1 stop bit (8E1); the default rate is
  2400 baud. [verify: clause number; the 8E1 framing and the 2400 baud default are stated in meter
  manuals citing the standard]
* 5.2 frame format: `68 A0 A1 A2 A3 A4 A5 68 C L DATA CS 16`.
  - A0..A5: the meter address, 12 BCD digits, A0 (least significant two digits) first. The
    address printed on the nameplate reads A5..A0. `AA AA AA AA AA AA` is the wildcard address a
    meter answers whatever its own address, used with "read address" on a one-meter line; the
    broadcast address `99 99 99 99 99 99` (time sync, no answer) is not used here.
  - C, the control code (5.2.3 [verify]): D7 direction (0 master to meter, 1 answer), D6 answer
    flag (0 normal, 1 abnormal), D5 subsequent-frame flag (1: more frames follow), D4..D0 function:
    0x11 read data (answers 0x91 normal, 0xB1 normal with subsequent frames, 0xD1 abnormal),
    0x13 read communication address (answer 0x93).
  - L: number of data bytes (at most 200 for a read answer [verify]).
  - DATA: every byte is sent plus 0x33 (mod 256) and taken minus 0x33 on receipt (5.2.5).
  - CS: the sum modulo 256 of every byte from the first 0x68 to the last data byte (5.2.6).
  - 0x16 ends the frame.
* 5.3 transmission: before a request the master sends four wake-up bytes `FE FE FE FE`; a meter
  may precede its answer with them too, so receivers skip any 0xFE before the first 0x68. Multi-byte
  fields (address, DI, values) travel least significant byte first. The meter answers within
  20 ms <= Td <= 500 ms and bytes of one frame are at most 500 ms apart [verify: the exact limits].
* 7.1 read data (0x11): DATA = DI0 DI1 DI2 DI3 (4 bytes); the normal answer's DATA = the same DI
  followed by the value (format per Appendix A, see drivers/dlt645/di.py).
* 7.4 read communication address (0x13) [verify: 7.x numbering]: request to AA..AA with L = 0; the
  answer's DATA is the 6-byte address (the frame's own address field carries it too).
* Abnormal answer: DATA = one error information word (ERR, "错误信息字"): bit 0 other error,
  bit 1 no requested data, bit 2 password error / unauthorised, bit 3 communication rate cannot be
  changed, bit 4 annual time zones exceeded, bit 5 daily time periods exceeded, bit 6 number of
  tariffs exceeded, bit 7 reserved. [verify: which table of the standard defines it]

Every malformed input raises a FrameError subclass (a gateway DecodeError); nothing else escapes.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.dlt645.di import di_bytes
from gateway.errors import DecodeError

START = 0x68
END = 0x16
WAKE = 0xFE
PREAMBLE = bytes([WAKE] * 4)
OFFSET = 0x33
HEADER_LEN = 10  # 68 A0..A5 68 C L
MAX_DATA = 255  # L is one byte; the standard limits read answers to 200 [verify]
WILDCARD = bytes([0xAA] * 6)

READ_DATA = 0x11
READ_ADDRESS = 0x13
DIRECTION_ANSWER = 0x80
ABNORMAL = 0x40
SUBSEQUENT = 0x20
FUNCTION_MASK = 0x1F

# Error information word bits -> quality reasons (docs/dlt645.md). Checked in this order, so the
# specific cause wins over "other error" when a meter sets both.
ERROR_BITS: tuple[tuple[int, str, str], ...] = (
    (1, "dlt645_no_data", "no requested data (unknown or unsupported DI)"),
    (2, "dlt645_unauthorised", "password error or unauthorised"),
    (3, "dlt645_baud_rate", "communication rate cannot be changed"),
    (4, "dlt645_time_zones", "annual time zones exceeded"),
    (5, "dlt645_day_periods", "daily time periods exceeded"),
    (6, "dlt645_tariffs", "number of tariffs exceeded"),
    (0, "dlt645_other_error", "other error"),
)
REASON_ERROR = "dlt645_error"  # abnormal answer with no known bit set


class FrameError(DecodeError):
    """Bytes that are not a valid DL/T 645 frame."""


class ChecksumError(FrameError):
    """A complete frame whose CS byte does not match its contents (line noise, wrong parity)."""


class TruncatedFrame(FrameError):
    """The bytes end before the frame does."""


class GarbledFrame(FrameError):
    """Bytes that cannot start or end a frame (noise, a wrong baud rate, another protocol)."""


class UnexpectedAnswer(FrameError):
    """A valid frame that does not answer the request (other control code, other DI, length)."""


class AbnormalAnswer(DecodeError):
    """The meter answered with its abnormal-answer control code and an error word."""

    def __init__(self, err: int, address: bytes) -> None:
        self.err = err
        self.address = address
        super().__init__(f"meter {format_address(address)} abnormal answer, error word {err:02X}: {explain(err)}")

    @property
    def reason(self) -> str:
        return error_reason(self.err)


def error_reason(err: int) -> str:
    for bit, reason, _ in ERROR_BITS:
        if err >> bit & 1:
            return reason
    return REASON_ERROR


def explain(err: int) -> str:
    parts = [text for bit, _, text in sorted(ERROR_BITS) if err >> bit & 1]
    return ", ".join(parts) or "no error bit set"


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame. `address` in wire order (A0 first); `data` with the 0x33 offset already removed."""

    address: bytes
    control: int
    data: bytes

    @property
    def function(self) -> int:
        return self.control & FUNCTION_MASK

    @property
    def is_answer(self) -> bool:
        return bool(self.control & DIRECTION_ANSWER)

    @property
    def is_abnormal(self) -> bool:
        return bool(self.control & ABNORMAL)


def parse_address(text: str) -> bytes:
    """Nameplate address (12 decimal digits, most significant first; shorter is zero-padded on the
    left) -> wire order A0..A5. ValueError for anything else."""
    s = text.strip()
    if not (1 <= len(s) <= 12 and s.isdigit() and s.isascii()):
        raise ValueError(f"meter address {text!r}: expected up to 12 decimal digits as on the nameplate")
    s = s.rjust(12, "0")
    return bytes(int(s[i : i + 2], 16) for i in range(10, -1, -2))


def format_address(address: bytes) -> str:
    """Wire order A0..A5 -> the nameplate's 12 digits (A5 first); non-BCD bytes shown in hex."""
    return "".join(f"{b:02X}" for b in reversed(address))


def _checksum(body: bytes | bytearray) -> int:
    return sum(body) & 0xFF


def encode_frame(address: bytes, control: int, data: bytes = b"", *, preamble: bool = True) -> bytes:
    """A complete frame (with the FE wake-up bytes unless `preamble=False`); `data` without offset."""
    if len(address) != 6:
        raise ValueError("address must be 6 bytes")
    if len(data) > MAX_DATA:
        raise ValueError(f"data field of {len(data)} bytes exceeds {MAX_DATA}")
    body = bytes([START, *address, START, control & 0xFF, len(data)]) + bytes((b + OFFSET) & 0xFF for b in data)
    return (PREAMBLE if preamble else b"") + body + bytes([_checksum(body), END])


def read_request(address: bytes, di: int) -> bytes:
    return encode_frame(address, READ_DATA, di_bytes(di))


def read_address_request() -> bytes:
    return encode_frame(WILDCARD, READ_ADDRESS)


def extract(buf: bytes | bytearray) -> tuple[Frame | None, int]:
    """Find the first frame in a receive buffer.

    Returns (frame, bytes consumed) for a complete valid frame, (None, 0) when more bytes are needed.
    Leading 0xFE wake-up bytes are skipped. Raises GarbledFrame when the bytes cannot be (the start
    of) a frame and ChecksumError for a complete frame whose checksum is wrong.
    """
    i = 0
    n = len(buf)
    while i < n and buf[i] == WAKE:
        i += 1
    if i == n:
        return None, 0
    if buf[i] != START:
        raise GarbledFrame(f"expected 68 or FE at byte {i}, got {buf[i]:02X} ({bytes(buf[:24]).hex(' ')})")
    if n - i < HEADER_LEN:
        if n - i > 7 and buf[i + 7] != START:
            raise GarbledFrame(f"second start byte is {buf[i + 7]:02X}, not 68 ({bytes(buf[:24]).hex(' ')})")
        return None, 0
    if buf[i + 7] != START:
        raise GarbledFrame(f"second start byte is {buf[i + 7]:02X}, not 68 ({bytes(buf[:24]).hex(' ')})")
    length = buf[i + 9]
    end = i + HEADER_LEN + length + 2
    if n < end:
        return None, 0
    body = bytes(buf[i : end - 2])
    if buf[end - 1] != END:
        raise GarbledFrame(f"frame does not end with 16 but {buf[end - 1]:02X} ({bytes(buf[i:end]).hex(' ')})")
    if buf[end - 2] != _checksum(body):
        raise ChecksumError(f"checksum {buf[end - 2]:02X}, computed {_checksum(body):02X} "
                            f"({bytes(buf[i:end]).hex(' ')})")
    data = bytes((b - OFFSET) & 0xFF for b in body[HEADER_LEN:])
    return Frame(address=body[1:7], control=body[8], data=data), end


def decode_frame(raw: bytes | bytearray) -> Frame:
    """Exactly one frame (optionally preceded by FE bytes); TruncatedFrame if it stops short,
    GarbledFrame if bytes follow it."""
    frame, used = extract(raw)
    if frame is None:
        raise TruncatedFrame(f"incomplete frame ({len(raw)} bytes: {bytes(raw[:24]).hex(' ')})")
    if used != len(raw):
        raise GarbledFrame(f"{len(raw) - used} bytes after the end of the frame")
    return frame


def read_answer_value(frame: Frame, di: int, nbytes: int) -> bytes:
    """The value bytes of an answer to `read_request(..., di)`.

    Raises AbnormalAnswer for an abnormal answer (its error word says why) and UnexpectedAnswer for
    a frame that does not answer this request."""
    if frame.function != READ_DATA or not frame.is_answer:
        raise UnexpectedAnswer(f"control code {frame.control:02X} does not answer read data (11)")
    if frame.is_abnormal:
        if len(frame.data) != 1:
            raise UnexpectedAnswer(f"abnormal answer with {len(frame.data)} data bytes, expected 1 error word")
        raise AbnormalAnswer(frame.data[0], frame.address)
    if frame.data[:4] != di_bytes(di):
        got = int.from_bytes(frame.data[:4], "little") if len(frame.data) >= 4 else None
        raise UnexpectedAnswer(f"answer for DI {got:08X} while {di:08X} was asked" if got is not None
                               else f"answer with {len(frame.data)} data bytes, shorter than a DI")
    value = frame.data[4:]
    if len(value) != nbytes:
        raise UnexpectedAnswer(f"DI {di:08X}: {len(value)} value bytes, expected {nbytes}")
    return value


def read_address_answer(frame: Frame) -> bytes:
    """The address (wire order) in an answer to `read_address_request()`."""
    if frame.control != READ_ADDRESS | DIRECTION_ANSWER:
        raise UnexpectedAnswer(f"control code {frame.control:02X} does not answer read address (13)")
    if len(frame.data) != 6:
        raise UnexpectedAnswer(f"read-address answer with {len(frame.data)} data bytes, expected 6")
    return frame.data
