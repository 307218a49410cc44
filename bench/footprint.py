"""Bytes per reading: on disk (the SQLite store) and on the wire (MQTT payloads, each encoder).

    python -m bench.footprint [--readings 200000] [--per-message 100] [--json out.json]

Disk: readings shaped like the throughput bench's (cems_generic meters, 10 float32-derived points
a poll, a few bad readings) committed through `Store.commit` in 50 ms-sized batches, the WAL
checkpointed, then the file size and each table's and index's share (SQLite's dbstat) divided by
the number of readings. Wire: one message of `--per-message` readings (and one of 20, the size
issue 8 quoted) through every encoder in `gateway.encode.ENCODERS`; the MQTT PUBLISH packet adds
the fixed header, the topic and the packet id, shown separately.

Pure CPU and disk, no network: safe to run on a shared machine, takes a few seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import write_json
from gateway.encode import ENCODERS, EncoderContext, make_encoder
from gateway.model import Calibration, Quality, Reading
from gateway.store import Outgoing, Store

POINTS = ["co2", "o2", "so2", "nox", "co", "dust", "flue_gas_flow", "temperature", "pressure", "humidity"]
UNITS = ["%vol", "%vol", "mg/m3", "mg/m3", "mg/m3", "mg/m3", "m3/h", "degC", "kPa", "%"]
METERS = 20
PROFILES = Path(__file__).resolve().parents[1] / "drivers" / "profiles"


def sample_readings(n: int, *, t0_ms: int = 1_795_488_593_123, points: int = 10) -> list[Reading]:
    """n readings of METERS cems_generic meters polled once a second, values at float32 precision; with
    more than its 10 points, the names repeat with a suffix (a plant meter of 20 points: one 20-reading
    message a poll)."""
    out: list[Reading] = []
    poll = 0
    table = [(POINTS[k % 10] + (f"_{k // 10}" if k >= 10 else ""), UNITS[k % 10]) for k in range(points)]
    while len(out) < n:
        for m in range(METERS):
            for p, (name, unit) in enumerate(table):
                raw = 10.0 + 3.0 * ((poll * 7 + m * 13 + p * 29) % 97) / 97
                value: float | None = struct.unpack("<f", struct.pack("<f", raw))[0]
                quality, reason = Quality.GOOD, ""
                if (poll + m + p) % 997 == 0:
                    value, quality, reason = None, Quality.BAD, "timeout"
                out.append(Reading(f"CEMS-{m:02d}", name, t0_ms + 1000 * poll + 3 * m, value, unit, quality, reason,
                                   Calibration.VALID))
        poll += 1
    return out[:n]


def disk(n: int, per_message: int, directory: Path, points: int = 10) -> dict[str, Any]:
    path = directory / "footprint.db"
    store = Store(path, synchronous="normal", config_version="885f257d90673fa4")
    rows = sample_readings(n, points=points)
    batch = 2_000  # one writer transaction under load (app.WRITE_CHUNK)
    t = time.perf_counter()
    for i in range(0, n, batch):
        store.commit(rows[i:i + batch], now_ms=1_795_488_600_000 + i, per_message=per_message)
    commit_s = time.perf_counter() - t
    store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        parts = dict(db.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall())
        schema = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    size = path.stat().st_size
    return {"readings": n, "schema_version": int(schema), "file_bytes": size, "bytes_per_reading": size / n,
            "by_table_bytes_per_reading": {k: v / n for k, v in sorted(parts.items(), key=lambda kv: -kv[1])},
            "commit_us_per_reading": 1e6 * commit_s / n}


def f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def poll_of(profile: str, instrument: str, t_ms: int = 1_795_488_593_123) -> list[Reading]:
    """One poll of the first 20 points of a shipped profile (its names and units), float32 values of a
    plausible size for the unit: a plant meter's readings message (issue 8's 20 points a meter)."""
    doc = yaml.safe_load((PROFILES / f"{profile}.yaml").read_text())
    size = {"V": 231.7, "A": 84.3, "W": 48_211.0, "var": 9_873.0, "VA": 49_120.0, "Hz": 49.98, "Wh": 3.1e7}
    out = []
    for k, pt in enumerate(doc["points"][:20]):
        unit = str(pt.get("unit", pt.get("device_unit", "")))
        out.append(Reading(instrument, str(pt["name"]), t_ms, f32(size.get(unit, 0.93) * (1 + 0.0137 * k)), unit,
                           Quality.GOOD, "", Calibration.VALID))
    return out


def harness_poll(t_ms: int = 1_795_488_593_123) -> list[Reading]:
    """One poll of the shared harness's meter (bench/peer/gen_cg_config.py): 20 float32 points v0, v2 ..
    v38 of unit "1"; v0 the production second (mod 1e6), v2 the meter index, the rest the farm's values."""
    values = [f32(593_123.0), 17.0, *(f32(1000.0 + 0.25 * k + 0.001 * k * k) for k in range(18))]
    return [Reading("m0017", f"v{2 * k}", t_ms, v, "1", Quality.GOOD, "", Calibration.VALID)
            for k, v in enumerate(values)]


def wire(per_message: int) -> dict[str, Any]:
    rows = [r for r in sample_readings(per_message * METERS) if r.instrument == "CEMS-00"][:per_message]
    return wire_of(rows)


def wire_of(rows: list[Reading]) -> dict[str, Any]:
    ctx = EncoderContext("carbon", "gw-demo-01", "5f0c3a9e8b2d4c1fa7e6d5c4b3a29180", "885f257d90673fa4")
    out: dict[str, Any] = {}
    inst = rows[0].instrument
    for name in ENCODERS:
        pub = make_encoder(name, ctx).message(Outgoing(1, inst, "readings", 4711, 0, rows))
        topic = len(pub.topic.encode())
        body = 2 + topic + 2 + len(pub.payload)  # topic length, topic, packet id (QoS 1), payload
        fixed = 1 + (1 if body < 128 else 2 if body < 16_384 else 3)
        t = time.perf_counter()
        reps = 200
        enc = make_encoder(name, ctx)
        for _ in range(reps):
            enc.message(Outgoing(1, inst, "readings", 4711, 0, rows))
        out[name] = {"payload_bytes": len(pub.payload), "payload_bytes_per_reading": len(pub.payload) / len(rows),
                     "packet_bytes": fixed + body, "packet_bytes_per_reading": (fixed + body) / len(rows),
                     "encode_us_per_reading": 1e6 * (time.perf_counter() - t) / reps / len(rows)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.footprint", description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--per-message", type=int, default=100)
    ap.add_argument("--points", type=int, default=10, help="points a meter for the disk figure (20: the plant's)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        d = disk(args.readings, args.per_message, Path(tmp), args.points)
    print(f"disk (schema {d['schema_version']}): {d['bytes_per_reading']:.1f} bytes/reading "
          f"({d['file_bytes']:,} bytes for {d['readings']:,} readings, {args.per_message} per message, "
          f"{args.points} points a meter); commit {d['commit_us_per_reading']:.2f} us/reading")
    for name, b in d["by_table_bytes_per_reading"].items():
        print(f"  {name:28s} {b:7.1f}")
    w = {f"cems_generic, {k // 10} polls": wire(k) for k in sorted({args.per_message, 20})}
    w["siemens_pac3200, 1 poll"] = wire_of(poll_of("siemens_pac3200", "PM-01"))
    w["sick_marsic300, 1 poll"] = wire_of(poll_of("sick_marsic300", "CEMS-01"))
    w["harness meter, 1 poll"] = wire_of(harness_poll())
    print("\nwire (one readings message):")
    print(f"  {'message':30s} {'encoder':14s} {'payload B':>10s} {'B/reading':>10s} {'packet B/reading':>17s} "
          f"{'encode us/reading':>18s}")
    for shape, encs in w.items():
        for name, e in encs.items():
            n = round(e["payload_bytes"] / e["payload_bytes_per_reading"])
            print(f"  {shape + f' ({n})':30s} {name:14s} {e['payload_bytes']:10,d} "
                  f"{e['payload_bytes_per_reading']:10.1f} {e['packet_bytes_per_reading']:17.1f} "
                  f"{e['encode_us_per_reading']:18.2f}")
    write_json(args.json, {"disk": d, "wire": w})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
