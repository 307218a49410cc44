"""The bundled DL/T 645 profile agrees with the DI table, and its simulated values fit the formats."""

from __future__ import annotations

import pytest

from drivers.dlt645.di import data_item, decode_value, encode_value, parse_di
from simulators.dlt645_server import meter_from_points, profile_points

POINTS = profile_points()


def test_every_point_names_a_known_di_in_its_unit() -> None:
    names = [p["name"] for p in POINTS]
    assert len(names) == len(set(names))
    dis = [parse_di(p["di"]) for p in POINTS]
    assert len(dis) == len(set(dis))
    for p in POINTS:
        item = data_item(parse_di(p["di"]))
        assert p["device_unit"] == item.unit, p["name"]
        assert p.get("totalizer", False) == (item.unit == "kWh"), p["name"]


def test_the_issue_quantities_are_all_read() -> None:
    assert {p["di"] for p in POINTS} >= {"00000000", "00010000", "00020000", "02010100", "02010200", "02010300",
                                         "02020100", "02020200", "02020300", "02030000", "02060000", "02800002"}


@pytest.mark.parametrize("hour", [0, 6, 12, 18])
def test_simulated_values_fit_their_formats_all_day(hour: int) -> None:
    m = meter_from_points("1", POINTS, seed=hour, start_s=hour * 3600.0)
    for _ in range(5):
        m.step(600.0)
        for p in POINTS:
            di = parse_di(p["di"])
            fmt = data_item(di).fmt
            v = m.table_value(di)
            assert decode_value(fmt, encode_value(fmt, v)) == pytest.approx(v, abs=fmt.step / 2 + 1e-9), p["name"]
