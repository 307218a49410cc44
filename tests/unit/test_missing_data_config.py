"""A point's `missing_data` block is validated with the registry (one `file:line: field: message` line per
mistake, all in one pass) and the generated schema shows every parameter of every method."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.registry import load_config
from gateway.rules.methods import METHODS
from tests.helpers import write_config

LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<field>[^:]+): (?P<msg>.+)$")

HEAD = """\
instruments:
  - id: PM-01
    name: meter one
    kind: power_meter
    profile: eastron_sdm630
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15020, unit_id: 1}
    only_points: [voltage_l1, total_active_power]
    points:
"""


def validate(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, tuple[int, str]]]:
    write_config(tmp_path, text)
    rc = main(["validate", "--config", str(tmp_path)])
    found: dict[str, tuple[int, str]] = {}
    for line in capsys.readouterr().err.strip().splitlines():
        m = LINE.match(line)
        assert m, f"not file:line: field: message: {line}"
        assert m["file"].endswith("instruments/plant.yaml")
        found[m["field"]] = (int(m["line"]), m["msg"])
    return rc, found


def test_every_mistake_in_missing_data_is_one_located_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = HEAD + """\
      - name: voltage_l1
        order: XYZW
        missing_data:
          selector: part75_tiered
          lookback_hours: 0
          typo: 1
          pma: high
          source_note: plan section 4.2
      - name: total_active_power
        missing_data: {selector: part76_tiered}
  - id: PM-02
    name: meter two
    kind: power_meter
    profile: eastron_sdm630
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15021, unit_id: 1}
    only_points: [voltage_l1]
    points:
      - name: voltage_l1
        missing_data:
          selector: percentile_lookback
          direction: sideways
"""
    rc, found = validate(tmp_path, text, capsys)
    assert rc == 2
    p0, p1, q0 = "instruments[0].points[0]", "instruments[0].points[1]", "instruments[1].points[0]"
    assert found == {
        f"{p0}.order": (10, found[f"{p0}.order"][1]),  # an ordinary registry error, in the same pass
        f"{p0}.missing_data.lookback_hours": (13, "expected a positive integer, got 0"),
        f"{p0}.missing_data.typo": (14, "not a parameter of part75_tiered"),
        f"{p0}.missing_data.pma": (15, "expected a number, got 'high'"),
        f"{p1}.missing_data.selector": (
            18, "expected one of " + ", ".join(METHODS) + ", got 'part76_tiered'"),
        f"{q0}.missing_data.direction": (29, "expected one of high, low, got 'sideways'"),
        f"{q0}.missing_data.percentile": (27, "required for percentile_lookback"),
    }


def test_rules_between_parameters_are_located_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = HEAD + """\
      - name: voltage_l1
        feeds_emissions: true
        missing_data:
          selector: part75_tiered
          parameter: v1
      - name: total_active_power
        feeds_emissions: true
        direction: low
        missing_data:
          selector: max_lookback
          default_value: 1
          lookback_note: three years
"""
    rc, found = validate(tmp_path, text, capsys)
    assert rc == 2
    assert found["instruments[0].points[0].missing_data.direction"][0] == 11
    assert found["instruments[0].points[0].missing_data.direction"][1].startswith("required (high or low)")
    assert found["instruments[0].points[1].missing_data.direction"] == (
        17, "max_lookback is the high-direction routine; use min_lookback for low")
    assert len(found) == 2


def test_a_valid_block_compiles_with_the_points_direction(tmp_path: Path) -> None:
    text = HEAD + """\
      - name: voltage_l1
        feeds_emissions: true
        direction: high
        missing_data:
          selector: hj75_tiered
          default_value: 250.0
          window_short: 3
          description: plan section 4.2
"""
    cfg = load_config(write_config(tmp_path, text))
    point = next(p for p in cfg.instrument("PM-01").points if p.name == "voltage_l1")
    policy = point.rules.substitution
    assert policy is not None
    assert (policy.selector, policy.direction, policy.default_value) == ("hj75_tiered", "high", 250.0)
    assert policy.to_json()["window_short"] == 3


def test_schema_instruments_shows_every_parameter_of_every_method(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "instruments"]) == 0
    schema = json.loads(capsys.readouterr().out)
    defs = schema["$defs"]
    block = defs["PointModel"]["properties"]["missing_data"]
    union = next(option for option in block["anyOf"] if "oneOf" in option)
    assert union["discriminator"]["propertyName"] == "selector"
    mapping = union["discriminator"]["mapping"]
    assert set(mapping) == set(METHODS)
    for name, method in METHODS.items():
        shown = defs[mapping[name].rsplit("/", 1)[-1]]
        assert shown["additionalProperties"] is False
        assert shown["properties"]["selector"]["const"] == name
        missing = set(method.params.model_fields) - set(shown["properties"])
        assert not missing, f"{name}: parameters absent from the schema: {missing}"
        for key, field in method.params.model_fields.items():
            if not field.is_required():
                assert "default" in shown["properties"][key], f"{name}.{key}: default not shown"
