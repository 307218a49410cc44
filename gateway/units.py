"""Unit handling: pint is used once at load time to derive y = x*factor + offset per point.

Per reading the gateway only multiplies and adds (perf-limits.md: pint costs 23-393 us per
conversion, a precomputed factor 0.08 us).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache, lru_cache

import pint

# Unit spellings technicians write in YAML -> pint expressions. Normal cubic metres are kept as
# their own dimension: converting Nm3 to actual m3 needs process T and p, never a unit factor.
_ALIASES = {
    "%": "percent",
    "%vol": "percent",
    "1": "dimensionless",
    "m3": "meter**3",
    "m3/h": "meter**3/hour",
    "m3/s": "meter**3/second",
    "Nm3": "normal_cubic_meter",
    "Nm3/h": "normal_cubic_meter/hour",
    "Nm3/s": "normal_cubic_meter/second",
    "mg/Nm3": "milligram/normal_cubic_meter",
    "kg/m3": "kilogram/meter**3",
    "deg": "degree",
    "var": "volt_ampere_reactive",
    "kvar": "kilovolt_ampere_reactive",
    "varh": "volt_ampere_reactive*hour",
    "kvarh": "kilovolt_ampere_reactive*hour",
    "Mvarh": "megavolt_ampere_reactive*hour",
    "t": "metric_ton",
    "t/h": "metric_ton/hour",
}


# "m3", "cm3", "ft3": a unit symbol followed by a power digit, as technicians write it (pint reads "m**3").
_POWER = re.compile(r"(?<![A-Za-z0-9_*])(m|cm|mm|km|ft|in)([23])(?![A-Za-z0-9_])")


class UnitError(ValueError):
    """A unit is unknown or two units are of different dimensions."""


@cache
def registry() -> pint.UnitRegistry:
    ureg = pint.UnitRegistry(autoconvert_offset_to_baseunit=True)
    # Normal cubic metre (DIN 1343: 0 degC, 101.325 kPa) as its own dimension, see protocols.md 8.
    ureg.define("normal_cubic_meter = [normal_volume] = Nm3")
    ureg.define("volt_ampere_reactive = volt * ampere = var")
    return ureg


def _parse(unit: str) -> pint.Unit:
    if not isinstance(unit, str) or not unit.strip():
        raise UnitError(f"unknown unit {unit!r}")
    expr = _ALIASES.get(unit.strip())
    if expr is None:
        # Compound spellings (GJ/m3, kg/m3/h, t/MWh): the whole-string aliases above, applied per factor.
        expr = _POWER.sub(lambda m: f"{m.group(1)}**{m.group(2)}", unit.strip())
    try:
        return registry().Unit(expr)
    except (pint.errors.UndefinedUnitError, pint.errors.DefinitionSyntaxError, AttributeError,
            TypeError, ValueError, AssertionError) as err:
        raise UnitError(f"unknown unit '{unit}'") from err


def check_unit(unit: str) -> None:
    _parse(unit)


def unit_of(unit: str) -> pint.Unit:
    """The pint unit a YAML spelling stands for (UnitError when unknown): for load-time checks only."""
    return _parse(unit)


@dataclass(frozen=True, slots=True)
class Conversion:
    factor: float
    offset: float

    def apply(self, x: float) -> float:
        return x * self.factor + self.offset


IDENTITY = Conversion(1.0, 0.0)


@lru_cache(maxsize=1024)
def conversion(from_unit: str, to_unit: str) -> Conversion:
    """Affine conversion between two units, derived once with pint."""
    if from_unit == to_unit:
        return IDENTITY
    src, dst = _parse(from_unit), _parse(to_unit)
    ureg = registry()
    if src.dimensionality != dst.dimensionality:
        raise UnitError(
            f"cannot convert '{from_unit}' ({src.dimensionality}) to '{to_unit}' ({dst.dimensionality})"
        )
    zero = ureg.Quantity(0.0, src).to(dst).magnitude
    one = ureg.Quantity(1.0, src).to(dst).magnitude
    return Conversion(float(one - zero), float(zero))


def dimension_of(unit: str) -> str:
    return str(_parse(unit).dimensionality)
