"""Read planning: merging, limits, never splitting a value, determinism, overlap detection."""

from __future__ import annotations

import random
from itertools import combinations, pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.plan import find_overlaps, plan_requests
from drivers.modbus.spec import DataType, ModbusPoint, ReadRequest, Table, WordOrder

F32, F64, I16 = DataType.FLOAT32, DataType.FLOAT64, DataType.INT16


def pt(name: str, address: int, dtype: DataType = F32, table: Table = Table.HOLDING,
       order: WordOrder = WordOrder.ABCD) -> ModbusPoint:
    return ModbusPoint(name, table, address, dtype, order)


def shape(requests: list[ReadRequest]) -> list[tuple[str, int, int, list[str]]]:
    return [(r.table.value, r.address, r.count, [p.name for p in r.points]) for r in requests]


def test_touching_values_merge_and_holes_do_not_by_default() -> None:
    points = [pt("a", 0), pt("b", 2, F64), pt("c", 6, I16), pt("d", 8)]
    assert shape(plan_requests(points)) == [("holding", 0, 7, ["a", "b", "c"]), ("holding", 8, 2, ["d"])]


@pytest.mark.parametrize(("max_gap", "expected"), [(1, 2), (2, 1), (50, 1)])
def test_hole_merges_only_up_to_max_gap(max_gap: int, expected: int) -> None:
    points = [pt("a", 0), pt("b", 4)]  # hole of 2 registers (2, 3)
    requests = plan_requests(points, max_gap=max_gap)
    assert len(requests) == expected
    if expected == 1:
        assert (requests[0].address, requests[0].count) == (0, 6)


def test_125_register_limit_without_splitting_values() -> None:
    points = [pt(f"v{i:02d}", 2 * i) for i in range(63)]  # 126 contiguous registers
    requests = plan_requests(points)
    assert [(r.address, r.count) for r in requests] == [(0, 124), (124, 2)]
    assert sum(len(r.points) for r in requests) == 63


def test_float64_that_would_straddle_the_limit_starts_a_new_request() -> None:
    points = [pt("a", 0, F64), pt("b", 4, F64), pt("c", 8, F64)]
    assert [(r.address, r.count) for r in plan_requests(points, max_registers=10)] == [(0, 8), (8, 4)]


def test_device_limit_and_oversized_point() -> None:
    assert len(plan_requests([pt("a", 0), pt("b", 2)], max_registers=3)) == 2
    with pytest.raises(ValueError, match="big"):
        plan_requests([pt("big", 0, F64)], max_registers=3)


@pytest.mark.parametrize("kwargs", [{"max_registers": 0}, {"max_registers": 126}, {"max_gap": -1},
                                    {"max_bits": 2001}])
def test_invalid_limits(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="max_"):
        plan_requests([pt("a", 0)], **kwargs)


@pytest.mark.parametrize("point", [pt("b", 0, DataType.BOOL), pt("f", 0, F32, Table.COIL), pt("e", 65535)])
def test_impossible_points_raise(point: ModbusPoint) -> None:
    with pytest.raises(ValueError, match=point.name):
        plan_requests([point])


def test_tables_are_planned_separately_in_declaration_order() -> None:
    points = [pt("d", 0, DataType.BOOL, Table.DISCRETE), pt("i", 0, table=Table.INPUT), pt("h", 2),
              pt("c", 5, DataType.BOOL, Table.COIL), pt("h0", 0)]
    assert shape(plan_requests(points)) == [
        ("holding", 0, 4, ["h0", "h"]),
        ("input", 0, 2, ["i"]),
        ("coil", 5, 1, ["c"]),
        ("discrete", 0, 1, ["d"]),
    ]


def test_bits_use_the_bit_limit() -> None:
    bits = [pt(f"b{i}", i, DataType.BOOL, Table.DISCRETE) for i in range(2001)]
    requests = plan_requests(bits, max_registers=10)
    assert [(r.address, r.count) for r in requests] == [(0, 2000), (2000, 1)]
    assert [(r.address, r.count) for r in plan_requests(bits[:30], max_bits=16)] == [(0, 16), (16, 14)]


def test_overlapping_points_share_a_request() -> None:
    points = [pt("total", 0, F64), pt("total_hi_as_f32", 0), pt("again", 0, F64)]
    requests = plan_requests(points)
    assert shape(requests) == [("holding", 0, 4, ["total_hi_as_f32", "again", "total"])]


def test_output_does_not_depend_on_input_order() -> None:
    points = [pt(f"p{i}", a, t) for i, (a, t) in enumerate([(0, F32), (2, F64), (9, I16), (10, F32),
                                                            (40, F64), (2, F32), (200, I16)])]
    expected = plan_requests(points, max_gap=3, max_registers=12)
    rng = random.Random(7)
    for _ in range(20):
        rng.shuffle(points)
        assert plan_requests(points, max_gap=3, max_registers=12) == expected


@st.composite
def point_sets(draw: st.DrawFn) -> list[ModbusPoint]:
    n = draw(st.integers(0, 40))
    points = []
    for i in range(n):
        table = draw(st.sampled_from([Table.HOLDING, Table.INPUT, Table.COIL]))
        dtype = DataType.BOOL if table is Table.COIL else draw(st.sampled_from([I16, F32, F64, DataType.UINT32]))
        points.append(pt(f"p{i}", draw(st.integers(0, 400)), dtype, table))
    return points


@settings(deadline=None, max_examples=300)
@given(points=point_sets(), max_registers=st.integers(4, 125), max_gap=st.integers(0, 10),
       max_bits=st.integers(1, 2000))
def test_plan_invariants(points: list[ModbusPoint], max_registers: int, max_gap: int, max_bits: int) -> None:
    requests = plan_requests(points, max_registers=max_registers, max_gap=max_gap, max_bits=max_bits)

    # Every point is in exactly one request, of its own table, wholly inside it.
    assigned = [p for r in requests for p in r.points]
    assert sorted(assigned, key=id) == sorted(points, key=id)
    for r in requests:
        limit = max_bits if r.table.is_bits else max_registers
        assert 1 <= r.count <= limit
        for p in r.points:
            assert p.table == r.table
            assert r.address <= p.address
            assert p.end <= r.address + r.count
        # Tight: starts at a value and ends with one, so nothing is read before or after the points.
        assert r.address == min(p.address for p in r.points)
        assert r.address + r.count == max(p.end for p in r.points)
        # No hole inside a request is wider than max_gap.
        covered = sorted((p.address, p.end) for p in r.points)
        reach = covered[0][1]
        for start, end in covered[1:]:
            assert start - reach <= max_gap
            reach = max(reach, end)

    # Greedy: the first point of a request could not have joined the previous request of its table.
    for prev, nxt in pairwise(requests):
        if prev.table != nxt.table:
            continue
        first = nxt.points[0]
        prev_end = prev.address + prev.count
        limit = max_bits if prev.table.is_bits else max_registers
        assert first.address - prev_end > max_gap or max(prev_end, first.end) - prev.address > limit


def test_find_overlaps_cases() -> None:
    a = pt("a", 0)
    cases = {
        "identical re-read": (pt("a2", 0), False),
        "touching": (pt("t", 2), False),
        "mid-value float": (pt("m", 1), True),
        "int16 inside float": (pt("i", 1, I16), True),
        "same start, other type": (pt("s", 0, DataType.INT32), True),
        "same start, other word order": (pt("w", 0, order=WordOrder.CDAB), True),
        "other table": (pt("o", 1, table=Table.INPUT), False),
    }
    for label, (b, overlaps) in cases.items():
        assert (find_overlaps([a, b]) != []) is overlaps, label
    assert find_overlaps([pt("x", 1), pt("y", 0, F64)]) == [(pt("y", 0, F64), pt("x", 1))]


@settings(deadline=None)
@given(points=point_sets())
def test_find_overlaps_matches_brute_force(points: list[ModbusPoint]) -> None:
    def conflict(a: ModbusPoint, b: ModbusPoint) -> bool:
        return (a.table == b.table and a.address < b.end and b.address < a.end
                and (a.address, a.dtype, a.order) != (b.address, b.dtype, b.order))

    expected = {frozenset((a.name, b.name)) for a, b in combinations(points, 2) if conflict(a, b)}
    found = find_overlaps(points)
    assert {frozenset((a.name, b.name)) for a, b in found} == expected
    assert len(found) == len(expected)
