"""DL/T 645-2007 as a protocol plugin: its connection and point models, device builder and driver.

Registered by one line in gateway/protocols.py; everything else DL/T 645 lives in this package
(docs/dlt645.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from drivers.base import InstrumentLike, PlannedPoint, PollingDriver, ProtocolPlugin, Reporter, SpecLike
from drivers.dlt645.di import data_item, parse_di
from drivers.dlt645.driver import Dlt645Device, Dlt645Point, serial_connection, tcp_connection
from drivers.dlt645.frame import parse_address
from gateway.errors import ConfigError
from gateway.schema_base import ConnectionBase, PointBase, SerialLineBase, is_loopback_host

_ADDRESS = Field(pattern=r"^[0-9]{1,12}$", description="meter address as on the nameplate, up to 12 digits")


def _address_text(v: Any) -> Any:
    # An unquoted address in YAML arrives as an int (leading zeros lost): they are restored by padding.
    return str(v) if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else v


class Dlt645SerialConnection(SerialLineBase):
    """An RS-485 bus: every meter on the same `port` shares one serial line (one request at a time)."""

    protocol: Literal["dlt645"]
    port: str = Field(min_length=1)  # /dev/ttyUSB0, /dev/serial/by-id/..., or a pyserial URL
    address: str = _ADDRESS
    baudrate: int = Field(default=2400, ge=300, le=115200)  # DL/T 645-2007 default 2400 baud
    parity: Literal["N", "E", "O"] = "E"  # 8E1 per the standard's character format
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout_s: float = Field(default=1.0, gt=0, le=60)
    inter_frame_delay_ms: float = Field(default=0.0, ge=0, le=1000)

    _address = field_validator("address", mode="before")(_address_text)

    @property
    def endpoint(self) -> str:
        return f"dlt645://{self.port}"



class Dlt645TcpConnection(ConnectionBase):
    """Meters behind a transparent serial-to-TCP gateway (raw DL/T 645 frames over TCP)."""

    protocol: Literal["dlt645_over_tcp"]
    host: str
    port: int = Field(ge=1, le=65535)
    address: str = _ADDRESS
    timeout_s: float = Field(default=1.5, gt=0, le=60)
    inter_frame_delay_ms: float = Field(default=0.0, ge=0, le=1000)

    _address = field_validator("address", mode="before")(_address_text)

    @property
    def endpoint(self) -> str:
        return f"dlt645_over_tcp://{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)


class Dlt645PointModel(PointBase):
    """A DL/T 645 point: the data identifier to read; format and decimals come from the DI table."""

    di: str | None = Field(default=None, pattern=r"^(0[xX])?[0-9A-Fa-f]{8}$",
                           description='data identifier DI3 DI2 DI1 DI0 in hex, quoted, e.g. "02010100"')

    @field_validator("di", mode="before")
    @classmethod
    def _quoted(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            raise ValueError('write the DI as a quoted hex string, e.g. di: "02010100"')
        return v


class Dlt645Plugin(ProtocolPlugin):
    name: ClassVar[str] = "dlt645"
    title: ClassVar[str] = "DL/T 645"
    connections: ClassVar[tuple[type[ConnectionBase], ...]] = (Dlt645SerialConnection, Dlt645TcpConnection)
    point_model: ClassVar[type[PointBase]] = Dlt645PointModel
    required_point_fields: ClassVar[tuple[str, ...]] = ("di",)
    profiles_dir: ClassVar[Path | None] = Path(__file__).resolve().parent / "profiles"
    kind: ClassVar[Literal["polling", "subscribing"]] = "polling"

    def compile_point(self, point: Any) -> Dlt645Point:
        di = parse_di(point.di)
        item = data_item(di)  # ValueError naming the known DIs
        if point.device_unit is not None and point.device_unit != item.unit:
            raise ValueError(f"DI {item.hex} is reported in {item.unit}, not {point.device_unit}: "
                             f"set device_unit: {item.unit!r} (and unit: for the reporting unit)")
        return Dlt645Point(name=point.name, di=di, scale=point.scale if point.scale is not None else 1.0,
                           offset=point.offset or 0.0)

    def build_device(self, inst: InstrumentLike, points: Sequence[PlannedPoint], profile: Any,
                     ctx: Reporter) -> Dlt645Device | None:
        c = inst.connection
        try:
            address = parse_address(c.address)
        except ValueError as err:
            ctx.error(("connection", "address"), "connection.address", str(err))
            return None
        return Dlt645Device(instrument_id=inst.id, address=address, timeout_s=c.timeout_s,
                            points=tuple(p.wire for p in points))

    def check_shared(self, spec: SpecLike, seen: dict[Any, Any], ctx: Reporter) -> None:
        c = spec.connection
        buses: dict[str, tuple[Any, str]] = seen.setdefault("buses", {})
        first = buses.setdefault(c.endpoint, (c, spec.id))
        settings = getattr(c, "line_settings", None)
        if settings is not None and settings != first[0].line_settings:
            ctx.error(("connection",), "connection",
                      f"serial settings {settings} differ from instrument {first[1]} on the same bus "
                      f"{first[0].line_settings}")
        meters: dict[tuple[str, str], str] = seen.setdefault("meters", {})
        key = (c.endpoint, c.address.rjust(12, "0"))
        if key in meters:
            ctx.error(("connection", "address"), "connection.address",
                      f"{key[0]} meter {key[1]} is already used by instrument {meters[key]}")
        meters.setdefault(key, spec.id)

    def warnings(self, specs: Sequence[SpecLike]) -> list[ConfigError]:
        """A silent meter costs its bus up to two timeouts per poll: warn when that eats a whole
        poll interval of another meter on the same bus."""
        out: list[ConfigError] = []
        buses: dict[str, list[SpecLike]] = {}
        for s in specs:
            buses.setdefault(s.connection.endpoint, []).append(s)
        for members in buses.values():
            for s in members:
                others = [o for o in members if o is not s]
                if not others:
                    continue
                fastest = min(others, key=lambda o: o.poll_interval_s)
                if 2 * s.connection.timeout_s >= fastest.poll_interval_s:
                    out.append(ConfigError(
                        f"warning: twice the timeout {s.connection.timeout_s:g} s is not below the "
                        f"{fastest.poll_interval_s:g} s poll interval of {fastest.id} on the same bus: "
                        f"a silent {s.id} would cost it whole polls",
                        file=s.source_file, line=s.connection_line,
                        field=f"instruments.{s.id}.connection.timeout_s"))
        return out

    def open_polling(self, connection: Any, clock_ms: Callable[[], int]) -> PollingDriver:
        c = connection
        if isinstance(c, Dlt645SerialConnection):
            return serial_connection(c.port, baudrate=c.baudrate, parity=c.parity, stopbits=c.stopbits,
                                     bytesize=c.bytesize, inter_frame_delay_s=c.inter_frame_delay_ms / 1000,
                                     clock=clock_ms)
        return tcp_connection(c.host, c.port, timeout_s=c.timeout_s, inter_frame_delay_s=c.inter_frame_delay_ms / 1000,
                              clock=clock_ms)

    def expect_hint(self, wire: Any) -> str:
        return "check the DI and scale (a CT/VT-connected meter may report secondary values)"


PLUGIN = Dlt645Plugin()
