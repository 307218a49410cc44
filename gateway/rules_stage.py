"""The runtime side of the rules engine: feeds the pure rules in gateway/rules/ and collects their output.

Sits between tagging and the store. Per point it carries the validity state, the gap ledger, the open
aggregation period and the hourly history the missing-data policy looks back on. Everything it
produces is a new record (gap events, period aggregates, substitutes): raw readings are stored as
read, with the quality and reason the validity rules gave them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import deque
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.instruments import InstrumentSpec, PointSpec
from gateway.model import Derived, Quality, Reading
from gateway.periods import Period, closes_between, period_of
from gateway.point_rules import PointRules
from gateway.rules import gaps
from gateway.rules.aggregates import PeriodAggregate, PeriodSummary, summarize
from gateway.rules.context import Estimate, GapInputs
from gateway.rules.errors import RuleInputError
from gateway.rules.hours import HourValue, find_gaps
from gateway.rules.operating import HourSignal, OperatingCondition, gap_hour_bin, hour_load_bin, operating
from gateway.rules.quarter_close import quarter_offset, reissue_at_quarter_close
from gateway.rules.quarters import quarter_of
from gateway.rules.substitution import substitute_gap
from gateway.rules.totalizer import RunningTotal
from gateway.rules.validity import CheckResult, ValidityState, check, passes
from gateway.store import Store

log = logging.getLogger("gateway.rules")

_SEVERITY = {Quality.GOOD: 0, Quality.UNCERTAIN: 1, Quality.BAD: 2}
MAX_HISTORY_HOURS = 26_280  # Part 75 lookbacks never reach further back than 3 years
MAX_EMPTY_PERIODS = 24 * 31  # after a longer silence, older empty periods are left to the gap ledger
CHECKPOINT_VERSION = 1


@dataclass(frozen=True, slots=True)
class _Step:
    """A wall-clock step not yet applied to a point: applied at its first reading taken after the step."""

    delta_ms: int
    now_ms: int  # when it was detected, in the new timeline
    boundary_ms: int  # readings on this side of the midpoint are from the new timeline

    def is_new_side(self, ts_ms: int) -> bool:
        return ts_ms >= self.boundary_ms if self.delta_ms > 0 else ts_ms <= self.boundary_ms


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
    routine: str = ""  # compared at the HJ 75 quarter close (issue 10 item 8)


@dataclass
class _Point:
    instrument: InstrumentSpec
    spec: PointSpec
    rules: PointRules
    validity: ValidityState
    gap: gaps.GapState
    period_start: int | None = None
    summary: PeriodSummary | None = None  # the open period's running summary (never its readings)
    total: RunningTotal | None = None  # totalizers: the last good reading and the open period's consumption
    history: deque[HourValue] = field(default_factory=lambda: deque(maxlen=MAX_HISTORY_HOURS))
    latest: dict[int, _PrevRecord] = field(default_factory=dict)
    closed_until: int | None = None  # restart: periods starting before this are stored already
    step: _Step | None = None  # a clock step not yet applied to this point
    replay_until: int | None = None  # after a backward step: readings up to here repeat an aggregated interval
    fill_from_hour: int | None = None  # after a forward step: earlier hours were skipped by the clock
    allowed_ms: int = 0  # rules.gaps.allowed_ms (a computed property there), read at every tick walk
    # _due() as of its last change (process, tick): the walk reads it instead of computing it per point.
    # Never later than the true due time (earlier only costs a look); _FORCE: not known.
    due: int = -(1 << 62)
    closing: tuple[int, PeriodSummary | None] | None = None  # a closed period whose records are not made yet
    seen_hour: int | None = None  # the last hour closed for substitution, operating or not (issue 10 item 6)
    frozen_before: int | None = None  # hours before this were finalised by a period close: never re-issued
    estimates: dict[int, Estimate] = field(default_factory=dict)  # best_available_estimate: hour -> estimate
    signal_keys: tuple[_SignalKey, ...] = ()  # this point is an operating signal / load point of these users

    def __post_init__(self) -> None:
        self.allowed_ms = self.rules.gaps.allowed_ms


class RulesStage:
    def __init__(self, instruments: Iterable[InstrumentSpec], *, now_ms: int,
                 last_readings: dict[tuple[str, str], tuple[int, int | None]] | None = None) -> None:
        self._points: dict[tuple[str, str], _Point] = {}
        self._startup: list[Derived] = []
        self._cycle: list[tuple[str, str]] = []  # checkpoint order (round-robin)
        self._cursor = 0
        self._overloaded = False
        # No point needs tick() before this time (a lower bound; _FORCE: scan every point at the next tick).
        # tick() runs at every commit: scanning 10,000 points 20 times a second cost ~18 us per reading.
        self._tick_due = _FORCE
        self._overload_gaps: dict[str, int] = {}  # instrument -> start of its open gateway_overload gap
        # With defer_closes (the gateway's writer sets it), a period that ends is taken off its point at once
        # (O(1)) and its records are made by take_closes() in slices, a few hundred per commit: 10,000 points
        # closing in the same second otherwise held the event loop ~200 ms (issue 8). Off: made at once.
        self.defer_closes = False
        self._closing: deque[_Point] = deque()
        # Issue 10 items 6, 7: per hour, what the operating signal and load points said. Keyed by
        # (instrument, signal point, condition or None for a load point); fed by the signal's good readings.
        self._signals: dict[_SignalKey, dict[int, HourSignal]] = {}
        for inst in instruments:
            self.add_instrument(inst, now_ms=now_ms, last_readings=last_readings)

    def add_instrument(self, inst: InstrumentSpec, *, now_ms: int,
                       last_readings: dict[tuple[str, str], tuple[int, int | None]] | None = None) -> None:
        """Watch the points of one more instrument (its gap ledger resumed from ``last_readings``)."""
        if not inst.polled:
            return
        last_readings = last_readings or {}
        for p in inst.points:
            if p.rules is None:
                continue
            last = last_readings.get((inst.id, p.name))
            state, events = gaps.resume(inst.id, p.name, now_ms=now_ms, rules=p.rules.gaps,
                                        last_record_ms=last[0] if last else None,
                                        last_valid_ms=last[1] if last else None)
            self._startup.extend(self._event(e) for e in events)
            self._points[(inst.id, p.name)] = _Point(inst, p, p.rules, ValidityState(), state)
            self._cycle.append((inst.id, p.name))
        for p in inst.points:  # issue 10 items 6, 7: mark the points whose readings feed another's hours
            for key in _signal_keys(inst.id, p.rules) if p.rules is not None else ():
                sig = self._points.get((inst.id, key[1]))
                if sig is not None and key not in sig.signal_keys:
                    sig.signal_keys += (key,)
        self._tick_due = _FORCE  # its points' due times are not known yet

    # -- live reload (issue 11 item 3; gateway/reload.py) ------------------------------------------------

    def drop_instrument(self, instrument: str) -> None:
        """Stop watching an instrument removed from the configuration (its stored records stay as they are)."""
        self._finish_dropped([st for k, st in self._points.items() if k[0] == instrument])
        self._points = {k: v for k, v in self._points.items() if k[0] != instrument}
        self._cycle = [k for k in self._cycle if k[0] != instrument]
        self._cursor = self._cursor % len(self._cycle) if self._cycle else 0
        self._overload_gaps.pop(instrument, None)
        self._tick_due = _FORCE

    def rebind(self, inst: InstrumentSpec) -> set[str]:
        """A changed instrument: each point whose rules are unchanged keeps its running state (gap ledger,
        validity, open period) under the new spec; points removed or with other rules are dropped. Returns
        the names of the points that still need a state (new, or rules changed): see ``adopt``."""
        wanted = {p.name: p for p in inst.points if p.rules is not None} if inst.polled else {}
        for key in [k for k in self._points if k[0] == inst.id and k[1] not in wanted]:
            self._finish_dropped([self._points.pop(key)])
        missing: set[str] = set()
        for name, p in wanted.items():
            st = self._points.get((inst.id, name))
            if st is not None and st.rules == p.rules:
                st.instrument, st.spec = inst, p
            else:
                dropped = self._points.pop((inst.id, name), None)
                if dropped is not None:
                    self._finish_dropped([dropped])
                missing.add(name)
        self._cycle = [k for k in self._cycle if k in self._points]
        self._cursor = self._cursor % len(self._cycle) if self._cycle else 0
        self._tick_due = _FORCE
        return missing

    def _finish_dropped(self, points: Iterable[_Point]) -> None:
        """A point no longer watched: a deferred close of its (under its old rules) is made now, with the next
        commit's records, not lost."""
        for st in points:
            if st.closing is not None:
                self._startup.extend(self._finish_close(st))

    def adopt(self, other: RulesStage, keys: set[tuple[str, str]] | None = None) -> None:
        """Take over points built by another stage (``load_rules`` of the added or changed instruments, so
        resumed from the store as at a start), with the start-up events it made for them."""
        for key, st in other._points.items():
            if keys is not None and key not in keys:
                continue
            if key not in self._points:
                self._cycle.append(key)
            self._points[key] = st
        self._startup.extend(d for d in other._startup if keys is None or (d.instrument, d.point) in keys)
        self._tick_due = _FORCE

    # -- history from the store ------------------------------------------------------------------

    def restore(self, instrument: str, point: str, aggregates: Sequence[dict[str, Any]],
                substitutes: Sequence[dict[str, Any]], current: Sequence[Reading] = (), *,
                checkpoint: str | None = None) -> None:
        """Reload a point at start-up: its period history, its latest substitutes and the state of the period
        that was open when the gateway stopped.

        With a ``checkpoint`` (``checkpoint()``'s text, committed with the readings), the open period's
        running summary, the totalizer and the validity state come back from it; the readings stored after
        it are then given to ``refeed``. Without one (a store written before checkpoints), ``current``,
        the readings since the last stored period, are re-fed instead."""
        st = self._points.get((instrument, point))
        if st is None:
            return
        self._tick_due = _FORCE
        period = st.rules.period_ms
        if aggregates:
            st.period_start = st.closed_until = int(aggregates[-1]["period_end"])
        if st.rules.totalizer is None:
            for body in aggregates[-MAX_HISTORY_HOURS:] if st.rules.substitution is not None else ():
                st.seen_hour = int(body["period_start"]) // period
                if body.get("operating") is False:
                    continue  # a non-operating hour: absent from the history (40 CFR 75.30(a))
                st.history.append(HourValue(st.seen_hour, body["mean"] if body.get("valid") else None,
                                            body.get("load_bin")))
            st.frozen_before = _frozen_at(st, st.seen_hour)
            for body in substitutes:
                trace = body.get("trace", {})
                st.latest[int(body["hour"])] = _PrevRecord(body["record_id"], instrument, point, int(body["hour"]),
                                                           int(body["version"]), float(body["value"]),
                                                           body["status"], str(trace.get("method_code", "")),
                                                           str(trace.get("routine", "")))
        if checkpoint is not None:
            self._load(st, checkpoint)
        elif current:
            # Totalizers take the readings before the open period too: the last good one is the anchor.
            self.refeed([r for r in current if st.period_start is None or r.ts_ms >= st.period_start
                         or st.rules.totalizer is not None])

    def refeed(self, readings: Iterable[Reading]) -> None:
        """Readings already stored (after a point's checkpoint), fed again at start-up in store order.

        They update validity state and running summaries exactly as when they were first processed; they
        are not stored again and do not move the gap ledger (resumed from the store). A period they close
        is published only if the store does not hold it yet."""
        self._tick_due = _FORCE
        for r in readings:
            st = self._points.get((r.instrument, r.point))
            if st is None:
                continue
            r = self._judge(st, r)
            if st.signal_keys:
                self._note_signal(st, r)
            self._startup.extend(self._add_sample(st, r))

    def checkpoint(self, limit: int | None = None) -> dict[tuple[str, str], str]:
        """The state of the next ``limit`` points (all with None), round-robin over every point, for
        ``Store.commit(..., rules_state=...)``: committed in the same transaction as the readings processed
        so far, so a restart resumes from it and re-feeds only the readings stored after it.

        Round-robin over all points, not only the changed ones: a point that has been silent for days
        still gets a recent high-water mark, so the start-up re-feed never scans further back than about
        one round (``CHECKPOINT_EVERY_MS`` with ``checkpoint_quota``)."""
        keys = self._cycle
        if not keys:
            return {}
        n = len(keys) if limit is None else min(limit, len(keys))
        out: dict[tuple[str, str], str] = {}
        for _ in range(n):
            key = keys[self._cursor]
            self._cursor = (self._cursor + 1) % len(keys)
            st = self._points[key]
            if st.closing is None:
                out[key] = self._dump(st)
            # else: its closed period's records are not committed yet; its previous checkpoint stays, so a
            # restart re-feeds the readings after it and closes that period again.
        return out

    def take_closes(self, limit: int | None = None) -> list[Derived]:
        """The records of up to ``limit`` deferred period closes (all with None), oldest first."""
        out: list[Derived] = []
        q = self._closing
        n = 0
        while q and (limit is None or n < limit):
            st = q.popleft()
            if st.closing is not None:  # else: made already (a later close of the same point came first)
                out.extend(self._finish_close(st))
                n += 1
        return out

    def closes_pending(self) -> int:
        return sum(1 for st in self._closing if st.closing is not None)

    def points(self) -> list[tuple[str, str]]:
        return list(self._points)

    def n_points(self) -> int:
        return len(self._points)

    def is_totalizer(self, instrument: str, point: str) -> bool:
        return self._points[(instrument, point)].rules.totalizer is not None

    def period_ms(self, instrument: str, point: str) -> int:
        return self._points[(instrument, point)].rules.period_ms

    def takes_estimates(self, instrument: str, point: str) -> bool:
        st = self._points.get((instrument, point))
        return st is not None and st.rules.substitution is not None and st.rules.substitution.selector in _ESTIMATING

    def rejudges_quarters(self, instrument: str, point: str) -> bool:
        """HJ 75 with a computed alpha: the quarter close re-judges the quarter's substitutes (issue 10 item 8)."""
        st = self._points.get((instrument, point))
        return st is not None and quarter_offset(st.rules.substitution) is not None

    def wants_history(self, instrument: str, point: str) -> bool:
        st = self._points.get((instrument, point))
        return st is not None and st.rules.substitution is not None

    @staticmethod
    def _dump(st: _Point) -> str:
        v = st.validity
        return json.dumps({"v": CHECKPOINT_VERSION, "period_ms": st.rules.period_ms, "period_start": st.period_start,
                           "summary": st.summary.to_json() if st.summary is not None else None,
                           "total": st.total.to_json() if st.total is not None else None,
                           "validity": [v.last_ts_ms, v.ref_value, v.ref_ts_ms, v.same_value, v.same_count,
                                        v.same_since_ms]}, separators=(",", ":"), allow_nan=False)

    @staticmethod
    def _load(st: _Point, text: str) -> None:
        try:
            d = json.loads(text)
            if d.get("v") != CHECKPOINT_VERSION:
                raise ValueError(f"version {d.get('v')!r} not understood")
            last_ts, ref_value, ref_ts, same_value, same_count, same_since = d["validity"]
            validity = ValidityState(last_ts, ref_value, ref_ts, same_value, int(same_count), same_since)
            same_period = d.get("period_ms") == st.rules.period_ms
            summary = PeriodSummary.from_json(d["summary"]) if same_period and d.get("summary") else None
            total = (RunningTotal.from_json(d["total"])
                     if same_period and d.get("total") and st.rules.totalizer is not None else None)
        except (ValueError, KeyError, TypeError) as err:
            log.warning("%s.%s: rules checkpoint not usable (%s); the open period restarts from the store",
                        st.instrument.id, st.spec.name, err)
            return
        st.validity = validity
        if not same_period:
            return  # the period length changed with the configuration: the next period starts afresh
        if d.get("period_start") is not None:
            st.period_start = int(d["period_start"])
        st.summary, st.total = summary, total

    # -- per batch --------------------------------------------------------------------------------

    def _judge(self, st: _Point, r: Reading) -> Reading:
        res = check(r.value, r.ts_ms, st.validity, st.rules.validity, calibration=r.calibration)
        st.validity = res.state
        return _judged(r, res)

    def process(self, readings: Sequence[Reading]) -> tuple[list[Reading], list[Derived]]:
        """Judge each reading, update gaps and periods; returns the readings to store and new records.

        The same steps as _judge, gaps.feed_reading and _add_sample, with the usual case (a good reading,
        no clock step, inside the open period) taken without their calls and intermediate lists: about
        a third of the rules stage's CPU per reading at plant load (issue 8)."""
        out: list[Reading] = []
        derived: list[Derived] = self._startup
        self._startup = []
        points = self._points
        overloaded = self._overloaded
        tick_due = self._tick_due
        good = Quality.GOOD
        feed = gaps.feed
        seen_valid = gaps.seen_valid
        isfinite = math.isfinite
        append = out.append
        for r in readings:
            st = points.get((r.instrument, r.point))
            if st is None:
                append(r)
                continue
            ts = r.ts_ms
            if st.step is not None and st.step.is_new_side(ts):
                derived.extend(self._apply_step(st))
            rules = st.rules
            passed = passes(r.value, ts, st.validity, rules.validity, r.calibration)
            if passed is not None:  # good without a reason: the reading as tagged
                st.validity = passed
            else:
                res = check(r.value, ts, st.validity, rules.validity, calibration=r.calibration)
                st.validity = res.state
                if res.reason or res.quality is not good:
                    r = _judged(r, res)
            append(r)
            if st.signal_keys:
                self._note_signal(st, r)
            g = st.gap
            if overloaded and g.open_start_ms is None and ts - g.reference_ms > st.allowed_ms:
                # Late because the gateway is busy: once per instrument, not a gap per point.
                derived.extend(self._overload_open(st))
                g = replace(g, reference_ms=ts)
            v = r.value
            valid = r.quality is good and v is not None and isfinite(v)
            last_seen = g.last_seen_ms
            if (valid and g.open_start_ms is None and ts - g.reference_ms <= st.allowed_ms
                    and (last_seen is None or ts >= last_seen)):
                st.gap = g = seen_valid(g.instrument, g.point, ts)  # gaps.feed's usual reading, without its call
            else:
                g, events = feed(g, ts, valid, r.reason, rules.gaps)
                st.gap = g
                if events:
                    derived.extend(self._event(e) for e in events)
            summary = st.summary
            period = rules.period_ms
            if (summary is not None and st.replay_until is None and rules.totalizer is None
                    and ts // period * period == st.period_start):
                summary.add(r)  # inside the open period: what _add_sample does, without its list
                if st.step is None:  # _due(st) for this case, without its call
                    due = _NEVER if g.open_start_ms is not None else g.reference_ms + st.allowed_ms
                    end = st.period_start + period + rules.cadence_ms
                    if end < due:
                        due = end
                else:
                    due = _FORCE
            else:
                more = self._add_sample(st, r)
                if more:
                    derived.extend(more)
                due = _due(st)
            st.due = due
            if due < tick_due:
                tick_due = due
        self._tick_due = tick_due
        return out, derived

    def tick(self, now_ms: int) -> list[Derived]:
        """Time passing without readings: open gaps, close periods that ended.

        Every point is looked at only when one of them is due (``_tick_due``): otherwise nothing can happen
        and the result is the same empty list, without the O(points) walk. The walk reads each point's
        cached due time (``_Point.due``, kept by process() and tick()), recomputed for every point only
        after a restore, a clock step or an overload change (``_FORCE``)."""
        derived: list[Derived] = []
        if now_ms < self._tick_due:
            return derived
        full = self._tick_due == _FORCE
        forced = False
        overloaded, overload_gaps = self._overloaded, self._overload_gaps
        next_due = _NEVER
        for st in self._points.values():
            if st.step is None:
                due = st.due
                if full or due <= now_ms:
                    due = st.due = _due(st)
                if due > now_ms:  # neither its gap nor its period can change now
                    if due < next_due:
                        next_due = due
                    continue
            else:
                if now_ms - st.step.now_ms <= st.rules.gaps.allowed_ms:
                    forced = True  # readings taken before the step may still be queued
                    continue
                derived.extend(self._apply_step(st))
            if self._overloaded and not st.gap.is_open and now_ms - st.gap.reference_ms > st.rules.gaps.allowed_ms:
                derived.extend(self._overload_open(st))
            else:
                st.gap, events = gaps.tick(st.gap, now_ms, st.rules.gaps)
                derived.extend(self._event(e) for e in events)
            if st.period_start is not None and st.rules.totalizer is None:
                # A period closes once a reading could no longer belong to it (one cadence of slack).
                while st.period_start + st.rules.period_ms + st.rules.cadence_ms <= now_ms:
                    derived.extend(self._close_period(st, defer=True))
            due = _due(st)
            if due <= now_ms and overloaded and st.instrument.id in overload_gaps and st.step is None:
                # Past its allowance while its instrument's overload gap is open: its gap has nothing to do
                # until a reading comes (process) or the overload ends (set_overloaded walks again).
                due = _due(st, gap=False)
            st.due = due
            if due < next_due:
                next_due = due
        self._tick_due = _FORCE if forced else next_due
        return derived

    # -- overload and clock steps -----------------------------------------------------------------

    def set_overloaded(self, active: bool, now_ms: int) -> list[Derived]:
        """The gateway is (no longer) too busy to poll on time: late polls are not a meter's failure.

        While active, a point whose reading is late does not open a ``communication_loss`` gap: its
        instrument gets one ``gateway_overload`` gap (open once, closed when the overload ends), whatever
        the number of its points and late polls. Readings that never came still lower the period's
        availability, so hourly validity stays honest. When it ends, every point's silence is counted from
        then: a meter that is really silent opens its own gap one allowance later."""
        out: list[Derived] = []
        if active == self._overloaded:
            return out
        self._overloaded = active
        self._tick_due = _FORCE
        if active:
            return out
        for instrument, start in self._overload_gaps.items():
            out.append(self._event(gaps.GapEvent("close", instrument, "", start, max(start, now_ms),
                                                 gaps.GapCause.GATEWAY_OVERLOAD)))
        self._overload_gaps.clear()
        for st in self._points.values():
            if not st.gap.is_open and st.gap.reference_ms < now_ms:
                st.gap = replace(st.gap, reference_ms=now_ms)
        return out

    def _overload_open(self, st: _Point) -> list[Derived]:
        instrument = st.instrument.id
        if instrument in self._overload_gaps:
            return []
        start = self._overload_gaps[instrument] = st.gap.reference_ms
        return [self._event(gaps.GapEvent("open", instrument, "", start, None, gaps.GapCause.GATEWAY_OVERLOAD))]

    def on_clock_step(self, delta_ms: int, now_ms: int) -> list[Derived]:
        """The wall clock stepped by ``delta_ms`` (detected at ``now_ms``, new timeline): not a gap, not a burst.

        Each point moves to the new timeline at its first reading taken after the step (readings still
        queued from before it are told apart by their timestamp: the old side of the step's midpoint), or,
        if none comes, one gap allowance after the step: its validity and gap-ledger times are shifted by
        the step, so elapsed times stay true and nothing is ``out_of_order``. Forward, the open period
        closes with what it holds and the next one starts in the new timeline; the skipped periods get no
        aggregate and are not missing hours for substitution. Backward, readings that repeat an interval
        already aggregated are stored as read but not aggregated again. One ``clock_step`` event per
        instrument records the step."""
        if delta_ms == 0:
            return []
        self._tick_due = _FORCE
        out: list[Derived] = []
        step = _Step(delta_ms, now_ms, now_ms - delta_ms // 2)
        instruments: dict[str, None] = {}
        for st in self._points.values():
            if st.step is not None:
                out.extend(self._apply_step(st))  # a second step before the first was seen: apply in order
            st.step = step
            instruments[st.instrument.id] = None
        for instrument in instruments:
            body = {"type": "clock_step", "kind": "step", "instrument": instrument, "point": "",
                    "start_ms": now_ms - delta_ms, "end_ms": now_ms, "cause": "clock_step", "delta_ms": delta_ms}
            out.append(Derived("events", instrument, "", now_ms, body))
        return out

    def _apply_step(self, st: _Point) -> list[Derived]:
        step = st.step
        assert step is not None
        st.step = None
        d = step.delta_ms

        def shift(t: int | None) -> int | None:
            return None if t is None else t + d

        v = st.validity
        if d < 0:
            st.replay_until = v.last_ts_ms if st.replay_until is None else max(st.replay_until, v.last_ts_ms or 0)
        st.validity = ValidityState(shift(v.last_ts_ms), v.ref_value, shift(v.ref_ts_ms), v.same_value,
                                    v.same_count, shift(v.same_since_ms))
        g = st.gap
        st.gap = replace(g, reference_ms=g.reference_ms + d, last_seen_ms=shift(g.last_seen_ms))
        if d < 0 or st.period_start is None:
            return []
        period = st.rules.period_ms
        if st.rules.totalizer is not None:
            if st.total is None or st.total.last_ts_ms is None:
                return []
            settled = st.total.skip(d)
            st.period_start = st.total.period_start
            return [self._total(st, p) for p in settled if st.closed_until is None or p.start_ms >= st.closed_until]
        new_start = step.now_ms // period * period
        out: list[Derived] = []
        if new_start > st.period_start:
            out.extend(self._close_period(st))
            st.period_start = new_start
            st.summary = None
            st.fill_from_hour = new_start // period
        return out

    # -- periods ----------------------------------------------------------------------------------

    def _add_sample(self, st: _Point, r: Reading) -> list[Derived]:
        if st.replay_until is not None:
            if r.ts_ms <= st.replay_until:
                return []  # after a backward clock step: this interval is aggregated already
            st.replay_until = None
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
            out.extend(self._close_period(st, defer=True))
            skipped += 1
            if skipped > MAX_EMPTY_PERIODS:
                st.period_start = start
                st.summary = None
        summary = st.summary
        if summary is None:
            summary = st.summary = PeriodSummary(st.period_start, period)
        summary.add(r)
        return out

    def _close_period(self, st: _Point, *, defer: bool = False) -> list[Derived]:
        """Close the open period; with ``defer`` (and ``defer_closes``) its records are made later by
        take_closes(). A point's closes are always made in order: an earlier deferred one first."""
        assert st.period_start is not None
        out = self._finish_close(st) if st.closing is not None else []
        start = st.period_start
        summary = st.summary
        st.summary = None
        st.period_start = start + st.rules.period_ms
        st.closing = (start, summary)
        if defer and self.defer_closes:
            self._closing.append(st)
            return out
        out.extend(self._finish_close(st))
        return out

    def _finish_close(self, st: _Point) -> list[Derived]:
        assert st.closing is not None
        start, summary = st.closing
        st.closing = None
        period = st.rules.period_ms
        if summary is None:
            summary = PeriodSummary(start, period)
        if st.closed_until is not None and start < st.closed_until:
            return []  # restart: this period's aggregate is stored already
        agg = summarize(summary, cadence_ms=st.rules.cadence_ms, rule=st.rules.aggregate)
        hour = start // period
        runs, load_bin = self._hour_facts(st, hour)
        value = agg.mean if agg.valid else None
        out = [self._aggregate(st, agg, runs, load_bin)]
        if st.rules.substitution is not None:
            if value is None and st.rules.load is not None:
                load_bin = gap_hour_bin(load_bin, st.rules.load.bins)[0]
            out.extend(self._substitute(st, HourValue(hour, value, load_bin), runs))
        return out

    # -- operating hours and load ranges (issue 10 items 6, 7) --------------------------------------

    def _note_signal(self, st: _Point, r: Reading) -> None:
        """A usable reading of an operating-signal or load point counts toward its hour. Uncertain readings
        count (a load standing at 0 for hours while the unit is off is `frozen`, and still says it is off);
        bad ones do not."""
        if r.quality is Quality.BAD or r.value is None or not math.isfinite(r.value):
            return
        hour = r.ts_ms // HOUR_MS
        for key in st.signal_keys:
            hours = self._signals.setdefault(key, {})
            sig = hours.get(hour)
            if sig is None:
                sig = hours[hour] = HourSignal()
                while len(hours) > SIGNAL_HOURS_KEPT:
                    del hours[next(iter(hours))]  # insertion order is hour order for a point's readings
            sig.add(r.value, key[2])

    def _hour_facts(self, st: _Point, hour: int) -> tuple[bool | None, int | None]:
        """(operating: None without a signal configured, load range or None) of one closed hour."""
        rules, inst = st.rules, st.instrument.id
        runs = None
        if rules.operating is not None:
            runs = operating(self._signals.get((inst, rules.operating.point, rules.operating.condition), {}).get(hour))
        load_bin = None
        if rules.load is not None:
            load_bin = hour_load_bin(self._signals.get((inst, rules.load.point, None), {}).get(hour), rules.load.bins)
        return runs, load_bin

    def _add_total(self, st: _Point, r: Reading) -> list[Derived]:
        """Totalizers: a period is settled by the first good reading after it, so a counter difference
        across a gap recovers the consumption exactly instead of leaving a hole."""
        v = r.value
        if r.quality is not Quality.GOOD or v is None or not math.isfinite(v):
            return []
        assert st.rules.totalizer is not None
        if st.total is None:
            st.total = RunningTotal(st.rules.period_ms)
        settled = st.total.feed(r.ts_ms, v, st.rules.totalizer)
        st.period_start = st.total.period_start
        if not settled:
            return []
        cut = st.closed_until
        return [self._total(st, p) for p in settled if cut is None or p.start_ms >= cut][-MAX_EMPTY_PERIODS:]

    def _aggregate(self, st: _Point, agg: PeriodAggregate, runs: bool | None = None,
                   load_bin: int | None = None) -> Derived:
        body = {"point": st.spec.name, "unit": st.spec.unit, "period_start": agg.start_ms, "period_end": agg.end_ms,
                "count": agg.count, "valid_count": agg.valid_count, "possible": agg.possible,
                "availability": agg.availability, "availability_exact": agg.availability_exact,
                "valid": agg.valid, "mean": agg.mean, "min": agg.minimum, "max": agg.maximum, "rule": agg.rule,
                "totalizer": False}
        if runs is not None:
            body["operating"] = runs  # false: a non-operating hour, neither missing nor substituted
        if st.rules.load is not None:
            body["load_bin"] = load_bin
        return Derived("aggregates", st.instrument.id, st.spec.name, agg.start_ms, body)

    def _total(self, st: _Point, p: Any) -> Derived:
        body = {"point": st.spec.name, "unit": st.spec.unit, "period_start": p.start_ms, "period_end": p.end_ms,
                "totalizer": True, "consumption": p.consumption, "consumption_exact": p.consumption_exact,
                "complete": p.complete, "recovered": p.recovered, "boundary_interpolated": p.boundary_interpolated,
                "rollovers": p.rollovers, "resets": p.resets, "readings": p.readings,
                "valid": p.complete and not p.resets}
        if p.substituted or p.note:  # issue 10 item 2: ambiguous wraps, substituted conservatively, and why
            body.update(substituted=p.substituted, note=p.note)
        return Derived("aggregates", st.instrument.id, st.spec.name, p.start_ms, body)

    # -- substitution -----------------------------------------------------------------------------

    def _substitute(self, st: _Point, hv: HourValue, runs: bool | None = None) -> list[Derived]:
        """Provisional substitutes while a gap is open; the final ones, superseding them, when it closes.

        ``runs`` False: the operating signal says the source did not operate in this hour: it is left out of
        the history (never substituted, never breaks a gap, never counts toward N: 40 CFR 75.30(a))."""
        hist = st.history
        last = st.seen_hour if st.seen_hour is not None else (hist[-1].hour if hist else None)
        if last is not None and hv.hour <= last:
            return []
        if last is not None:
            # Hours with no record at all (the gateway was down) are missing operating hours, not absent.
            # Hours a forward clock step skipped were never lived by the gateway: not operating hours.
            first = max(last + 1, hv.hour - MAX_EMPTY_PERIODS, st.fill_from_hour or 0)
            top = None if st.rules.load is None else st.rules.load.bins.bins
            for h in range(first, hv.hour):
                hist.append(HourValue(h, None, top))
        st.seen_hour = hv.hour
        out: list[Derived] = []
        if runs is not False:
            hist.append(hv)
            out.extend(self._substitute_latest(st, hv))
        if last is not None and st.rules.reporting is not None:
            out.extend(self._period_closes(st, last, hv.hour))
        return out

    def _substitute_latest(self, st: _Point, hv: HourValue) -> list[Derived]:
        hist = st.history
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
        history: Sequence[HourValue] = hist
        inputs = GapInputs(gap_open=gap_open)
        if policy.selector == "mean_plus_2sigma" and st.rules.reporting is not None:
            # MRR Annex VIII Eq. 4: the mean and sigma of the reporting period; final when it closes.
            current = period_of(hist[-1].hour, st.rules.reporting.period, st.rules.reporting.tz)
            history = [h for h in hist if h.hour >= current.start]
            gap_hours = [h for h in gap_hours if h >= current.start]
            if not gap_hours:
                return []  # the gap ended with the previous period: its close finalises it
            inputs = GapInputs(gap_open=gap_open, reference_period_closed=False)
        return self._run_gap(st, history, gap_hours, inputs)

    def _run_gap(self, st: _Point, history: Sequence[HourValue], gap_hours: Sequence[int],
                 inputs: GapInputs) -> list[Derived]:
        """One substitute_gap evaluation, published as new versions of the hours that changed."""
        policy = st.rules.substitution
        assert policy is not None
        if st.estimates:
            inputs = replace(inputs, estimates=tuple(st.estimates[h] for h in gap_hours if h in st.estimates))
        try:
            result = substitute_gap(list(history), gap_hours, policy, point=st.spec.name, instrument=st.instrument.id,
                                    inputs=inputs, previous=st.latest.values())  # type: ignore[arg-type]
        except RuleInputError as err:
            log.error("%s.%s: no substitute for hours %d..%d: %s", st.instrument.id, st.spec.name, gap_hours[0],
                      gap_hours[-1], err)
            return []
        out: list[Derived] = []
        period = st.rules.period_ms
        frozen = st.frozen_before
        for rec in result.records:
            if frozen is not None and rec.hour < frozen:
                continue  # finalised by a period close (the reported value): never re-issued
            before = st.latest.get(rec.hour)
            method = rec.detail.to_json().get("method_code", "")
            if (before is not None and before.value == rec.value and before.status == rec.status
                    and before.method_code == method):
                continue  # nothing changed for this hour: no new version
            body = {**rec.to_json(), "unit": st.spec.unit, "hour_start": rec.hour * period,
                    "hour_end": (rec.hour + 1) * period}
            out.append(Derived("substitutes", st.instrument.id, st.spec.name, rec.hour * period, body))
            st.latest[rec.hour] = _PrevRecord(rec.record_id, rec.instrument, rec.point, rec.hour, rec.version,
                                              rec.value, rec.status, str(method), rec.detail.routine)
        if result.status == "final" and quarter_offset(policy) is None:
            # Final: later gaps never touch these hours again. HJ 75 keeps them until its quarter closes,
            # which re-judges them with the quarter's final alpha (_close_hj75).
            for h in gap_hours:
                st.latest.pop(h, None)
        return out

    # -- the estimate channel (issue 10 item 9) ----------------------------------------------------

    def add_estimates(self, bodies: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
        """Estimate records (gateway/estimates.py) for points whose selector takes them; returns the points
        whose gaps must be re-evaluated (``reissue``)."""
        touched: dict[tuple[str, str], None] = {}
        for b in bodies:
            st = self._points.get((b["instrument"], b["point"]))
            if st is None or st.rules.substitution is None or st.rules.substitution.selector not in _ESTIMATING:
                continue
            period = st.rules.period_ms
            for h in range(int(b["ts"]) // period, int(b["hour_end"]) // period):
                st.estimates[h] = Estimate(h, float(b["value"]), str(b["id"]), str(b["author"]), str(b["basis"]),
                                           str(b["method"]))
            touched[(b["instrument"], b["point"])] = None
        return list(touched)

    def reissue(self, instrument: str, point: str, previous: Sequence[dict[str, Any]]) -> list[Derived]:
        """Re-evaluate every gap of a point's history that has an estimate (a new version of each hour whose
        value changes). ``previous``: the point's stored substitutes (their newest versions are superseded;
        the in-memory ones no longer hold hours finalised long ago)."""
        st = self._points[(instrument, point)]
        prev = {int(b["hour"]): b for b in sorted(previous, key=lambda b: int(b["version"]))}
        latest = [_PrevRecord(b["record_id"], instrument, point, h, int(b["version"]), float(b["value"]),
                              b["status"], str(b.get("trace", {}).get("method_code", ""))) for h, b in prev.items()]
        for rec in latest:
            st.latest.setdefault(rec.hour, rec)
            if st.latest[rec.hour].version < rec.version:
                st.latest[rec.hour] = rec
        hist = list(st.history)
        out: list[Derived] = []
        for gap in find_gaps(hist):
            if not any(h in st.estimates for h in gap.hours):
                continue
            out.extend(self._run_gap(st, hist, gap.hours, GapInputs(gap_open=gap.end == hist[-1].hour)))
        return out

    # -- period closes (issue 10 item 8) ----------------------------------------------------------

    def _period_closes(self, st: _Point, last_hour: int, new_hour: int) -> list[Derived]:
        """Run the selector's close handler for every reporting period that fell due between two hours.

        The one period-close mechanism of the rules stage: CLOSE_HANDLERS maps a selector to its handler
        (MRR mean + 2 sigma at the reporting period's close, Part 98 "before" value when the report is due;
        the HJ 75 quarter re-issue registers itself here too). A close runs in the same transaction as the
        hour that triggered it, so after a restart it is neither repeated nor skipped (``_frozen_at``)."""
        rep = st.rules.reporting
        policy = st.rules.substitution
        assert rep is not None
        assert policy is not None
        handler = CLOSE_HANDLERS.get(policy.selector)
        if handler is None:
            return []
        out: list[Derived] = []
        for p in closes_between(last_hour, new_hour, rep.period, rep.tz, due_hours=rep.due_hours):
            out.extend(handler(self, st, p))
        return out

    @staticmethod
    def _event(e: gaps.GapEvent) -> Derived:
        body = {"type": f"gap_{e.kind}", **e.to_json()}
        return Derived("events", e.instrument, e.point, e.end_ms if e.end_ms is not None else e.start_ms, body)


_FORCE = -(1 << 62)
_NEVER = 1 << 62


def _judged(r: Reading, res: CheckResult) -> Reading:
    """The reading with the validity rules' verdict: a worse quality wins; a reason fills an empty one."""
    if _SEVERITY[res.quality] > _SEVERITY[r.quality]:
        return r._replace(quality=res.quality, reason=res.reason)
    if res.reason and not r.reason and res.quality is r.quality:
        return r._replace(reason=res.reason)
    return r


def _due(st: _Point, *, gap: bool = True) -> int:
    """The earliest time at which tick() could change this point: its gap opening (``now - reference >
    allowed``; not counted with ``gap=False``), its period closing, or a pending clock step (then at once)."""
    if st.step is not None:
        return _FORCE
    g = st.gap
    due = _NEVER if not gap or g.open_start_ms is not None else g.reference_ms + st.allowed_ms
    ps = st.period_start
    if ps is not None and st.rules.totalizer is None:
        end = ps + st.rules.period_ms + st.rules.cadence_ms
        if end < due:
            due = end
    return due


_SignalKey = tuple[str, str, OperatingCondition | None]
HOUR_MS = 3_600_000
SIGNAL_HOURS_KEPT = 72  # hours of signal facts kept per signal: a consumer's hour closes within one or two


def _signal_keys(instrument: str, rules: PointRules) -> list[_SignalKey]:
    keys: list[_SignalKey] = []
    if rules.operating is not None:
        keys.append((instrument, rules.operating.point, rules.operating.condition))
    if rules.load is not None:
        keys.append((instrument, rules.load.point, None))
    return keys


def _frozen_at(st: _Point, hour: int | None) -> int | None:
    """After a restart: the hours a period close had finalised by ``hour`` (closes that freeze hours only)."""
    rep, policy = st.rules.reporting, st.rules.substitution
    if rep is None or policy is None or hour is None or policy.selector not in FREEZING_CLOSES:
        return None
    return period_of(hour - rep.due_hours, rep.period, rep.tz).start


def _close_mrr(stage: RulesStage, st: _Point, p: Period) -> list[Derived]:
    """Reg. (EU) 2018/2066 Art. 45(3), Annex VIII Eq. 4: at the reporting period's close, every substituted
    hour of the period gets its final mean + 2 sigma over the whole period (a new version of each)."""
    hist = [h for h in st.history if p.start <= h.hour < p.end]
    out: list[Derived] = []
    for gap in find_gaps(hist):
        out.extend(stage._run_gap(st, hist, gap.hours, GapInputs(gap_open=False, reference_period_closed=True)))
    st.frozen_before = max(st.frozen_before or p.end, p.end)
    return out


def _close_part98(stage: RulesStage, st: _Point, p: Period) -> list[Derived]:
    """40 CFR 98.35(b)(1): "if the 'after' value has not been obtained by the time the report is due, use the
    'before' value". A gap still open when the month's report falls due gets, for its hours in that month, a
    final version with the "before" value; those hours are not re-issued when the gap closes later."""
    hist = list(st.history)
    gap = [h for h in _trailing_gap(hist) if p.start <= h < p.end]
    out: list[Derived] = []
    if gap:
        cut = [h for h in hist if h.hour < p.end]
        out = stage._run_gap(st, cut, gap, GapInputs(gap_open=False))
    st.frozen_before = max(st.frozen_before or p.end, p.end)
    return out


def _close_hj75(stage: RulesStage, st: _Point, p: Period) -> list[Derived]:
    """HJ 75-2017 (issue 10 items 1, 8): at the quarter's close its alpha is final; the substitutes issued in it
    with a quarter-to-date alpha get a new version where the tier changes (gateway/rules/quarter_close.py).

    The quarter is the policy's own (quarter_utc_offset_hours, China Standard Time by default): the one holding
    the reporting period's first hour; with the site in another time zone the close runs that much later."""
    policy = st.rules.substitution
    offset = quarter_offset(policy)
    if policy is None or offset is None:
        return []
    q_end = quarter_of(p.start, offset)[1]
    try:
        records = reissue_at_quarter_close(list(st.history), policy, point=st.spec.name, instrument=st.instrument.id,
                                           quarter_end_hour=q_end, previous=st.latest.values())  # type: ignore[arg-type]
    except RuleInputError as err:
        log.error("%s.%s: quarter close: substitutes not re-judged: %s", st.instrument.id, st.spec.name, err)
        records = ()
    out: list[Derived] = []
    period = st.rules.period_ms
    for rec in records:
        body = {**rec.to_json(), "unit": st.spec.unit, "hour_start": rec.hour * period,
                "hour_end": (rec.hour + 1) * period}
        out.append(Derived("substitutes", st.instrument.id, st.spec.name, rec.hour * period, body))
        st.latest[rec.hour] = _PrevRecord(rec.record_id, rec.instrument, rec.point, rec.hour, rec.version,
                                          rec.value, rec.status, rec.method_code, rec.routine)
    if records:
        log.info("%s.%s: quarter close: %d substitutes re-issued with the quarter's final alpha", st.instrument.id,
                 st.spec.name, len(records))
    still_open = set(_trailing_gap(list(st.history)))
    for h in [h for h in st.latest if h < q_end and h not in still_open]:
        del st.latest[h]  # final now: nothing re-judges the closed quarter's hours again
    return out


CloseHandler = Any  # (RulesStage, _Point, Period) -> list[Derived]
# selector -> what its period close does. Shared by every close (rulesa: the HJ 75 quarter re-issue adds
# "hj75_tiered" here; reporting period defaults are in point_rules.DEFAULT_REPORTING_PERIOD).
CLOSE_HANDLERS: dict[str, CloseHandler] = {"mean_plus_2sigma": _close_mrr, "hour_before_after": _close_part98,
                                           "hj75_tiered": _close_hj75}
# Closes after which a period's hours are final for good. Not HJ 75: a gap running on into the next quarter
# still re-issues its earlier hours when its final N selects another window (whole_period).
FREEZING_CLOSES = frozenset({"mean_plus_2sigma", "hour_before_after"})
_ESTIMATING = frozenset({"best_available_estimate"})  # selectors that take plant estimates


def _trailing_gap(hist: Sequence[HourValue]) -> list[int]:
    hours: list[int] = []
    for hv in reversed(hist):
        if hv.value is not None:
            break
        hours.append(hv.hour)
    return hours[::-1]


def apply_estimates(rules: RulesStage | None, store: Store, records: Sequence[Derived]) -> list[Derived]:
    """The inbox's estimate records given to the rules stage: the new substitute versions they cause, to be
    committed in the same transaction as the estimates (issue 10 item 9). Before the rules stage is ready,
    nothing: it reads the stored estimates when it loads."""
    bodies = [d.body for d in records if d.kind == "corrections" and d.body.get("type") == "estimate"]
    if rules is None or not bodies:
        return []
    out: list[Derived] = []
    for instrument, point in rules.add_estimates(bodies):
        first = min(int(b["ts"]) for b in bodies if b["instrument"] == instrument and b["point"] == point)
        previous = store.records("substitutes", instrument, point, since_ms=first - 400 * 86_400_000)
        out.extend(rules.reissue(instrument, point, previous))
    return out


CHECKPOINT_EVERY_MS = 30_000  # each point's state is committed at least this often (at most this much re-fed)
YEARS_3_MS = 3 * 365 * 86_400_000
MONTH_MS = 31 * 86_400_000
QUARTER_MS = 93 * 86_400_000  # HJ 75 points reload a quarter of substitutes: its close re-judges them all


def checkpoint_quota(n_points: int, elapsed_ms: float, carry: float = 0.0) -> tuple[int, float]:
    """Points to checkpoint in a commit that comes `elapsed_ms` after the one before, so that every point gets
    one every CHECKPOINT_EVERY_MS, spread evenly over the commits however often they come; `carry` is the
    fraction left from the commit before. Returns (points now, fraction to carry).

    Paced by time, not per commit: a fixed number per commit (it was at least 64) checkpointed each of 10,000
    points every 8 s at 20 commits a second, four times what the re-feed bound needs, at ~15 us a point
    (issue 8: 4 % of the event loop at plant load)."""
    due = n_points * max(0.0, elapsed_ms) / CHECKPOINT_EVERY_MS + carry
    n = int(due)
    return n, due - n


def load_rules(instruments: Sequence[InstrumentSpec], store: Store, now_ms: int) -> RulesStage:
    """The rules engine as it stood when the gateway stopped: history, latest substitutes and, per point, its
    checkpoint plus the readings stored after it (only those: never the whole open period)."""
    steps = _load_steps(instruments, store, now_ms)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


LOAD_YIELD_POINTS = 250  # points restored between two yields to the event loop (~10 ms on this machine)


async def load_rules_async(instruments: Sequence[InstrumentSpec], store: Store, now_ms: int) -> RulesStage:
    """``load_rules`` in steps that yield to the event loop every LOAD_YIELD_POINTS points (or re-fed batch),
    so pollers started before it keep their schedule while a plant-size rules stage is built."""
    steps = _load_steps(instruments, store, now_ms)
    work = 0
    while True:
        try:
            work += next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        if work >= LOAD_YIELD_POINTS:
            work = 0
            await asyncio.sleep(0)


def _load_steps(instruments: Sequence[InstrumentSpec], store: Store,
                now_ms: int) -> Generator[int, None, RulesStage]:
    """load_rules' work in steps; each yields about how many points' worth of work it did (a re-fed reading
    counts a tenth of a point); returns the rules stage."""
    points = [(i.id, p.name) for i in instruments for p in i.points]
    last_readings = store.last_readings(points)
    rules = RulesStage((), now_ms=now_ms)
    for inst in instruments:
        rules.add_instrument(inst, now_ms=now_ms, last_readings=last_readings)
        yield len(inst.points)
    checkpoints = store.rules_state()
    hwm: dict[tuple[str, str], int] = {}
    for instrument, point in rules.points():
        # The substitution lookback needs the period history; other points only where they stopped.
        aggregates = store.records("aggregates", instrument, point, since_ms=now_ms - YEARS_3_MS,
                                   last=None if rules.wants_history(instrument, point) else 1)
        subs = store.records("substitutes", instrument, point,
                             since_ms=now_ms - (QUARTER_MS if rules.rejudges_quarters(instrument, point) else MONTH_MS))
        if rules.takes_estimates(instrument, point):  # issue 10 item 9: the plant's estimates, kept as records
            rules.add_estimates(b for b in store.records("corrections", instrument, point, since_ms=now_ms - YEARS_3_MS)
                                if b.get("type") == "estimate")
        cp = checkpoints.get((instrument, point))
        if cp is not None:
            hwm[(instrument, point)] = cp[0]
            rules.restore(instrument, point, aggregates, subs, checkpoint=cp[1])
            yield 1
            continue
        # No checkpoint yet (a store from before them): the readings since the last stored period.
        open_from = aggregates[-1]["period_end"] if aggregates else None
        if open_from is not None and rules.is_totalizer(instrument, point):
            open_from -= rules.period_ms(instrument, point)  # its last good reading anchors the open period
        current = store.readings_since(instrument, point, int(open_from)) if open_from is not None else []
        rules.restore(instrument, point, aggregates, subs, current)
        yield 1 + len(current) // 10
    if hwm:
        after = min(hwm.values())
        refed = 0
        while batch := store.readings_after(after):
            after = batch[-1][0]
            todo = [r for rid, r in batch if rid > hwm.get((r.instrument, r.point), after)]
            refed += len(todo)
            rules.refeed(todo)
            yield 1 + len(todo) // 10
        log.info("rules engine resumed %d points from their checkpoints, %d readings after them re-fed",
                 len(hwm), refed)
    return rules
