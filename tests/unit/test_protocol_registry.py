"""The protocol registry: unions and point model come from the plugins; one package + one line adds one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from gateway.cli import main
from gateway.protocols import BUILTIN, PROTOCOLS, ProtocolRegistry
from tests.helpers import write_config

LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<field>[^:]+): (?P<msg>.+)$")


def test_the_builtin_protocols_and_their_connection_tags() -> None:
    assert [p.name for p in PROTOCOLS.plugins][:2] == ["modbus", "opcua"]
    assert {"modbus_tcp", "modbus_rtu_over_tcp", "modbus_rtu", "opcua"} <= set(PROTOCOLS.tags)
    assert PROTOCOLS.for_tag("modbus_rtu").kind == "polling"
    assert PROTOCOLS.for_tag("opcua").kind == "subscribing"


def test_a_new_protocol_is_one_package_and_one_line() -> None:
    registry = ProtocolRegistry((*BUILTIN, "tests.unit.toy.plugin"))
    conn = TypeAdapter(registry.connection_type()).validate_python({"protocol": "toy", "host": "h"})
    assert conn.endpoint == "toy://h"
    assert registry.of(conn).title == "Toy"
    point = registry.point_model()(name="x", register_name="r1")
    assert point.register_name == "r1"  # type: ignore[attr-defined]
    assert registry.field_owner("register_name") is registry.named("toy")
    assert registry.field_owner("unit") is None  # common fields belong to no protocol
    with pytest.raises(ValidationError, match="protocol"):
        TypeAdapter(registry.connection_type()).validate_python({"protocol": "bacnet", "host": "h"})


def test_a_tag_served_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        ProtocolRegistry((*BUILTIN, "drivers.modbus.plugin"))


OPCUA = """\
instruments:
  - id: AN-01
    name: analyser
    kind: gas_analyzer
    connection: {protocol: opcua, endpoint: "opc.tcp://127.0.0.1:4841"}
    points:
      - {name: co2, node_id: "ns=2;s=CEMS.CO2", unit: "%vol"}
      - {name: o2, node_id: "ns=2;s=CEMS.O2", unit: "%vol", table: holding}
"""

MODBUS = """\
instruments:
  - id: PM-01
    name: meter one
    kind: power_meter
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15020, unit_id: 1}
    points:
      - {name: p, table: holding, address: 0, type: float32, device_unit: W, node_id: "ns=2;s=X"}
"""


@pytest.mark.parametrize(("text", "line", "field", "message"), [
    (OPCUA, 8, "instruments[0].points[1].table", "table is for Modbus instruments only"),
    (MODBUS, 7, "instruments[0].points[0].node_id", "node_id is for OPC UA instruments only"),
    (OPCUA.replace('node_id: "ns=2;s=CEMS.CO2", ', ""), 7, "instruments[0].points[0]",
     "point 'co2' lacks node_id"),
])
def test_a_field_of_another_protocol_is_one_precise_line(text: str, line: int, field: str, message: str,
                                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(tmp_path, text)
    assert main(["validate", "--config", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    hits = [m for m in map(LINE.match, lines) if m and m["field"] == field and message in m["msg"]]
    assert hits, lines
    assert int(hits[0]["line"]) == line
