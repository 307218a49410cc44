"""`carbon-gateway explain RECORD`: the derivation tree of an hourly carbon record, down to raw readings.

RECORD is a carbon record's `record_id` (`co2-...`) or a stored record's number. The tree, read from the
store with a WAL reader (works while the gateway runs, never writes), is what was published, not what
today's configuration would give:

    carbon record (source, hour, version, the version it supersedes, status, quality, difference)
      method (kind, formula, its version and unit, CO2 kg)
        constant (value, unit, source)
        input (value, unit, basis: mean | consumption | substitute | corrected_mean, quality)
          the record it came from: the hourly aggregate (stored record number, counts, availability) or the
          substitute (record id, version, status, method code, citation), or the corrections applied
          the raw readings of that point in that hour: how many, of which quality and calibration status,
          their first and last record number, min and max

A substitute or an aggregate given directly is explained by `carbon-gateway rules explain`.
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
from gateway.store_schema import ABS_TS

_QUALITY = ("good", "uncertain", "bad", "bad")
_CALIBRATION = ("valid", "due_soon", "expired", "unknown")


def add_parser(sub: Any) -> None:
    ex = sub.add_parser("explain", help="print the derivation of an hourly carbon record down to raw readings")
    ex.add_argument("record", help="a carbon record's record_id (co2-...) or a stored record's number")
    add_store_args(ex)
    ex.add_argument("--format", choices=["text", "json"], default="text")


def run(args: argparse.Namespace) -> int:
    db = open_readonly(store_path(args))
    try:
        found = _find(db, args.record)
        if found is None:
            raise ConfigError(f"no carbon record '{args.record}' in the store", field="RECORD")
        rid, kind, body = found
        if kind != "carbon":
            raise ConfigError(f"record {args.record} is a {kind} record: `carbon-gateway rules explain "
                              f"{args.record}` explains it", field="RECORD")
        tree = explain_carbon(db, rid, body)
    finally:
        db.close()
    if args.format == "json":
        print(json.dumps(tree, allow_nan=False))
    else:
        sys.stdout.write(render(tree))
    return 0


def _find(db: sqlite3.Connection, ref: str) -> tuple[int, str, dict[str, Any]] | None:
    if ref.isdigit():
        row = db.execute("SELECT id, kind, body FROM records WHERE id = ?", (int(ref),)).fetchone()
    else:
        # record ids are content hashes inside the body; the newest row carrying it
        row = db.execute("SELECT id, kind, body FROM records WHERE kind = 'carbon' AND body LIKE ? "
                         "ORDER BY id DESC LIMIT 1", (f'%"record_id": "{ref}"%',)).fetchone()
        if row is None:
            row = db.execute("SELECT id, kind, body FROM records WHERE kind = 'carbon' AND body LIKE ? "
                             "ORDER BY id DESC LIMIT 1", (f'%"record_id":"{ref}"%',)).fetchone()
    if row is None:
        return None
    return int(row[0]), str(row[1]), json.loads(row[2])


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def explain_carbon(db: sqlite3.Connection, rid: int, body: dict[str, Any]) -> dict[str, Any]:
    start, end = int(body["hour_start"]), int(body["hour_end"])
    methods = []
    for name, m in body["methods"].items():
        inputs = []
        for inp in m.get("inputs", []):
            node: dict[str, Any] = {k: inp.get(k) for k in ("name", "instrument", "point", "value", "unit", "basis",
                                                             "quality")}
            node["from"] = _source_record(db, inp, start)
            node["raw_readings"] = raw_readings(db, inp["instrument"], inp["point"], start, end)
            inputs.append(node)
        methods.append({"method": name, "kind": m.get("kind"), "formula": m.get("formula"),
                        "formula_unit": m.get("formula_unit"), "formula_version": m.get("formula_version"),
                        "co2_kg": m.get("co2_kg"), "quality": m.get("quality"), "missing": m.get("missing", []),
                        "constants": m.get("constants", []), "inputs": inputs})
    return {"record": rid, "record_id": body.get("record_id"), "source": body.get("source"),
            "hour": [_iso(start), _iso(end)], "version": body.get("version"), "supersedes": body.get("supersedes"),
            "status": body.get("status"), "quality": body.get("quality"), "difference": body.get("difference"),
            "methods": methods}


def _source_record(db: sqlite3.Connection, inp: dict[str, Any], start: int) -> dict[str, Any]:
    ref = inp.get("record") or {}
    if ref.get("kind") == "substitutes":
        row = db.execute("SELECT id, body FROM records WHERE kind = 'substitutes' AND instrument = ? AND point = ? "
                         "AND body LIKE ? ORDER BY id DESC LIMIT 1",
                         (inp["instrument"], inp["point"], f'%{ref.get("record_id")}%')).fetchone()
        out = {"kind": "substitute", "record_id": ref.get("record_id"), "version": ref.get("version"),
               "status": ref.get("status"), "method_code": ref.get("method_code")}
        if row is not None:
            sub = json.loads(row[1])
            trace = sub.get("trace") or {}
            out.update(record=int(row[0]), citation=trace.get("citation"), routine=trace.get("routine"),
                       explain=f"carbon-gateway rules explain {ref.get('record_id')}")
        return out
    row = db.execute("SELECT id, body FROM records WHERE kind = 'aggregates' AND instrument = ? AND point = ? "
                     "AND ts_ms = ? ORDER BY id DESC LIMIT 1", (inp["instrument"], inp["point"], start)).fetchone()
    out = {"kind": "aggregate", "period_start": _iso(ref.get("period_start"))}
    if row is not None:
        agg = json.loads(row[1])
        out.update(record=int(row[0]), valid=agg.get("valid"), count=agg.get("count"),
                   valid_count=agg.get("valid_count"), possible=agg.get("possible"),
                   availability=agg.get("availability_exact") or agg.get("availability"),
                   rule=agg.get("rule"), consumption=agg.get("consumption"), recovered=agg.get("recovered"))
    if ref.get("corrections"):
        out["corrections"] = ref["corrections"]
    return out


def raw_readings(db: sqlite3.Connection, instrument: str, point: str, lo: int, hi: int) -> dict[str, Any]:
    """What the point's stored readings in [lo, hi) were: counts by quality and calibration, ids, range."""
    sids = [int(r[0]) for r in db.execute("SELECT id FROM series WHERE instrument = ? AND point = ?",
                                          (instrument, point))]
    if not sids:
        return {"count": 0}
    marks = ",".join("?" * len(sids))
    # the coarse per-message time index narrows the scan to the messages that can hold the hour
    rows = db.execute(
        f"SELECT s.code & 3, (s.code >> 2) & 3, COUNT(*), MIN(s.id), MAX(s.id), MIN(s.value), MAX(s.value) "
        f"FROM messages m JOIN samples s ON s.id BETWEEN m.first_id AND m.last_id "
        f"WHERE m.kind = 'readings' AND m.instrument = ? AND m.max_ts >= ? AND m.min_ts < ? "
        f"AND s.series IN ({marks}) AND {ABS_TS} >= ? AND {ABS_TS} < ? GROUP BY 1, 2",
        (instrument, lo, hi, *sids, lo, hi)).fetchall()
    by_quality: dict[str, int] = {}
    by_calibration: dict[str, int] = {}
    first = last = None
    low = high = None
    for q, c, n, a, b, vmin, vmax in rows:
        by_quality[_QUALITY[q]] = by_quality.get(_QUALITY[q], 0) + n
        by_calibration[_CALIBRATION[c]] = by_calibration.get(_CALIBRATION[c], 0) + n
        first = a if first is None else min(first, a)
        last = b if last is None else max(last, b)
        if vmin is not None:
            low = vmin if low is None else min(low, vmin)
            high = vmax if high is None else max(high, vmax)
    return {"count": sum(by_quality.values()), "quality": by_quality, "calibration": by_calibration,
            "first_reading": first, "last_reading": last, "min": low, "max": high}


def render(t: dict[str, Any]) -> str:
    lines = [f"carbon record {t['record_id']} (stored record {t['record']})",
             f"  source {t['source']}, hour {t['hour'][0]} .. {t['hour'][1]}",
             f"  version {t['version']}" + (f", supersedes {t['supersedes']}" if t["supersedes"] else "")
             + f"; status {t['status']}, quality {t['quality']}"]
    if t.get("difference"):
        d = t["difference"]
        rel = d.get("relative")
        lines.append(f"  measurement - calculation: {d['measurement_minus_calculation_kg']:.6g} kg"
                     + (f" ({rel * 100:+.2f} %)" if rel is not None else ""))
    for m in t["methods"]:
        co2 = "no value" if m["co2_kg"] is None else f"{m['co2_kg']:.6g} kg CO2"
        lines.append(f"  method {m['method']} ({m['kind']}): {co2}" + (f" [{m['quality']}]" if m["quality"] else ""))
        lines.append(f"    formula {m['formula']}  -> {m['formula_unit']}  (version {m['formula_version']})")
        for miss in m["missing"]:
            lines.append(f"    missing: {miss}")
        for c in m["constants"]:
            lines.append(f"    constant {c['name']} = {c['value']} {c['unit']}  (source: {c['source']})")
        for i in m["inputs"]:
            lines.append(f"    input {i['name']} = {i['value']:.6g} {i['unit']}  {i['instrument']}.{i['point']}, "
                         f"{i['basis']}, {i['quality']}")
            f = i["from"]
            if f["kind"] == "substitute":
                lines.append(f"      substitute {f['record_id']} v{f['version']} {f['status']}, method "
                             f"{f.get('method_code')}, {f.get('citation') or ''}".rstrip(", "))
                lines.append(f"        ({f.get('explain', 'not in this store')})")
            else:
                rec = f.get("record")
                lines.append(f"      aggregate (stored record {rec}): valid {f.get('valid')}, "
                             f"{f.get('valid_count')} of {f.get('possible')} readings valid, rule {f.get('rule')}"
                             if rec is not None else "      aggregate: not in this store (pruned?)")
                for c in f.get("corrections") or []:
                    lines.append(f"      corrected at {_iso(c['ts'])}: {c['value']} by {c.get('author')} "
                                 f"({c.get('reason')}), supersedes reading {c.get('supersedes_reading_id')}")
            r = i["raw_readings"]
            if r["count"]:
                q = ", ".join(f"{k} {v}" for k, v in sorted(r["quality"].items()))
                cal = ", ".join(f"{k} {v}" for k, v in sorted(r["calibration"].items()))
                lines.append(f"      raw readings: {r['count']} ({q}); calibration {cal}; readings "
                             f"{r['first_reading']}..{r['last_reading']}, min {r['min']}, max {r['max']}")
            else:
                lines.append("      raw readings: none in this hour (pruned by retention, or none read)")
    return "\n".join(lines) + "\n"
