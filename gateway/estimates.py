"""The estimate channel (issue 10 item 9): values the gateway cannot compute, given by the plant.

40 CFR 98.35(b)(2) asks for the "best available estimate" of a missing CO2 concentration, flow, fuel or
sorbent usage from all available process data, and Reg. (EU) 2018/2066 Art. 45(4) for a mass or energy
balance for a missing parameter that is not a concentration. Both need a plant model or a lab analysis,
so the estimate comes from outside: `carbon-gateway estimate` checks it against the configuration and
queues it like a correction (the same inbox, atomic file, quarantine and exactly-once ingestion by the
file's SHA-256, gateway/corrections.py). The running gateway stores it as a record on the corrections
stream (`"type": "estimate"`, with author, basis and method) and the point's `best_available_estimate`
selector uses it: each hour it covers gets a new substitute version carrying the estimate (method G5).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.registry import Config
from gateway.store import atomic_write

ESTIMATE_SELECTORS = frozenset({"best_available_estimate"})
MAX_SPAN_MS = 366 * 86_400_000  # one estimate file covers at most a year of hours


class BadEstimate(ValueError):
    """An inbox file that claims to be an estimate but is not a valid one."""


def _point(cfg: Config, instrument: str, point: str, err: type[Exception], field: str | None = None) -> Any:
    def fail(message: str) -> Exception:
        return err(message, field=field) if err is ConfigError else err(message)  # type: ignore[call-arg]

    try:
        spec = cfg.instrument(instrument)
    except KeyError:
        raise fail(f"unknown instrument '{instrument}'") from None
    if point not in spec.point_index:
        raise fail(f"instrument {instrument} has no point '{point}'")
    pspec = spec.point_index[point]
    policy = pspec.rules.substitution if pspec.rules is not None else None
    if policy is None or policy.selector not in ESTIMATE_SELECTORS:
        have = "no missing_data policy" if policy is None else f"missing_data selector {policy.selector}"
        raise fail(f"{instrument}/{point} has {have}, which takes no estimates (best_available_estimate does)")
    return pspec


def check_span(start_ms: int, end_ms: int, period_ms: int) -> str | None:
    if start_ms % period_ms or end_ms % period_ms:
        return f"--from and --to must be on period boundaries ({period_ms // 60_000} min)"
    if end_ms <= start_ms:
        return "--to must be after --from"
    if end_ms - start_ms > MAX_SPAN_MS:
        return "one estimate covers at most 366 days"
    return None


def submit(cfg: Config, store_path: Path, *, instrument: str, point: str, start: str, end: str, value: float,
           author: str, basis: str, method: str, force: bool = False, now_ms: int | None = None) -> Path:
    """Validate and queue one estimate; returns the inbox file. ConfigError (exit 2) names the option."""
    from gateway.corrections import (
        _make_inbox,
        _outside,
        _range_text,
        _service_owner,
        inbox_for,
        measuring_range,
        parse_time,
    )

    pspec = _point(cfg, instrument, point, ConfigError, "--instrument/--point")
    if not math.isfinite(value):
        raise ConfigError(f"must be a finite number, not {value}", field="--value")
    lo, hi = measuring_range(pspec)
    if _outside(value, lo, hi) and not force:
        raise ConfigError(f"{value:g} {pspec.unit} is outside the measuring range {_range_text(lo, hi, pspec.unit)}; "
                          f"add --force to record it anyway", field="--value")
    for name, text in (("--author", author), ("--basis", basis), ("--method", method)):
        if not text.strip():
            raise ConfigError("an estimate needs its author, basis and method (standard 10.3.3)", field=name)
    start_ms, end_ms = parse_time(start), parse_time(end)
    problem = check_span(start_ms, end_ms, pspec.rules.period_ms)
    if problem:
        raise ConfigError(problem, field="--from/--to")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if start_ms > now:
        raise ConfigError("the estimate starts in the future; estimates are for hours already missing",
                          field="--from")
    if not store_path.is_file():
        raise ConfigError(f"no store at {store_path}; give the store `run` uses with --store", field="--store")
    body = {"type": "estimate", "instrument": instrument, "point": point, "ts": start_ms, "hour_end": end_ms,
            "value": value, "unit": pspec.unit, "author": author.strip(), "basis": basis.strip(),
            "method": method.strip(), "created": now, "id": uuid.uuid4().hex,
            "forced": bool(force and _outside(value, lo, hi))}
    inbox = inbox_for(store_path)
    owner = _service_owner(store_path)
    _make_inbox(inbox, owner)
    final = inbox / f"{now}-{body['id']}.json"
    atomic_write(final, json.dumps(body, allow_nan=False).encode(), mode=0o644)
    if owner is not None:
        import os

        os.chown(final, *owner)
    return final


def parse_estimate(body: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """Check an inbox estimate (already JSON); the clean fields or BadEstimate."""
    def text(key: str) -> str:
        v = body.get(key)
        if not isinstance(v, str) or not v.strip():
            raise BadEstimate(f"{key}: missing or not a non-empty string")
        return v.strip()

    def integer(key: str) -> int:
        v = body.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or not -(2**62) < v < 2**62:
            raise BadEstimate(f"{key}: missing or not an integer")
        return v

    instrument, point = text("instrument"), text("point")
    pspec = _point(cfg, instrument, point, BadEstimate)
    value = body.get("value")
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise BadEstimate("value: missing or not a finite number")
    if text("unit") != pspec.unit:
        raise BadEstimate(f"unit '{body['unit']}' is not the unit of {instrument}/{point} ('{pspec.unit}')")
    start, end = integer("ts"), integer("hour_end")
    problem = check_span(start, end, pspec.rules.period_ms)
    if problem:
        raise BadEstimate(problem)
    author, basis, method = text("author"), text("basis"), text("method")
    return {"type": "estimate", "id": text("id"), "instrument": instrument, "point": point, "ts": start,
            "hour_end": end, "value": float(value), "unit": pspec.unit, "reason": f"best available estimate: {basis}",
            "author": author, "basis": basis, "method": method, "created": integer("created"),
            "forced": bool(body.get("forced", False)), "supersedes_reading_id": None}
