"""Compiled, immutable instrument specs: everything per-reading work needs, resolved at load time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.calibration import CalibrationWindow
from gateway.point_rules import PointRules
from gateway.registry_schema import NE107, ConnectionBase, InstrumentModel
from gateway.units import Conversion


@dataclass(frozen=True, slots=True)
class PointSpec:
    name: str
    device_unit: str
    unit: str
    conversion: Conversion
    totalizer: bool
    description: str
    expect: tuple[float, float] | None
    wire: Any  # the protocol plugin's form of the point (e.g. the register of a Modbus point), or None
    source_file: str
    source_line: int | None
    simulate: dict[str, Any] | None = None  # signal hint for the bundled simulator
    rules: PointRules | None = None  # validity, gaps, aggregation, missing data (gateway/rules)
    derived: DerivedDecl | None = None  # computed by the gateway from other points (gateway/derived)


@dataclass(frozen=True, slots=True)
class DerivedDecl:
    """A derived point as written: its formula and where each of its names comes from."""

    formula: str
    inputs: tuple[tuple[str, str, str], ...]  # (name in the formula, instrument id, point)
    window_ms: int  # every input must lie within this of the newest one
    # Where its formula is written (the `formula:` key's line): a formula's mistake is reported there, not
    # on the point's first line, which may be several lines above it.
    formula_line: int | None = None
    input_lines: tuple[int | None, ...] = ()  # each input's line, in the order of `inputs`


@dataclass(frozen=True, slots=True)
class HealthRule:
    point: str
    bit: int
    category: NE107
    reason: str
    invert: bool = False


@dataclass(frozen=True)
class InstrumentSpec:
    id: str
    model: InstrumentModel
    profile: str | None
    points: tuple[PointSpec, ...]
    health: tuple[HealthRule, ...]
    calibration: CalibrationWindow
    poll_interval_s: float
    protocol: str  # the protocol plugin's name (gateway.protocols)
    device: Any  # what the plugin's driver reads: built by ProtocolPlugin.build_device
    source_file: str
    point_index: dict[str, PointSpec] = field(default_factory=dict)
    connection_line: int | None = None  # where `connection` is written, for cross-instrument errors

    @property
    def connection(self) -> ConnectionBase:
        return self.model.connection  # type: ignore[no-any-return]

    @property
    def polled(self) -> bool:
        return self.model.status.value != "retired"

    def metadata(self) -> dict[str, Any]:
        """The retained `meta` payload body: who measured what, and how it is calibrated."""
        m = self.model
        cal = m.calibration
        return {
            "instrument": m.id,
            "name": m.name,
            "kind": m.kind.value,
            "manufacturer": m.manufacturer,
            "model": m.model,
            "serial_number": m.serial_number,
            "location": m.location,
            "emission_source": m.emission_source,
            "source_category": m.source_category.value,
            "boundary_level": m.boundary_level.value,
            "accuracy_class": m.accuracy_class,
            "measuring_range": m.measuring_range.model_dump() if m.measuring_range else None,
            "status": m.status.value,
            "profile": self.profile,
            "poll_interval_s": self.poll_interval_s,
            "calibration": None
            if cal is None
            else {
                "last_date": cal.last_date.isoformat() if cal.last_date else None,
                "interval_months": cal.interval_months,
                "due_date": cal.due_date.isoformat() if cal.due_date else None,
                "certificate": cal.certificate,
                "agency": cal.agency,
                "mandatory_verification": cal.mandatory_verification,
            },
            "points": [
                {"point": p.name, "unit": p.unit, "device_unit": p.device_unit, "totalizer": p.totalizer,
                 "description": p.description}
                for p in self.points
            ],
        }
