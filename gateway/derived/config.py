"""Load-time side of derived points and carbon records: `carbon.yaml` and the cross-instrument unit check.

`carbon.yaml` (optional, beside gateway.yaml) holds the constants formulas may use (each with its unit,
value, source and validity period) and the emission sources whose hourly CO2 the gateway computes
(docs/derived.md). Derived points themselves are points of an instrument with a `formula:`; their units
can only be checked once every instrument is loaded, which `plan_derived` does, naming the point's
file:line in every error.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, field_validator

from gateway.derived.formula import Compiled, FormulaError, Operand, compile_formula
from gateway.errors import ConfigError
from gateway.instruments import InstrumentSpec
from gateway.schema_base import Strict
from gateway.units import UnitError, check_unit
from gateway.yamlload import line_of

CARBON_FILE = "carbon.yaml"
_NAME = r"^[a-z][a-z0-9_]{0,63}$"


class ConstantValue(Strict):
    value: float
    valid_from: date | None = None  # inclusive, a calendar date in the gateway's time zone
    valid_to: date | None = None  # inclusive
    source: str = Field(min_length=1)  # where the value comes from: lab report, published factor, default


class ConstantModel(Strict):
    unit: str = Field(min_length=1)
    description: str | None = None
    values: list[ConstantValue] = Field(min_length=1)


class MethodModel(Strict):
    name: str = Field(pattern=_NAME)  # e.g. cems, fuel
    kind: Literal["measurement", "calculation"]  # CEMS (C x Q) or activity data x emission factor
    inputs: dict[str, str] = Field(min_length=1)  # formula name -> "instrument.point" (its hourly value)
    formula: str = Field(min_length=1, max_length=2000)
    unit: str = "kg/h"  # the formula's result: a rate (x the hour) or a mass for the hour
    description: str | None = None


class SourceModel(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    name: str | None = None
    methods: list[MethodModel] = Field(min_length=1)

    @field_validator("methods")
    @classmethod
    def _unique(cls, v: list[MethodModel]) -> list[MethodModel]:
        names = [m.name for m in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate method name {dup[0]!r}")
        return v


class CarbonFile(Strict):
    constants: dict[str, ConstantModel] = Field(default_factory=dict)
    sources: list[SourceModel] = Field(default_factory=list)

    @field_validator("constants")
    @classmethod
    def _names(cls, v: dict[str, ConstantModel]) -> dict[str, ConstantModel]:
        for name in v:
            if not re.match(_NAME, name):
                raise ValueError(f"constant name {name!r} must be lower case letters, digits and _")
        return v


@dataclass(frozen=True, slots=True)
class Constant:
    """A constant with its values over time: value_at(ts) picks the one valid then (or None)."""

    name: str
    unit: str
    values: tuple[tuple[int | None, int | None, float, str], ...]  # (from_ms, to_ms exclusive, value, source)

    def at(self, ts_ms: int) -> tuple[float, str] | None:
        for lo, hi, value, source in self.values:
            if (lo is None or ts_ms >= lo) and (hi is None or ts_ms < hi):
                return value, source
        return None


@dataclass(frozen=True, slots=True)
class DerivedPoint:
    """A derived point ready to run: where its inputs come from and its compiled formula."""

    instrument: str
    point: str
    unit: str
    inputs: tuple[tuple[str, str, str], ...]  # (formula name, instrument, point)
    constants: tuple[str, ...]
    window_ms: int
    formula: Compiled


@dataclass(frozen=True, slots=True)
class Method:
    source: str
    name: str
    kind: str  # measurement | calculation
    inputs: tuple[tuple[str, str, str], ...]
    constants: tuple[str, ...]
    formula: Compiled
    per_hour: bool  # the formula gives a rate (kg/h): x the hour; else a mass for the hour


@dataclass(frozen=True, slots=True)
class DerivedPlan:
    points: tuple[DerivedPoint, ...] = ()
    constants: dict[str, Constant] | None = None
    methods: tuple[Method, ...] = ()
    files: tuple[Path, ...] = ()  # carbon.yaml when present (part of the configuration version)

    def constant(self, name: str) -> Constant:
        assert self.constants is not None
        return self.constants[name]


EMPTY = DerivedPlan(constants={})


def _day_start_ms(d: date, tz: ZoneInfo) -> int:
    return int(datetime.combine(d, time(0), tzinfo=tz).astimezone(UTC).timestamp() * 1000)


def _constants(model: CarbonFile, tree: Any, file: Path, tz: ZoneInfo,
               errors: list[ConfigError]) -> dict[str, Constant]:
    out: dict[str, Constant] = {}
    for name, c in model.constants.items():
        where = line_of(tree, ("constants", name))
        try:
            check_unit(c.unit)
        except UnitError as err:
            line = line_of(tree, ("constants", name, "unit")) or where
            errors.append(ConfigError(str(err), file=str(file), line=line, field=f"constants.{name}.unit"))
            continue
        spans = []
        for i, v in enumerate(c.values):
            lo = _day_start_ms(v.valid_from, tz) if v.valid_from else None
            hi = _day_start_ms(v.valid_to, tz) + 86_400_000 if v.valid_to else None
            if lo is not None and hi is not None and hi <= lo:
                errors.append(ConfigError(f"valid_to {v.valid_to} is before valid_from {v.valid_from}", file=str(file),
                                          line=line_of(tree, ("constants", name, "values", i)) or where,
                                          field=f"constants.{name}.values[{i}]"))
            spans.append((lo, hi, v.value, v.source))
        ordered = sorted(spans, key=lambda s: -1 if s[0] is None else s[0])
        for (_a, hi, _v, _s), (lo, _b, _w, _t) in itertools.pairwise(ordered):
            if hi is None or lo is None or lo < hi:
                errors.append(ConfigError(f"the validity periods of constant {name!r} overlap: at any time one "
                                          "value must apply", file=str(file), line=where, field=f"constants.{name}"))
                break
        out[name] = Constant(name, c.unit, tuple(ordered))
    return out


def load_carbon_file(directory: Path, tz: ZoneInfo,
                     errors: list[ConfigError]) -> tuple[CarbonFile | None, Any, Path | None]:
    from gateway.registry import _validate  # the registry's pydantic-to-file:line reporting

    path = directory / CARBON_FILE
    if not path.exists():
        return None, None, None
    from gateway.yamlload import load_yaml

    try:
        tree = load_yaml(path)
    except ConfigError as err:
        errors.append(err)
        return None, None, path
    if tree is None:
        return CarbonFile(), None, path
    return _validate(CarbonFile, tree, path, errors), tree, path


def plan_derived(directory: Path, specs: Sequence[InstrumentSpec], tz: ZoneInfo,
                 errors: list[ConfigError]) -> DerivedPlan:
    """Check every derived point's and every method's formula against its inputs' units; build the plan."""
    model, tree, path = load_carbon_file(directory, tz, errors)
    constants = _constants(model, tree, path, tz, errors) if model is not None and path is not None else {}
    units = {(s.id, p.name): p.unit for s in specs for p in s.points}
    totals = {(s.id, p.name) for s in specs for p in s.points if p.totalizer}
    points: list[DerivedPoint] = []
    inputs_where: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}  # where each input is written
    for spec in specs:
        for p in spec.points:
            if p.derived is None:
                continue
            where = dict(file=p.source_file, line=p.derived.formula_line or p.source_line,
                         field=f"{spec.id}.{p.name}.formula")
            lines = p.derived.input_lines or (None,) * len(p.derived.inputs)
            at = inputs_where[(spec.id, p.name)] = {
                name: dict(file=p.source_file, line=line or where["line"], field=f"{spec.id}.{p.name}.inputs.{name}")
                for (name, _i, _q), line in zip(p.derived.inputs, lines, strict=True)}
            compiled = _compile(p.derived.formula, p.derived.inputs, p.unit, units, constants, where, errors,
                                input_where=list(at.values()), self_ref=(spec.id, p.name))
            if compiled is not None:
                used = tuple(n for n in compiled.inputs if n in constants and n not in {i[0] for i in p.derived.inputs})
                points.append(DerivedPoint(spec.id, p.name, p.unit, p.derived.inputs, used, p.derived.window_ms,
                                           compiled))
    _check_cycles(points, errors, inputs_where)
    methods: list[Method] = []
    if model is not None and path is not None:
        for i, src in enumerate(model.sources):
            for j, m in enumerate(src.methods):
                loc = ("sources", i, "methods", j)
                where = dict(file=str(path), line=line_of(tree, (*loc, "formula")) or line_of(tree, loc),
                             field=f"sources[{i}].methods[{j}].formula")
                refs = []
                input_where = []
                for name, ref in m.inputs.items():
                    inst, _, point = ref.rpartition(".")
                    refs.append((name, inst, point))
                    input_where.append(dict(file=str(path), line=line_of(tree, (*loc, "inputs", name)),
                                            field=f"sources[{i}].methods[{j}].inputs.{name}"))
                # An hourly input is the hour's mean (a rate) or, for a totalizer, the hour's consumption.
                compiled = _compile(m.formula, tuple(refs), m.unit, units, constants, where, errors,
                                    input_where=input_where, hourly_totals=totals)
                if compiled is None:
                    continue
                try:
                    per_hour = _is_rate(m.unit)
                except UnitError as err:
                    errors.append(ConfigError(str(err), **where))  # type: ignore[arg-type]
                    continue
                used = tuple(n for n in compiled.inputs if n in constants and n not in m.inputs)
                methods.append(Method(src.id, m.name, m.kind, tuple(refs), used, compiled, per_hour))
    return DerivedPlan(tuple(points), constants, tuple(methods), (path,) if path is not None else ())


def _is_rate(unit: str) -> bool:
    from gateway.units import unit_of

    u = unit_of(unit)
    ureg_mass = unit_of("kg").dimensionality
    if u.dimensionality == ureg_mass:
        return False
    if u.dimensionality == (unit_of("kg/h")).dimensionality:
        return True
    raise UnitError(f"a method gives CO2 as a mass (kg, t) or a mass rate (kg/h, t/h), not '{unit}'")


def _compile(formula: str, inputs: tuple[tuple[str, str, str], ...], unit: str,
             units: dict[tuple[str, str], str], constants: dict[str, Constant], where: dict[str, Any],
             errors: list[ConfigError], *, input_where: Sequence[dict[str, Any]],
             self_ref: tuple[str, str] | None = None,
             hourly_totals: set[tuple[str, str]] | None = None) -> Compiled | None:
    """`where` locates the formula, `input_where` each input (same order as `inputs`): a mistake names the
    line it is on."""
    operands: list[Operand] = []
    bad = False
    for (name, inst, point), at in zip(inputs, input_where, strict=True):
        if (inst, point) == self_ref:
            errors.append(ConfigError(f"input {name!r} is the derived point itself", **at))
            bad = True
            continue
        u = units.get((inst, point))
        if u is None:
            errors.append(ConfigError(f"input {name!r}: unknown point '{inst}.{point}'", **at))
            bad = True
            continue
        if name in constants:
            errors.append(ConfigError(f"input {name!r} has the name of a constant", **at))
            bad = True
            continue
        if hourly_totals is not None and (inst, point) in hourly_totals:
            # the hour's consumption of a counter in kWh is kWh (an amount): same unit, used as an amount
            pass
        operands.append(Operand(name, u))
    if bad:
        return None
    # Constants are inputs too at run time: the value valid at the time of the evaluation is supplied.
    operands.extend(Operand(name, c.unit) for name, c in constants.items())
    try:
        return compile_formula(formula, operands, unit)
    except FormulaError as err:
        errors.append(ConfigError(str(err), **where))
        return None


def _check_cycles(points: list[DerivedPoint], errors: list[ConfigError],
                  inputs_where: dict[tuple[str, str], dict[str, dict[str, Any]]]) -> None:
    """A derived point may use another derived point, never itself through a chain. A cycle is reported on
    the line of the input that leads from its first point to the next one."""
    graph = {(p.instrument, p.point): [(i, q) for _n, i, q in p.inputs] for p in points}
    names = {(p.instrument, p.point): {(i, q): n for n, i, q in reversed(p.inputs)} for p in points}
    state: dict[tuple[str, str], int] = {}

    def visit(node: tuple[str, str], path: list[tuple[str, str]]) -> bool:
        if state.get(node) == 1:
            ring = [*path[path.index(node):], node]
            cycle = " -> ".join(f"{i}.{q}" for i, q in ring)
            name = names[node][ring[1]]
            errors.append(ConfigError(f"derived points form a cycle: {cycle}", **inputs_where[node][name]))
            return True
        if state.get(node) == 2 or node not in graph:
            return False
        state[node] = 1
        for nxt in graph[node]:
            if visit(nxt, [*path, node]):
                return True
        state[node] = 2
        return False

    for node in graph:
        if visit(node, []):
            break
