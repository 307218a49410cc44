"""The Modbus protocol plugin: TCP, RTU over a serial bus, and RTU frames over TCP (docs/modbus-rtu.md).

Registered in gateway/protocols.py. Everything Modbus-specific the configuration loader, `validate`,
the schemas and the runtime need comes from here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import Field

from drivers.base import PlannedPoint, PollingDriver, ProtocolPlugin, Reporter, SpecLike
from drivers.modbus.plan import find_overlaps, plan_requests
from drivers.modbus.spec import DataType, ModbusDevice, ModbusPoint, Table, WordOrder
from gateway.errors import ConfigError
from gateway.schema_base import ConnectionBase, PointBase, SerialLineBase, Strict, is_loopback_host


class ModbusPointModel(PointBase):
    """A Modbus point: a value in a register (or bit) table."""

    table: Table | None = None
    address: int | None = Field(default=None, ge=0, le=0xFFFF)
    type: DataType | None = None
    order: WordOrder | None = None


class ModbusProfileOptions(Strict):
    """Request planning of a meter profile (how the meter wants its registers read)."""

    max_registers_per_request: int = Field(default=125, ge=1, le=125)
    max_gap_registers: int = Field(default=0, ge=0, le=124)


class ModbusTcpConnection(ConnectionBase):
    protocol: Literal["modbus_tcp"]
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    timeout_s: float = Field(default=1.0, gt=0, le=60)

    @property
    def endpoint(self) -> str:
        return f"modbus_tcp://{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)


class ModbusRtuOverTcpConnection(ModbusTcpConnection):
    """RTU frames (with CRC, no MBAP header) carried by a transparent serial device server."""

    protocol: Literal["modbus_rtu_over_tcp"]  # type: ignore[assignment]

    @property
    def endpoint(self) -> str:
        return f"rtu_over_tcp://{self.host}:{self.port}"


class ModbusRtuConnection(SerialLineBase):
    """An RS-485 bus: every instrument on the same `port` shares one serial line (one request at a time)."""

    protocol: Literal["modbus_rtu"]
    port: str = Field(min_length=1)  # /dev/ttyUSB0, /dev/serial/by-id/..., or a pyserial URL
    baudrate: int = Field(default=9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_id: int = Field(default=1, ge=1, le=247)
    timeout_s: float = Field(default=0.5, gt=0, le=60)
    inter_frame_delay_ms: float = Field(default=0.0, ge=0, le=1000)  # extra pause between requests on the bus

    @property
    def endpoint(self) -> str:
        return f"modbus_rtu://{self.port}"



ModbusConnectionModel = ModbusTcpConnection | ModbusRtuOverTcpConnection | ModbusRtuConnection


def to_modbus_point(p: Any) -> ModbusPoint:
    """A point model (with table, address and type given) as the driver's ModbusPoint."""
    return ModbusPoint(name=p.name, table=p.table, address=p.address, dtype=p.type,
                       order=p.order or WordOrder.ABCD, scale=p.scale if p.scale is not None else 1.0,
                       offset=p.offset or 0.0)


class ModbusPlugin(ProtocolPlugin):
    name = "modbus"
    title = "Modbus"
    connections = (ModbusTcpConnection, ModbusRtuOverTcpConnection, ModbusRtuConnection)
    point_model = ModbusPointModel
    required_point_fields = ("table", "address", "type", "device_unit")
    profile_options = ModbusProfileOptions
    kind = "polling"

    def compile_point(self, point: Any) -> ModbusPoint:
        return to_modbus_point(point)

    def build_device(self, inst: Any, points: Sequence[PlannedPoint], profile: Any,
                     ctx: Reporter) -> ModbusDevice | None:
        wires = [p.wire for p in points]
        by_name = {p.point.name: p for p in points}
        ok = True
        for a, b in find_overlaps(wires):
            pb = by_name[b.name]
            ctx.error(pb.loc, pb.field,
                      f"registers {b.table.value} {b.address}..{b.end - 1} of '{b.name}' overlap "
                      f"'{a.name}' ({a.address}..{a.end - 1}) [{pb.source_file.rsplit('/', 1)[-1]}:{pb.source_line}]")
            ok = False
        if not ok:
            return None
        max_regs = profile.max_registers_per_request if profile is not None else 125
        max_gap = profile.max_gap_registers if profile is not None else 0
        try:
            requests = tuple(plan_requests(wires, max_registers=max_regs, max_gap=max_gap))
        except ValueError as err:
            ctx.error(("points",), "points", str(err))
            return None
        c = inst.connection
        return ModbusDevice(instrument_id=inst.id, unit_id=c.unit_id, timeout_s=c.timeout_s, requests=requests)

    def check_shared(self, spec: SpecLike, seen: dict[Any, Any], ctx: Reporter) -> None:
        c = spec.connection
        buses = seen.setdefault("buses", {})
        devices = seen.setdefault("devices", {})
        first = buses.setdefault(c.endpoint, spec)
        settings_of = getattr(c, "line_settings", None)
        if settings_of is not None and settings_of != first.connection.line_settings:
            ctx.error(("connection",), "connection",
                      f"serial settings {settings_of} differ from instrument {first.id} on the same bus "
                      f"{first.connection.line_settings}")
        key = (c.endpoint, c.unit_id)
        if key in devices:
            ctx.error(("connection", "unit_id"), "connection.unit_id",
                      f"{key[0]} unit {key[1]} is already used by instrument {devices[key]}")
        devices[key] = spec.id

    def warnings(self, specs: Sequence[SpecLike]) -> list[ConfigError]:
        """On one RS-485 bus a silent meter holds the line for its whole timeout. If that timeout is not
        shorter than another meter's poll interval, one dead meter costs the healthy ones whole polls
        (counted as missed polls). Legal, so a warning, not an error."""
        errors: list[ConfigError] = []
        buses: dict[str, list[SpecLike]] = {}
        for s in specs:
            if s.connection.protocol == "modbus_rtu":
                buses.setdefault(s.connection.endpoint, []).append(s)
        for members in buses.values():
            for s in members:
                others = [o for o in members if o is not s]
                if not others:
                    continue
                fastest = min(others, key=lambda o: o.poll_interval_s)
                if s.connection.timeout_s >= fastest.poll_interval_s:
                    errors.append(ConfigError(
                        f"warning: timeout {s.connection.timeout_s:g} s is not below the "
                        f"{fastest.poll_interval_s:g} s poll interval of {fastest.id} on the same bus: "
                        f"a silent {s.id} would cost it whole polls",
                        file=s.source_file, line=s.connection_line, field=f"instruments.{s.id}.connection.timeout_s"))
        return errors

    def open_polling(self, connection: Any, clock_ms: Callable[[], int]) -> PollingDriver:
        c = connection
        if c.protocol == "modbus_rtu":
            from drivers.modbus.rtu import serial_connection

            return serial_connection(c.port, baudrate=c.baudrate, parity=c.parity, stopbits=c.stopbits,
                                     bytesize=c.bytesize, timeout_s=c.timeout_s,
                                     inter_frame_delay_s=c.inter_frame_delay_ms / 1000, clock=clock_ms)
        from drivers.modbus.tcp import tcp_connection

        return tcp_connection(c.host, c.port, timeout_s=c.timeout_s,
                              rtu_framing=c.protocol == "modbus_rtu_over_tcp", clock=clock_ms)

    def expect_hint(self, wire: Any) -> str:
        order = wire.order.value if isinstance(wire, ModbusPoint) else "?"
        return f"check word order '{order}' and scale"


PLUGIN = ModbusPlugin()
