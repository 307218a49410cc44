"""Fuzzing the register decoder with whatever a device (or a broken gateway in between) may return:
it answers with a number or a DecodeError, never another exception (issue 7.6)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.decode import decode_request, decode_value, encode_value, make_decoder
from drivers.modbus.plan import plan_requests
from drivers.modbus.spec import REGISTER_COUNT, DataType, ModbusPoint, Table, WordOrder
from gateway.errors import DecodeError

ANY_REGISTER = st.one_of(
    st.integers(0, 0xFFFF), st.integers(), st.floats(), st.none(), st.text(max_size=2), st.booleans()
)
FINITE = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)


@st.composite
def points(draw: st.DrawFn) -> list[ModbusPoint]:
    out = []
    address = 0
    for i in range(draw(st.integers(1, 6))):
        dtype = draw(st.sampled_from([t for t in DataType if t is not DataType.BOOL]))
        scale = draw(FINITE.filter(lambda x: x != 0))
        out.append(
            ModbusPoint(
                f"p{i}", Table.HOLDING, address, dtype, draw(st.sampled_from(list(WordOrder))), scale, draw(FINITE)
            )
        )
        address += REGISTER_COUNT[dtype] + draw(st.integers(0, 3))
    return out


@settings(max_examples=300, deadline=None)
@given(
    regs=st.lists(ANY_REGISTER, max_size=6),
    dtype=st.sampled_from(list(DataType)),
    order=st.sampled_from(list(WordOrder)),
)
def test_decode_value_raises_only_decode_error(regs: list[object], dtype: DataType, order: WordOrder) -> None:
    try:
        value = decode_value(regs, dtype, order)  # type: ignore[arg-type]
    except DecodeError:
        return
    assert isinstance(value, int | float)


@settings(max_examples=300, deadline=None)
@given(pts=points(), data=st.data())
def test_decode_request_raises_only_decode_error(pts: list[ModbusPoint], data: st.DataObject) -> None:
    for request in plan_requests(pts, max_registers=125, max_gap=3):
        count = data.draw(st.integers(0, request.count + 2))
        regs = data.draw(st.lists(ANY_REGISTER, min_size=count, max_size=count))
        try:
            values = decode_request(request, regs)  # type: ignore[arg-type]
        except DecodeError:
            continue
        assert [p for p, _ in values] == list(request.points)
        assert all(isinstance(v, float) for _, v in values)


@settings(max_examples=300, deadline=None)
@given(pts=points(), data=st.data())
def test_valid_registers_round_trip_through_the_request_path(pts: list[ModbusPoint], data: st.DataObject) -> None:
    for request in plan_requests(pts, max_registers=125, max_gap=3):
        regs = [0] * request.count
        raws = {}
        for p in request.points:
            lo_hi = {
                DataType.INT16: (-(2**15), 2**15 - 1),
                DataType.UINT16: (0, 2**16 - 1),
                DataType.INT32: (-(2**31), 2**31 - 1),
                DataType.UINT32: (0, 2**32 - 1),
                DataType.INT64: (-(2**63), 2**63 - 1),
                DataType.UINT64: (0, 2**64 - 1),
            }
            if p.dtype in lo_hi:
                raw: float = data.draw(st.integers(*lo_hi[p.dtype]))
            else:
                raw = data.draw(st.floats(width=32 if p.dtype is DataType.FLOAT32 else 64, allow_nan=False))
            at = p.address - request.address
            regs[at : at + p.count] = encode_value(raw, p.dtype, p.order)
            raws[p.name] = raw
        for p, value in decode_request(request, regs):
            expected = raws[p.name] * p.scale + p.offset
            assert value == expected or (math.isnan(value) and math.isnan(expected)), (p, value, expected)
            assert make_decoder(p)(regs, p.address - request.address) == value or math.isnan(value)
