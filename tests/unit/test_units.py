import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.units import UnitError, conversion

CASES = [
    ("kWh", "MWh", 1500.0, 1.5),
    ("Wh", "MWh", 2_000_000.0, 2.0),
    ("m3/s", "m3/h", 0.05, 180.0),
    ("kg/s", "t/h", 1.0, 3.6),
    ("degC", "K", 25.0, 298.15),
    ("kPa", "hPa", 101.325, 1013.25),
    ("Nm3/h", "Nm3/s", 3600.0, 1.0),
    ("%vol", "%", 12.5, 12.5),
    ("1", "%", 0.25, 25.0),
    ("W", "kW", 1234.0, 1.234),
    ("var", "kvar", 500.0, 0.5),
]


@pytest.mark.parametrize(("src", "dst", "x", "expected"), CASES)
def test_conversions(src: str, dst: str, x: float, expected: float) -> None:
    assert math.isclose(conversion(src, dst).apply(x), expected, rel_tol=1e-12)


@pytest.mark.parametrize(("src", "dst"), [("Nm3/h", "m3/h"), ("kW", "kWh"), ("%vol", "kg"), ("degC", "kPa")])
def test_dimension_mismatch_is_rejected(src: str, dst: str) -> None:
    with pytest.raises(UnitError, match="cannot convert"):
        conversion(src, dst)


def test_unknown_unit() -> None:
    with pytest.raises(UnitError, match="unknown unit 'furlongs_per_fortnight2'"):
        conversion("furlongs_per_fortnight2", "m")


@given(st.floats(-1e9, 1e9, allow_nan=False))
def test_round_trip(x: float) -> None:
    for src, dst, _, _ in CASES:
        there, back = conversion(src, dst), conversion(dst, src)
        assert math.isclose(back.apply(there.apply(x)), x, rel_tol=1e-9, abs_tol=1e-6)
