"""Hourly carbon records: CO2 per emission source and hour, by every configured method, with a trace.

Each method of a source (carbon.yaml) is a formula over the *hourly* values of points: an hour's mean for
a rate (CO2 %, flue-gas flow), the hour's consumption for a totalizer (fuel, energy), and, when the rules
engine found the hour invalid, its substitute (provisional or final). The result is CO2 for the hour in
kg (a rate formula, kg/h, is multiplied by the hour). One record per source and hour holds every method,
and the measurement-minus-calculation difference when both kinds exist.

Records are versions, never edits: when an input of an hour already reported changes (a final substitute
replacing a provisional one, a re-issue at quarter close, a correction's new aggregate), the hour is
recomputed and a new version supersedes the old one. The trace names the formula and its version,
every input with its value, unit, basis and the record it comes from, and every constant with its value,
unit, source and validity, so that an auditor can recompute the figure (`carbon-gateway explain`).

Pure: fed the rules engine's aggregate and substitute records, it returns new records; it keeps
O(sources x open hours) state, bounded by KEEP_MS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.derived.config import DerivedPlan, Method
from gateway.derived.formula import Sample
from gateway.instruments import InstrumentSpec
from gateway.model import Derived
from gateway.units import conversion

log = logging.getLogger("gateway.derived")

KIND = "carbon"
SCHEMA = "carbon-gateway/carbon/1"
HOUR_MS = 3_600_000
SETTLE_PERIODS = 2  # a source hour is reported, complete or not, this many periods after it ended
KEEP_MS = 95 * 86_400_000  # hours kept for recomputation: a quarter's re-issue reaches back this far


@dataclass(frozen=True, slots=True)
class HourInput:
    """One point's value for one hour, as the rules engine gave it."""

    value: float | None
    unit: str
    basis: str  # mean | consumption | substitute | invalid
    quality: str  # good | substituted | bad
    ref: dict[str, Any]  # where it comes from: the aggregate or substitute record
    provisional: bool = False


@dataclass
class _Hour:
    inputs: dict[tuple[str, str], HourInput] = field(default_factory=dict)
    version: int = 0
    record_id: str | None = None
    signature: str | None = None


def hour_input(rec: Derived) -> HourInput | None:
    """The hourly value an aggregate or substitute record gives its point (None: not an hourly value)."""
    b = rec.body
    if rec.kind == "substitutes":
        value = b.get("value")
        return HourInput(None if value is None else float(value), str(b.get("unit", "")), "substitute",
                         "substituted", {"kind": "substitutes", "record_id": b.get("record_id"),
                                         "version": b.get("version"), "status": b.get("status"),
                                         "method_code": (b.get("trace") or {}).get("method_code")},
                         provisional=b.get("status") == "provisional")
    if rec.kind != "aggregates":
        return None
    ref = {"kind": "aggregates", "instrument": rec.instrument, "point": rec.point,
           "period_start": b.get("period_start")}
    if b.get("totalizer"):
        if b.get("valid") and b.get("consumption") is not None:
            return HourInput(float(b["consumption"]), str(b.get("unit", "")), "consumption", "good",
                             {**ref, "recovered": b.get("recovered")})
        return HourInput(None, str(b.get("unit", "")), "invalid", "bad", ref)
    if b.get("valid") and b.get("mean") is not None:
        if b.get("corrected"):  # recomputed with manual corrections (gateway.derived.corrected)
            return HourInput(float(b["mean"]), str(b.get("unit", "")), "corrected_mean", "good",
                             {**ref, "valid_count": b.get("valid_count"), "corrections": b.get("corrections")})
        return HourInput(float(b["mean"]), str(b.get("unit", "")), "mean", "good",
                         {**ref, "valid_count": b.get("valid_count"), "possible": b.get("possible")})
    return HourInput(None, str(b.get("unit", "")), "invalid", "bad", ref)


def _formula_version(method: Method) -> str:
    return hashlib.sha256(f"{method.formula.text}|{method.formula.unit}".encode()).hexdigest()[:12]


class CarbonStage:
    def __init__(self, plan: DerivedPlan, *, period_ms: int = HOUR_MS) -> None:
        self.plan = plan
        self.period_ms = period_ms
        self.methods: dict[str, list[Method]] = {}
        self.watch: set[tuple[str, str]] = set()
        for m in plan.methods:
            self.methods.setdefault(m.source, []).append(m)
            self.watch.update((i, p) for _n, i, p in m.inputs)
        self.hours: dict[tuple[str, int], _Hour] = {}
        self.issued = 0
        self.incomplete: set[tuple[str, int]] = set()  # hours issued incomplete and not completed since

    def __bool__(self) -> bool:
        return bool(self.plan.methods)

    def feed(self, records: Iterable[Derived], now_ms: int) -> list[Derived]:
        """Carbon records (new hours, new versions) for these rules-engine records, then any hour due."""
        if not self.methods:
            return []
        touched: set[tuple[str, int]] = set()
        for rec in records:
            key = (rec.instrument, rec.point)
            if key not in self.watch:
                continue
            inp = hour_input(rec)
            if inp is None:
                continue
            start = int(rec.body.get("hour_start", rec.body.get("period_start", rec.ts_ms)))  # type: ignore[arg-type]
            start -= start % self.period_ms
            if inp.basis == "invalid":
                # an invalid hour waits for its substitute; a substitute already there is not overwritten
                for source in self._sources_of(key):
                    hour = self.hours.setdefault((source, start), _Hour())
                    if key not in hour.inputs:
                        hour.inputs[key] = inp
                continue
            for source in self._sources_of(key):
                hour = self.hours.setdefault((source, start), _Hour())
                hour.inputs[key] = inp
                touched.add((source, start))
        out = [r for key in sorted(touched) if (r := self._maybe_issue(key, now_ms)) is not None]
        out += self._settle(now_ms)
        return out

    def restore(self, inputs: Iterable[Derived], issued: Iterable[dict[str, Any]], now_ms: int) -> None:
        """Rebuild the open hours after a restart from the stored aggregates and substitutes (oldest first)
        and the carbon records already issued (so an unchanged hour gets no new version)."""
        for rec in inputs:
            key = (rec.instrument, rec.point)
            inp = hour_input(rec) if key in self.watch else None
            if inp is None:
                continue
            start = int(rec.body.get("hour_start", rec.body.get("period_start", rec.ts_ms)))  # type: ignore[arg-type]
            start -= start % self.period_ms
            for source in self._sources_of(key):
                hour = self.hours.setdefault((source, start), _Hour())
                if inp.basis != "invalid" or key not in hour.inputs:
                    hour.inputs[key] = inp
        for body in issued:
            key = (str(body["source"]), int(body["hour_start"]))
            hour = self.hours.setdefault(key, _Hour())
            if int(body["version"]) >= hour.version:
                hour.version = int(body["version"])
                hour.record_id = str(body["record_id"])
                hour.signature = json.dumps(body["methods"], sort_keys=True, default=str)
        for key in [k for k in self.hours if k[1] < now_ms - KEEP_MS]:
            del self.hours[key]

    def _sources_of(self, key: tuple[str, str]) -> list[str]:
        return [s for s, ms in self.methods.items() if any((i, p) == key for m in ms for _n, i, p in m.inputs)]

    def _settle(self, now_ms: int) -> list[Derived]:
        """Hours long over that were never issued (an input never came): issued with what there is."""
        out: list[Derived] = []
        due = now_ms - SETTLE_PERIODS * self.period_ms
        for key in sorted(k for k, h in self.hours.items() if h.version == 0 and k[1] + self.period_ms <= due):
            rec = self._maybe_issue(key, now_ms, force=True)
            if rec is not None:
                out.append(rec)
        for key in [k for k in self.hours if k[1] < now_ms - KEEP_MS]:
            del self.hours[key]
        return out

    def _maybe_issue(self, key: tuple[str, int], now_ms: int, *, force: bool = False) -> Derived | None:
        source, start = key
        hour = self.hours[key]
        methods = {m.name: self._evaluate(m, hour, start) for m in self.methods[source]}
        complete = all(r["co2_kg"] is not None for r in methods.values())
        if not complete and not force and hour.version == 0:
            return None  # wait for the other inputs (or the settle time) before the first version
        signature = json.dumps(methods, sort_keys=True, default=str)
        if signature == hour.signature:
            return None  # nothing changed: no new version
        hour.version += 1
        hour.signature = signature
        body = self._body(source, start, methods, hour)
        hour.record_id = body["record_id"]
        self.issued += 1
        if body["quality"] == "incomplete":
            if key not in self.incomplete:
                missing = "; ".join(f"{n}: {', '.join(r['missing'])}" for n, r in methods.items() if r.get("missing"))
                log.warning("carbon record %s hour %d incomplete (version %d): %s", source, start, hour.version,
                            missing)
            self.incomplete.add(key)
        elif key in self.incomplete:
            self.incomplete.discard(key)
            log.info("carbon record %s hour %d complete (version %d)", source, start, hour.version)
        return Derived(KIND, source, "", start, body)

    def _body(self, source: str, start: int, methods: dict[str, dict[str, Any]], hour: _Hour) -> dict[str, Any]:
        kinds = {m.name: m.kind for m in self.methods[source]}
        provisional = any(r.get("provisional") for r in methods.values())
        substituted = any(r.get("quality") == "substituted" for r in methods.values())
        incomplete = any(r["co2_kg"] is None for r in methods.values())
        body: dict[str, Any] = {
            "source": source, "hour_start": start, "hour_end": start + self.period_ms,
            "version": hour.version, "supersedes": hour.record_id,
            "status": "provisional" if provisional or incomplete else "final",
            "quality": "incomplete" if incomplete else ("substituted" if substituted else "measured"),
            "methods": methods,
        }
        meas = next((r["co2_kg"] for n, r in methods.items() if kinds[n] == "measurement"), None)
        calc = next((r["co2_kg"] for n, r in methods.items() if kinds[n] == "calculation"), None)
        if meas is not None and calc is not None:
            body["difference"] = {"measurement_minus_calculation_kg": meas - calc,
                                  "relative": (meas - calc) / calc if calc else None}
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:32]
        body["record_id"] = f"co2-{digest}"
        return body

    def _evaluate(self, m: Method, hour: _Hour, start: int) -> dict[str, Any]:
        samples: dict[str, Sample] = {}
        inputs: list[dict[str, Any]] = []
        missing: list[str] = []
        for name, inst, point in m.inputs:
            inp = hour.inputs.get((inst, point))
            if inp is None or inp.value is None:
                missing.append(f"{inst}.{point}" + (" (invalid hour, no substitute yet)" if inp else ""))
                continue
            samples[name] = Sample(inp.value, inp.quality)
            inputs.append({"name": name, "instrument": inst, "point": point, "value": inp.value, "unit": inp.unit,
                           "basis": inp.basis, "quality": inp.quality, "record": inp.ref})
        constants: list[dict[str, Any]] = []
        for name in m.constants:
            c = self.plan.constant(name)
            hit = c.at(start)
            if hit is None:
                missing.append(f"constant {name} (no value valid at this hour)")
                continue
            samples[name] = Sample(hit[0])
            constants.append({"name": name, "value": hit[0], "unit": c.unit, "source": hit[1]})
        out: dict[str, Any] = {"kind": m.kind, "formula": m.formula.text, "formula_unit": m.formula.unit,
                               "formula_version": _formula_version(m), "inputs": inputs, "constants": constants}
        if missing:
            return {**out, "co2_kg": None, "missing": missing}
        value = m.formula.evaluate(samples)
        if value is None or not math.isfinite(value):
            return {**out, "co2_kg": None, "missing": ["the formula has no value for these inputs"]}
        target = "kg/h" if m.per_hour else "kg"
        kg = conversion(m.formula.unit, target).apply(value)
        if m.per_hour:
            kg *= self.period_ms / HOUR_MS
        substituted = any(i["quality"] == "substituted" for i in inputs)
        provisional = any(hour.inputs[(i["instrument"], i["point"])].provisional for i in inputs)
        return {**out, "co2_kg": kg, "quality": "substituted" if substituted else "measured",
                "provisional": provisional}


def restore_carbon(plan: DerivedPlan, store: Any, now_ms: int, specs: Sequence[InstrumentSpec] = ()) -> CarbonStage:
    """The carbon stage of a (re)started writer, rebuilt from the store (a `gateway.store.Store`): the hourly
    aggregates and substitutes, then the manual corrections of those hours, then the records issued."""
    from gateway.derived.corrected import corrected_hours

    stage = CarbonStage(plan)
    if not stage:
        return stage
    since = now_ms - KEEP_MS
    inputs: list[Derived] = []
    for inst, point in sorted(stage.watch):
        for kind in ("aggregates", "substitutes"):
            inputs += [Derived(kind, inst, point, int(b.get("period_start", b.get("hour_start", 0))), b)
                       for b in store.records(kind, inst, point, since_ms=since)]
    inputs.sort(key=lambda r: (r.ts_ms, r.kind == "substitutes", int(r.body.get("version", 0) or 0)))
    corrections = [Derived("corrections", inst, point, int(b["ts"]), b) for inst, point in sorted(stage.watch)
                   for b in store.records("corrections", inst, point, since_ms=since)]
    if corrections and specs:
        inputs += corrected_hours(corrections, specs, store, stage.watch)
    issued = [b for source in stage.methods for b in store.records(KIND, source, "", since_ms=since)]
    stage.restore(inputs, issued, now_ms)
    return stage
