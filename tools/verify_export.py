#!/usr/bin/env python3
"""Check a carbon-gateway export against its hash-chain proof, with the Python standard library only.

    python3 verify_export.py [EXPORT_DIR]        # default: the directory this script is in

Reads proof.json and the exported files (readings and derived records, CSV or JSON lines), recomputes the
content digest of every exported link from its rows (docs/hash-chain.md of carbon-gateway), chains every
link of the proof from its start hash, and compares each hash with the proof's. Prints, per chain, the
head (position and hash): compare it, or any exported link's hash, with the `chain` the gateway published
with that message over MQTT (or with `carbon-gateway verify` on the gateway). Exit 0 when everything
matches, 1 naming the first row or link that does not.
"""

from __future__ import annotations

import csv
import hashlib
import json
import struct
import sys
from pathlib import Path

QUALITY = {"good": 0, "uncertain": 1, "bad": 2}
CALIBRATION = {"valid": 0, "due_soon": 1, "expired": 2, "unknown": 3}
ABSENT = bytes.fromhex("000000000000f87f")


class Broken(Exception):
    pass


def text(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<I", len(b)) + b


def value_bytes(v: float | None) -> bytes:
    return ABSENT if v is None or v != v else struct.pack("<d", v + 0.0)


def readings_digest(msg: dict, rows: list[dict]) -> bytes:
    n = len(rows)
    header = (b"R" + text(msg["instrument"]) + struct.pack("<qqI", msg["seq"], msg["created_ms"], n)
              + text(msg["config_version"]))
    block = b"".join(text(r["instrument"]) + text(r["point"]) + text(r["unit"])
                     + bytes([QUALITY[r["quality"]], CALIBRATION[r["calibration"]]]) + text(r["reason"]) for r in rows)
    block += b"".join(struct.pack("<q", r["ts_ms"]) for r in rows) + b"".join(value_bytes(r["value"]) for r in rows)
    return hashlib.sha256(header + block).digest()


def records_digest(msg: dict, rows: list[dict]) -> bytes:
    header = b"D" + text(msg["kind"]) + text(msg["instrument"]) + struct.pack("<qqI", msg["seq"], msg["created_ms"],
                                                                               len(rows))
    block = b"".join(text(r["kind"]) + text(r["instrument"]) + text(r["point"]) + struct.pack("<q", r["ts_ms"])
                     + text(r["config_version"]) + struct.pack("<q", r["stored_ms"]) + text(r["body"]) for r in rows)
    return hashlib.sha256(header + block).digest()


def load(path: Path, fmt: str) -> list[dict]:
    """The rows of one exported file, typed as the proof needs them."""
    if not path.exists():
        return []
    with path.open(encoding="utf-8", newline="") as f:
        raw = [json.loads(line) for line in f] if fmt == "jsonl" else list(csv.DictReader(f))
    out = []
    for r in raw:
        r = dict(r)
        for k in ("id", "ts_ms", "stored_ms"):
            if k in r:
                r[k] = int(r[k])
        if "value" in r and fmt == "csv":
            r["value"] = None if r["value"] == "" else float(r["value"])
        elif "value" in r and r["value"] is not None:
            r["value"] = float(r["value"])
        out.append(r)
    return out


def check(directory: Path) -> list[str]:
    proof = json.loads((directory / "proof.json").read_text(encoding="utf-8"))
    fmt = proof["format"]
    files = {"readings": load(directory / f"readings.{fmt}", fmt)}
    records = []
    for name in proof["files"]:
        if not name.startswith("readings."):
            records += load(directory / name, fmt)
    files["records"] = records
    lines = []
    for name, part in proof["chains"].items():
        rows = {r["id"]: r for r in files[name]}
        used: set[int] = set()
        prev, prev_pos = bytes.fromhex(part["start"]["hash"]), part["start"]["pos"]
        for link in part["links"]:
            first, last = link["first"], link["last"]
            if first != prev_pos + 1:
                raise Broken(f"{name}: the proof skips rows {prev_pos + 1}..{first - 1}")
            if "digest" in link:
                digest = bytes.fromhex(link["digest"])
            else:
                mine = []
                for i in range(first, last + 1):
                    if i not in rows:
                        raise Broken(f"{name}: row {i} of link {first}..{last} is missing from the export")
                    mine.append(rows[i])
                    used.add(i)
                digest = (readings_digest if name == "readings" else records_digest)(link["message"], mine)
            h = hashlib.sha256(prev + digest).digest()
            if h.hex() != link["hash"]:
                which = "its rows or its message were changed" if "digest" not in link else "the proof was changed"
                raise Broken(f"{name}: link {first}..{last}: recomputed {h.hex()}, proof says {link['hash']}: {which}")
            prev, prev_pos = h, last
        if prev.hex() != part["head"]["hash"] or prev_pos != part["head"]["pos"]:
            raise Broken(f"{name}: the chain ends at {prev_pos} {prev.hex()}, the proof's head is {part['head']}")
        extra = sorted(set(rows) - used)
        if extra:
            raise Broken(f"{name}: row {extra[0]} is in the export but in no link of the proof")
        lines.append(f"{name}: {len(used)} rows in {sum('message' in x for x in part['links'])} links ok; chain "
                     f"{part['start']['pos']}..{prev_pos}, head {prev_pos} {prev.hex()}")
    return lines


def main(argv: list[str]) -> int:
    directory = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent
    try:
        for line in check(directory):
            print(line)
    except Broken as err:
        print(f"BROKEN: {err}")
        return 1
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"BROKEN: unreadable export: {err!r}")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
