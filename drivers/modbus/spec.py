"""Plain descriptions of Modbus points and read requests, shared by planning, decoding and the simulator."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Table(StrEnum):
    HOLDING = "holding"  # FC03
    INPUT = "input"  # FC04


class DataType(StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"


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
}

MAX_REGISTERS_PER_READ = 125  # FC03/FC04 protocol limit


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
    """One FC03/FC04 read covering whole values only."""

    table: Table
    address: int
    count: int
    points: tuple[ModbusPoint, ...]
