"""DL/T 645-2007 data identifiers (DI) and their value formats (pure, no I/O).

A value travels as packed BCD, least significant byte first (DL/T 645-2007 5.3 "transmission
order": multi-byte fields low byte first). Its format is written in the standard as a digit
pattern, e.g. `XXX.XXX` (3 bytes, 3 decimals). For signed quantities the most significant bit of
the most significant byte is the sign (1 = negative) and the rest is the BCD magnitude
(Appendix A, notes to tables A.3 "variable data": current, power and power factor carry a sign).

The DI table below is DL/T 645-2007 Appendix A (normative), table A.1 "energy" (DI3 = 00) and
table A.3 "variables" (DI3 = 02). DIs are written DI3 DI2 DI1 DI0 as in the standard, and sent DI0
first. [verify] the table numbers A.1/A.3 are quoted from memory of the standard's layout; the DI
codes and formats match the widely published 2007 tables (and CHINT/Acrel/Holley meter manuals).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import DecodeError


class BcdError(DecodeError):
    """Bytes that are not valid packed BCD for the expected format (a garbled or misframed value)."""


@dataclass(frozen=True, slots=True)
class DataFormat:
    """A DL/T 645 digit pattern: `nbytes` of packed BCD with `decimals` implied decimals."""

    pattern: str
    nbytes: int
    decimals: int
    signed: bool = False

    @property
    def max_raw(self) -> int:
        """Largest magnitude in units of the last digit. Signed formats lose the top bit of the top
        digit to the sign, so that digit goes up to 7 (XX.XXXX signed: at most 79.9999)."""
        digits = 2 * self.nbytes
        return (8 if self.signed else 10) * 10 ** (digits - 1) - 1

    @property
    def step(self) -> float:
        return 10.0**-self.decimals


ENERGY = DataFormat("XXXXXX.XX", 4, 2)
VOLTAGE = DataFormat("XXX.X", 2, 1)
CURRENT = DataFormat("XXX.XXX", 3, 3, signed=True)
POWER = DataFormat("XX.XXXX", 3, 4, signed=True)
POWER_FACTOR = DataFormat("X.XXX", 2, 3, signed=True)
FREQUENCY = DataFormat("XX.XX", 2, 2)


@dataclass(frozen=True, slots=True)
class DataItem:
    di: int  # DI3 DI2 DI1 DI0 as one number, e.g. 0x02010100
    fmt: DataFormat
    unit: str  # the meter's unit (gateway unit spelling); "1" for dimensionless
    description: str

    @property
    def hex(self) -> str:
        return f"{self.di:08X}"


def _items(*items: DataItem) -> dict[int, DataItem]:
    return {i.di: i for i in items}


DATA_ITEMS: dict[int, DataItem] = _items(
    # Table A.1, energy (DI3 = 00): DI2 = 00 combined, 01 forward, 02 reverse; DI1 = 00 total; DI0 = 00 current.
    DataItem(0x00000000, ENERGY, "kWh", "Combined active energy, total (current)"),
    DataItem(0x00010000, ENERGY, "kWh", "Forward (import) active energy, total (current)"),
    DataItem(0x00020000, ENERGY, "kWh", "Reverse (export) active energy, total (current)"),
    # Table A.3, variables (DI3 = 02). DI1 = 01..03 phase A..C, 00 total.
    DataItem(0x02010100, VOLTAGE, "V", "Phase A voltage"),
    DataItem(0x02010200, VOLTAGE, "V", "Phase B voltage"),
    DataItem(0x02010300, VOLTAGE, "V", "Phase C voltage"),
    DataItem(0x02020100, CURRENT, "A", "Phase A current"),
    DataItem(0x02020200, CURRENT, "A", "Phase B current"),
    DataItem(0x02020300, CURRENT, "A", "Phase C current"),
    DataItem(0x02030000, POWER, "kW", "Instantaneous total active power"),
    DataItem(0x02030100, POWER, "kW", "Instantaneous phase A active power"),
    DataItem(0x02030200, POWER, "kW", "Instantaneous phase B active power"),
    DataItem(0x02030300, POWER, "kW", "Instantaneous phase C active power"),
    DataItem(0x02040000, POWER, "kvar", "Instantaneous total reactive power"),
    DataItem(0x02050000, POWER, "kVA", "Instantaneous total apparent power"),
    DataItem(0x02060000, POWER_FACTOR, "1", "Total power factor"),
    DataItem(0x02060100, POWER_FACTOR, "1", "Phase A power factor"),
    DataItem(0x02060200, POWER_FACTOR, "1", "Phase B power factor"),
    DataItem(0x02060300, POWER_FACTOR, "1", "Phase C power factor"),
    DataItem(0x02800002, FREQUENCY, "Hz", "Grid frequency"),
)


def parse_di(text: str | int) -> int:
    """A DI as written in profiles: "02010100" / "0x02010100" / "02 01 01 00" (DI3 first), or an int."""
    if isinstance(text, int):
        value = text
    else:
        s = text.strip().replace(" ", "").replace("_", "")
        s = s[2:] if s.lower().startswith("0x") else s
        if len(s) != 8:
            raise ValueError(f"data identifier {text!r}: expected 8 hex digits DI3 DI2 DI1 DI0, e.g. 02010100")
        try:
            value = int(s, 16)
        except ValueError as err:
            raise ValueError(f"data identifier {text!r}: not hexadecimal") from err
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"data identifier {text!r} out of range")
    return value


def data_item(di: int) -> DataItem:
    """The table entry of a DI; ValueError (with the known DIs) for one this gateway cannot decode."""
    try:
        return DATA_ITEMS[di]
    except KeyError:
        known = ", ".join(i.hex for i in DATA_ITEMS.values())
        raise ValueError(f"data identifier {di:08X} is not in the DL/T 645 table (known: {known})") from None


def di_bytes(di: int) -> bytes:
    """The DI on the wire order DI0 DI1 DI2 DI3 (before the +0x33 offset)."""
    return di.to_bytes(4, "little")


def encode_value(fmt: DataFormat, value: float) -> bytes:
    """Engineering value -> packed BCD, low byte first. Rounds to the format's resolution; ValueError
    when the value does not fit (or, unsigned, is negative)."""
    raw = round(abs(value) * 10**fmt.decimals)
    negative = value < 0 and raw != 0
    if negative and not fmt.signed:
        raise ValueError(f"{value} is negative; format {fmt.pattern} is unsigned")
    if raw > fmt.max_raw:
        raise ValueError(f"{value} does not fit format {fmt.pattern}")
    digits = f"{raw:0{2 * fmt.nbytes}d}"  # most significant first
    big = bytes(int(digits[i : i + 2], 16) for i in range(0, len(digits), 2))
    if negative:
        big = bytes([big[0] | 0x80]) + big[1:]
    return big[::-1]


def decode_value(fmt: DataFormat, data: bytes) -> float:
    """Packed BCD, low byte first -> engineering value. BcdError for a wrong length or a non-BCD nibble."""
    if len(data) != fmt.nbytes:
        raise BcdError(f"format {fmt.pattern} takes {fmt.nbytes} bytes, got {len(data)}")
    big = bytearray(data[::-1])
    negative = False
    if fmt.signed and big[0] & 0x80:
        negative = True
        big[0] &= 0x7F
    raw = 0
    for b in big:
        hi, lo = b >> 4, b & 0x0F
        if hi > 9 or lo > 9:
            raise BcdError(f"byte {b:02X} is not BCD (value bytes {bytes(data).hex(' ')}, format {fmt.pattern})")
        raw = raw * 100 + hi * 10 + lo
    value = raw / 10**fmt.decimals
    return -value if negative and raw else value
