#!/usr/bin/env python3
"""Recompute a carbon-gateway store's hash chains with the standard library only (docs/hash-chain.md).

Independent of the gateway's code on purpose: a third party can read it against the document, run it on a
copy of a store, and compare the heads it prints with the heads the gateway published on MQTT.

    python3 tools/chain_check.py STORE.db        # prints each chain's head; exit 1 at the first mismatch
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
import sys

QUALITY = {0: 0, 1: 1, 2: 2, 3: 2}  # the store's quality code -> the chain's (3 is read as bad)


def text(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<I", len(b)) + b


def genesis(epoch: str, chain: str) -> bytes:
    return hashlib.sha256(b"carbon-gateway/chain/1\x00" + epoch.encode() + b"\x00" + chain.encode()).digest()


ABSENT = bytes.fromhex("000000000000f87f")  # a null (or NaN) value: this quiet NaN, little-endian


def reading_text(instrument: str, point: str, unit: str, quality: int, calibration: int, reason: str) -> bytes:
    return text(instrument) + text(point) + text(unit) + bytes([quality, calibration]) + text(reason)


def value_bytes(value: float | None) -> bytes:
    if value is None or value != value:
        return ABSENT
    return struct.pack("<d", value + 0.0)  # -0.0 is written as +0.0


def readings_rows(readings: list[tuple[str, str, str, int, int, str, int, float | None]]) -> bytes:
    """(instrument, point, unit, quality, calibration, reason, ts_ms, value) rows, encoded by column."""
    return (b"".join(reading_text(*r[:6]) for r in readings) + b"".join(struct.pack("<q", r[6]) for r in readings)
            + b"".join(value_bytes(r[7]) for r in readings))


def readings_header(instrument: str, seq: int, created_ms: int, config_version: str, n: int) -> bytes:
    return b"R" + text(instrument) + struct.pack("<qqI", seq, created_ms, n) + text(config_version)


def record_row(kind: str, instrument: str, point: str, ts_ms: int, body: str, config_version: str,
               stored_ms: int) -> bytes:
    return (text(kind) + text(instrument) + text(point) + struct.pack("<q", ts_ms) + text(config_version)
            + struct.pack("<q", stored_ms) + text(body))


def records_header(kind: str, instrument: str, seq: int, created_ms: int, n: int) -> bytes:
    return b"D" + text(kind) + text(instrument) + struct.pack("<qqI", seq, created_ms, n)


def config_row(version: str, started_ms: int, cause: str, user: str, pid: int, host: str, previous: str | None,
               changes: str, manifest: str) -> bytes:
    return (text(version) + struct.pack("<q", started_ms) + text(cause) + text(user) + struct.pack("<q", pid)
            + text(host) + (b"\x00" + text("") if previous is None else b"\x01" + text(previous)) + text(changes)
            + text(manifest))


def link_hash(prev: bytes, header: bytes, rows: list[bytes]) -> bytes:
    """SHA-256(previous hash || SHA-256(header || rows))."""
    return hashlib.sha256(prev + hashlib.sha256(header + b"".join(rows)).digest()).digest()


def check_store(path: str) -> list[str]:
    """One line per chain ('<name> <last row id> <hash hex>'), or raises ValueError at the first mismatch."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.execute("BEGIN")
    meta = dict(db.execute("SELECT key, value FROM meta"))
    series = {i: (a, b, c) for i, a, b, c in db.execute("SELECT id, instrument, point, unit FROM series")}
    labels = dict(db.execute("SELECT id, text FROM labels"))
    out = []
    for code, name in ((1, "readings"), (2, "records"), (3, "config")):
        if f"chain:{name}" not in meta:
            continue
        _start, last, h = meta[f"chain:{name}"].split()
        prev, expect = bytes.fromhex(h), int(last) + 1
        for first, last_id, stored in db.execute(
                "SELECT first_id, last_id, hash FROM chain_links WHERE chain = ? AND first_id > ? ORDER BY first_id",
                (code, int(last))).fetchall():
            if first != expect:
                raise ValueError(f"{name}: rows {expect}..{first - 1} have no link")
            n = last_id - first + 1
            if code == 1:
                inst, seq, created, cfg, base = db.execute(
                    "SELECT m.instrument, m.seq, m.created_ms, l.text, IFNULL(m.ts_base, 0) FROM messages m "
                    "JOIN labels l ON l.id = m.config WHERE m.kind = 'readings' AND m.first_id = ? AND m.last_id = ?",
                    (first, last_id)).fetchone()
                header = readings_header(inst, seq, created, cfg, n)
                # Schema 10: rows after the message's first store their time as an offset from its ts_base.
                got = [(*series[s], QUALITY[c & 3], (c >> 2) & 3, labels[c >> 4], ts + (base if i > first else 0), v)
                       for i, s, ts, v, c in db.execute("SELECT id, series, ts_ms, value, code FROM samples "
                                                        "WHERE id BETWEEN ? AND ? ORDER BY id", (first, last_id))]
                if len(got) != n:
                    raise ValueError(f"{name}: link {first}..{last_id} has {len(got)} of its {n} rows")
                rows = [readings_rows(got)]
            elif code == 3:
                header = b"C" + text(name) + struct.pack("<I", n)
                rows = [config_row(*r) for r in db.execute(
                    "SELECT version, started_ms, cause, user, pid, host, previous, changes, manifest "
                    "FROM config_history WHERE id BETWEEN ? AND ? ORDER BY id", (first, last_id))]
            else:
                kind, inst, seq, created = db.execute(
                    "SELECT kind, instrument, seq, created_ms FROM messages WHERE kind != 'readings' "
                    "AND first_id = ? AND last_id = ?", (first, last_id)).fetchone()
                header = records_header(kind, inst, seq, created, n)
                rows = [record_row(*r) for r in db.execute(
                    "SELECT kind, instrument, point, ts_ms, body, config_version, stored_ms FROM records "
                    "WHERE id BETWEEN ? AND ? ORDER BY id", (first, last_id))]
            if code != 1 and len(rows) != n:
                raise ValueError(f"{name}: link {first}..{last_id} has {len(rows)} of its {n} rows")
            prev = link_hash(prev, header, rows)
            if prev != bytes(stored):
                raise ValueError(f"{name}: link {first}..{last_id}: recomputed {prev.hex()}, "
                                 f"stored {bytes(stored).hex()}")
            expect = last_id + 1
        out.append(f"{name} {expect - 1} {prev.hex()}")
    return out


if __name__ == "__main__":
    try:
        for line in check_store(sys.argv[1]):
            print(line)
    except (ValueError, TypeError, KeyError) as err:
        print(f"BROKEN: {err}")
        sys.exit(1)
