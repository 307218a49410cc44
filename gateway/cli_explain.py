"""`carbon-gateway rules explain RECORD`: the derivation of a substitute or an aggregate (issue 10 item 10).

RECORD is a substitute's `record_id` (`sub-...`) or a stored record's number (`records.id`, any kind). The
answer is read from the store with a WAL reader (works while the gateway runs, never writes) and from the
record's own trace, so it explains what was published, not what today's configuration would give:

- the rule: selector, routine, method code, the regulation clause (`citation`) and the plan's citation;
- the inputs with their record ids: HB and HA (the hourly aggregates they came from), the lookback window
  (its first and last hour and the aggregates in it), the version it supersedes;
- the intermediate figures: N, PMA or alpha (exact fraction, rounded, over which hours or quarter), the
  window W, the percentile rank k of n, the load range, mean and s;
- the result: the value, and the unclipped value when it was clipped.

For an aggregate: its rule, period, counts and availability (exact), and the readings it was built from
(count and the first and last reading id).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from datetime import UTC, datetime
from typing import Any

from gateway.errors import ConfigError
from gateway.store_read import add_store_args, open_readonly, store_path

HOUR_MS = 3_600_000


def add_parser(rsub: Any) -> None:
    """Registered under `carbon-gateway rules` (gateway/cli.py)."""
    ex = rsub.add_parser("explain", help="print the derivation of a substitute or aggregate record")
    ex.add_argument("record", help="a substitute's record_id (sub-...) or a stored record's number")
    add_store_args(ex)
    ex.add_argument("--format", choices=["text", "json"], default="text")


def run(args: argparse.Namespace) -> int:
    db = open_readonly(store_path(args))
    try:
        found = find_record(db, args.record)
        if found is None:
            raise ConfigError(f"no substitute or stored record '{args.record}' in the store", field="RECORD")
        rid, kind, body = found
        out = explain_substitute(db, rid, body) if kind == "substitutes" else explain_aggregate(db, rid, kind, body)
    finally:
        db.close()
    if args.format == "json":
        print(json.dumps(out, allow_nan=False, sort_keys=False))
    else:
        sys.stdout.write(render(out))
    return 0


def find_record(db: sqlite3.Connection, ref: str) -> tuple[int, str, dict[str, Any]] | None:
    """(records.id, kind, body) of a `sub-...` record id (its newest row) or of a records.id number."""
    if ref.isdigit():
        row = db.execute("SELECT id, kind, body FROM records WHERE id = ?", (int(ref),)).fetchone()
    else:
        # record_id is inside the JSON body; the LIKE prefilter keeps this a single scan of substitutes.
        row = db.execute("SELECT id, kind, body FROM records WHERE kind = 'substitutes' AND body LIKE ? "
                         "AND json_extract(body, '$.record_id') = ? ORDER BY id DESC LIMIT 1",
                         (f"%{ref}%", ref)).fetchone()
    if row is None:
        return None
    return int(row[0]), str(row[1]), json.loads(row[2])


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _aggregate_ids(db: sqlite3.Connection, instrument: str, point: str, first_ms: int, last_ms: int
                   ) -> list[tuple[int, int]]:
    """(ts_ms, records.id) of the point's aggregates with first_ms <= ts <= last_ms (the newest per period)."""
    rows = db.execute("SELECT ts_ms, MAX(id) FROM records WHERE kind = 'aggregates' AND instrument = ? AND point = ? "
                      "AND ts_ms BETWEEN ? AND ? GROUP BY ts_ms ORDER BY ts_ms", (instrument, point, first_ms,
                                                                                  last_ms)).fetchall()
    return [(int(t), int(i)) for t, i in rows]


def _hour_input(db: sqlite3.Connection, instrument: str, point: str, period_ms: int,
                side: dict[str, Any] | None) -> dict[str, Any] | None:
    if not side:
        return None
    ts = int(side["hour"]) * period_ms
    ids = _aggregate_ids(db, instrument, point, ts, ts)
    return {"hour": side["hour"], "hour_start": _iso(ts), "value": side.get("value"),
            "aggregate_record": ids[0][1] if ids else None}


def explain_substitute(db: sqlite3.Connection, rid: int, body: dict[str, Any]) -> dict[str, Any]:
    t = body.get("trace", {})
    instrument, point = body["instrument"], body["point"]
    period_ms = int(body.get("hour_end", 0)) - int(body.get("hour_start", 0)) or HOUR_MS
    lookback = t.get("lookback")
    window = None
    if lookback:
        window = dict(lookback)
        if lookback.get("first_hour") is not None and lookback.get("last_hour") is not None:
            ids = _aggregate_ids(db, instrument, point, int(lookback["first_hour"]) * period_ms,
                                 int(lookback["last_hour"]) * period_ms)
            window.update(aggregates=len(ids), first_record=ids[0][1] if ids else None,
                          last_record=ids[-1][1] if ids else None, first_hour_start=_iso(
                              int(lookback["first_hour"]) * period_ms), last_hour_start=_iso(
                              int(lookback["last_hour"]) * period_ms))
    superseded = None
    if body.get("supersedes"):
        found = find_record(db, body["supersedes"])
        if found is not None:
            superseded = {"record_id": body["supersedes"], "record": found[0], "value": found[2].get("value"),
                          "status": found[2].get("status"), "method_code": found[2].get("trace", {}).get("method_code")}
        else:
            superseded = {"record_id": body["supersedes"], "record": None}
    stats = dict(t.get("statistics") or {})
    return {
        "kind": "substitute", "record": rid, "record_id": body.get("record_id"), "instrument": instrument,
        "point": point, "hour": body.get("hour"), "hour_start": _iso(body.get("hour_start")),
        "status": body.get("status"), "version": body.get("version"), "supersedes": superseded,
        "rule": {"selector": t.get("selector"), "routine": t.get("routine"), "method_code": t.get("method_code"),
                 "citation": t.get("citation"), "plan_citation": t.get("plan_citation"),
                 "direction": t.get("direction"), "length_rule": t.get("length_rule"),
                 "config_hash": t.get("config_hash"), "software_version": t.get("software_version")},
        "inputs": {"hb": _hour_input(db, instrument, point, period_ms, t.get("hb")),
                   "ha": _hour_input(db, instrument, point, period_ms, t.get("ha")),
                   "lookback": window, "non_operating_hours": t.get("non_operating_hours") or [],
                   "run_inputs": t.get("inputs") or {}},
        "figures": {"gap": {"start": t.get("gap_start"), "end": t.get("gap_end"), "n": t.get("n"),
                            "open": t.get("gap_open"), "ordinal": t.get("ordinal"), "n_used": t.get("n_used")},
                    "hbha": t.get("hbha"), "hbha_source": t.get("hbha_source"), "pma": t.get("pma"),
                    "alpha": t.get("alpha"), "load_bin": t.get("load_bin"), "statistics": stats},
        "result": {"value": body.get("value"), "unit": body.get("unit"), "unclipped_value": t.get("unclipped_value"),
                   "notes": t.get("notes") or [], "alarms": t.get("alarms") or []},
    }


def explain_aggregate(db: sqlite3.Connection, rid: int, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    row = db.execute("SELECT instrument, point FROM records WHERE id = ?", (rid,)).fetchone()
    instrument, point = str(row[0]), str(row[1])
    out: dict[str, Any] = {"kind": kind.rstrip("s"), "record": rid, "instrument": instrument, "point": point,
                           "body": body}
    if kind != "aggregates":
        return out
    start, end = int(body["period_start"]), int(body["period_end"])
    from gateway.store import point_rows, series_of

    rows = point_rows(db, series_of(db, instrument, point), instrument, lo=start, hi=end - 1)
    good = [r for r in rows if (r[4] & 3) == 0 and r[3] is not None]
    out.update({
        "rule": {"rule": body.get("rule"), "totalizer": body.get("totalizer"),
                 "citation": _AGG_CITATION.get(str(body.get("rule")), "configured share of possible readings")},
        "period": {"start": _iso(start), "end": _iso(end)},
        "inputs": {"readings": len(rows), "first_reading": rows[0][0] if rows else None,
                   "last_reading": rows[-1][0] if rows else None, "good_readings": len(good)},
        "figures": {k: body.get(k) for k in ("count", "valid_count", "possible", "availability_exact",
                                             "availability", "operating", "load_bin", "consumption_exact",
                                             "rollovers", "resets", "recovered") if k in body},
        "result": {"valid": body.get("valid"), "mean": body.get("mean"), "min": body.get("min"),
                   "max": body.get("max"), "consumption": body.get("consumption"), "unit": body.get("unit")},
    })
    return out


_AGG_CITATION = {
    "mrr": "Reg. (EU) 2018/2066 Art. 44(2): valid with at least 80 % of the possible data points",
    "part75": "40 CFR 75.10(d): a valid reading in each 15-minute quadrant of the hour",
}


def _lines(prefix: str, value: dict[str, Any]) -> list[str]:
    """Nested fields as `a.b: value` lines, empty ones left out."""
    out: list[str] = []
    for k, v in value.items():
        if v is None or v == [] or v == {}:
            continue
        if isinstance(v, dict):
            out.extend(_lines(f"{prefix}{k}.", v))
        else:
            out.append(f"{prefix}{k}: {_text(v)}")
    return out


def _text(v: Any) -> str:
    if isinstance(v, list):
        return ", ".join(_text(x) for x in v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


def render(out: dict[str, Any]) -> str:
    """The derivation as indented sections: rule, inputs, figures, result."""
    head = [f"{out['kind']} {out.get('record_id') or ''} (store record {out['record']}) "
            f"{out['instrument']}/{out['point']}".replace("  ", " ")]
    if out["kind"] == "substitute":
        head.append(f"  hour {out['hour']} ({out['hour_start']}), {out['status']}, version {out['version']}")
        sup = out.get("supersedes")
        if sup:
            head.append(f"  supersedes {sup['record_id']} (store record {sup.get('record')}, value "
                        f"{sup.get('value')}, {sup.get('status')}, method {sup.get('method_code')})")
    for section in ("rule", "period", "inputs", "figures", "result"):
        if out.get(section):
            head.append(f"{section}:")
            head.extend(f"  {line}" for line in _lines("", out[section]))
    if "body" in out and "rule" not in out:
        head.extend(f"  {line}" for line in _lines("", out["body"]))
    return "\n".join(head) + "\n"
