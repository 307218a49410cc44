"""The protocol-neutral building blocks of the configuration models, shared by the core and the plugins.

Protocol plugins (drivers/<name>/plugin.py) subclass `PointBase` (adding their addressing fields) and
`ConnectionBase` (one model per `protocol` tag); gateway/registry_schema.py assembles them into the
models of the instrument registry and of meter profiles.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
# plan: even a meter on a LAN needs a few ms per request, and the rules engine's cadence accounting
# assumes polls are not closer together than this.
MIN_POLL_INTERVAL_S = 0.05


class Strict(BaseModel):
    # Unknown keys are errors at every level; NaN and infinity are never a configuration value.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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


# -- issue 10 (rules, second pass): operating hours, Part 75 load bins, reporting-period closes ---------------

class OperatingSignalModel(Strict):
    """Which hours the source operates, from a point of the same instrument (40 CFR 75.30(a), 72.2 'operating
    hour'; HJ 75-2017: stopped hours are excluded). An hour is an operating hour when any good reading of the
    signal in it meets the condition; an hour whose signal has good readings none of which meets it is a
    non-operating hour; an hour without a good signal reading counts as operating (it is then substituted:
    the conservative side)."""

    point: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    above: float | None = None  # operating when the value is > above (fuel flow above a threshold, load > 0)
    bit: int | None = Field(default=None, ge=0, le=63)  # operating when this bit of the value is set (run status)
    invert: bool = False  # with bit: operating when the bit is clear

    @model_validator(mode="after")
    def _one_condition(self) -> OperatingSignalModel:
        if (self.above is None) == (self.bit is None):
            raise ValueError("give exactly one of above (a threshold) or bit (a status bit)")
        if self.invert and self.bit is None:
            raise ValueError("invert applies to bit only")
        return self


class LoadBinsModel(Strict):
    """Part 75 App. C §2 load ranges of each hour from a load point of the same instrument: ten equal bins of
    the range of operation ``range`` (or ``bins`` of them, or explicit upper ``edges``)."""

    point: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    range: tuple[float, float] = Field(description="the range of operation [lowest, maximum] in the point's unit")
    bins: int = Field(default=10, ge=2, le=20)
    edges: tuple[float, ...] | None = Field(default=None, description="explicit upper edges of bins 1..n-1")

    @model_validator(mode="after")
    def _check(self) -> LoadBinsModel:
        lo, hi = self.range
        if not lo < hi:
            raise ValueError("range must be [lowest, maximum] with lowest < maximum")
        if self.edges is not None:
            if len(self.edges) != self.bins - 1:
                raise ValueError(f"edges: {self.bins} bins need {self.bins - 1} upper edges")
            if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)) or not (
                    lo < self.edges[0] and self.edges[-1] < hi):
                raise ValueError("edges must increase strictly inside the range")
        return self


class PointBase(Strict):
    """The fields of a point every protocol has, in a profile or in an instrument (where it adds or
    overrides by name). A protocol's point model adds its addressing fields, all optional."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    scale: float | None = None  # finite and non-zero (a zero scale turns every reading into 0)
    offset: float | None = None
    device_unit: str | None = Field(default=None, min_length=1)
    unit: str | None = Field(default=None, min_length=1)
    totalizer: bool | None = None
    description: str | None = None
    expect: tuple[float, float] | None = None  # plausible range checked by `validate --live`
    # Rules engine (docs/rules.md): validity, expected cadence, period aggregates, missing-data policy.
    validity: ValidityModel | None = None
    cadence_s: float | None = Field(default=None, gt=0)  # expected reading cadence; default: the poll interval
    gap_after_s: float | None = Field(default=None, gt=0)  # no valid reading this long opens a gap (1.5 cadences)
    aggregate: AggregateModel | None = None
    feeds_emissions: bool | None = None  # a point that feeds an emission figure needs a direction
    direction: Literal["high", "low"] | None = None
    missing_data: MissingData | None = None  # one substitution method and its parameters (docs/rules.md §1.2)
    rollover_at: float | None = Field(default=None, gt=0)  # totalizers: the value the counter wraps at
    # Issue 10 item 2: totalizers, the meter's maximum flow in counter units per hour (its measuring range);
    # bounds the wraps across a gap. Default: the measuring range's max when its unit is "<unit>/h".
    max_flow_per_h: float | None = Field(default=None, gt=0)
    # Issue 10: operating hours from a process signal, Part 75 load bins, reporting-period closes.
    operating: OperatingSignalModel | None = None  # which hours the source operates (docs/rules.md §0.1)
    load: LoadBinsModel | None = None  # the Part 75 load range of each hour (kind: binned)
    reporting_period: Literal["month", "quarter", "year"] | None = None  # default by selector (docs/rules.md §0.2)
    report_due_days: int | None = Field(default=None, ge=0, le=366)  # Part 98: month close + this many days
    simulate: dict[str, object] | None = None
    # Derived points (docs/derived.md): computed by the gateway from other points, never read from the device.
    formula: str | None = Field(default=None, min_length=1, max_length=2000)
    inputs: dict[str, str] | None = None  # formula name -> "point" (same instrument) or "instrument.point"
    window_s: float | None = Field(default=None, gt=0)  # inputs must lie within this of each other

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


class ConnectionBase(Strict):
    """A connection model. Subclasses declare `protocol: Literal["<tag>"]` (the YAML discriminator) and
    `timeout_s: float` (with their default), and provide `endpoint: str` (instruments with equal
    endpoints share one polling driver: one TCP connection or one serial bus) and `is_loopback: bool`
    (the simulator serves only loopback endpoints), as properties or fields.
    """


class SerialLineBase(ConnectionBase):
    """A connection over one RS-485 line. Subclasses declare `port`, `baudrate`, `parity`, `stopbits` and
    `bytesize` (with their protocol's defaults); instruments on one port must agree on them."""

    @property
    def line_settings(self) -> tuple[int, str, int, int]:
        return (self.baudrate, self.parity, self.stopbits, self.bytesize)  # type: ignore[attr-defined]

    @property
    def is_loopback(self) -> bool:
        return False  # a serial line is never served by the network simulators
