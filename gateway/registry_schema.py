"""Pydantic schemas of the instrument registry and of meter profiles (what technicians write)."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Any

from pydantic import Field, create_model, model_validator

from gateway.model import NE107
from gateway.model import InstrumentKind as Kind
from gateway.protocols import PROTOCOLS
from gateway.schema_base import (
    MIN_POLL_INTERVAL_S,
    AggregateModel,
    ConnectionBase,
    PointBase,
    Strict,
    ValidityModel,
    is_loopback_host,
)

__all__ = ["MIN_POLL_INTERVAL_S", "NE107", "AggregateModel", "ConnectionBase", "Kind", "PointBase",
           "ValidityModel", "is_loopback_host"]


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


# The point as written in YAML: the common fields plus every registered protocol's (gateway/protocols.py).
PointModel: type[PointBase] = PROTOCOLS.point_model()


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


class ProfileBase(Strict):
    profile: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    kind: Kind
    manufacturer: str
    model: str
    source: str = Field(min_length=10)
    notes: str = ""
    points: list[PointModel]  # type: ignore[valid-type]
    health: HealthModel | None = None


# A meter profile: the common keys plus the profile options of every registered protocol.
_OPTIONS = {name: (info.annotation, info) for opts in PROTOCOLS.profile_options()
            for name, info in opts.model_fields.items()}
ProfileModel: Any = create_model("ProfileModel", __base__=ProfileBase, **_OPTIONS)

# The connection of an instrument: a discriminated union on `protocol` of every plugin's connection models.
Connection: Any = PROTOCOLS.connection_type()


class Range(Strict):
    min: float
    max: float
    unit: str

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min >= self.max:
            raise ValueError("min must be below max")
        return self


class CalibrationMethod(StrEnum):
    """How an instrument's value is confirmed (standard 10.5.4 a-d)."""

    VERIFICATION = "verification"  # 检定: legal verification (mandatory instruments: a designated agency, 10.5.4 b)
    CALIBRATION = "calibration"  # 校准: by a qualified third party or the plant's own standard (10.5.4 c)
    SELF_CHECK = "self_check"  # 自校 (10.5.4 d: instruments that cannot be removed or have no procedure)
    COMPARISON = "comparison"  # 比对
    REPLACEMENT = "replacement"  # 定期更换


class CalibrationResult(StrEnum):
    """The plant's confirmation of the last certificate (10.5.4 e): only confirmed instruments stay in use."""

    PASS = "pass"
    FAIL = "fail"


class CalibrationModel(Strict):
    last_date: date | None = None
    interval_months: int | None = Field(default=None, ge=1, le=240)
    due_date: date | None = None
    certificate: str | None = None
    agency: str | None = None
    mandatory_verification: bool = False
    # Issue 11 item 6: the rest of the instrument ledger (standard 10.1.3 d "calibration frequency and the
    # technical specification it follows"; 10.5.4 a-e). Cross-checked in registry.compile_instrument.
    method: CalibrationMethod | None = None
    specification: str = ""  # the regulation or procedure followed, e.g. "JJG 1033-2007"
    result: CalibrationResult | None = None


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
    points: list[PointModel] = []  # type: ignore[valid-type]


class InstrumentFile(Strict):
    instruments: list[InstrumentModel]
