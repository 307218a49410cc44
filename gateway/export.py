"""Export a period for auditors, with the hash-chain proof of what is exported (issue 12 item 5).

`export(db, ...)` writes into a directory: `readings.<fmt>` (raw readings), one file per derived kind
(`events` = the gap ledger, `aggregates`, `substitutes` with their traces, `corrections`, `carbon`), `proof.json`
and `verify_export.py`, a standard-library script that recomputes the proof from the exported files alone
(docs/hash-chain.md, "Export").

A chain link is exported whole: every row of a message that has a row in the period (rows outside it are
marked `in_period` false), so the recipient can recompute each link's content digest. `proof.json` lists,
per chain, the contiguous run of links from the first exported one to the last: exported links with their
message header, the others (other instruments', other kinds') as their content digest only, and the hash
before the run. The recipient chains them end to end; the last hash (and every exported link's hash) can be
compared with the `chain` the gateway published with each message, or with `carbon-gateway verify`.
Before writing, every link of the run is recomputed from the store: a store whose chain is broken there is
refused (run `verify`), never exported with a proof that would not hold.
"""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway import chain
from gateway.chain_verify import _CALIBRATION, _QUALITY
from gateway.store import DERIVED_KINDS, read_anchor, sample_rows
from gateway.store_schema import ABS_TS

PROOF_SCHEMA = "carbon-gateway/export-proof/1"
VERIFY_SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "verify_export.py"
READING_COLUMNS = ["id", "instrument", "point", "ts_ms", "value", "unit", "quality", "reason", "calibration",
                   "in_period"]
RECORD_COLUMNS = ["id", "kind", "instrument", "point", "ts_ms", "config_version", "stored_ms", "body", "in_period"]


class ExportError(ValueError):
    """Nothing was exported: a usage error (`usage`), or a store whose chain does not hold (run `verify`)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass
class Summary:
    files: dict[str, int] = field(default_factory=dict)  # file name -> rows written
    heads: dict[str, tuple[int, str]] = field(default_factory=dict)  # chain -> (pos, hash hex) of the run's end


def _value(v: Any) -> Any:
    return None if v is None else float(v)


def _readings_links(db: sqlite3.Connection, lo: int, hi: int, instruments: Sequence[str] | None) -> list[int]:
    """first_id of the readings messages (= links) with a reading of the period, of the chosen instruments."""
    sql = ("SELECT m.first_id FROM messages m WHERE m.kind = 'readings' AND m.max_ts >= ? AND m.min_ts <= ? "
           "AND EXISTS (SELECT 1 FROM samples s WHERE s.id BETWEEN m.first_id AND m.last_id "
           f"AND {ABS_TS} BETWEEN ? AND ?)")
    args: list[Any] = [lo, hi, lo, hi]
    if instruments:
        sql += f" AND m.instrument IN ({','.join('?' * len(instruments))})"
        args += list(instruments)
    return sorted(int(r[0]) for r in db.execute(sql, args))


def _records_links(db: sqlite3.Connection, lo: int, hi: int, instruments: Sequence[str] | None) -> list[int]:
    marks = ",".join("?" * len(DERIVED_KINDS))
    sql = (f"SELECT DISTINCT m.first_id FROM records r JOIN messages m ON m.kind IN ({marks}) AND r.id BETWEEN "
           "m.first_id AND m.last_id WHERE r.ts_ms BETWEEN ? AND ?")
    args: list[Any] = [*DERIVED_KINDS, lo, hi]
    if instruments:
        sql += f" AND r.instrument IN ({','.join('?' * len(instruments))})"
        args += list(instruments)
    return sorted(int(r[0]) for r in db.execute(sql, args))


class _Source:
    """Reads one chain's links and rows back and encodes them as the gateway chained them."""

    def __init__(self, db: sqlite3.Connection, code: int) -> None:
        self.db, self.code = db, code
        if code == chain.CHAIN_READINGS:
            self.series = {sid: (i, p, u) for sid, i, p, u in db.execute(
                "SELECT id, instrument, point, unit FROM series")}
            self.labels = {lid: t for lid, t in db.execute("SELECT id, text FROM labels")}

    def message(self, first: int, last: int) -> dict[str, Any]:
        if self.code == chain.CHAIN_READINGS:
            row = self.db.execute(
                "SELECT m.instrument, m.seq, m.created_ms, l.text FROM messages m LEFT JOIN labels l "
                "ON l.id = m.config WHERE m.kind = 'readings' AND m.last_id = ? AND m.first_id = ?",
                (last, first)).fetchone()
            if row is None:
                raise ExportError(f"readings rows {first}..{last}: their message is missing; run `carbon-gateway "
                                  f"verify`")
            return {"kind": "readings", "instrument": row[0], "seq": row[1], "created_ms": row[2],
                    "config_version": row[3] or ""}
        marks = ",".join("?" * len(DERIVED_KINDS))
        row = self.db.execute(f"SELECT kind, instrument, seq, created_ms FROM messages WHERE kind IN ({marks}) "
                              "AND last_id = ? AND first_id = ?", (*DERIVED_KINDS, last, first)).fetchone()
        if row is None:
            raise ExportError(f"records {first}..{last}: their message is missing; run `carbon-gateway verify`")
        return {"kind": row[0], "instrument": row[1], "seq": row[2], "created_ms": row[3]}

    def rows(self, first: int, last: int) -> list[dict[str, Any]]:
        if self.code == chain.CHAIN_READINGS:
            out = []
            for rid, sid, ts, value, code in sample_rows(self.db, first, last):
                inst, point, unit = self.series[sid]
                out.append({"id": rid, "instrument": inst, "point": point, "ts_ms": ts, "value": _value(value),
                            "unit": unit, "quality": _QUALITY[code & 3], "reason": self.labels[code >> 4],
                            "calibration": _CALIBRATION[(code >> 2) & 3]})
            return out
        return [{"id": rid, "kind": k, "instrument": i, "point": p, "ts_ms": t, "config_version": cv,
                 "stored_ms": sm, "body": b}
                for rid, k, i, p, t, b, cv, sm in self.db.execute(
                    "SELECT id, kind, instrument, point, ts_ms, body, config_version, stored_ms FROM records "
                    "WHERE id BETWEEN ? AND ? ORDER BY id", (first, last))]

    def digest(self, msg: dict[str, Any], rows: list[dict[str, Any]]) -> bytes:
        n = len(rows)
        if self.code == chain.CHAIN_READINGS:
            header = chain.readings_header(msg["instrument"], msg["seq"], msg["created_ms"], msg["config_version"], n)
            block = chain.readings_rows(
                [chain.reading_prefix(r["instrument"], r["point"], r["unit"], r["quality"], r["calibration"],
                                      r["reason"]) for r in rows],
                [r["ts_ms"] for r in rows], [chain.canonical_value(r["value"]) for r in rows])
            return chain.content_digest(header, [block])
        header = chain.records_header(msg["kind"], msg["instrument"], msg["seq"], msg["created_ms"], n)
        return chain.content_digest(header, [chain.record_row(r["kind"], r["instrument"], r["point"], r["ts_ms"],
                                                              r["body"], r["config_version"], r["stored_ms"])
                                             for r in rows])


def _run(db: sqlite3.Connection, code: int, wanted: list[int], lo: int, hi: int
         ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The proof of one chain over the links from wanted[0] to wanted[-1], and the exported rows."""
    name = chain.NAMES[code]
    if not wanted:
        return {}, []
    src = _Source(db, code)
    before = db.execute("SELECT last_id, hash FROM chain_links WHERE chain = ? AND first_id < ? "
                        "ORDER BY first_id DESC LIMIT 1", (code, wanted[0])).fetchone()
    if before is None:
        anchor = read_anchor(db, name)
        if anchor is None:
            raise ExportError(f"the {name} chain has no anchor; run `carbon-gateway verify`")
        before = (anchor.last_id, anchor.hash)
    prev_pos, prev = int(before[0]), bytes(before[1])
    start = {"pos": prev_pos, "hash": prev.hex()}
    chosen = set(wanted)
    links: list[dict[str, Any]] = []
    rows_out: list[dict[str, Any]] = []
    for first, last, stored in db.execute(
            "SELECT first_id, last_id, hash FROM chain_links WHERE chain = ? AND first_id >= ? AND first_id <= ? "
            "ORDER BY first_id", (code, wanted[0], wanted[-1])).fetchall():
        stored = bytes(stored)
        if first != prev_pos + 1:
            raise ExportError(f"the {name} chain has no link for rows {prev_pos + 1}..{first - 1}; run "
                              f"`carbon-gateway verify`")
        msg = src.message(first, last)
        rows = src.rows(first, last)
        if len(rows) != last - first + 1:
            raise ExportError(f"{name} link {first}..{last} has {len(rows)} of its {last - first + 1} rows; run "
                              f"`carbon-gateway verify`")
        digest = src.digest(msg, rows)
        h = chain.chain_hash(prev, digest)
        if h != stored:
            raise ExportError(f"{name} link {first}..{last} does not match its stored hash; run `carbon-gateway "
                              f"verify` (nothing was exported)")
        if first in chosen:
            links.append({"first": first, "last": last, "message": msg, "hash": h.hex()})
            for r in rows:
                r["in_period"] = lo <= r["ts_ms"] <= hi
            rows_out += rows
        else:
            links.append({"first": first, "last": last, "digest": digest.hex(), "hash": h.hex()})
        prev, prev_pos = h, last
    return {"start": start, "links": links, "head": {"pos": prev_pos, "hash": prev.hex()}}, rows_out


def export(db: sqlite3.Connection, out_dir: Path, *, lo_ms: int, hi_ms: int, instruments: Sequence[str] | None,
           fmt: str, gateway: str = "") -> Summary:
    """Write the period's data and its proof into `out_dir` (created; must not hold a previous export)."""
    if fmt not in ("csv", "jsonl"):
        raise ExportError(f"unknown format {fmt!r} (csv or jsonl)", usage=True)
    if lo_ms > hi_ms:
        raise ExportError("--from is after --to", usage=True)
    if (out_dir / "proof.json").exists():
        raise ExportError(f"{out_dir}: holds an export already; give a new directory", usage=True)
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'chain_links'").fetchone() is None:
        raise ExportError("the store has no hash chain (schema older than 8): open it once with this version")
    epoch = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
    proof_r, readings = _run(db, chain.CHAIN_READINGS, _readings_links(db, lo_ms, hi_ms, instruments), lo_ms, hi_ms)
    proof_d, records = _run(db, chain.CHAIN_RECORDS, _records_links(db, lo_ms, hi_ms, instruments), lo_ms, hi_ms)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = Summary()
    summary.files[f"readings.{fmt}"] = _write(out_dir / f"readings.{fmt}", READING_COLUMNS, readings, fmt)
    for kind in DERIVED_KINDS:
        mine = [r for r in records if r["kind"] == kind]
        summary.files[f"{kind}.{fmt}"] = _write(out_dir / f"{kind}.{fmt}", RECORD_COLUMNS, mine, fmt)
    proof = {"schema": PROOF_SCHEMA, "gateway": gateway, "epoch": epoch[0] if epoch else "", "from_ms": lo_ms,
             "to_ms": hi_ms, "instruments": sorted(instruments) if instruments else None, "format": fmt,
             "files": sorted(summary.files), "chains": {}}
    for name, part in (("readings", proof_r), ("records", proof_d)):
        if part:
            proof["chains"][name] = part
            summary.heads[name] = (part["head"]["pos"], part["head"]["hash"])
    (out_dir / "proof.json").write_text(json.dumps(proof, indent=1) + "\n", encoding="utf-8")
    shutil.copyfile(VERIFY_SCRIPT, out_dir / "verify_export.py")
    return summary


def _write(path: Path, columns: list[str], rows: list[dict[str, Any]], fmt: str) -> int:
    with path.open("w", encoding="utf-8", newline="") as f:
        if fmt == "jsonl":
            for r in rows:
                f.write(json.dumps({c: r[c] for c in columns}, ensure_ascii=False) + "\n")
        else:
            w = csv.writer(f)
            w.writerow(columns)
            for r in rows:
                w.writerow([_cell(r[c]) for c in columns])
    return len(rows)


def _cell(v: Any) -> str:
    """CSV text that reads back to the same value: floats in their shortest exact form, null as empty."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)
