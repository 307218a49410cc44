"""A corpus of malformed configurations (issue 7.6): every one is answered by `validate` with exit 2 and
lines of the form `file:line: field: message`, never a traceback, never a hang.

Most cases run in-process through `gateway.cli.main` (fast); a handful run the real command in a
subprocess bounded by a timeout. Hypothesis adds generated cases: arbitrary text and bytes as an
instrument file, and valid instruments with one value replaced by a hostile one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cli import main
from gateway.registry_schema import MIN_POLL_INTERVAL_S

LINE = re.compile(r"^(?P<file>/[^:]+):(?P<line>\d+): (?P<field>[^:]+): (?P<msg>.+)$")
UNSET = "CG_CORPUS_SURELY_UNSET"

GATEWAY = """\
gateway: {id: gw-corpus, timezone: UTC}
mqtt:
  url: "mqtt://127.0.0.1:1883"
  topic_prefix: carbon
store: {path: "STORE"}
limits: {default_poll_interval_s: 1.0}
"""

METER = """\
instruments:
  - id: PM-01
    name: meter one
    kind: power_meter
    profile: eastron_sdm630
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15020, unit_id: 1}
    only_points: [voltage_l1, total_active_power]
    points:
      - {name: extra, table: holding, address: 9000, type: float32, order: ABCD, scale: 1, offset: 0,
         device_unit: V}
"""

OPCUA = """\
instruments:
  - id: CEMS-02
    name: cems
    kind: gas_analyzer
    connection:
      protocol: opcua
      endpoint: opc.tcp://127.0.0.1:14840/
      security: {policy: None, mode: None}
    points:
      - {name: co2, node_id: "ns=2;s=CEMS.CO2", unit: "%vol"}
"""


def bomb(levels: int = 9) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [{', '.join(['*' + prev] * 9)}]")
    return "\n".join(lines) + "\n"


@dataclass
class Case:
    """A configuration directory: gateway.yaml and instrument files, each text, bytes or a special file."""

    expect_file: str  # suffix of the file the error must name
    expect_field: str
    expect_msg: str
    gateway: str | bytes | tuple[str, str] = GATEWAY
    files: dict[str, str | bytes | tuple[str, str]] = field(default_factory=lambda: {"plant.yaml": METER})


def sub(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def meter(old: str, new: str) -> dict[str, str | bytes | tuple[str, str]]:
    return {"plant.yaml": sub(METER, old, new)}


def gw(old: str, new: str) -> str:
    return sub(GATEWAY, old, new)


P = "instruments[0]"
X = "instruments[0].points[0]"

CASES: dict[str, Case] = {
    # -- files and YAML -------------------------------------------------------------------------
    "fifo": Case("plant.yaml", "file", "not a regular file (a FIFO)", files={"plant.yaml": ("fifo", "")}),
    "symlink_to_dev_zero": Case(
        "plant.yaml", "file", "not a regular file (a character device)", files={"plant.yaml": ("symlink", "/dev/zero")}
    ),
    "symlink_to_nowhere": Case("plant.yaml", "file", "No such file", files={"plant.yaml": ("symlink", "/nonexistent")}),
    "directory_named_yaml": Case(
        "plant.yaml", "file", "not a regular file (a directory)", files={"plant.yaml": ("dir", "")}
    ),
    "gateway_yaml_is_a_fifo": Case("gateway.yaml", "file", "not a regular file (a FIFO)", gateway=("fifo", "")),
    "gateway_yaml_missing": Case("gateway.yaml", "file", "No such file", gateway=("missing", "")),
    "gateway_yaml_4mb": Case(
        "gateway.yaml", "file", "above the limit of 1,000,000", gateway=GATEWAY + "#" + "x" * 4_000_000 + "\n"
    ),
    "instrument_file_over_configured_limit": Case(
        "big.yaml",
        "file",
        "above the limit of 2,048 (raise limits.max_config_file_bytes",
        gateway=gw("limits: {", "limits: {max_config_file_bytes: 2048, "),
        files={"plant.yaml": METER, "big.yaml": "# " + "x" * 4000 + "\n" + METER},
    ),
    "non_utf8": Case(
        "plant.yaml", "yaml", "byte 0xe9 is not UTF-8", files={"plant.yaml": METER.encode() + b"# caf\xe9\n"}
    ),
    "binary": Case(
        "plant.yaml", "yaml", "NUL byte", files={"plant.yaml": b"\x7fELF\x02\x01\x01\x00" + bytes(range(256))}
    ),
    "utf16": Case("plant.yaml", "yaml", "not UTF-8", files={"plant.yaml": METER.encode("utf-16")}),
    "gateway_yaml_binary": Case("gateway.yaml", "yaml", "NUL byte", gateway=b"gateway: {id: x}\n\x00\x00"),
    "alias_bomb": Case("plant.yaml", "yaml", "aliases expand the document", files={"plant.yaml": bomb()}),
    "alias_bomb_in_gateway_yaml": Case(
        "gateway.yaml", "yaml", "aliases expand the document", gateway=GATEWAY + bomb().replace("a:", "x_a:", 1)
    ),
    "recursive_alias": Case("plant.yaml", "yaml", "recursive alias", files={"plant.yaml": "instruments: &a [*a]\n"}),
    "malformed_flow": Case("plant.yaml", "yaml", "malformed YAML", files={"plant.yaml": METER + "  - {id: x\n"}),
    "tab_indentation": Case(
        "plant.yaml", "yaml", "malformed YAML", files={"plant.yaml": sub(METER, "    name", "\tname")}
    ),
    "duplicate_key": Case(
        "plant.yaml", "yaml", "duplicate key 'name'", files=meter("    kind:", "    name: two\n    kind:")
    ),
    "two_documents": Case("plant.yaml", "yaml", "malformed YAML", files={"plant.yaml": METER + "---\n" + METER}),
    "python_tag": Case(
        "plant.yaml",
        "yaml",
        "could not determine a constructor",
        files=meter("name: meter one", "name: !!python/object/apply:os.system [ls]"),
    ),
    "complex_key": Case(
        "plant.yaml", "yaml", "mapping key must be a plain value", files={"plant.yaml": "? [a, b]\n: 1\n"}
    ),
    "impossible_date": Case(
        "plant.yaml",
        "yaml",
        "'2026-02-30' is not a valid date",
        files=meter("    only_points", "    calibration: {last_date: 2026-02-30}\n    only_points"),
    ),
    "deep_nesting": Case("plant.yaml", "yaml", "", files={"plant.yaml": "instruments: " + "[" * 20000 + "]" * 20000}),
    "empty_file": Case("plant.yaml", "instruments", "the file is empty", files={"plant.yaml": ""}),
    "top_level_list": Case("plant.yaml", "instruments", "", files={"plant.yaml": "- id: PM-01\n"}),
    "top_level_scalar": Case("plant.yaml", "instruments", "", files={"plant.yaml": "just text\n"}),
    "instruments_is_a_mapping": Case(
        "plant.yaml", "instruments", "valid list", files={"plant.yaml": "instruments: {}\n"}
    ),
    "second_instrument_list": Case(
        "plant.yaml",
        "instrument",
        "unknown key 'instrument'",
        files={"plant.yaml": METER + "instrument:\n  - id: PM-02\n"},
    ),
    "no_instrument_files": Case("gateway.yaml", "instruments_dir", "no instrument files", files={}),
    # -- gateway.yaml ---------------------------------------------------------------------------
    "gateway_id_missing": Case("gateway.yaml", "gateway.id", "Field required", gateway=gw("id: gw-corpus, ", "")),
    "bad_timezone": Case(
        "gateway.yaml", "gateway.timezone", "unknown time zone", gateway=gw("timezone: UTC", "timezone: Mars/Olympus")
    ),
    "unknown_top_key": Case("gateway.yaml", "mqqt", "Extra inputs are not permitted", gateway=GATEWAY + "mqqt: {}\n"),
    "unknown_mqtt_key": Case(
        "gateway.yaml", "mqtt.passwd", "Extra inputs", gateway=gw("  topic_prefix", "  passwd: x\n  topic_prefix")
    ),
    "unknown_tls_key": Case(
        "gateway.yaml",
        "mqtt.tls.verify",
        "Extra inputs",
        gateway=gw("  topic_prefix", "  tls: {verify: false}\n  topic_prefix"),
    ),
    "url_port_99999": Case("gateway.yaml", "mqtt.url", "Port out of range", gateway=gw(":1883", ":99999")),
    "url_port_0": Case("gateway.yaml", "mqtt.url", "port must be 1..65535", gateway=gw(":1883", ":0")),
    "url_port_garbage": Case("gateway.yaml", "mqtt.url", "must look like", gateway=gw(":1883", ":18x3")),
    "url_garbage": Case("gateway.yaml", "mqtt.url", "must look like", gateway=gw("mqtt://127.0.0.1:1883", "%%%")),
    "url_http": Case("gateway.yaml", "mqtt.url", "must look like", gateway=gw("mqtt://", "http://")),
    "url_credentials": Case("gateway.yaml", "mqtt.url", "credentials in the URL", gateway=gw("mqtt://", "mqtt://u:p@")),
    "prefix_sys": Case(
        "gateway.yaml",
        "mqtt.topic_prefix",
        "must not start with '$'",
        gateway=gw("topic_prefix: carbon", "topic_prefix: $SYS"),
    ),
    "prefix_nul": Case(
        "gateway.yaml",
        "mqtt.topic_prefix",
        "control characters",
        gateway=gw("topic_prefix: carbon", 'topic_prefix: "car\\0bon"'),
    ),
    "prefix_plus": Case(
        "gateway.yaml", "mqtt.topic_prefix", "wildcards", gateway=gw("topic_prefix: carbon", "topic_prefix: a/+")
    ),
    "prefix_hash": Case(
        "gateway.yaml", "mqtt.topic_prefix", "wildcards", gateway=gw("topic_prefix: carbon", "topic_prefix: 'a#'")
    ),
    "prefix_70000": Case(
        "gateway.yaml",
        "mqtt.topic_prefix",
        "70000 bytes in UTF-8",
        gateway=gw("topic_prefix: carbon", "topic_prefix: " + "c" * 70000),
    ),
    "prefix_trailing_slash": Case(
        "gateway.yaml",
        "mqtt.topic_prefix",
        "empty topic levels",
        gateway=gw("topic_prefix: carbon", "topic_prefix: carbon/"),
    ),
    "prefix_empty": Case(
        "gateway.yaml", "mqtt.topic_prefix", "must not be empty", gateway=gw("topic_prefix: carbon", "topic_prefix: ''")
    ),
    "password_file_missing": Case(
        "gateway.yaml",
        "mqtt.password_file",
        "No such file",
        gateway=gw("  topic_prefix", "  username: u\n  password_file: /nonexistent/pw\n  topic_prefix"),
    ),
    "password_file_is_a_directory": Case(
        "gateway.yaml",
        "mqtt.password_file",
        "not a regular file",
        gateway=gw("  topic_prefix", "  username: u\n  password_file: /\n  topic_prefix"),
    ),
    "password_file_is_binary": Case(
        "gateway.yaml",
        "mqtt.password_file",
        "not UTF-8 text",
        gateway=gw("  topic_prefix", "  username: u\n  password_file: PWBIN\n  topic_prefix"),
    ),
    "password_file_and_env": Case(
        "gateway.yaml",
        "mqtt",
        "not both",
        gateway=gw("  topic_prefix", "  password_file: /x\n  password_env: X\n  topic_prefix"),
    ),
    "password_env_unset": Case(
        "gateway.yaml",
        "mqtt.password_env",
        f"{UNSET} is not set",
        gateway=gw("  topic_prefix", f"  username: u\n  password_env: {UNSET}\n  topic_prefix"),
    ),
    "ca_file_missing": Case(
        "gateway.yaml",
        "mqtt.tls.ca_file",
        "No such file",
        gateway=gw("  topic_prefix", "  tls: {ca_file: /nonexistent/ca.pem}\n  topic_prefix"),
    ),
    "ca_file_is_a_directory": Case(
        "gateway.yaml",
        "mqtt.tls.ca_file",
        "not a regular file",
        gateway=gw("  topic_prefix", "  tls: {ca_file: /tmp}\n  topic_prefix"),
    ),
    "key_file_missing": Case(
        "gateway.yaml",
        "mqtt.tls.key_file",
        "No such file",
        gateway=gw("  topic_prefix", "  tls: {cert_file: PWBIN, key_file: /nonexistent/k}\n  topic_prefix"),
    ),
    "key_file_without_cert": Case(
        "gateway.yaml",
        "mqtt.tls.key_file",
        "needs its cert_file",
        gateway=gw("  topic_prefix", "  tls: {key_file: PWBIN}\n  topic_prefix"),
    ),
    "synchronous_bad": Case(
        "gateway.yaml",
        "store.synchronous",
        "'full' or 'normal'",
        gateway=gw('{path: "STORE"}', '{path: "STORE", synchronous: off}'),
    ),
    "store_is_a_directory": Case(
        "gateway.yaml", "store.path", "is not a regular file", gateway=gw('"STORE"', '"/tmp"')
    ),
    "store_under_a_file": Case(
        "gateway.yaml", "store.path", "is not a directory", gateway=gw('"STORE"', '"PWBIN/gw.db"')
    ),
    "default_poll_1e-9": Case(
        "gateway.yaml",
        "limits.default_poll_interval_s",
        "greater than or equal to 0.05",
        gateway=gw("default_poll_interval_s: 1.0", "default_poll_interval_s: 1e-9"),
    ),
    "default_poll_nan": Case(
        "gateway.yaml",
        "limits.default_poll_interval_s",
        "finite number",
        gateway=gw("default_poll_interval_s: 1.0", "default_poll_interval_s: .nan"),
    ),
    "config_limit_too_small": Case(
        "gateway.yaml",
        "limits.max_config_file_bytes",
        "greater than or equal to 1024",
        gateway=gw("limits: {", "limits: {max_config_file_bytes: 10, "),
    ),
    "retention_inf": Case(
        "gateway.yaml",
        "store.retention_days",
        "finite number",
        gateway=gw('{path: "STORE"}', '{path: "STORE", retention_days: .inf}'),
    ),
    # -- instruments ----------------------------------------------------------------------------
    "scale_0": Case("plant.yaml", f"{X}.scale", "must not be 0", files=meter("scale: 1", "scale: 0")),
    "scale_nan": Case("plant.yaml", f"{X}.scale", "finite number", files=meter("scale: 1", "scale: .nan")),
    "scale_inf": Case("plant.yaml", f"{X}.scale", "finite number", files=meter("scale: 1", "scale: .inf")),
    "scale_text": Case("plant.yaml", f"{X}.scale", "valid number", files=meter("scale: 1", "scale: ten")),
    "offset_inf": Case("plant.yaml", f"{X}.offset", "finite number", files=meter("offset: 0", "offset: -.inf")),
    "offset_nan": Case("plant.yaml", f"{X}.offset", "finite number", files=meter("offset: 0", "offset: .NaN")),
    "expect_nan": Case(
        "plant.yaml",
        f"{X}.expect[0]",
        "finite number",
        files=meter("device_unit: V}", "device_unit: V, expect: [.nan, 1]}"),
    ),
    "expect_reversed": Case(
        "plant.yaml", f"{X}.expect", "low <= high", files=meter("device_unit: V}", "device_unit: V, expect: [5, 1]}")
    ),
    "range_nan": Case(
        "plant.yaml",
        f"{P}.measuring_range.min",
        "finite number",
        files=meter("    only_points", "    measuring_range: {min: .nan, max: 10, unit: V}\n    only_points"),
    ),
    "range_inf": Case(
        "plant.yaml",
        f"{P}.measuring_range.max",
        "finite number",
        files=meter("    only_points", "    measuring_range: {min: 0, max: .inf, unit: V}\n    only_points"),
    ),
    "range_reversed": Case(
        "plant.yaml",
        f"{P}.measuring_range",
        "min must be below max",
        files=meter("    only_points", "    measuring_range: {min: 10, max: 0, unit: V}\n    only_points"),
    ),
    "range_unit": Case(
        "plant.yaml",
        f"{P}.measuring_range.unit",
        "unknown unit",
        files=meter("    only_points", "    measuring_range: {min: 0, max: 1, unit: furlongs_per_x}\n    only_points"),
    ),
    "poll_1e-9": Case(
        "plant.yaml",
        f"{P}.poll_interval_s",
        f"greater than or equal to {MIN_POLL_INTERVAL_S}",
        files=meter("    only_points", "    poll_interval_s: 1e-9\n    only_points"),
    ),
    "poll_0": Case(
        "plant.yaml",
        f"{P}.poll_interval_s",
        "greater than or equal",
        files=meter("    only_points", "    poll_interval_s: 0\n    only_points"),
    ),
    "poll_negative": Case(
        "plant.yaml",
        f"{P}.poll_interval_s",
        "greater than or equal",
        files=meter("    only_points", "    poll_interval_s: -1\n    only_points"),
    ),
    "poll_inf": Case(
        "plant.yaml",
        f"{P}.poll_interval_s",
        "finite number",
        files=meter("    only_points", "    poll_interval_s: .inf\n    only_points"),
    ),
    "unknown_instrument_key": Case(
        "plant.yaml",
        f"{P}.pol_interval_s",
        "Extra inputs",
        files=meter("    only_points", "    pol_interval_s: 5\n    only_points"),
    ),
    "unknown_point_key": Case(
        "plant.yaml", f"{X}.adress", "Extra inputs", files=meter("address: 9000", "adress: 9000")
    ),
    "unknown_connection_key": Case(
        "plant.yaml", f"{P}.connection.hots", "Extra inputs", files=meter("host:", "hots: x, host:")
    ),
    "port_70000": Case(
        "plant.yaml", f"{P}.connection.port", "less than or equal to 65535", files=meter("port: 15020", "port: 70000")
    ),
    "unit_id_300": Case(
        "plant.yaml", f"{P}.connection.unit_id", "less than or equal to 255", files=meter("unit_id: 1", "unit_id: 300")
    ),
    "timeout_0": Case(
        "plant.yaml",
        f"{P}.connection.timeout_s",
        "greater than 0",
        files=meter("unit_id: 1}", "unit_id: 1, timeout_s: 0}"),
    ),
    "unknown_protocol": Case("plant.yaml", f"{P}.connection", "unknown protocol", files=meter("modbus_tcp", "bacnet")),
    "unknown_kind": Case(
        "plant.yaml", f"{P}.kind", "Input should be", files=meter("kind: power_meter", "kind: toaster")
    ),
    "bad_id": Case("plant.yaml", f"{P}.id", "should match pattern", files=meter("id: PM-01", "id: 'PM 01/x'")),
    "unknown_profile": Case(
        "plant.yaml", f"{P}.profile", "unknown profile", files=meter("eastron_sdm630", "eastron_sdm999")
    ),
    "duplicate_id": Case(
        "plant.yaml",
        "instruments[1].id",
        "duplicate instrument id",
        files={"plant.yaml": METER + "\n".join(METER.splitlines()[1:7]).replace("15020", "15021") + "\n"},
    ),
    "same_device_in_two_files": Case(
        "plant.yaml",
        "instruments[0].connection.unit_id",
        "already used by instrument PM-02",
        files={"plant.yaml": METER, "b.yaml": sub(sub(METER, "PM-01", "PM-02"), "9000", "9100")},
    ),
    "unknown_unit": Case(
        "plant.yaml", f"{X}.unit", "unknown unit", files=meter("device_unit: V}", "device_unit: V, unit: volts_rms}")
    ),
    "dimension_mismatch": Case(
        "plant.yaml", f"{X}.unit", "cannot convert", files=meter("device_unit: V}", "device_unit: V, unit: kWh}")
    ),
    "bad_word_order": Case("plant.yaml", f"{X}.order", "'ABCD', 'BADC'", files=meter("order: ABCD", "order: ABDC")),
    "bad_type": Case("plant.yaml", f"{X}.type", "Input should be", files=meter("type: float32", "type: float128")),
    "address_70000": Case(
        "plant.yaml", f"{X}.address", "less than or equal to 65535", files=meter("address: 9000", "address: 70000")
    ),
    "bad_point_name": Case(
        "plant.yaml", f"{X}.name", "should match pattern", files=meter("name: extra", "name: Extra Point")
    ),
    "point_lacks_fields": Case(
        "plant.yaml",
        X,
        "lacks table, address, type",
        files=meter(
            "table: holding, address: 9000, type: float32, order: ABCD, scale: 1, offset: 0,\n         device_unit: V",
            "unit: V",
        ),
    ),
    "register_overlap": Case(
        "plant.yaml", X, "overlap", files=meter("table: holding, address: 9000", "table: input, address: 1")
    ),
    "only_points_unknown": Case(
        "plant.yaml", f"{P}.only_points[1]", "unknown point", files=meter("total_active_power]", "no_such_point]")
    ),
    "retired_and_polled": Case(
        "plant.yaml",
        f"{P}.poll_interval_s",
        "retired",
        files=meter("    only_points", "    status: retired\n    poll_interval_s: 5\n    only_points"),
    ),
    "calibration_due_contradiction": Case(
        "plant.yaml",
        f"{P}.calibration.due_date",
        "contradicts",
        files=meter(
            "    only_points",
            "    calibration: {last_date: 2026-01-10, interval_months: 12, due_date: 2026-06-01}\n    only_points",
        ),
    ),
    "calibration_interval_0": Case(
        "plant.yaml",
        f"{P}.calibration.interval_months",
        "greater than or equal to 1",
        files=meter("    only_points", "    calibration: {interval_months: 0}\n    only_points"),
    ),
    "opcua_endpoint": Case(
        "plant.yaml",
        f"{P}.connection.endpoint",
        "should match pattern",
        files={"plant.yaml": sub(OPCUA, "opc.tcp://", "http://")},
    ),
    "opcua_publishing_1ms": Case(
        "plant.yaml",
        f"{P}.connection.publishing_interval_ms",
        "greater than or equal to 50",
        files={"plant.yaml": sub(OPCUA, "      security", "      publishing_interval_ms: 1\n      security")},
    ),
    "opcua_password_env_unset": Case(
        "plant.yaml",
        f"{P}.connection.security.password_env",
        "is not set",
        files={"plant.yaml": sub(OPCUA, "mode: None}", f"mode: None, username: u, password_env: {UNSET}}}")},
    ),
    "opcua_key_password_env_unset": Case(
        "plant.yaml",
        f"{P}.connection.security.key_password_env",
        "is not set",
        files={"plant.yaml": sub(OPCUA, "mode: None}", f"mode: None, key_password_env: {UNSET}}}")},
    ),
    "opcua_password_file_missing": Case(
        "plant.yaml",
        f"{P}.connection.security.password_file",
        "No such file",
        files={"plant.yaml": sub(OPCUA, "mode: None}", "mode: None, username: u, password_file: /nonexistent/pw}")},
    ),
    "opcua_policy_mode_mismatch": Case(
        "plant.yaml",
        f"{P}.connection.security.mode",
        "do not go together",
        files={"plant.yaml": sub(OPCUA, "mode: None}", "mode: Sign}")},
    ),
    "opcua_node_on_modbus": Case(
        "plant.yaml",
        f"{X}.node_id",
        "OPC UA instruments only",
        files=meter("device_unit: V}", "device_unit: V, node_id: 'ns=2;s=x'}"),
    ),
}


def build(root: Path, case: Case) -> Path:
    """Write the case's configuration directory under root."""
    cfg = root / "cfg"
    inst = cfg / "instruments"
    inst.mkdir(parents=True)
    pwbin = root / "pw.bin"
    pwbin.write_bytes(b"\x00\xff\xfe binary \x89PNG")

    def put(path: Path, content: str | bytes | tuple[str, str]) -> None:
        if isinstance(content, tuple):
            kind, target = content
            if kind == "fifo":
                os.mkfifo(path)
            elif kind == "symlink":
                path.symlink_to(target)
            elif kind == "dir":
                path.mkdir()
            return
        if isinstance(content, str):
            content = content.replace("STORE", str(root / "gw.db")).replace("PWBIN", str(pwbin)).encode()
        path.write_bytes(content)

    put(cfg / "gateway.yaml", case.gateway)
    for name, content in case.files.items():
        put(inst / name, content)
    return cfg


def check_lines(stderr: str, case: Case | None = None) -> list[re.Match[str]]:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert lines, "no error printed"
    parsed = [LINE.match(x) for x in lines]
    assert all(parsed), f"not file:line: field: message: {lines}"
    matches = [m for m in parsed if m is not None]
    if case is not None:
        hits = [
            m
            for m in matches
            if m["file"].endswith(case.expect_file) and m["field"] == case.expect_field and case.expect_msg in m["msg"]
        ]
        assert hits, f"expected {case.expect_file}: {case.expect_field}: ...{case.expect_msg}... in {lines}"
    return matches


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 60


@pytest.mark.timeout(60)  # a hang (FIFO, /dev/zero, alias bomb) fails here instead of blocking the suite
@pytest.mark.parametrize("name", sorted(CASES))
def test_each_malformed_configuration_is_one_located_line(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(UNSET, raising=False)
    case = CASES[name]
    cfg = build(tmp_path, case)
    rc = main(["validate", "--config", str(cfg)])
    out = capsys.readouterr()
    assert rc == 2, out.out + out.err
    check_lines(out.err, case)


def test_the_base_configurations_are_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The corpus breaks valid files: without the break they pass (so each case tests its own mistake)."""
    cfg = build(tmp_path, Case("", "", "", files={"plant.yaml": METER, "ua.yaml": OPCUA}))
    assert main(["validate", "--config", str(cfg)]) == 0, capsys.readouterr().err
    bombed = build(
        tmp_path / "anchors",
        Case(
            "",
            "",
            "",
            files={
                "plant.yaml": sub(
                    METER, "instruments:", "defaults: &d {protocol: modbus_tcp, host: 127.0.0.1}\ninstruments:"
                )
            },
        ),
    )
    assert main(["validate", "--config", str(bombed)]) == 2  # anchors are allowed; unknown keys are not
    check_lines(capsys.readouterr().err)


SUBPROCESS_CASES = [
    "fifo",
    "symlink_to_dev_zero",
    "alias_bomb",
    "non_utf8",
    "gateway_yaml_4mb",
    "binary",
    "scale_nan",
    "url_port_99999",
]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_real_command(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    cfg = build(tmp_path, case)
    env = {k: v for k, v in os.environ.items() if k != UNSET}
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "validate", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    check_lines(proc.stderr, case)


# -- generated cases --------------------------------------------------------------------------

HOSTILE = st.one_of(
    st.sampled_from(
        [
            ".nan",
            ".inf",
            "-.inf",
            "0",
            "-1",
            "1e-9",
            "1e308",
            "99999999999999999999",
            "''",
            "null",
            "[]",
            "{}",
            "[1, 2, 3]",
            "'\\0'",
            "true",
            "'$SYS'",
            "'#'",
            "x" * 300,
            "&a [*a]",
            "2026-02-30",
            "!!binary AAAA",
            "'\\xff'",
        ]
    ),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20).map(lambda s: repr(s)),
)

# Every value of the METER instrument that a technician writes, as (line prefix, value) to replace.
SLOTS = [
    ("    name: ", "meter one"),
    ("    kind: ", "power_meter"),
    ("    profile: ", "eastron_sdm630"),
    ("host: ", "127.0.0.1"),
    ("port: ", "15020"),
    ("unit_id: ", "1}"),
    ("only_points: ", "[voltage_l1, total_active_power]"),
    ("table: ", "holding"),
    ("address: ", "9000"),
    ("type: ", "float32"),
    ("order: ", "ABCD"),
    ("scale: ", "1"),
    ("offset: ", "0"),
    ("device_unit: ", "V}"),
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(slot=st.sampled_from(SLOTS), value=HOSTILE)
def test_a_hostile_value_anywhere_is_answered_in_one_pass(
    slot: tuple[str, str], value: str, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    key, old = slot
    new = value + ("}" if old.endswith("}") else "")
    text = METER.replace(key + old, key + new, 1)
    cfg = build(tmp_path_factory.mktemp("gen"), Case("", "", "", files={"plant.yaml": text}))
    rc = main(["validate", "--config", str(cfg)])
    out = capsys.readouterr()
    assert rc in (0, 2), out.err  # some replacements are legal (a name, a string unit...)
    if rc == 2:
        check_lines(out.err)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_arbitrary_bytes_as_an_instrument_file(
    data: bytes, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = build(tmp_path_factory.mktemp("gen"), Case("", "", "", files={"plant.yaml": data}))
    rc = main(["validate", "--config", str(cfg)])
    out = capsys.readouterr()
    assert rc == 2, out.out
    check_lines(out.err)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.text(max_size=200))
def test_arbitrary_text_as_gateway_yaml(
    data: str, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = build(tmp_path_factory.mktemp("gen"), Case("", "", "", gateway=data.encode("utf-8", "surrogatepass")))
    rc = main(["validate", "--config", str(cfg)])
    out = capsys.readouterr()
    assert rc == 2, out.out
    check_lines(out.err)
