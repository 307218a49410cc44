"""Built-in functions of the derived-point formula language, each with the source of its equation.

Every function works on plain floats in the units its parameters declare; the formula compiler
(gateway.derived.formula) checks the dimensions of the arguments with pint once, at load time, and folds
any unit conversion into a constant factor. A parameter whose unit is ``None`` accepts any unit; the
builtin's ``result`` callable then derives the result unit from the arguments' units.

Pure: no I/O, no clock. docs/derived.md explains each one in the project's own words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pint

from gateway.units import registry, unit_of

# Reference conditions of the normal cubic metre (DIN 1343; the EU MRR's "Nm3" and the Chinese
# "标准状态" of HJ 75-2017 / GB/T 16157-1996): 273.15 K and 101.325 kPa.
T_NORMAL_K = 273.15
P_NORMAL_KPA = 101.325
# Ideal-gas molar volume at those conditions: R*T/p = 8.314462618 * 273.15 / 101325 m3/mol.
MOLAR_VOLUME_NORMAL_L_PER_MOL = 22.41397
# Molar masses (IUPAC 2021 standard atomic weights: C 12.011, O 15.999).
M_CO2_G_PER_MOL = 44.009
M_C_G_PER_MOL = 12.011
# Density of CO2 as an ideal gas at normal conditions, kg/Nm3 (44.009 / 22.41397 = 1.96346).
RHO_CO2_KG_PER_NM3 = M_CO2_G_PER_MOL / MOLAR_VOLUME_NORMAL_L_PER_MOL
# Carbon to CO2 mass ratio as the guidelines write it: 44/12 (IPCC 2006 GL Vol. 2 ch. 2 eq. 2.1 and the
# Chinese accounting guidelines use the rounded molar masses; 3.6667).
C_TO_CO2 = 44.0 / 12.0


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    unit: str | None  # None: any unit (the result unit then depends on it)
    default: float | None = None  # in `unit`; None: required


@dataclass(frozen=True, slots=True)
class Builtin:
    name: str
    params: tuple[Param, ...]
    result: str | Callable[[list[pint.Unit]], pint.Unit]
    fn: Callable[..., float]
    source: str  # the equation's source, shown by `explain` and in docs/derived.md
    # Extra dimension check over the arguments' units (None: fine; else an error message).
    check: Callable[[list[pint.Unit]], str | None] | None = None


def to_standard(q: float, t_k: float, p_kpa: float, t_ref_k: float = T_NORMAL_K,
                p_ref_kpa: float = P_NORMAL_KPA) -> float:
    """Actual volume flow -> flow at reference conditions (ideal gas): Q_n = Q * (p / p_ref) * (T_ref / T).

    Source: the ideal-gas law as used for flue gas in GB/T 16157-1996 (standard-condition flue-gas flow)
    and HJ 75-2017; reference conditions 273.15 K and 101.325 kPa (DIN 1343) unless configured.
    `p_kpa` is the absolute pressure of the gas (barometric plus static pressure).
    """
    return q * (p_kpa / p_ref_kpa) * (t_ref_k / t_k)


def dry(c_wet: float, h2o_pct: float) -> float:
    """Concentration on a wet basis -> dry basis: C_d = C_w / (1 - B_ws), B_ws = H2O % / 100.

    Source: EPA Method 19 (40 CFR 60 Appendix A-7), moisture correction with B_ws; HJ 75-2017 (dry-basis
    concentrations from wet measurements with the flue-gas moisture content).
    """
    return c_wet / (1.0 - h2o_pct / 100.0)


def wet(c_dry: float, h2o_pct: float) -> float:
    """Concentration on a dry basis -> wet basis: C_w = C_d * (1 - B_ws). Source: as `dry`."""
    return c_dry * (1.0 - h2o_pct / 100.0)


def dry_flow(q_wet: float, h2o_pct: float) -> float:
    """Wet flue-gas flow -> dry flow: Q_d = Q_w * (1 - B_ws).

    Source: 40 CFR 75 Appendix F §3 (dry-basis flow from wet flow and moisture); GB/T 16157-1996
    (standard-condition dry flue-gas flow).
    """
    return q_wet * (1.0 - h2o_pct / 100.0)


def o2_correct(c: float, o2_pct: float, o2_ref_pct: float, o2_air_pct: float = 21.0) -> float:
    """Concentration -> concentration at a reference O2 content: C_ref = C * (21 - O2_ref) / (21 - O2).

    Source: GB 13223-2011 (conversion of a measured concentration to the reference oxygen content, with
    21 % for air) and HJ 75-2017; EPA practice uses 20.9 % (pass o2_air_pct = 20.9).
    """
    return c * (o2_air_pct - o2_ref_pct) / (o2_air_pct - o2_pct)


def co2_mass_rate(co2_pct: float, q_nm3_per_h: float) -> float:
    """CO2 mass rate in kg/h from CO2 %vol (dry) and dry flue-gas flow at normal conditions (Nm3/h).

    E = C/100 * Q * rho_CO2, with rho_CO2 = M_CO2 / V_m = 44.009 g/mol / 22.41397 L/mol = 1.96346 kg/Nm3
    (ideal gas at 273.15 K, 101.325 kPa). Source: 40 CFR 75 Appendix F Eq. F-11 (E_h = K * C_h * Q_h; its
    K = 5.7e-7 ton/scf-%CO2 is the same density at 20 °C in US units) and EU 2018/2066 Art. 43 with
    Annex VIII (hourly emission = hourly concentration x hourly flue-gas flow). Both CO2 and flow must be on
    the same (dry) basis: use `dry` / `dry_flow` first.
    """
    return co2_pct / 100.0 * q_nm3_per_h * RHO_CO2_KG_PER_NM3


def heat_input(fuel: float, ncv: float) -> float:
    """Heat input = fuel quantity x net calorific value.

    Source: 40 CFR 75 Appendix F Eq. F-19/F-20 (heat input from fuel flow and calorific value);
    EU 2018/2066 Art. 24 (activity data of source streams = fuel quantity x NCV).
    """
    return fuel * ncv


def fuel_co2(fuel: float, ncv: float, cc: float, of: float) -> float:
    """Fuel-based CO2 = consumption x NCV x carbon content per unit heat x oxidation factor x 44/12.

    Source: the Chinese accounting guideline for power generation facilities (发电设施, 2022 revision),
    E_fuel = Σ FC_i x NCV_i x CC_i x OF_i x 44/12; IPCC 2006 Guidelines Vol. 2 ch. 2 Eq. 2.1;
    EU 2018/2066 Art. 24 and Annex II (standard methodology). `cc` is carbon mass per unit heat (tC/GJ).
    """
    return fuel * ncv * cc * of * C_TO_CO2


def elec_co2(energy: float, ef: float) -> float:
    """Indirect CO2 of purchased electricity = energy x grid emission factor (e.g. MWh x tCO2/MWh).

    Source: the Chinese accounting guidelines (purchased electricity x the grid emission factor the
    Ministry of Ecology and Environment publishes); GHG Protocol Scope 2 Guidance (location-based method).
    """
    return energy * ef


def _dims(u: pint.Unit) -> object:
    return u.dimensionality


def _energy_check(units: list[pint.Unit]) -> str | None:
    energy = registry().joule.dimensionality
    if units[0].dimensionality * units[1].dimensionality != energy:
        return (f"fuel x ncv must be an energy, got '{units[0]:~}' x '{units[1]:~}' "
                "(e.g. t and GJ/t, or Nm3 and GJ/Nm3)")
    return None


def _fuel_co2_check(units: list[pint.Unit]) -> str | None:
    message = _energy_check(units)
    if message:
        return message
    ureg = registry()
    if units[2].dimensionality != (ureg.kilogram / ureg.joule).dimensionality:
        return f"cc must be a carbon mass per unit of heat, e.g. t/GJ, got '{units[2]:~}'"
    if not units[3].dimensionless:
        return f"of must be dimensionless (a fraction), got '{units[3]:~}'"
    return None


def _elec_check(units: list[pint.Unit]) -> str | None:
    ureg = registry()
    if (units[0] * units[1]).dimensionality != ureg.kilogram.dimensionality:
        return f"energy x ef must be a mass of CO2, got '{units[0]:~}' x '{units[1]:~}' (e.g. MWh and t/MWh)"
    return None


def _product(units: list[pint.Unit]) -> pint.Unit:
    return units[0] * units[1]


def _fuel_co2_unit(units: list[pint.Unit]) -> pint.Unit:
    return units[0] * units[1] * units[2]


BUILTINS: dict[str, Builtin] = {b.name: b for b in (
    Builtin("to_standard", (Param("q", "m3/h"), Param("t", "K"), Param("p", "kPa"),
                            Param("t_ref", "K", T_NORMAL_K), Param("p_ref", "kPa", P_NORMAL_KPA)),
            "Nm3/h", to_standard, "ideal-gas law; GB/T 16157-1996; HJ 75-2017; DIN 1343 reference conditions"),
    Builtin("dry", (Param("c", None), Param("h2o", "percent")), lambda u: u[0], dry,
            "EPA Method 19 (40 CFR 60 App. A-7) moisture correction; HJ 75-2017"),
    Builtin("wet", (Param("c", None), Param("h2o", "percent")), lambda u: u[0], wet,
            "EPA Method 19 (40 CFR 60 App. A-7) moisture correction; HJ 75-2017"),
    Builtin("dry_flow", (Param("q", None), Param("h2o", "percent")), lambda u: u[0], dry_flow,
            "40 CFR 75 Appendix F §3; GB/T 16157-1996"),
    Builtin("o2_correct", (Param("c", None), Param("o2", "percent"), Param("o2_ref", "percent"),
                           Param("o2_air", "percent", 21.0)), lambda u: u[0], o2_correct,
            "GB 13223-2011 reference-oxygen conversion; HJ 75-2017"),
    Builtin("co2_mass_rate", (Param("co2", "percent"), Param("q", "Nm3/h")), "kg/h", co2_mass_rate,
            "40 CFR 75 Appendix F Eq. F-11; EU 2018/2066 Art. 43 and Annex VIII; "
            "rho_CO2 = 44.009 g/mol / 22.41397 L/mol = 1.96346 kg/Nm3"),
    Builtin("heat_input", (Param("fuel", None), Param("ncv", None)), _product, heat_input,
            "40 CFR 75 Appendix F Eq. F-19/F-20; EU 2018/2066 Art. 24", check=_energy_check),
    Builtin("fuel_co2", (Param("fuel", None), Param("ncv", None), Param("cc", None), Param("of", None)),
            _fuel_co2_unit, fuel_co2,
            "CN accounting guideline for power generation facilities (2022): FC x NCV x CC x OF x 44/12; "
            "IPCC 2006 GL Vol. 2 ch. 2 Eq. 2.1; EU 2018/2066 Annex II", check=_fuel_co2_check),
    Builtin("elec_co2", (Param("energy", None), Param("ef", None)), _product, elec_co2,
            "CN accounting guidelines, purchased electricity x grid emission factor; GHG Protocol Scope 2 "
            "Guidance (location-based)", check=_elec_check),
)}


def param_unit(p: Param) -> pint.Unit | None:
    return None if p.unit is None else unit_of(p.unit)
