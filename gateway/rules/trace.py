"""Substitute records and their trace (docs/rules.md §2.4; standard 10.3.1 and 10.3.3).

A substitute is a separate, derived record: the raw hour stays as it was. Each record carries everything
an auditor needs to recompute it: the routine and MODC-style method code, direction, parameters, PMA or
alpha as an exact fraction and rounded, HB/HA with their hours, the lookback bounds and n, the statistics,
the citation, the config hash, the software version and the id of the record it supersedes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from gateway.rules.lookback import LookbackWindow

JsonValue = float | int | str | bool | None

# MODC-style method codes. 06-12 are the 40 CFR 75.57 codes of the Part 75 routine (or its analogue under
# another policy); G-codes are gateway extensions for routines without a Part 75 equivalent.
METHOD_HBHA = "06"
METHOD_INITIAL = "07"
METHOD_P90 = "08"
METHOD_P95 = "09"
METHOD_EXTREME = "10"
METHOD_BIN_AVERAGE = "11"
METHOD_DEFAULT = "12"
METHOD_MEAN_PLUS_2SIGMA = "G1"
METHOD_LAST_GOOD = "G2"
METHOD_ONE_SIDED = "G3"
METHOD_OTHER_PERCENTILE = "G4"
METHOD_ESTIMATE = "G5"  # a best available estimate given by the plant (issue 10 item 9)

STATUS_PROVISIONAL = "provisional"
STATUS_FINAL = "final"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True, slots=True)
class AvailabilityTrace:
    """PMA (§75.32) or HJ 75 alpha: exact fraction, rounded value, and where it came from."""

    name: str  # "pma" | "alpha"
    exact: str  # "195/2"
    rounded: float  # to 0.1, half up (design-choice: Part 75 records PMA to one decimal)
    source: str  # "given" | "computed"
    qa_hours: int | None = None
    operating_hours: int | None = None
    first_hour: int | None = None
    last_hour: int | None = None
    # HJ 75 alpha: the calendar quarter it was taken over [quarter_start, quarter_end) and whether that quarter
    # had closed (False: quarter-to-date, re-evaluated at quarter close). None for PMA and for a given alpha.
    quarter_start: int | None = None
    quarter_end: int | None = None
    quarter_closed: bool | None = None

    def to_json(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {
            "exact": self.exact, "rounded": self.rounded, "source": self.source, "qa_hours": self.qa_hours,
            "operating_hours": self.operating_hours, "first_hour": self.first_hour, "last_hour": self.last_hour}
        if self.quarter_start is not None:  # only then, so PMA traces (and their record ids) are unchanged
            out.update(quarter_start=self.quarter_start, quarter_end=self.quarter_end,
                       quarter_closed=self.quarter_closed)
        return out


@dataclass(frozen=True, slots=True)
class LookbackTrace:
    w: int
    end_hour: int
    oldest_hour: int | None
    first_hour: int | None
    last_hour: int | None
    n: int
    load_bin: int | None
    n_before_bin_filter: int | None

    @classmethod
    def of(cls, window: LookbackWindow) -> LookbackTrace:
        return cls(window.w, window.end_hour, window.oldest_hour, window.first_hour, window.last_hour,
                   window.n, window.load_bin, window.n_before_bin_filter)

    def to_json(self) -> dict[str, JsonValue]:
        return {"w": self.w, "end_hour": self.end_hour, "oldest_hour": self.oldest_hour,
                "first_hour": self.first_hour, "last_hour": self.last_hour, "n": self.n,
                "load_bin": self.load_bin, "n_before_bin_filter": self.n_before_bin_filter}


@dataclass(frozen=True, slots=True)
class GapTrace:
    """What is common to every substitute of one gap evaluation."""

    instrument: str
    point: str
    selector: str
    direction: str | None
    parameters: tuple[tuple[str, JsonValue], ...]
    config_hash: str
    software_version: str
    gap_start: int
    gap_end: int
    n: int  # operating hours in the gap (so far, while open)
    gap_open: bool
    length_rule: str
    non_operating_hours: tuple[int, ...]
    hb_hour: int | None
    hb_value: float | None
    ha_hour: int | None
    ha_value: float | None
    hbha: float | None  # the HB/HA term used (average, or its fallback)
    hbha_source: str | None  # "average" | "hour_before" | "hour_after" | "default_value" | "potential"
    pma: AvailabilityTrace | None
    alpha: AvailabilityTrace | None
    plan_citation: str | None
    inputs: tuple[tuple[str, JsonValue], ...]  # run inputs that are not config (certification counters...)

    def to_json(self) -> dict[str, Any]:
        return {
            "instrument": self.instrument, "point": self.point, "selector": self.selector,
            "direction": self.direction, "parameters": dict(self.parameters), "config_hash": self.config_hash,
            "software_version": self.software_version, "gap_start": self.gap_start, "gap_end": self.gap_end,
            "n": self.n, "gap_open": self.gap_open, "length_rule": self.length_rule,
            "non_operating_hours": list(self.non_operating_hours),
            "hb": None if self.hb_hour is None else {"hour": self.hb_hour, "value": self.hb_value},
            "ha": None if self.ha_hour is None else {"hour": self.ha_hour, "value": self.ha_value},
            "hbha": self.hbha, "hbha_source": self.hbha_source,
            "pma": None if self.pma is None else self.pma.to_json(),
            "alpha": None if self.alpha is None else self.alpha.to_json(),
            "plan_citation": self.plan_citation, "inputs": dict(self.inputs),
        }


@dataclass(frozen=True, slots=True)
class HourTrace:
    """How one hour's substitute was chosen."""

    hour: int
    ordinal: int  # 1-based position among the gap's operating hours
    n_used: int  # the N that selected the tier (whole gap, or ordinal under per_hour_ordinal)
    routine: str
    method_code: str
    citation: str
    load_bin: int | None
    lookback: LookbackTrace | None
    statistics: tuple[tuple[str, JsonValue], ...]
    unclipped_value: float
    notes: tuple[str, ...]
    alarms: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "hour": self.hour, "ordinal": self.ordinal, "n_used": self.n_used, "routine": self.routine,
            "method_code": self.method_code, "citation": self.citation, "load_bin": self.load_bin,
            "lookback": None if self.lookback is None else self.lookback.to_json(),
            "statistics": dict(self.statistics), "unclipped_value": self.unclipped_value,
            "notes": list(self.notes), "alarms": list(self.alarms),
        }


@dataclass(frozen=True, slots=True)
class SubstituteRecord:
    """One substitute value for one hour of one point: a new record, never an edit of the raw hour.

    ``version`` counts the substitutes issued for this hour (1 = first provisional); ``supersedes`` is
    the record_id of the previous version, which stays stored.
    """

    record_id: str
    instrument: str
    point: str
    hour: int
    value: float
    status: str  # "provisional" | "final"
    version: int
    supersedes: str | None
    gap: GapTrace
    detail: HourTrace

    @property
    def alarm(self) -> bool:
        return bool(self.detail.alarms)

    @property
    def routine(self) -> str:
        return self.detail.routine

    @property
    def method_code(self) -> str:
        return self.detail.method_code

    def to_json(self) -> dict[str, Any]:
        return {
            "record_id": self.record_id, "instrument": self.instrument, "point": self.point, "hour": self.hour,
            "value": self.value, "status": self.status, "version": self.version, "supersedes": self.supersedes,
            "trace": {**self.gap.to_json(), **self.detail.to_json()},
        }


def record_id_for(instrument: str, point: str, hour: int, value: float, status: str, version: int,
                  supersedes: str | None, gap: GapTrace, detail: HourTrace) -> str:
    """A content hash: the same inputs always give the same id (re-runs are idempotent)."""
    body = {"instrument": instrument, "point": point, "hour": hour, "value": value, "status": status,
            "version": version, "supersedes": supersedes, "gap": gap.to_json(), "detail": detail.to_json()}
    return "sub-" + hashlib.sha256(canonical_json(body).encode()).hexdigest()[:32]
