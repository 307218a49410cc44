"""Derived points in YAML: loaded, unit-checked across instruments, and every mistake one file:line error."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.errors import ConfigErrors
from gateway.registry import load_config
from tests.helpers import write_config

CEMS = """\
instruments:
  - id: CEMS-01
    name: stack CEMS
    kind: gas_analyzer
    profile: cems_generic
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15022, unit_id: 1, timeout_s: 0.5}
    poll_interval_s: 1
    points:
      - name: co2_rate
        unit: kg/h
        formula: %s
        inputs: {co2: co2, q: flue_gas_flow, h2o: moisture, p: FT-01.volume_flow}
        window_s: 3
  - id: FT-01
    name: gas flow meter
    kind: flow_meter
    profile: siemens_mag6000
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15021, unit_id: 2, timeout_s: 0.5}
    only_points: [volume_flow, totalizer_1]
"""


def load(tmp_path: Path, formula: str, carbon: str | None = None):
    d = write_config(tmp_path / "cfg", CEMS % formula)
    if carbon is not None:
        (d / "carbon.yaml").write_text(textwrap.dedent(carbon))
    return load_config(d)


def errors_of(tmp_path: Path, formula: str, carbon: str | None = None) -> list[str]:
    with pytest.raises(ConfigErrors) as err:
        load(tmp_path, formula, carbon)
    return [e.one_line() for e in err.value.errors]


def test_a_derived_point_is_planned_with_its_inputs(tmp_path: Path) -> None:
    cfg = load(tmp_path, "co2_mass_rate(co2, q)")
    (dp,) = cfg.derived.points
    assert (dp.instrument, dp.point, dp.unit) == ("CEMS-01", "co2_rate", "kg/h")
    assert dp.inputs[0] == ("co2", "CEMS-01", "co2")
    assert dp.inputs[3] == ("p", "FT-01", "volume_flow")
    assert dp.window_ms == 3000
    spec = cfg.instrument("CEMS-01")
    assert spec.point_index["co2_rate"].derived is not None
    # the device never sees it: the Modbus plan has no register for it
    assert "co2_rate" not in {getattr(p, "name", None) for p in getattr(spec.device, "points", ())}


def test_a_unit_mistake_is_one_line_with_file_and_line(tmp_path: Path) -> None:
    # kg/h + m3/h: CO2 rate plus the gas meter's volume flow
    (line,) = errors_of(tmp_path, "co2_mass_rate(co2, q) + p")
    assert "plant.yaml:" in line
    assert line.split(":")[1] == "11"  # the formula's line, not the point's (line 9)
    assert "unit mismatch in '+'" in line
    assert "kg / h" in line
    assert "m ** 3 / h" in line


@pytest.mark.parametrize(("formula", "message"), [
    ("co2_mass_rate(co2, q", "expected ')'"),
    ("co2 * x", "unknown name 'x'"),
    ("co2_mass_rate(co2, q) * 2 * h2o / co2", None),  # fine: % / % is dimensionless
    ("__import__('os')", "unexpected character"),
])
def test_formula_mistakes(tmp_path: Path, formula: str, message: str | None) -> None:
    if message is None:
        load(tmp_path, formula)
        return
    (line,) = errors_of(tmp_path, formula)
    assert message in line


def test_an_unknown_input_point_is_named(tmp_path: Path) -> None:
    d = write_config(tmp_path / "cfg", (CEMS % "co2_mass_rate(co2, q)").replace("FT-01.volume_flow", "FT-02.flow"))
    with pytest.raises(ConfigErrors) as err:
        load_config(d)
    assert "unknown point 'FT-02.flow'" in str(err.value)


def test_an_input_mistake_names_the_input_line(tmp_path: Path) -> None:
    block = ("inputs:\n          co2: co2\n          q: flue_gas_flow\n          h2o: moisture\n"
             "          p: FT-02.flow\n")
    d = write_config(tmp_path / "cfg", (CEMS % "co2_mass_rate(co2, q)").replace(
        "inputs: {co2: co2, q: flue_gas_flow, h2o: moisture, p: FT-01.volume_flow}\n", block))
    with pytest.raises(ConfigErrors) as err:
        load_config(d)
    (line,) = [e.one_line() for e in err.value.errors]
    assert line == (f"{d / 'instruments' / 'plant.yaml'}:16: CEMS-01.co2_rate.inputs.p: "
                     "input 'p': unknown point 'FT-02.flow'")  # p's line, not the point's (9) or formula's (11)


def test_a_cycle_of_derived_points_names_a_file_and_line(tmp_path: Path) -> None:
    cycle = """\
      - name: a_rate
        unit: kg/h
        formula: b
        inputs: {b: b_rate}
      - name: b_rate
        unit: kg/h
        formula: a
        inputs: {a: a_rate}
"""
    text = (CEMS % "co2_mass_rate(co2, q)").replace("  - id: FT-01\n", cycle + "  - id: FT-01\n")
    d = write_config(tmp_path / "cfg", text)
    with pytest.raises(ConfigErrors) as err:
        load_config(d)
    (line,) = [e.one_line() for e in err.value.errors]
    # a_rate's input b leads into the cycle: its line (a_rate starts on 14), never '<config>'
    assert line == (f"{d / 'instruments' / 'plant.yaml'}:17: CEMS-01.a_rate.inputs.b: "
                    "derived points form a cycle: CEMS-01.a_rate -> CEMS-01.b_rate -> CEMS-01.a_rate")


CARBON = """\
constants:
  ncv_gas:
    unit: GJ/Nm3
    values:
      - {value: 0.0389, valid_from: 2026-01-01, valid_to: 2026-06-30, source: "lab report L-1"}
      - {value: 0.0391, valid_from: 2026-07-01, source: "lab report L-2"}
sources:
  - id: boiler1
    methods:
      - name: measurement
        kind: measurement
        inputs: {co2: CEMS-01.co2, q: CEMS-01.flue_gas_flow}
        formula: co2_mass_rate(co2, q)
"""


def test_constants_have_values_over_time(tmp_path: Path) -> None:
    cfg = load(tmp_path, "co2_mass_rate(co2, q)", CARBON)
    c = cfg.derived.constant("ncv_gas")
    # 2026-03-01 UTC and 2026-08-01 UTC (the test config's time zone is UTC)
    assert c.at(1772323200000) == (0.0389, "lab report L-1")
    assert c.at(1785542400000) == (0.0391, "lab report L-2")
    assert c.at(1735689600000) is None  # 2025-01-01: no value valid then
    (m,) = cfg.derived.methods
    assert (m.source, m.name, m.per_hour) == ("boiler1", "measurement", True)


def test_overlapping_constant_periods_are_an_error(tmp_path: Path) -> None:
    bad = CARBON.replace("valid_from: 2026-07-01", "valid_from: 2026-06-01")
    (line,) = errors_of(tmp_path, "co2_mass_rate(co2, q)", bad)
    assert "carbon.yaml:" in line
    assert "overlap" in line


def test_a_method_unit_mistake_names_the_carbon_file_line(tmp_path: Path) -> None:
    bad = CARBON.replace("formula: co2_mass_rate(co2, q)", "formula: co2 + q")
    (line,) = errors_of(tmp_path, "co2_mass_rate(co2, q)", bad)
    assert line.startswith(str(tmp_path / "cfg" / "carbon.yaml") + ":13:")  # the formula line
    assert "unit mismatch" in line


def test_a_method_input_mistake_names_the_input_line(tmp_path: Path) -> None:
    bad = CARBON.replace("inputs: {co2: CEMS-01.co2, q: CEMS-01.flue_gas_flow}",
                         "inputs:\n          co2: CEMS-01.co2\n          q: CEMS-01.no_such_flow")
    (line,) = errors_of(tmp_path, "co2_mass_rate(co2, q)", bad)
    assert line == (f"{tmp_path / 'cfg' / 'carbon.yaml'}:14: sources[0].methods[0].inputs.q: "
                    "input 'q': unknown point 'CEMS-01.no_such_flow'")


def test_validate_cli_reports_a_unit_mistake_in_one_line_and_exits_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    d = write_config(tmp_path / "cfg", CEMS % "co2_mass_rate(co2, q) + p")  # kg/h + m3/h
    out = subprocess.run([sys.executable, "-m", "gateway", "validate", "--config", str(d)],
                         capture_output=True, text=True)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"{d / 'instruments' / 'plant.yaml'}:11: ")  # the formula's line
    assert "unit mismatch in '+'" in lines[0]
