"""RawSample -> Reading: instrument identity, reporting unit, quality and calibration status (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from gateway.instruments import HealthRule, InstrumentSpec
from gateway.model import REASON_NAN, Calibration, Quality, RawSample, Reading
from gateway.registry_schema import NE107

# NAMUR NE 107 category -> (quality applied to the instrument's readings). Priority F > C > S > M.
_NE107_QUALITY = {
    NE107.FAILURE: Quality.BAD,
    NE107.CHECK_FUNCTION: Quality.BAD,
    NE107.OUT_OF_SPECIFICATION: Quality.UNCERTAIN,
    NE107.MAINTENANCE_REQUIRED: Quality.GOOD,
}
_NE107_PRIORITY = [NE107.FAILURE, NE107.CHECK_FUNCTION, NE107.OUT_OF_SPECIFICATION, NE107.MAINTENANCE_REQUIRED]


def active_health(rules: Sequence[HealthRule], samples: Sequence[RawSample]) -> HealthRule | None:
    """The highest-priority health condition signalled by status bits in this poll, if any."""
    if not rules:
        return None
    # A status word read as NaN or Inf says nothing about the device (the word itself is tagged bad/nan):
    # int() of it raised and killed the poll (found by the hypothesis test in tests/unit/test_tagging.py).
    values = {s.point: s.value for s in samples
              if s.value is not None and s.quality is Quality.GOOD and math.isfinite(s.value)}
    active = [r for r in rules if r.point in values and (int(values[r.point]) >> r.bit & 1) != r.invert]
    if not active:
        return None
    return min(active, key=lambda r: _NE107_PRIORITY.index(r.category))


def tag(spec: InstrumentSpec, samples: Sequence[RawSample]) -> list[Reading]:
    """Tag one poll's samples. The raw value is kept; only quality/reason carry judgements."""
    health = active_health(spec.health, samples)
    health_points = {r.point for r in spec.health} if health is not None else _NONE
    out: list[Reading] = []
    index = spec.point_index
    status_at = spec.calibration.status_at
    instrument = spec.id
    last_ts: int | None = None
    calibration = Calibration.UNKNOWN
    for s in samples:
        p = index.get(s.point)
        if p is None:
            continue
        value = s.value
        quality, reason = s.quality, s.reason
        if value is not None:
            if math.isnan(value) or math.isinf(value):
                value, quality, reason = None, Quality.BAD, REASON_NAN
            else:
                conv = p.conversion
                value = value * conv.factor + conv.offset
        if health is not None and quality is not Quality.BAD and s.point not in health_points:
            hq = _NE107_QUALITY[health.category]
            if hq is Quality.BAD or (hq is Quality.UNCERTAIN and quality is Quality.GOOD):
                quality, reason = hq, health.reason
            elif not reason:
                reason = health.reason  # maintenance required: still good, but say so
        ts = s.ts_ms
        if ts != last_ts:  # one poll's samples share their timestamp: one calibration lookup per poll
            calibration, last_ts = status_at(ts), ts
        # tuple.__new__: the same Reading as Reading(...), without the NamedTuple's Python-level __new__.
        out.append(_new(Reading, (instrument, s.point, ts, value, p.unit, quality, reason, calibration)))
    return out


_new = tuple.__new__
_NONE: frozenset[str] = frozenset()
