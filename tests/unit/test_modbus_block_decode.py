"""The whole-response decoder gives exactly the values of the per-point decoders, or declines (None)."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.decode import make_block_decoder, make_decoder
from drivers.modbus.spec import REGISTER_COUNT, DataType, ModbusPoint, ReadRequest, Table, WordOrder
from gateway.errors import DecodeError

NUMERIC = [t for t in DataType if t is not DataType.BOOL]


@st.composite
def requests(draw: st.DrawFn) -> ReadRequest:
    table = draw(st.sampled_from([Table.HOLDING, Table.INPUT]))
    start = draw(st.integers(0, 1000))
    one_order = draw(st.none() | st.sampled_from(list(WordOrder)))
    pos, points = start, []
    for i in range(draw(st.integers(1, 12))):
        pos += draw(st.sampled_from([0, 0, 0, 1, 3]))  # gaps between points
        dtype = draw(st.sampled_from(NUMERIC))
        order = one_order or draw(st.sampled_from(list(WordOrder)))
        scale = draw(st.sampled_from([1.0, 1.0, 0.1, -2.0, 1e-3]))
        offset = draw(st.sampled_from([0.0, 0.0, 5.0, -273.15]))
        points.append(ModbusPoint(f"p{i}", table, pos, dtype, order, scale=scale, offset=offset))
        pos += REGISTER_COUNT[dtype]
    pos += draw(st.sampled_from([0, 2]))
    if draw(st.booleans()):
        points = draw(st.permutations(points))
    return ReadRequest(table, start, pos - start, tuple(points))


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (a == b and type(a) is type(b)
                                                  and math.copysign(1, a) == math.copysign(1, b))


@settings(max_examples=500, deadline=None)
@given(req=requests(), data=st.data())
def test_block_decoder_matches_per_point_decoders(req: ReadRequest, data: st.DataObject) -> None:
    block = make_block_decoder(req)
    orders = {(WordOrder(p.order) in (WordOrder.ABCD, WordOrder.DCBA),
               WordOrder(p.order) in (WordOrder.ABCD, WordOrder.BADC)) for p in req.points}
    if len(orders) == 1:
        assert block is not None  # one byte order for the whole request: the block decoder takes it
    if block is None:
        return
    regs = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=req.count, max_size=req.count))
    want = [make_decoder(p)(regs, p.address - req.address) for p in req.points]
    got = block(regs)
    assert len(got) == len(want)
    assert all(same(g, w) for g, w in zip(got, want, strict=True)), (got, want)


def test_declines_bits_and_overlaps() -> None:
    bit = ModbusPoint("b", Table.COIL, 0, DataType.BOOL)
    assert make_block_decoder(ReadRequest(Table.COIL, 0, 1, (bit,))) is None
    a = ModbusPoint("a", Table.HOLDING, 0, DataType.UINT32)
    b = ModbusPoint("b", Table.HOLDING, 1, DataType.UINT16)
    assert make_block_decoder(ReadRequest(Table.HOLDING, 0, 2, (a, b))) is None


def test_wrong_length_or_values_are_decode_errors() -> None:
    p = ModbusPoint("f", Table.HOLDING, 0, DataType.FLOAT32)
    for q in (p, ModbusPoint("g", Table.HOLDING, 0, DataType.FLOAT32, scale=2.0)):
        block = make_block_decoder(ReadRequest(Table.HOLDING, 0, 2, (q,)))
        assert block is not None
        assert block(list(struct.unpack(">2H", struct.pack(">f", 1.5)))) == [1.5 * q.scale]
        with pytest.raises(DecodeError):
            block([0])
        with pytest.raises(DecodeError):
            block([0, 0x10000])
