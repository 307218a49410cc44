"""Register decoding: hand-computed vectors, encode/decode round trips for every type and word order."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.decode import (
    cached_decoder,
    decode_request,
    decode_value,
    encode_point,
    encode_value,
    make_decoder,
)
from drivers.modbus.spec import REGISTER_COUNT, DataType, ModbusPoint, ReadRequest, Table, WordOrder
from gateway.errors import DecodeError

NUMERIC = [t for t in DataType if t is not DataType.BOOL]
FLOATS = {DataType.FLOAT32, DataType.FLOAT64}
WO = WordOrder


def int_range(dtype: DataType) -> tuple[int, int]:
    bits = 16 * REGISTER_COUNT[dtype]
    if dtype.value.startswith("u"):
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def values_of(dtype: DataType) -> st.SearchStrategy[float]:
    if dtype is DataType.FLOAT32:
        return st.floats(width=32)  # includes nan, +-inf, subnormals, -0.0
    if dtype is DataType.FLOAT64:
        return st.floats()
    lo, hi = int_range(dtype)
    return st.integers(lo, hi)


def same(a: float, b: float) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


# Hand-computed from the IEEE-754 / two's complement bytes, A = most significant byte.
VECTORS = [
    (DataType.FLOAT32, 1.0, WO.ABCD, [0x3F80, 0x0000]),
    (DataType.FLOAT32, 1.0, WO.CDAB, [0x0000, 0x3F80]),
    (DataType.FLOAT32, 1.0, WO.BADC, [0x803F, 0x0000]),
    (DataType.FLOAT32, 1.0, WO.DCBA, [0x0000, 0x803F]),
    (DataType.FLOAT32, -2.5, WO.ABCD, [0xC020, 0x0000]),
    (DataType.FLOAT32, 230.5, WO.ABCD, [0x4366, 0x8000]),
    (DataType.FLOAT32, 230.5, WO.CDAB, [0x8000, 0x4366]),
    (DataType.FLOAT32, 230.5, WO.BADC, [0x6643, 0x0080]),
    (DataType.FLOAT32, 230.5, WO.DCBA, [0x0080, 0x6643]),
    (DataType.FLOAT64, 1.0, WO.ABCD, [0x3FF0, 0, 0, 0]),
    (DataType.FLOAT64, 1.0, WO.CDAB, [0, 0, 0, 0x3FF0]),
    (DataType.FLOAT64, 1.0, WO.BADC, [0xF03F, 0, 0, 0]),
    (DataType.FLOAT64, 1.0, WO.DCBA, [0, 0, 0, 0xF03F]),
    (DataType.INT16, -2, WO.ABCD, [0xFFFE]),
    (DataType.INT16, -2, WO.CDAB, [0xFFFE]),
    (DataType.INT16, -2, WO.BADC, [0xFEFF]),
    (DataType.INT16, -2, WO.DCBA, [0xFEFF]),
    (DataType.UINT16, 0x1234, WO.BADC, [0x3412]),
    (DataType.UINT32, 0x01020304, WO.ABCD, [0x0102, 0x0304]),
    (DataType.UINT32, 0x01020304, WO.CDAB, [0x0304, 0x0102]),
    (DataType.UINT32, 0x01020304, WO.BADC, [0x0201, 0x0403]),
    (DataType.UINT32, 0x01020304, WO.DCBA, [0x0403, 0x0201]),
    (DataType.INT32, -1, WO.ABCD, [0xFFFF, 0xFFFF]),
    (DataType.INT32, -65536, WO.ABCD, [0xFFFF, 0x0000]),
    (DataType.INT32, -65536, WO.CDAB, [0x0000, 0xFFFF]),
    (DataType.UINT64, 0x0102030405060708, WO.ABCD, [0x0102, 0x0304, 0x0506, 0x0708]),
    (DataType.UINT64, 0x0102030405060708, WO.CDAB, [0x0708, 0x0506, 0x0304, 0x0102]),
    (DataType.UINT64, 0x0102030405060708, WO.BADC, [0x0201, 0x0403, 0x0605, 0x0807]),
    (DataType.UINT64, 0x0102030405060708, WO.DCBA, [0x0807, 0x0605, 0x0403, 0x0201]),
    (DataType.INT64, -2, WO.ABCD, [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE]),
    (DataType.INT64, 48_213_000, WO.ABCD, [0, 0, 0x02DF, 0xAC08]),  # an iEM3000 energy count in Wh
]


@pytest.mark.parametrize(("dtype", "value", "order", "registers"), VECTORS)
def test_hand_computed_vectors(dtype: DataType, value: float, order: WordOrder, registers: list[int]) -> None:
    assert encode_value(value, dtype, order) == registers
    decoded = decode_value(registers, dtype, order)
    assert decoded == value
    assert type(decoded) is (float if dtype in FLOATS else int)


@pytest.mark.parametrize("order", list(WordOrder))
@pytest.mark.parametrize("dtype", NUMERIC)
@settings(deadline=None)
@given(data=st.data())
def test_round_trip_every_type_and_order(dtype: DataType, order: WordOrder, data: st.DataObject) -> None:
    value = data.draw(values_of(dtype))
    registers = encode_value(value, dtype, order)
    assert len(registers) == REGISTER_COUNT[dtype]
    assert all(0 <= r <= 0xFFFF for r in registers)
    assert same(decode_value(registers, dtype, order), value)


@pytest.mark.parametrize("order", list(WordOrder))
@pytest.mark.parametrize("dtype", NUMERIC)
@settings(deadline=None)
@given(data=st.data())
def test_registers_round_trip(dtype: DataType, order: WordOrder, data: st.DataObject) -> None:
    """Any register image decodes to a value that encodes back to the same registers (NaN payloads aside)."""
    registers = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=REGISTER_COUNT[dtype],
                                   max_size=REGISTER_COUNT[dtype]))
    value = decode_value(registers, dtype, order)
    if isinstance(value, float) and math.isnan(value):
        return
    assert encode_value(value, dtype, order) == registers


@pytest.mark.parametrize("dtype", [DataType.INT16, DataType.UINT16])
@given(value=st.integers(0, 0x7FFF))
def test_16_bit_types_only_care_about_byte_swap(dtype: DataType, value: int) -> None:
    assert encode_value(value, dtype, WO.ABCD) == encode_value(value, dtype, WO.CDAB)
    assert encode_value(value, dtype, WO.BADC) == encode_value(value, dtype, WO.DCBA)


@pytest.mark.parametrize("dtype", [DataType.FLOAT32, DataType.FLOAT64])
@pytest.mark.parametrize("order", list(WordOrder))
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_nan_and_inf_pass_through(dtype: DataType, order: WordOrder, value: float) -> None:
    point = ModbusPoint("x", Table.HOLDING, 0, dtype, order, scale=2.0, offset=1.0)
    decoded = make_decoder(point)(encode_value(value, dtype, order), 0)
    assert same(decoded, value)


def test_float32_rounds_to_nearest_single() -> None:
    regs = encode_value(0.1, DataType.FLOAT32)
    assert decode_value(regs, DataType.FLOAT32) == struct.unpack(">f", struct.pack(">f", 0.1))[0]
    assert decode_value(regs, DataType.FLOAT32) != 0.1


@pytest.mark.parametrize(
    ("value", "dtype"),
    [
        (32768, DataType.INT16),
        (-32769, DataType.INT16),
        (-1, DataType.UINT16),
        (65536, DataType.UINT16),
        (2**31, DataType.INT32),
        (2**32, DataType.UINT32),
        (2**63, DataType.INT64),
        (2**64, DataType.UINT64),
        (-1, DataType.UINT64),
        (1.5, DataType.INT32),
        (math.nan, DataType.INT16),
        (1e39, DataType.FLOAT32),
        (2, DataType.BOOL),
    ],
)
def test_encode_out_of_range_raises(value: float, dtype: DataType) -> None:
    with pytest.raises(DecodeError):
        encode_value(value, dtype)


@pytest.mark.parametrize("dtype", list(DataType))
def test_decode_wrong_register_count_raises(dtype: DataType) -> None:
    n = REGISTER_COUNT[dtype]
    for wrong in (n - 1, n + 1):
        with pytest.raises(DecodeError):
            decode_value([0] * wrong, dtype)


@pytest.mark.parametrize("bad", [[0x10000, 0], [-1, 0]])
def test_decode_rejects_values_that_are_not_registers(bad: list[int]) -> None:
    with pytest.raises(DecodeError):
        decode_value(bad, DataType.UINT32)
    with pytest.raises(DecodeError):
        make_decoder(ModbusPoint("x", Table.HOLDING, 0, DataType.UINT32))(bad, 0)


def test_decoder_reads_at_offset_and_applies_scale_and_offset() -> None:
    temp = ModbusPoint("t", Table.HOLDING, 10, DataType.INT16, scale=0.1, offset=-40.0)
    registers = [0xFFFF, *encode_value(-5, DataType.INT16), 0x1234]
    assert make_decoder(temp)(registers, 1) == pytest.approx(-40.5)
    # Spirax-style word-swapped 32-bit total: low word first.
    total = ModbusPoint("m", Table.HOLDING, 0, DataType.UINT32, WordOrder.CDAB, scale=10.0)
    assert make_decoder(total)([0x0001, 0x0002], 0) == (2 * 65536 + 1) * 10.0
    assert isinstance(make_decoder(ModbusPoint("i", Table.INPUT, 0, DataType.UINT16))([7], 0), float)


@pytest.mark.parametrize("at", [-1, 2, 3])
def test_decoder_short_response_raises(at: int) -> None:
    decode = make_decoder(ModbusPoint("x", Table.INPUT, 0, DataType.FLOAT32))
    with pytest.raises(DecodeError):
        decode([0x3F80, 0, 0], at)


@pytest.mark.parametrize(
    "point",
    [
        ModbusPoint("b", Table.HOLDING, 0, DataType.BOOL),
        ModbusPoint("f", Table.COIL, 0, DataType.FLOAT32),
        ModbusPoint("z", Table.HOLDING, 0, DataType.INT16, scale=0.0),
        ModbusPoint("n", Table.HOLDING, 0, DataType.INT16, offset=math.nan),
        ModbusPoint("a", Table.HOLDING, 65535, DataType.FLOAT32),
    ],
)
def test_impossible_points_are_rejected_by_the_factory(point: ModbusPoint) -> None:
    with pytest.raises(ValueError, match=point.name):
        make_decoder(point)


def test_bool_points() -> None:
    coil = ModbusPoint("run", Table.COIL, 3, DataType.BOOL)
    assert make_decoder(coil)([0, 1, 0], 1) == 1.0
    assert make_decoder(coil)([0, 1, 0], 2) == 0.0
    assert encode_point(coil, 1.0) == [1]
    assert decode_value([1], DataType.BOOL) == 1


@pytest.mark.parametrize("dtype", [DataType.INT16, DataType.UINT32, DataType.INT64])
@given(value=st.floats(-50.0, 300.0))
def test_encode_point_inverts_the_decoder_up_to_resolution(dtype: DataType, value: float) -> None:
    point = ModbusPoint("p", Table.HOLDING, 0, dtype, WordOrder.DCBA, scale=0.01, offset=273.15)
    if dtype.value.startswith("u") and value < 273.15:
        with pytest.raises(DecodeError):
            encode_point(point, value)
        return
    decoded = make_decoder(point)(encode_point(point, value), 0)
    assert abs(decoded - value) <= 0.005 + 1e-9


def test_decode_request_returns_every_point_in_order() -> None:
    a = ModbusPoint("a", Table.INPUT, 100, DataType.FLOAT32)
    b = ModbusPoint("b", Table.INPUT, 102, DataType.INT16, scale=0.5)
    c = ModbusPoint("c", Table.INPUT, 104, DataType.FLOAT64, WordOrder.CDAB)
    request = ReadRequest(Table.INPUT, 100, 8, (a, b, c))
    registers = [*encode_value(1.0, a.dtype), 8, 0, *encode_value(-7.25, c.dtype, c.order)]
    assert decode_request(request, registers) == [(a, 1.0), (b, 4.0), (c, -7.25)]
    assert cached_decoder(a) is cached_decoder(a)
    with pytest.raises(DecodeError):
        decode_request(request, registers[:-1])
    with pytest.raises(DecodeError):
        decode_request(request, [*registers, 0])


def test_decode_request_accepts_byte_padded_bit_replies() -> None:
    bits = [ModbusPoint(f"d{i}", Table.DISCRETE, 1000 + i, DataType.BOOL) for i in (0, 2)]
    request = ReadRequest(Table.DISCRETE, 1000, 3, tuple(bits))
    padded = [1, 1, 0, 0, 0, 0, 0, 0]  # FC02 answers in whole bytes
    assert decode_request(request, padded) == [(bits[0], 1.0), (bits[1], 0.0)]
    with pytest.raises(DecodeError):
        decode_request(request, [1, 1])
