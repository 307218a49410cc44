"""Plain descriptions of Modbus points and read requests, shared by planning, decoding and the simulator."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Table(StrEnum):
    HOLDING = "holding"  # FC03
    INPUT = "input"  # FC04
    COIL = "coil"  # FC01: one bit per address
    DISCRETE = "discrete"  # FC02: one bit per address

    @property
    def is_bits(self) -> bool:
        """Bit tables hold BOOL points only; their read limit and `count` are in bits, not registers."""
        return self in (Table.COIL, Table.DISCRETE)


class DataType(StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BOOL = "bool"  # one coil/discrete-input bit; only valid on bit tables


class WordOrder(StrEnum):
    """Byte sequence on the wire, A = most significant byte (Telegraf naming).

    ABCD: big-endian, high word first (the Modbus norm). CDAB: low word first ("word swap").
    BADC: high word first, bytes swapped within each register. DCBA: fully little-endian.
    For 16-bit types only the byte swap matters (ABCD == CDAB, BADC == DCBA).
    """

    ABCD = "ABCD"
    BADC = "BADC"
    CDAB = "CDAB"
    DCBA = "DCBA"


REGISTER_COUNT: dict[DataType, int] = {
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.FLOAT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT64: 4,
    DataType.BOOL: 1,  # one bit address, not a register
}

MAX_REGISTERS_PER_READ = 125  # FC03/FC04 protocol limit
MAX_BITS_PER_READ = 2000  # FC01/FC02 protocol limit


@dataclass(frozen=True, slots=True)
class ModbusPoint:
    """One value in a device's register map. `address` is the 0-based wire (PDU) address.

    Engineering value in the device unit = raw * scale + offset.
    """

    name: str
    table: Table
    address: int
    dtype: DataType
    order: WordOrder = WordOrder.ABCD
    scale: float = 1.0
    offset: float = 0.0

    @property
    def count(self) -> int:
        return REGISTER_COUNT[self.dtype]

    @property
    def end(self) -> int:
        """First address after this value."""
        return self.address + self.count


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read covering whole values only: FC03/FC04 (count in registers) or FC01/FC02 (count in bits)."""

    table: Table
    address: int
    count: int
    points: tuple[ModbusPoint, ...]


@dataclass(frozen=True, slots=True)
class ModbusDevice:
    """What the Modbus driver needs to poll one instrument."""

    instrument_id: str
    unit_id: int
    timeout_s: float
    requests: tuple[ReadRequest, ...]
