"""Pydantic schemas of the instrument registry and of meter profiles (what technicians write)."""

from __future__ import annotations

import ipaddress
from datetime import date
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.modbus.spec import DataType, Table, WordOrder
from gateway.model import NE107
from gateway.model import InstrumentKind as Kind
from gateway.rules.methods import MissingData


def is_loopback_host(host: str) -> bool:
    """Simulators serve only loopback instruments: never a real plant address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Polling faster than this is a typo (1e-9 s was accepted once: 7,000 polls/s against one meter), not a
# plan: even a Modbus TCP meter on a LAN needs a few ms per request, and the rules engine's cadence
# accounting assumes polls are not closer together than this.
MIN_POLL_INTERVAL_S = 0.05


class Strict(BaseModel):
    # Unknown keys are errors at every level; NaN and infinity are never a configuration value.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Lifecycle(StrEnum):
    IN_SERVICE = "in_service"
    STANDBY = "standby"
    RETIRED = "retired"


class BoundaryLevel(StrEnum):
    ENTERPRISE = "enterprise"
    PROCESS = "process"
    FACILITY = "facility"


class SourceCategory(StrEnum):
    """Standard clause 10.1.2."""

    FOSSIL_FUEL_COMBUSTION = "fossil_fuel_combustion"
    INDUSTRIAL_PROCESS = "industrial_process"
    PURCHASED_ELECTRICITY_HEAT = "purchased_electricity_heat"
    CARBON_IN_PRODUCTS = "carbon_in_products"
    OTHER = "other"


class PointModel(Strict):
    """A Modbus point, in a profile or in an instrument (where it adds or overrides by name)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    table: Table | None = None
    address: int | None = Field(default=None, ge=0, le=0xFFFF)
    type: DataType | None = None
    order: WordOrder | None = None
    scale: float | None = None  # finite and non-zero (a zero scale turns every reading into 0)
    offset: float | None = None
    device_unit: str | None = Field(default=None, min_length=1)
    unit: str | None = Field(default=None, min_length=1)
    totalizer: bool | None = None
    description: str | None = None
    expect: tuple[float, float] | None = None  # plausible range checked by `validate --live`
    # OPC UA points (connection protocol opcua) give a node id instead of a register.
    node_id: str | None = None
    mode: Literal["subscribe", "poll"] | None = None
    sampling_interval_ms: float | None = Field(default=None, ge=MIN_POLL_INTERVAL_S * 1000)
    queue_size: int | None = Field(default=None, ge=1)
    deadband: float | None = Field(default=None, ge=0)
    # Rules engine (docs/rules.md): validity, expected cadence, period aggregates, missing-data policy.
    validity: ValidityModel | None = None
    cadence_s: float | None = Field(default=None, gt=0)  # expected reading cadence; default: the poll interval
    gap_after_s: float | None = Field(default=None, gt=0)  # no valid reading this long opens a gap (1.5 cadences)
    aggregate: AggregateModel | None = None
    feeds_emissions: bool | None = None  # a point that feeds an emission figure needs a direction
    direction: Literal["high", "low"] | None = None
    missing_data: MissingData | None = None  # one substitution method and its parameters (docs/rules.md §1.2)
    rollover_at: float | None = Field(default=None, gt=0)  # totalizers: the value the counter wraps at
    simulate: dict[str, object] | None = None

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: float | None) -> float | None:
        if v == 0:
            raise ValueError("scale must not be 0 (every reading would be 0)")
        return v

    @field_validator("expect")
    @classmethod
    def _expect(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and v[0] > v[1]:
            raise ValueError("expect must be [low, high] with low <= high")
        return v


class ValidityModel(Strict):
    """Per-point validity rules; anything left out keeps the default of the instrument kind."""

    range: tuple[float, float] | None = None  # defaults to the instrument's measuring range (same unit family)
    physical_min: float | None = None
    physical_max: float | None = None
    max_rate_per_s: float | None = Field(default=None, ge=0)
    frozen_count: int | None = Field(default=None, ge=2)
    frozen_seconds: float | None = Field(default=None, gt=0)
    calibration_expired: Literal["uncertain", "bad"] = "uncertain"


class AggregateModel(Strict):
    period_s: int = Field(default=3600, ge=60, le=86_400)
    rule: Literal["mrr", "part75", "fraction"] = "mrr"  # mrr: >= 80 % of possible points; part75: 4 quadrants
    min_fraction: float | None = Field(default=None, gt=0, le=1)  # for rule: fraction


class HealthBit(Strict):
    """One status condition: bit `bit` of a status word, or a whole bool point (`point`, bit 0)."""

    point: str | None = None  # overrides HealthModel.point (separate discrete inputs)
    bit: int = Field(default=0, ge=0, le=63)
    invert: bool = False  # active-low signals (e.g. "measured data live" = 0 means held)
    category: NE107
    reason: str = Field(pattern=r"^[a-z][a-z0-9_]*$")


class HealthModel(Strict):
    point: str | None = None  # the status word most bits live in
    bits: list[HealthBit]

    @model_validator(mode="after")
    def _every_bit_has_a_point(self) -> HealthModel:
        for i, b in enumerate(self.bits):
            if b.point is None and self.point is None:
                raise ValueError(f"bits[{i}] names no point and health has no status word point")
        return self


class ProfileModel(Strict):
    profile: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    kind: Kind
    manufacturer: str
    model: str
    source: str = Field(min_length=10)
    notes: str = ""
    max_registers_per_request: int = Field(default=125, ge=1, le=125)
    max_gap_registers: int = Field(default=0, ge=0, le=124)
    points: list[PointModel]
    health: HealthModel | None = None


class ModbusTcpConnection(Strict):
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


class ModbusRtuConnection(Strict):
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

    @property
    def line_settings(self) -> tuple[int, str, int, int]:
        return (self.baudrate, self.parity, self.stopbits, self.bytesize)

    @property
    def is_loopback(self) -> bool:
        return False


class OpcUaSecurityModel(Strict):
    policy: Literal["None", "Basic256Sha256"] = "None"
    mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    client_cert: str | None = None
    client_key: str | None = None
    application_uri: str = "urn:carbon-gateway:client"
    trust_dir: str | None = None
    trusted_certs: list[str] = []
    crl_dir: str | None = None
    trust_server_certificate_without_check: bool = False
    username: str | None = None
    # Secrets never live in YAML: a file or an environment variable.
    password_file: str | None = None
    password_env: str | None = None
    key_password_env: str | None = None


class OpcUaConnection(Strict):
    protocol: Literal["opcua"]
    endpoint: str = Field(pattern=r"^opc\.tcp://[^/:]+(:\d+)?(/.*)?$")
    publishing_interval_ms: float = Field(default=1000.0, ge=MIN_POLL_INTERVAL_S * 1000, le=86_400_000)
    watchdog_intervals: int = Field(default=3, ge=2, le=100)
    poll_interval_s: float = Field(default=10.0, ge=MIN_POLL_INTERVAL_S, le=86_400)
    timeout_s: float = Field(default=5.0, gt=0, le=120)
    reconnect_initial_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    health_node_id: str | None = None
    calibration_node_id: str | None = None
    security: OpcUaSecurityModel = OpcUaSecurityModel()

    @property
    def host(self) -> str:
        return self.endpoint.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        hostport = self.endpoint.split("://", 1)[1].split("/", 1)[0]
        return int(hostport.rsplit(":", 1)[1]) if ":" in hostport else 4840

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)


Connection = Annotated[ModbusTcpConnection | ModbusRtuOverTcpConnection | ModbusRtuConnection | OpcUaConnection,
                       Field(discriminator="protocol")]


class Range(Strict):
    min: float
    max: float
    unit: str

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min >= self.max:
            raise ValueError("min must be below max")
        return self


class CalibrationModel(Strict):
    last_date: date | None = None
    interval_months: int | None = Field(default=None, ge=1, le=240)
    due_date: date | None = None
    certificate: str | None = None
    agency: str | None = None
    mandatory_verification: bool = False


class InstrumentModel(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    name: str
    kind: Kind
    manufacturer: str = ""
    model: str = ""
    serial_number: str = ""
    location: str = ""
    emission_source: str = ""
    source_category: SourceCategory = SourceCategory.OTHER
    boundary_level: BoundaryLevel = BoundaryLevel.FACILITY
    accuracy_class: str = ""
    measuring_range: Range | None = None
    status: Lifecycle = Lifecycle.IN_SERVICE
    calibration: CalibrationModel | None = None
    profile: str | None = None
    connection: Connection
    poll_interval_s: float | None = Field(default=None, ge=MIN_POLL_INTERVAL_S, le=86_400)
    only_points: list[str] | None = None
    points: list[PointModel] = []


class InstrumentFile(Strict):
    instruments: list[InstrumentModel]
