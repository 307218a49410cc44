"""`carbon-gateway validate`: exit 0 on the sample config, exit 2 with one precise line per mistake."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.errors import ConfigErrors
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
    # A derived point's unit mistake is found after every instrument is loaded (gateway/derived/config.py):
    # its line is the `formula:` key's, not the point's first line four lines above it.
    "derived_unit_mismatch": (
        BASE + """\
    points:
      - name: volts_plus_watts
        unit: V
        description: a formula that adds a power to a voltage
        window_s: 2
        formula: v + p
        inputs: {v: voltage_l1, p: total_active_power}
""",
        13, "PM-01.volts_plus_watts.formula", "unit mismatch in '+'"),
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


# -- issue 7.2: everything `run` would fail on is caught by `validate`, one line each ----------------

GATEWAY = """\
gateway: {{id: gw-test, timezone: UTC}}
mqtt:
  url: "mqtt://127.0.0.1:1883"
  topic_prefix: carbon
{mqtt}store: {{path: "{store}"}}
"""


def validate_gateway(tmp_path: Path, mqtt: str, capsys: pytest.CaptureFixture[str],
                     instruments: str = BASE) -> tuple[int, list[str]]:
    write_config(tmp_path, instruments, gateway_yaml=GATEWAY.format(mqtt=mqtt, store=tmp_path / "gw.db"))
    rc = main(["validate", "--config", str(tmp_path)])
    return rc, capsys.readouterr().err.strip().splitlines()


def one(lines: list[str], field: str, message: str) -> re.Match[str]:
    parsed = [LINE.match(x) for x in lines]
    assert all(parsed), f"not file:line: field: message: {lines}"
    hits = [m for m in parsed if m and m["field"] == field and message in m["msg"]]
    assert len(hits) == 1, f"expected one {field}: ...{message}... in {lines}"
    return hits[0]


@pytest.mark.parametrize(("mqtt", "line", "field", "message"), [
    ("  password_file: /nonexistent/pw\n  username: gw\n", 5, "mqtt.password_file", "No such file"),
    ("  password_file: /tmp\n  username: gw\n", 5, "mqtt.password_file", "not a regular file"),
    ("  password_env: CARBON_TEST_SURELY_UNSET\n  username: gw\n", 5, "mqtt.password_env", "is not set"),
    ("  password_env: CARBON_TEST_SURELY_UNSET\n", 5, "mqtt.username", "a password needs a username"),
    ("  tls: {ca_file: /nonexistent/ca.pem}\n", 5, "mqtt.tls.ca_file", "No such file"),
    ("  tls:\n    cert_file: /nonexistent/c.pem\n    key_file: /nonexistent/k.pem\n", 6, "mqtt.tls.cert_file",
     "No such file"),
])
def test_secrets_and_tls_files_are_checked(mqtt: str, line: int, field: str, message: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = validate_gateway(tmp_path, mqtt, capsys)
    assert rc == 2
    assert int(one(lines, field, message)["line"]) == line


def test_binary_password_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pw").write_bytes(b"\xff\xfe\x00\x01binary")
    rc, lines = validate_gateway(tmp_path, f"  username: gw\n  password_file: {tmp_path / 'pw'}\n", capsys)
    assert rc == 2
    m = one(lines, "mqtt.password_file", "binary")
    assert "\\xff" not in m["msg"]  # never the content


@pytest.mark.parametrize(("url", "message"), [
    ("mqtt://127.0.0.1:99999", "Port out of range"),
    ("mqtt://127.0.0.1:12ab", "must look like"),
    ("garbage", "must look like"),
    ("mqtt://gw:secret@127.0.0.1:1883", "credentials in the URL are not used"),
    ("mqtt://127.0.0.1:1883/path", "no path"),
])
def test_mqtt_url(url: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = validate_gateway(tmp_path, "", capsys)
    assert rc == 0, lines
    text = (tmp_path / "gateway.yaml").read_text().replace("mqtt://127.0.0.1:1883", url)
    (tmp_path / "gateway.yaml").write_text(text)
    assert main(["validate", "--config", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert int(one(lines, "mqtt.url", message)["line"]) == 3
    assert ":secret@" not in "\n".join(lines)  # the password is never echoed


@pytest.mark.parametrize(("prefix", "message"), [
    ("'$SYS'", "must not start with '$'"),
    ("'a/+/b'", "wildcards"),
    ("'a/#'", "wildcards"),
    ('"a\\0b"', "control characters"),
    ("'/carbon'", "empty topic levels"),
    ("'carbon/'", "empty topic levels"),
    ("'" + "é" * 65 + "'", "130 bytes in UTF-8, above the limit of 128"),
])
def test_topic_prefix_grammar(prefix: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = validate_gateway(tmp_path, "", capsys)
    assert rc == 0, lines
    text = (tmp_path / "gateway.yaml").read_text().replace("topic_prefix: carbon", f"topic_prefix: {prefix}")
    (tmp_path / "gateway.yaml").write_text(text)
    assert main(["validate", "--config", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert int(one(lines, "mqtt.topic_prefix", message)["line"]) == 4


def test_insecure_skip_verify_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = validate_gateway(tmp_path, "  tls: {insecure_skip_verify: true}\n", capsys)
    assert rc == 0
    m = one(lines, "mqtt.tls.insecure_skip_verify", "warning: the broker's certificate is not checked")
    assert int(m["line"]) == 5


@pytest.mark.parametrize(("point", "field", "message"), [
    ("{name: voltage_l1, scale: 0}", "scale", "must not be 0"),
    ("{name: voltage_l1, scale: .nan}", "scale", "finite number"),
    ("{name: voltage_l1, scale: .inf}", "scale", "finite number"),
    ("{name: voltage_l1, offset: -.inf}", "offset", "finite number"),
])
def test_scale_and_offset_are_finite(point: str, field: str, message: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = run_validate(tmp_path, BASE + f"    points:\n      - {point}\n", capsys)
    assert rc == 2
    assert int(one(lines, f"instruments[0].points[0].{field}", message)["line"]) == 9


@pytest.mark.parametrize("bound", ["min: .nan, max: 10", "min: 0, max: .inf"])
def test_measuring_range_is_finite(bound: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = run_validate(tmp_path, BASE + f"    measuring_range: {{{bound}, unit: V}}\n", capsys)
    assert rc == 2
    field = "instruments[0].measuring_range." + ("min" if "nan" in bound else "max")
    assert int(one(lines, field, "finite number")["line"]) == 8


@pytest.mark.parametrize("interval", ["1e-9", "0.01", "0"])
def test_minimum_poll_interval(interval: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = run_validate(tmp_path, BASE + f"    poll_interval_s: {interval}\n", capsys)
    assert rc == 2
    assert int(one(lines, "instruments[0].poll_interval_s", "greater than or equal to 0.05")["line"]) == 8


def test_unknown_top_level_key_in_an_instrument_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = BASE + """\
instrument:
  - id: PM-02
    name: meter two
"""
    rc, lines = run_validate(tmp_path, text, capsys)
    assert rc == 2
    assert int(one(lines, "instrument", "unknown key 'instrument'")["line"]) == 8


def test_duplicate_key_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = run_validate(tmp_path, BASE + "instruments: []\n", capsys)
    assert rc == 2
    assert int(one(lines, "yaml", "duplicate key 'instruments'")["line"]) == 8


def test_a_gateway_yaml_error_does_not_hide_instrument_errors(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = BASE.replace("only_points", "poll_interval_s: 0\n    only_points") + """\
  - id: PM-02
    name: meter two
    kind: power_meter
    profile: eastron_sdm630
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15021, unit_id: 1}
    points:
      - {name: total_active_power, unit: volts_rms}
"""
    write_config(tmp_path, bad, gateway_yaml="gateway: {id: gw-1}\nmqtt: {url: 'mqtt://x:99999'}\n")
    assert main(["validate", "--config", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    one(lines, "mqtt.url", "Port out of range")
    one(lines, "instruments[0].poll_interval_s", "greater than or equal")  # schema error in one instrument
    one(lines, "instruments[1].points[0].unit", "unknown unit 'volts_rms'")  # does not hide a unit error
    assert len(lines) == 3, lines


def test_store_path_that_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(tmp_path, BASE, store=tmp_path)
    assert main(["validate", "--config", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert int(one(lines, "store.path", "is not a regular file")["line"]) == 3


def test_opcua_key_password_env_is_the_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.registry import load_config

    text = (REPO / "config" / "instruments" / "boiler2-opcua.yaml").read_text().replace(
        "security: {policy: None, mode: None}",
        "security: {policy: None, mode: None, key_password_env: CG_TEST_KEY_PW}")
    write_config(tmp_path, text)
    monkeypatch.setenv("CG_TEST_KEY_PW", "the passphrase")
    cfg = load_config(tmp_path)
    assert cfg.instruments[0].device.security.client_key_password == "the passphrase"  # type: ignore[union-attr]
    monkeypatch.delenv("CG_TEST_KEY_PW")
    with pytest.raises(ConfigErrors) as err:
        load_config(tmp_path)
    assert "connection.security.key_password_env: environment variable CG_TEST_KEY_PW is not set" in str(err.value)
