"""Every meter profile in drivers/profiles: schema, units, overlaps, health, simulate hints and a register
round trip (simulated values -> encode_point -> register image -> plan -> decode_request -> same values)."""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.decode import decode_request, encode_point
from drivers.modbus.plan import find_overlaps, plan_requests
from drivers.modbus.spec import DataType, ModbusPoint, Table, WordOrder
from gateway.yamlload import load_yaml, to_plain
from simulators.signals import SignalState

PROFILES_DIR = Path(__file__).resolve().parents[2] / "drivers" / "profiles"
PROFILE_FILES = sorted(PROFILES_DIR.glob("*.yaml"))
EXPECTED = {"eastron_sdm630", "siemens_pac3200", "schneider_iem3000", "siemens_mag6000", "sick_marsic300",
            "cems_generic"}

TOP_KEYS = {"profile", "kind", "manufacturer", "model", "source", "notes", "max_registers_per_request",
            "max_gap_registers", "points", "health"}
POINT_KEYS = {"name", "table", "address", "type", "order", "scale", "offset", "device_unit", "unit",
              "totalizer", "description", "simulate"}
HEALTH_KEYS = {"point", "bits"}
BIT_KEYS = {"point", "bit", "invert", "category", "reason"}
CATEGORIES = {"failure", "check_function", "out_of_specification", "maintenance_required"}
SIMULATE_KEYS = {
    "constant": ({"value"}, set()),
    "noise": ({"mean", "amplitude"}, set()),
    "daily": ({"mean", "amplitude"}, set()),
    "integrate": ({"of", "factor"}, {"initial"}),
    "derived": ({"of", "factor"}, {"offset"}),
    "status": (set(), {"value"}),
}
# The allowed units, grouped by dimension: device_unit and unit must be convertible.
UNIT_GROUPS = [
    {"V", "kV"}, {"A"}, {"W", "kW", "MW"}, {"VA", "kVA"}, {"var", "kvar"}, {"Wh", "kWh", "MWh"},
    {"varh", "kvarh"}, {"Hz"}, {"degC", "K"}, {"Pa", "kPa", "hPa", "bar"}, {"%", "%vol", "ppm", "1"},
    {"m3"}, {"m3/h", "m3/s"}, {"Nm3"}, {"Nm3/h"}, {"kg", "t"}, {"kg/s", "kg/h", "t/h"}, {"kg/m3"},
    {"mg/Nm3"}, {"deg"},
]
UNITS = set().union(*UNIT_GROUPS)
SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


def load(path: Path) -> dict[str, Any]:
    data = to_plain(load_yaml(path))
    assert isinstance(data, dict), path
    return data


def to_point(p: dict[str, Any]) -> ModbusPoint:
    return ModbusPoint(p["name"], Table(p["table"]), p["address"], DataType(p["type"]), WordOrder(p["order"]),
                       float(p["scale"]), float(p["offset"]))


def bit_width(dtype: DataType) -> int:
    return 1 if dtype is DataType.BOOL else 16 * ModbusPoint("x", Table.HOLDING, 0, dtype).count


@pytest.fixture(params=PROFILE_FILES, ids=lambda p: p.stem)
def prof(request: pytest.FixtureRequest) -> dict[str, Any]:
    data = load(request.param)
    data["_stem"] = request.param.stem
    return data


def test_all_expected_profiles_exist() -> None:
    assert {p.stem for p in PROFILE_FILES} >= EXPECTED


def test_top_level(prof: dict[str, Any]) -> None:
    keys = set(prof) - {"_stem"}
    assert keys <= TOP_KEYS, keys - TOP_KEYS
    assert keys >= TOP_KEYS - {"health"}
    assert prof["profile"] == prof["_stem"]
    assert prof["kind"] in {"flow_meter", "gas_analyzer", "power_meter", "other"}
    assert isinstance(prof["source"], str)
    assert len(prof["source"].strip()) >= 10
    assert isinstance(prof["notes"], str)
    assert prof["notes"].strip()
    assert 1 <= prof["max_registers_per_request"] <= 125
    assert 0 <= prof["max_gap_registers"] < prof["max_registers_per_request"]
    if prof["profile"] != "cems_generic":  # vendor maps: unconfirmed items are flagged
        assert "[verify]" in prof["notes"]


def test_points(prof: dict[str, Any]) -> None:
    names = [p["name"] for p in prof["points"]]
    assert len(names) == len(set(names)), "point names must be unique"
    for p in prof["points"]:
        assert set(p) == POINT_KEYS, (p["name"], set(p) ^ POINT_KEYS)
        assert SNAKE.match(p["name"]), p["name"]
        point = to_point(p)  # valid table, type and order
        assert point.address >= 0
        assert point.end <= 0x10000
        assert point.table.is_bits == (point.dtype is DataType.BOOL), p["name"]
        if point.dtype is DataType.BOOL:
            assert (point.order, point.scale, point.offset, p["unit"]) == (WordOrder.ABCD, 1.0, 0.0, "1")
        assert math.isfinite(point.scale)
        assert point.scale != 0
        assert math.isfinite(point.offset)
        assert p["device_unit"] in UNITS, p["name"]
        assert p["unit"] in UNITS, p["name"]
        assert any({p["device_unit"], p["unit"]} <= g for g in UNIT_GROUPS), f"{p['name']}: units differ"
        assert isinstance(p["totalizer"], bool)
        assert isinstance(p["description"], str)
        assert p["description"]


def test_no_unintended_overlaps(prof: dict[str, Any]) -> None:
    assert find_overlaps([to_point(p) for p in prof["points"]]) == []


def test_health_references_existing_bits(prof: dict[str, Any]) -> None:
    health = prof.get("health")
    if health is None:
        return
    assert set(health) <= HEALTH_KEYS
    assert health["bits"]
    points = {p["name"]: to_point(p) for p in prof["points"]}
    for entry in health["bits"]:
        assert set(entry) <= BIT_KEYS, entry
        name = entry.get("point", health.get("point"))
        assert name in points, entry
        dtype = points[name].dtype
        assert dtype not in (DataType.FLOAT32, DataType.FLOAT64), f"{name}: health needs an integer or bool"
        assert 0 <= entry.get("bit", 0) < bit_width(dtype), entry
        assert entry["category"] in CATEGORIES
        assert SNAKE.match(entry["reason"])
        assert isinstance(entry.get("invert", False), bool)


def test_simulate_hints(prof: dict[str, Any]) -> None:
    names = {p["name"] for p in prof["points"]}
    for p in prof["points"]:
        hint = p["simulate"]
        required, optional = SIMULATE_KEYS[hint["signal"]]
        keys = set(hint) - {"signal"}
        assert keys >= required, p["name"]
        assert keys <= required | optional, p["name"]
        if "of" in hint:
            assert hint["of"] in names
            assert hint["of"] != p["name"]
        if p["totalizer"]:
            assert hint["signal"] in {"integrate", "constant"}, p["name"]
    SignalState(prof)  # dependency order resolves (no cycles)


def test_reads_fit_the_device_limits(prof: dict[str, Any]) -> None:
    points = [to_point(p) for p in prof["points"]]
    requests = plan_requests(points, max_registers=prof["max_registers_per_request"],
                             max_gap=prof["max_gap_registers"])
    assert sorted(p.name for r in requests for p in r.points) == sorted(p.name for p in points)
    for r in requests:
        assert r.count <= (2000 if r.table.is_bits else prof["max_registers_per_request"])


def expected_after_round_trip(point: ModbusPoint, value: float) -> float:
    """What a perfect device + decoder returns for `value`: float32 rounding, integer quantisation."""
    if point.dtype is DataType.FLOAT64:
        return value
    if point.dtype is DataType.FLOAT32:
        raw = struct.unpack("<f", struct.pack("<f", (value - point.offset) / point.scale))[0]
        return raw * point.scale + point.offset
    return round((value - point.offset) / point.scale) * point.scale + point.offset


def test_profile_round_trip(prof: dict[str, Any]) -> None:
    points = [to_point(p) for p in prof["points"]]
    requests = plan_requests(points, max_registers=prof["max_registers_per_request"],
                             max_gap=prof["max_gap_registers"])
    state = SignalState(prof, seed=11, start_s=6 * 3600.0)
    for _ in range(48):  # two days in 1 h steps: daily peaks and grown totals must still encode
        values = state.step(3600.0)
        image: dict[tuple[Table, int], int] = {}
        for point in points:
            for i, reg in enumerate(encode_point(point, values[point.name])):
                image[(point.table, point.address + i)] = reg
        decoded: dict[str, float] = {}
        for r in requests:
            regs = [image.get((r.table, a), 0) for a in range(r.address, r.address + r.count)]
            decoded.update((p.name, v) for p, v in decode_request(r, regs))
        assert decoded.keys() == values.keys()
        for point in points:
            assert decoded[point.name] == pytest.approx(
                expected_after_round_trip(point, values[point.name]), rel=1e-12, abs=1e-12
            ), point.name


def test_totals_grow_and_stay_realistic() -> None:
    for path in PROFILE_FILES:
        prof = load(path)
        state = SignalState(prof, seed=2)
        start = state.values
        end = state.step(3600.0)
        for p in prof["points"]:
            if p["simulate"]["signal"] == "integrate":
                assert end[p["name"]] > start[p["name"]] > 0, (path.stem, p["name"])


def test_planned_reads_of_known_devices() -> None:
    def plan(stem: str) -> list[tuple[str, int, int]]:
        prof = load(PROFILES_DIR / f"{stem}.yaml")
        return [(r.table.value, r.address, r.count) for r in plan_requests(
            [to_point(p) for p in prof["points"]], max_registers=prof["max_registers_per_request"],
            max_gap=prof["max_gap_registers"])]

    # SDM630: the whole 0x0000-0x004F block in one 80-register read, like sdm_modbus; L-L block apart.
    assert plan("eastron_sdm630") == [("input", 0x0000, 80), ("input", 0x00C8, 6)]
    # The project's own CEMS map is designed to be read in one request.
    assert plan("cems_generic") == [("holding", 0, 23)]
    # MARSIC status bits: two runs of discrete inputs, no read across the undefined 1005-1023.
    assert [r for r in plan("sick_marsic300") if r[0] == "discrete"] == [("discrete", 1000, 5),
                                                                         ("discrete", 1024, 3)]
    # PAC3200: every read starts at a value, never mid-value (max_gap 0).
    pac = load(PROFILES_DIR / "siemens_pac3200.yaml")
    starts = {p["address"] for p in pac["points"]}
    assert all(address in starts for _, address, _ in plan("siemens_pac3200"))


def test_cems_status_word_carries_the_fault_knob() -> None:
    prof = load(PROFILES_DIR / "cems_generic.yaml")
    status = next(to_point(p) for p in prof["points"] if p["name"] == prof["health"]["point"])
    state = SignalState(prof)
    state.set_status(status.name, 0b01010)
    regs = encode_point(status, state.step(1.0)[status.name])
    (_, value), = decode_request(plan_requests([status])[0], regs)
    active = {b["reason"] for b in prof["health"]["bits"] if int(value) >> b["bit"] & 1}
    assert active == {"calibration", "out_of_spec"}
