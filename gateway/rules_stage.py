"""The runtime side of the rules engine: feeds the pure rules in gateway/rules/ and collects their output.

Sits between tagging and the store. Per point it carries the validity state, the gap ledger, the open
aggregation period and the hourly history the missing-data policy looks back on. Everything it
produces is a new record (gap events, period aggregates, substitutes): raw readings are stored as
read, with the quality and reason the validity rules gave them.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.instruments import InstrumentSpec, PointSpec
from gateway.model import Derived, Quality, Reading
from gateway.point_rules import PointRules
from gateway.rules import gaps
from gateway.rules.aggregates import PeriodAggregate, aggregate_period
from gateway.rules.context import GapInputs
from gateway.rules.errors import RuleInputError
from gateway.rules.hours import HourValue
from gateway.rules.substitution import substitute_gap
from gateway.rules.totalizer import totalize_periods
from gateway.rules.validity import ValidityState, check

log = logging.getLogger("gateway.rules")

_SEVERITY = {Quality.GOOD: 0, Quality.UNCERTAIN: 1, Quality.BAD: 2}
MAX_HISTORY_HOURS = 26_280  # Part 75 lookbacks never reach further back than 3 years
MAX_EMPTY_PERIODS = 24 * 31  # after a longer silence, older empty periods are left to the gap ledger


@dataclass
class _PrevRecord:
    """The newest stored substitute of an hour, enough for the next version to supersede it."""

    record_id: str
    instrument: str
    point: str
    hour: int
    version: int
    value: float
    status: str
    method_code: str


@dataclass
class _Point:
    instrument: InstrumentSpec
    spec: PointSpec
    rules: PointRules
    validity: ValidityState
    gap: gaps.GapState
    period_start: int | None = None
    samples: list[Reading] = field(default_factory=list)
    history: deque[HourValue] = field(default_factory=lambda: deque(maxlen=MAX_HISTORY_HOURS))
    latest: dict[int, _PrevRecord] = field(default_factory=dict)
    anchor: Reading | None = None  # totalizers: the last good reading before the open period


class RulesStage:
    def __init__(self, instruments: Iterable[InstrumentSpec], *, now_ms: int,
                 last_readings: dict[tuple[str, str], tuple[int, int | None]] | None = None) -> None:
        self._points: dict[tuple[str, str], _Point] = {}
        self._startup: list[Derived] = []
        last_readings = last_readings or {}
        for inst in instruments:
            if not inst.polled:
                continue
            for p in inst.points:
                if p.rules is None:
                    continue
                last = last_readings.get((inst.id, p.name))
                state, events = gaps.resume(inst.id, p.name, now_ms=now_ms, rules=p.rules.gaps,
                                            last_record_ms=last[0] if last else None,
                                            last_valid_ms=last[1] if last else None)
                self._startup.extend(self._event(e) for e in events)
                self._points[(inst.id, p.name)] = _Point(inst, p, p.rules, ValidityState(), state)

    # -- history from the store ------------------------------------------------------------------

    def restore(self, instrument: str, point: str, aggregates: Sequence[dict[str, Any]],
                substitutes: Sequence[dict[str, Any]], current: Sequence[Reading] = ()) -> None:
        """Reload a point at start-up: its period history, its latest substitutes and the readings of the
        period that was open when the gateway stopped (so a restart does not thin that period out)."""
        st = self._points.get((instrument, point))
        if st is None:
            return
        period = st.rules.period_ms
        if aggregates:
            st.period_start = int(aggregates[-1]["period_end"])
        if st.rules.totalizer is not None:
            return  # totalizers re-anchor on their next good reading
        st.samples = [r for r in current if st.period_start is None or r.ts_ms >= st.period_start]
        for body in aggregates[-MAX_HISTORY_HOURS:] if st.rules.substitution is not None else ():
            st.history.append(HourValue(int(body["period_start"]) // period,
                                        body["mean"] if body.get("valid") else None))
        for body in substitutes:
            trace = body.get("trace", {})
            st.latest[int(body["hour"])] = _PrevRecord(body["record_id"], instrument, point, int(body["hour"]),
                                                       int(body["version"]), float(body["value"]), body["status"],
                                                       str(trace.get("method_code", "")))

    def points(self) -> list[tuple[str, str]]:
        return list(self._points)

    def wants_history(self, instrument: str, point: str) -> bool:
        st = self._points.get((instrument, point))
        return st is not None and st.rules.substitution is not None

    # -- per batch --------------------------------------------------------------------------------

    def process(self, readings: Sequence[Reading]) -> tuple[list[Reading], list[Derived]]:
        """Judge each reading, update gaps and periods; returns the readings to store and new records."""
        out: list[Reading] = []
        derived: list[Derived] = self._startup
        self._startup = []
        for r in readings:
            st = self._points.get((r.instrument, r.point))
            if st is None:
                out.append(r)
                continue
            res = check(r.value, r.ts_ms, st.validity, st.rules.validity, calibration=r.calibration)
            st.validity = res.state
            if _SEVERITY[res.quality] > _SEVERITY[r.quality]:
                r = r._replace(quality=res.quality, reason=res.reason)
            elif res.reason and not r.reason and res.quality is r.quality:
                r = r._replace(reason=res.reason)
            out.append(r)
            st.gap, events = gaps.feed_reading(st.gap, r, st.rules.gaps)
            derived.extend(self._event(e) for e in events)
            derived.extend(self._add_sample(st, r))
        return out, derived

    def tick(self, now_ms: int) -> list[Derived]:
        """Time passing without readings: open gaps, close periods that ended."""
        derived: list[Derived] = []
        for st in self._points.values():
            st.gap, events = gaps.tick(st.gap, now_ms, st.rules.gaps)
            derived.extend(self._event(e) for e in events)
            if st.period_start is not None and st.rules.totalizer is None:
                # A period closes once a reading could no longer belong to it (one cadence of slack).
                while st.period_start + st.rules.period_ms + st.rules.cadence_ms <= now_ms:
                    derived.extend(self._close_period(st))
        return derived

    # -- periods ----------------------------------------------------------------------------------

    def _add_sample(self, st: _Point, r: Reading) -> list[Derived]:
        period = st.rules.period_ms
        start = r.ts_ms // period * period
        if st.period_start is None:
            st.period_start = start
        if st.rules.totalizer is not None:
            return self._add_total(st, r)
        out: list[Derived] = []
        if start < st.period_start:
            return out  # late reading for a period already closed: stored, not re-aggregated
        skipped = 0
        while start > st.period_start:
            out.extend(self._close_period(st))
            skipped += 1
            if skipped > MAX_EMPTY_PERIODS:
                st.period_start = start
                st.samples = []
        st.samples.append(r)
        return out

    def _close_period(self, st: _Point) -> list[Derived]:
        assert st.period_start is not None
        start = st.period_start
        agg = aggregate_period(st.samples, start, period_ms=st.rules.period_ms, cadence_ms=st.rules.cadence_ms,
                               rule=st.rules.aggregate)
        st.samples = []
        st.period_start = start + st.rules.period_ms
        out = [self._aggregate(st, agg)]
        if st.rules.substitution is not None:
            out.extend(self._substitute(st, HourValue(start // st.rules.period_ms, agg.mean if agg.valid else None)))
        return out

    def _add_total(self, st: _Point, r: Reading) -> list[Derived]:
        """Totalizers: a period is settled by the first good reading after it, so a counter difference
        across a gap recovers the consumption exactly instead of leaving a hole."""
        good = r.quality is Quality.GOOD and r.value is not None
        if not good:
            return []
        assert st.period_start is not None
        assert st.rules.totalizer is not None
        period = st.rules.period_ms
        if st.anchor is None:
            st.anchor = r
            st.samples = []
            st.period_start = r.ts_ms // period * period
            return []
        st.samples.append(r)
        if r.ts_ms < st.period_start + period:
            return []
        seq = [st.anchor, *st.samples]
        current = r.ts_ms // period * period
        settled = totalize_periods(seq, st.rules.totalizer, period_ms=period)
        out = [self._total(st, p) for p in settled if st.period_start <= p.start_ms < current][-MAX_EMPTY_PERIODS:]
        # The increment from the previous reading to r straddles the boundary: keep that reading as the
        # anchor so the open period gets its share next time.
        st.anchor = seq[-2]
        st.samples = [r]
        st.period_start = current
        return out

    def _aggregate(self, st: _Point, agg: PeriodAggregate) -> Derived:
        body = {"point": st.spec.name, "unit": st.spec.unit, "period_start": agg.start_ms, "period_end": agg.end_ms,
                "count": agg.count, "valid_count": agg.valid_count, "possible": agg.possible,
                "availability": agg.availability, "availability_exact": agg.availability_exact,
                "valid": agg.valid, "mean": agg.mean, "min": agg.minimum, "max": agg.maximum, "rule": agg.rule,
                "totalizer": False}
        return Derived("aggregates", st.instrument.id, st.spec.name, agg.start_ms, body)

    def _total(self, st: _Point, p: Any) -> Derived:
        body = {"point": st.spec.name, "unit": st.spec.unit, "period_start": p.start_ms, "period_end": p.end_ms,
                "totalizer": True, "consumption": p.consumption, "consumption_exact": p.consumption_exact,
                "complete": p.complete, "recovered": p.recovered, "boundary_interpolated": p.boundary_interpolated,
                "rollovers": p.rollovers, "resets": p.resets, "readings": p.readings,
                "valid": p.complete and not p.resets}
        return Derived("aggregates", st.instrument.id, st.spec.name, p.start_ms, body)

    # -- substitution -----------------------------------------------------------------------------

    def _substitute(self, st: _Point, hv: HourValue) -> list[Derived]:
        """Provisional substitutes while a gap is open; the final ones, superseding them, when it closes."""
        hist = st.history
        if hist and hv.hour <= hist[-1].hour:
            return []
        if hist:
            # Hours with no record at all (the gateway was down) are missing operating hours, not absent.
            for h in range(max(hist[-1].hour + 1, hv.hour - MAX_EMPTY_PERIODS), hv.hour):
                hist.append(HourValue(h, None))
        hist.append(hv)
        if hv.value is None:
            gap_hours = _trailing_gap(hist)
            gap_open = True
        elif len(hist) >= 2 and hist[-2].value is None:
            gap_hours = _trailing_gap(list(hist)[:-1])
            gap_open = False
        else:
            return []
        policy = st.rules.substitution
        assert policy is not None
        try:
            result = substitute_gap(list(hist), gap_hours, policy, point=st.spec.name, instrument=st.instrument.id,
                                    inputs=GapInputs(gap_open=gap_open), previous=st.latest.values())  # type: ignore[arg-type]
        except RuleInputError as err:
            log.error("%s.%s: no substitute for hours %d..%d: %s", st.instrument.id, st.spec.name, gap_hours[0],
                      gap_hours[-1], err)
            return []
        out: list[Derived] = []
        period = st.rules.period_ms
        for rec in result.records:
            before = st.latest.get(rec.hour)
            method = rec.detail.to_json().get("method_code", "")
            if (before is not None and before.value == rec.value and before.status == rec.status
                    and before.method_code == method):
                continue  # nothing changed for this hour: no new version
            body = {**rec.to_json(), "unit": st.spec.unit, "hour_start": rec.hour * period,
                    "hour_end": (rec.hour + 1) * period}
            out.append(Derived("substitutes", st.instrument.id, st.spec.name, rec.hour * period, body))
            st.latest[rec.hour] = _PrevRecord(rec.record_id, rec.instrument, rec.point, rec.hour, rec.version,
                                              rec.value, rec.status, str(method))
        if not gap_open:
            for h in gap_hours:  # final: later gaps never touch these hours again
                st.latest.pop(h, None)
        return out

    @staticmethod
    def _event(e: gaps.GapEvent) -> Derived:
        body = {"type": f"gap_{e.kind}", **e.to_json()}
        return Derived("events", e.instrument, e.point, e.end_ms if e.end_ms is not None else e.start_ms, body)


def _trailing_gap(hist: Sequence[HourValue]) -> list[int]:
    hours: list[int] = []
    for hv in reversed(hist):
        if hv.value is not None:
            break
        hours.append(hv.hour)
    return hours[::-1]
