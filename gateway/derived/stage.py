"""Live derived points: computed from the latest readings of their inputs as readings arrive.

A derived point is evaluated each time its first input is read (once that poll's other points are
seen), from the newest reading of every other input, provided all of them lie within the point's window
of that reading (time alignment). The result is an ordinary reading of the point's instrument: stored,
published, aggregated and substituted by the rules engine like any read value. Its quality is the worst
of the inputs it used and its calibration status the worst of theirs; when it cannot be computed (an
input missing, stale or bad, a constant with no value valid at that time) the reading is bad and its
reason says which, so the gap is never silent.

Sits between tagging and the rules stage; pure apart from its memory of the latest inputs (O(inputs)).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from gateway.derived.config import DerivedPlan, DerivedPoint
from gateway.derived.formula import Sample
from gateway.model import Calibration, Quality, Reading

REASON_INPUT_MISSING = "input_missing"  # an input has never been read since start
REASON_INPUT_STALE = "input_stale"  # an input's newest reading is outside the window
REASON_INPUT_BAD = "input_bad"  # the formula needed an input whose reading has no value
REASON_CONSTANT = "constant_not_valid"  # a constant has no value valid at that time
REASON_NOT_COMPUTABLE = "not_computable"  # division by zero, or a result that is not a finite number

log = logging.getLogger("gateway.derived")

_CAL_RANK = {Calibration.VALID: 0, Calibration.DUE_SOON: 1, Calibration.UNKNOWN: 2, Calibration.EXPIRED: 3}
_Q_RANK = {Quality.GOOD: 0, Quality.UNCERTAIN: 1, Quality.BAD: 2}
MAX_DEPTH = 8  # derived points of derived points: the chain is acyclic (checked at load), and short


class DerivedStage:
    def __init__(self, plan: DerivedPlan) -> None:
        self.plan = plan
        self.latest: dict[tuple[str, str], Reading] = {}
        self._watched: set[tuple[str, str]] = set()
        self._by_trigger: dict[tuple[str, str], list[DerivedPoint]] = {}
        for dp in plan.points:
            for _name, inst, point in dp.inputs:
                self._watched.add((inst, point))
            first = dp.inputs[0]
            self._by_trigger.setdefault((first[1], first[2]), []).append(dp)
        self.computed = 0
        self.failed = 0
        # (instrument, point) -> reason, while a derived point cannot be computed: one log line when it
        # starts, one when it ends, and the list on the status topic (derived.failing).
        self.failing: dict[tuple[str, str], str] = {}

    def __bool__(self) -> bool:
        return bool(self.plan.points)

    def process(self, readings: Sequence[Reading]) -> list[Reading]:
        """The derived readings these readings give rise to (in order; derived of derived included).

        A poll's readings share the instrument and timestamp: a derived point triggered by one of them is
        evaluated once the whole poll has been seen, so it uses that poll's other points, not the previous
        poll's."""
        if not self._by_trigger:
            return []
        out: list[Reading] = []
        batch: Iterable[Reading] = readings
        for _ in range(MAX_DEPTH):
            made: list[Reading] = []
            pending: list[tuple[DerivedPoint, int]] = []
            group: tuple[str, int] | None = None
            for r in batch:
                if (r.instrument, r.ts_ms) != group:
                    made.extend(self.evaluate(dp, ts) for dp, ts in pending)
                    pending.clear()
                    group = (r.instrument, r.ts_ms)
                key = (r.instrument, r.point)
                if key not in self._watched:
                    continue
                self.latest[key] = r
                pending.extend((dp, r.ts_ms) for dp in self._by_trigger.get(key, ()))
            made.extend(self.evaluate(dp, ts) for dp, ts in pending)
            if not made:
                break
            out.extend(made)
            batch = made
        return out

    def evaluate(self, dp: DerivedPoint, ts_ms: int) -> Reading:
        out = self._evaluate(dp, ts_ms)
        key = (dp.instrument, dp.point)
        if out.value is None:
            if self.failing.get(key) != out.reason:
                log.warning("derived point %s.%s cannot be computed: %s (%s); readings are stored bad until it can",
                            dp.instrument, dp.point, out.reason, dp.formula.text)
                self.failing[key] = out.reason
        elif key in self.failing:
            del self.failing[key]
            log.info("derived point %s.%s is computed again", dp.instrument, dp.point)
        return out

    def status(self) -> dict[str, object]:
        """The status topic's `derived` field."""
        return {"points": len(self.plan.points), "computed": self.computed, "not_computed": self.failed,
                "failing": {f"{i}.{p}": reason for (i, p), reason in sorted(self.failing.items())}}

    def _evaluate(self, dp: DerivedPoint, ts_ms: int) -> Reading:
        samples: dict[str, Sample] = {}
        worst_q, worst_cal, reason = Quality.GOOD, Calibration.VALID, ""
        missing = stale = ""
        for name, inst, point in dp.inputs:
            r = self.latest.get((inst, point))
            if r is None:
                missing = missing or f"{inst}.{point}"
                continue
            if abs(r.ts_ms - ts_ms) > dp.window_ms:
                stale = stale or f"{inst}.{point}"
                continue
            if r.value is None:
                samples[name] = Sample(None, "bad")
                continue
            samples[name] = Sample(r.value, r.quality.value)
        for name in dp.constants:
            hit = self.plan.constant(name).at(ts_ms)
            if hit is None:
                self.failed += 1
                return self._bad(dp, ts_ms, REASON_CONSTANT)
            samples[name] = Sample(hit[0])
        if missing or stale:
            self.failed += 1
            return self._bad(dp, ts_ms, REASON_INPUT_MISSING if missing else REASON_INPUT_STALE)
        value = dp.formula.evaluate(samples)
        if value is None:
            self.failed += 1
            bad_input = any(s.value is None for s in samples.values())
            return self._bad(dp, ts_ms, REASON_INPUT_BAD if bad_input else REASON_NOT_COMPUTABLE)
        for name, inst, point in dp.inputs:
            r = self.latest[(inst, point)]
            # a value despite a bad input: the formula took a fallback branch, so not fully measured
            q = Quality.UNCERTAIN if r.value is None else r.quality
            if _Q_RANK[q] > _Q_RANK[worst_q]:
                worst_q, reason = q, r.reason or reason
            if _CAL_RANK.get(r.calibration, 2) > _CAL_RANK[worst_cal]:
                worst_cal = r.calibration
            del name
        self.computed += 1
        return Reading(dp.instrument, dp.point, ts_ms, value, dp.unit, worst_q, reason, worst_cal)

    @staticmethod
    def _bad(dp: DerivedPoint, ts_ms: int, reason: str) -> Reading:
        return Reading(dp.instrument, dp.point, ts_ms, None, dp.unit, Quality.BAD, reason, Calibration.UNKNOWN)
