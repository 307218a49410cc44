"""Pure read planning: which FC01-FC04 requests fetch a set of points (Telegraf `request.go` style, no I/O).

Policy (protocols.md section 2): never split a multi-register value across two requests (the halves
would be read at different moments), and only read across undefined addresses when the device profile
says that is safe (`max_gap`), because devices such as the PAC3200 reject reads that start mid-value.
"""

from __future__ import annotations

from collections.abc import Iterable

from drivers.modbus.spec import (
    MAX_BITS_PER_READ,
    MAX_REGISTERS_PER_READ,
    DataType,
    ModbusPoint,
    ReadRequest,
    Table,
)


def _sort_key(p: ModbusPoint) -> tuple[int, int, str, str, str, float, float]:
    # Total order on every field, so the plan does not depend on the order points were configured in.
    return (p.address, p.count, p.name, str(p.dtype), str(p.order), p.scale, p.offset)


def _check(p: ModbusPoint, limit: int) -> None:
    if p.table.is_bits != (DataType(p.dtype) is DataType.BOOL):
        raise ValueError(f"{p.name}: type {p.dtype} cannot be read from the {p.table} table")
    if p.address < 0 or p.end > 0x10000:
        raise ValueError(f"{p.name}: addresses {p.address}..{p.end - 1} outside 0..65535")
    if p.count > limit:
        raise ValueError(f"{p.name}: {p.count} registers do not fit in one read of at most {limit}")


def plan_requests(
    points: Iterable[ModbusPoint],
    *,
    max_registers: int = MAX_REGISTERS_PER_READ,
    max_gap: int = 0,
    max_bits: int = MAX_BITS_PER_READ,
) -> list[ReadRequest]:
    """Group points into as few reads as the limits allow, tables in declaration order, then by address.

    Points of one table are merged greedily in address order while the request stays within
    `max_registers` (`max_bits` for coils/discrete inputs) and the hole before the next point is at
    most `max_gap` addresses (0: only touching or overlapping values merge). Each point is assigned
    to exactly one request, which covers it wholly. Raises ValueError for a value that cannot fit.
    """
    if not 1 <= max_registers <= MAX_REGISTERS_PER_READ:
        raise ValueError(f"max_registers must be 1..{MAX_REGISTERS_PER_READ}, got {max_registers}")
    if not 1 <= max_bits <= MAX_BITS_PER_READ:
        raise ValueError(f"max_bits must be 1..{MAX_BITS_PER_READ}, got {max_bits}")
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")

    by_table: dict[Table, list[ModbusPoint]] = {}
    for p in points:
        by_table.setdefault(Table(p.table), []).append(p)

    requests: list[ReadRequest] = []
    for table in Table:
        limit = max_bits if table.is_bits else max_registers
        group: list[ModbusPoint] = []
        start = end = 0
        for p in sorted(by_table.get(table, ()), key=_sort_key):
            _check(p, limit)
            if group and p.address - end <= max_gap and max(end, p.end) - start <= limit:
                group.append(p)
                end = max(end, p.end)
                continue
            if group:
                requests.append(ReadRequest(table, start, end - start, tuple(group)))
            group, start, end = [p], p.address, p.end
        if group:
            requests.append(ReadRequest(table, start, end - start, tuple(group)))
    return requests


def find_overlaps(points: Iterable[ModbusPoint]) -> list[tuple[ModbusPoint, ModbusPoint]]:
    """Pairs of points of one table whose address ranges overlap without being the same value.

    Reading the same registers twice with the same address, type and word order is fine (e.g. a
    temperature published in two units via scale/offset). Anything else, such as a float32 starting
    in the middle of another float32, is almost certainly a register-map mistake. Pairs come out in
    address order, each as (earlier, later).
    """
    found: list[tuple[ModbusPoint, ModbusPoint]] = []
    ordered = sorted(points, key=lambda p: (str(p.table), *_sort_key(p)))
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            if b.table != a.table or b.address >= a.end:
                break  # sorted by address: nothing later can overlap `a`
            if (a.address, a.dtype, a.order) != (b.address, b.dtype, b.order):
                found.append((a, b))
    return found
