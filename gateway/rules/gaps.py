"""Gap ledger: when a point has had no valid reading for longer than its cadence allows.

Pure functions over an explicit ``GapState``: ``feed`` takes readings in time order, ``tick`` takes the
current time (the runtime calls it from its scheduler, with an injected clock), and ``resume`` rebuilds the
state at start-up from the last stored records, opening a ``gateway_down`` gap when the gateway itself was
not recording. Each returns the new state and the gap-open / gap-close events (standard 10.2.1 b: data
continuous and complete; the events feed alarms and the missing-data rules).

A gap is the open interval (start_ms, end_ms): start_ms is the last valid reading before it (or the time
watching began), end_ms the first valid reading after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from gateway.model import (
    REASON_CALIBRATION,
    REASON_GATEWAY_FAULT,
    REASON_MAINTENANCE,
    REASON_NO_COMMUNICATION,
    REASON_TIMEOUT,
    Quality,
    Reading,
)


class GapCause(StrEnum):
    COMMUNICATION_LOSS = "communication_loss"
    INVALID_DATA = "invalid_data"
    DEVICE_MAINTENANCE = "device_maintenance"
    GATEWAY_DOWN = "gateway_down"
    GATEWAY_OVERLOAD = "gateway_overload"  # polls late because the gateway was busy (one per instrument)


_COMMUNICATION_REASONS = frozenset({REASON_NO_COMMUNICATION, REASON_TIMEOUT, "driver_error", "device_rejected"})
_MAINTENANCE_REASONS = frozenset({REASON_MAINTENANCE, REASON_CALIBRATION, "device_check_function"})


def cause_for_reason(reason: str) -> GapCause:
    """Map a reading's reason code to the cause of the gap it starts."""
    if reason in _COMMUNICATION_REASONS:
        return GapCause.COMMUNICATION_LOSS
    if reason in _MAINTENANCE_REASONS:
        return GapCause.DEVICE_MAINTENANCE
    if reason == REASON_GATEWAY_FAULT:
        return GapCause.GATEWAY_DOWN  # the gateway's polling task failed: not the meter's communication
    return GapCause.INVALID_DATA


@dataclass(frozen=True, slots=True)
class GapRules:
    """A gap opens when no valid reading came for more than cadence_ms + grace_ms."""

    cadence_ms: int
    grace_ms: int | None = None  # None: half a cadence, so poll jitter does not open gaps

    def __post_init__(self) -> None:
        if self.cadence_ms < 1:
            raise ValueError("cadence_ms must be positive")
        if self.grace_ms is not None and self.grace_ms < 0:
            raise ValueError("grace_ms must not be negative")

    @property
    def allowed_ms(self) -> int:
        return self.cadence_ms + (self.cadence_ms // 2 if self.grace_ms is None else self.grace_ms)


@dataclass(frozen=True, slots=True)
class GapEvent:
    kind: str  # "open" | "close"
    instrument: str
    point: str
    start_ms: int
    end_ms: int | None  # None on an open event
    cause: GapCause

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "instrument": self.instrument, "point": self.point,
                "start_ms": self.start_ms, "end_ms": self.end_ms, "cause": self.cause.value}


@dataclass(frozen=True, slots=True)
class GapState:
    instrument: str
    point: str
    reference_ms: int  # last valid reading, or when watching began
    last_seen_ms: int | None = None  # newest reading of any quality
    open_start_ms: int | None = None  # set while a gap is open
    open_cause: GapCause | None = None
    pending_cause: GapCause | None = None  # cause of the first invalid reading since the last valid one

    @property
    def is_open(self) -> bool:
        return self.open_start_ms is not None


Events = tuple[GapEvent, ...]

_new = object.__new__
_set_instrument, _set_point, _set_reference, _set_last_seen, _set_open_start, _set_open_cause, _set_pending = (
    getattr(GapState, name).__set__ for name in GapState.__slots__)


def seen_valid(instrument: str, point: str, ts_ms: int) -> GapState:
    """``GapState(instrument, point, ts_ms, ts_ms)``, built through the slots directly: the frozen dataclass's
    __init__ calls object.__setattr__ once per field, about twice the cost, at one state per reading."""
    s = _new(GapState)
    _set_instrument(s, instrument)
    _set_point(s, point)
    _set_reference(s, ts_ms)
    _set_last_seen(s, ts_ms)
    _set_open_start(s, None)
    _set_open_cause(s, None)
    _set_pending(s, None)
    return s


def start(instrument: str, point: str, now_ms: int) -> GapState:
    """A point that starts being watched now, with nothing stored."""
    return GapState(instrument, point, now_ms)


def tick(state: GapState, now_ms: int, rules: GapRules) -> tuple[GapState, Events]:
    """Open a gap if nothing valid came for too long; a tick never closes a gap."""
    if state.is_open or now_ms - state.reference_ms <= rules.allowed_ms:
        return state, ()
    cause = state.pending_cause or GapCause.COMMUNICATION_LOSS  # silence without any reading: no data came
    opened = replace(state, open_start_ms=state.reference_ms, open_cause=cause)
    return opened, (GapEvent("open", state.instrument, state.point, state.reference_ms, None, cause),)


def feed(state: GapState, ts_ms: int, valid: bool, reason: str, rules: GapRules) -> tuple[GapState, Events]:
    """One reading. Readings older than the newest one seen are ignored (feed in time order)."""
    if state.last_seen_ms is not None and ts_ms < state.last_seen_ms:
        return state, ()
    if valid and state.open_start_ms is None and ts_ms - state.reference_ms <= rules.allowed_ms:
        return seen_valid(state.instrument, state.point, ts_ms), ()  # the usual reading: on time, no gap
    state, events = tick(state, ts_ms, rules)
    if valid:
        if state.open_start_ms is not None and state.open_cause is not None:
            events += (GapEvent("close", state.instrument, state.point, state.open_start_ms, ts_ms,
                                state.open_cause),)
        return GapState(state.instrument, state.point, ts_ms, ts_ms), events
    pending = state.pending_cause or cause_for_reason(reason)
    return replace(state, last_seen_ms=ts_ms, pending_cause=pending), events


def feed_reading(state: GapState, reading: Reading, rules: GapRules) -> tuple[GapState, Events]:
    """A tagged reading: valid when GOOD with a finite value (uncertain is not quality-assured)."""
    valid = reading.quality is Quality.GOOD and reading.value is not None and math.isfinite(reading.value)
    return feed(state, reading.ts_ms, valid, reading.reason, rules)


def resume(instrument: str, point: str, *, now_ms: int, rules: GapRules, last_record_ms: int | None,
           last_valid_ms: int | None, open_gap: tuple[int, GapCause] | None = None) -> tuple[GapState, Events]:
    """Rebuild the ledger at start-up from the store.

    ``open_gap`` is a gap whose open event is stored without a close: it stays open, no new event. Otherwise,
    if the last stored record of the point is older than the cadence allows, the gateway was down: a gap
    opens at the last valid record with cause ``gateway_down``.
    """
    if open_gap is not None:
        start_ms, cause = open_gap
        reference = last_valid_ms if last_valid_ms is not None else start_ms
        return GapState(instrument, point, reference, last_record_ms, start_ms, cause), ()
    if last_record_ms is None:
        return start(instrument, point, now_ms), ()
    reference = last_valid_ms if last_valid_ms is not None else last_record_ms
    pending = None if last_valid_ms == last_record_ms else GapCause.INVALID_DATA
    state = GapState(instrument, point, reference, last_record_ms, pending_cause=pending)
    if now_ms - last_record_ms > rules.allowed_ms:
        opened = replace(state, open_start_ms=reference, open_cause=GapCause.GATEWAY_DOWN)
        return opened, (GapEvent("open", instrument, point, reference, None, GapCause.GATEWAY_DOWN),)
    return tick(state, now_ms, rules)
