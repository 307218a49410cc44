"""`carbon-gateway validate`: exit 0 on the sample config, exit 2 with one precise line per mistake."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.cli import main
from tests.helpers import write_config

REPO = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<field>[^:]+): (?P<msg>.+)$")

BASE = """\
instruments:
  - id: PM-01
    name: meter one
    kind: power_meter
    profile: eastron_sdm630
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15020, unit_id: 1}
    only_points: [voltage_l1, total_active_power]
"""


def run_validate(tmp_path: Path, instruments: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    write_config(tmp_path, instruments)
    rc = main(["validate", "--config", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def test_sample_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--config", str(REPO / "config")]) == 0
    assert "ok (4 instruments" in capsys.readouterr().out


CASES = {
    "duplicate_id": (
        BASE + """\
  - id: PM-01
    name: meter two
    kind: power_meter
    profile: eastron_sdm630
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15021, unit_id: 1}
""",
        8, "instruments[1].id", "duplicate instrument id 'PM-01'"),
    "unknown_word_order": (
        BASE + """\
    points:
      - {name: voltage_l1, order: ABDC}
""",
        9, "instruments[0].points[0].order", "'ABCD', 'BADC', 'CDAB' or 'DCBA'"),
    "register_overlap": (
        BASE + """\
    points:
      - {name: my_extra, table: input, address: 1, type: float32, device_unit: V}
""",
        9, "instruments[0].points[0]", "overlap"),
    "unknown_unit": (
        BASE + """\
    points:
      - {name: voltage_l1, unit: volts_rms}
""",
        9, "instruments[0].points[0].unit", "unknown unit 'volts_rms'"),
    "dimension_mismatch": (
        BASE + """\
    points:
      - {name: total_active_power, unit: kWh}
""",
        9, "instruments[0].points[0].unit", "cannot convert 'W'"),
    "retired_and_polled": (
        BASE.replace("    only_points", "    status: retired\n    poll_interval_s: 5\n    only_points"),
        8, "instruments[0].poll_interval_s", "retired"),
    "unknown_profile": (
        BASE.replace("eastron_sdm630", "eastron_sdm999"), 5, "instruments[0].profile", "unknown profile"),
    "calibration_contradiction": (
        BASE + """\
    calibration: {last_date: 2026-01-10, interval_months: 12, due_date: 2026-06-01}
""",
        8, "instruments[0].calibration.due_date", "contradicts last_date + interval_months = 2027-01-10"),
    "calibration_due_before_last": (
        BASE + """\
    calibration: {last_date: 2026-01-10, due_date: 2025-06-01}
""",
        8, "instruments[0].calibration.due_date", "is not after last calibration"),
    "missing_field": (
        BASE.replace("    kind: power_meter\n", "", 1), 2, "instruments[0].kind", "Field required"),
    "unknown_protocol": (
        BASE.replace("protocol: modbus_tcp", "protocol: bacnet"), 6, "instruments[0].connection", "unknown protocol"),
    "same_device_twice": (
        BASE + """\
  - id: PM-02
    name: meter two
    kind: power_meter
    profile: eastron_sdm630
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15020, unit_id: 1}
""",
        12, "instruments[1].connection.unit_id", "already used by instrument PM-01"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_mistake_is_one_precise_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, line, field, message = CASES[case]
    rc, lines = run_validate(tmp_path, text, capsys)
    assert rc == 2
    assert lines, "no error printed"
    parsed = [LINE.match(x) for x in lines]
    assert all(parsed), f"not file:line: field: message: {lines}"
    hits = [m for m in parsed if m and m["field"] == field and message in m["msg"]]
    assert hits, f"expected {field}: ...{message}... in {lines}"
    assert hits[0]["file"].endswith("instruments/plant.yaml")
    assert int(hits[0]["line"]) == line
    assert "Traceback" not in "\n".join(lines)


def test_malformed_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = run_validate(tmp_path, BASE + "    points: [ {name: x\n", capsys)
    assert rc == 2
    assert len(lines) == 1
    m = LINE.match(lines[0])
    assert m is not None
    assert m["field"] == "yaml"
    assert m["msg"].startswith("malformed YAML")
    assert int(m["line"]) >= 8


def test_all_errors_reported_in_one_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = BASE + """\
    points:
      - {name: voltage_l1, order: XYZW}
  - id: PM-02
    name: meter two
    kind: power_meter
    profile: eastron_sdm630
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15021, unit_id: 1}
    points:
      - {name: total_active_power, unit: parsecs}
"""
    rc, lines = run_validate(tmp_path, text, capsys)
    assert rc == 2
    assert len(lines) == 2


def test_bad_gateway_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(tmp_path, BASE, gateway_yaml="gateway: {id: gw-1}\nmqtt: {url: 'http://x'}\n")
    assert main(["validate", "--config", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"gateway\.yaml:2: mqtt\.url: .*mqtt://host:port", err)


def test_shared_bus_timeout_above_the_others_poll_interval_is_warned(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    text = """\
instruments:
  - id: FT-01
    name: flow
    kind: flow_meter
    profile: siemens_mag6000
    only_points: [volume_flow]
    connection: {protocol: modbus_rtu, port: /dev/ttyUSB0, unit_id: 1, timeout_s: 0.5}
    poll_interval_s: 1
  - id: FT-02
    name: flow 2
    kind: flow_meter
    profile: siemens_mag6000
    only_points: [volume_flow]
    connection:
      protocol: modbus_rtu
      port: /dev/ttyUSB0
      unit_id: 2
      timeout_s: 1.5
    poll_interval_s: 5
"""
    rc, lines = run_validate(tmp_path, text, capsys)
    assert rc == 0  # legal: a silent FT-02 costs FT-01 polls, which are counted as missed
    assert len(lines) == 1, lines
    m = LINE.match(lines[0])
    assert m is not None
    assert m["field"] == "instruments.FT-02.connection.timeout_s"
    assert int(m["line"]) == 18
    assert m["msg"].startswith("warning: timeout 1.5 s")
    assert "poll interval of FT-01" in m["msg"]
