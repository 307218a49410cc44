"""The hourly value of a point after manual corrections, for the carbon records that used it.

A correction (`carbon-gateway correct`) is a new record beside the reading it corrects, never an edit. The
rules engine's hourly aggregate stays as published; an hourly carbon record that used it is recomputed
from the hour's stored readings with the corrections applied (a corrected value counts as a valid reading),
summarised by the same pure functions and period rule as the rules engine's aggregate, and re-issued as a
new version naming the corrections. Totalizer hours are not recomputed here: a corrected counter reading
changes the consumption of the hours on both sides, which the rules engine's recovery owns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.instruments import InstrumentSpec
from gateway.model import Derived, Quality
from gateway.rules.aggregates import PeriodSummary, summarize


def corrected_hours(corrections: Sequence[Derived], specs: Sequence[InstrumentSpec], store: Any,
                    watch: set[tuple[str, str]]) -> list[Derived]:
    """An aggregate-like record per (point, hour) touched by these corrections, recomputed with every
    correction stored for that hour (earlier ones included) plus these."""
    by_id = {s.id: s for s in specs}
    hours: dict[tuple[str, str, int], list[Derived]] = {}
    for c in corrections:
        key = (c.instrument, c.point)
        if key not in watch or c.body.get("type", "correction") != "correction":
            continue
        spec = by_id.get(c.instrument)
        p = spec.point_index.get(c.point) if spec is not None else None
        if p is None or p.rules is None or p.totalizer:
            continue
        start = c.ts_ms - c.ts_ms % p.rules.period_ms
        hours.setdefault((c.instrument, c.point, start), []).append(c)
    out: list[Derived] = []
    for (inst, point, start), new in hours.items():
        rules = by_id[inst].point_index[point].rules
        assert rules is not None
        end = start + rules.period_ms
        stored = [Derived("corrections", inst, point, int(b["ts"]), b)
                  for b in store.records("corrections", inst, point, since_ms=start)
                  if int(b["ts"]) < end and b.get("type", "correction") == "correction"]
        value_at: dict[int, float] = {}
        used: list[dict[str, Any]] = []
        for c in [*stored, *new]:  # later corrections of the same reading win; each correction once
            entry = {"ts": c.ts_ms, "value": c.body["value"], "author": c.body.get("author"),
                     "reason": c.body.get("reason"), "received": c.body.get("received"),
                     "supersedes_reading_id": c.body.get("supersedes_reading_id")}
            if entry in used:
                continue
            value_at[c.ts_ms] = float(c.body["value"])
            used.append(entry)
        summary = PeriodSummary(start, rules.period_ms)
        for r in store.readings_since(inst, point, start):
            if r.ts_ms >= end:
                break
            if r.ts_ms in value_at:
                r = r._replace(value=value_at[r.ts_ms], quality=Quality.GOOD)
            summary.add(r)
        agg = summarize(summary, cadence_ms=rules.cadence_ms, rule=rules.aggregate)
        unit = by_id[inst].point_index[point].unit
        body = {"point": point, "unit": unit, "period_start": start, "period_end": end, "totalizer": False,
                "valid": agg.valid, "mean": agg.mean, "count": agg.count, "valid_count": agg.valid_count,
                "possible": agg.possible, "corrected": True, "corrections": used}
        out.append(Derived("aggregates", inst, point, start, body))
    return out
