"""CPU per reading of the store's batch commit, to price the hash chain (issue 11 item 1; docs/benchmarks.md).

    python bench/chain_cost.py [--readings 200000] [--batch 2000] [--per-message 20] [--rounds 5]

Commits readings shaped like bench.footprint's (20 cems_generic meters, 10 points a poll, a few bad ones) in
writer-sized batches through `Store.commit` and reports process CPU time per reading (median of the
rounds), and the chain's own part measured alone (encoding, CRC tag and SHA-256 per message, as the commit
path does it). To compare with the code before the chain, run the same file with the other tree first on
the path:  PYTHONPATH=/path/to/old/tree python bench/chain_cost.py   (it says which tree it measured and
whether that tree chains). CPU time, not wall time: the figure holds on a busy machine, within its noise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the tree on PYTHONPATH (or this one) provides `gateway`
    sys.path.append(str(Path(__file__).resolve().parents[1]))

import gateway
from bench.footprint import sample_readings
from gateway.store import Store


def commit_cpu(n: int, batch: int, per_message: int) -> float:
    """Process CPU seconds per reading to commit n readings in batches of `batch`."""
    readings = sample_readings(n)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "s.db", synchronous="normal", config_version="bench", check=False)
        try:
            started = time.process_time()
            for i in range(0, n, batch):
                store.commit(readings[i : i + batch], now_ms=1_795_488_600_000 + i, per_message=per_message)
            return (time.process_time() - started) / n
        finally:
            store.close()


def chain_only_cpu(n: int, per_message: int) -> float | None:
    """The chain's share alone, as Store.commit does it: per reading a cached text encoding (per series and
    code), list appends and a tuple-hash tag; per message two packs and one SHA-256."""
    import gateway.store

    chain = getattr(gateway.store, "chain", None)  # the tree measured chains in its commit
    if chain is None:
        return None
    readings = sample_readings(n)
    pack, sha256, absent = struct.pack, hashlib.sha256, chain.ABSENT
    prefixes: dict[tuple[str, str, str, str, str], tuple[bytes, int]] = {}
    prev = b"\0" * 32
    started = time.process_time()
    for start in range(0, n, per_message):
        pres: list[bytes] = []
        times: list[int] = []
        vals: list[float] = []
        tags: list[int] = []
        for r in readings[start : start + per_message]:
            key = (r.point, r.unit, r.quality, r.calibration, r.reason)
            pc = prefixes.get(key)
            if pc is None:
                pre = chain.reading_prefix(r.instrument, r.point, r.unit, r.quality, r.calibration, r.reason)
                pc = prefixes[key] = (pre, zlib.crc32(pre))
            pres.append(pc[0])
            ts, v = r.ts_ms, r.value
            times.append(ts)
            if v is not None and v == v:
                v = v + 0.0
                vals.append(v)
                tags.append(hash((pc[1], ts, v)) & 0xFFFF)
            else:
                vals.append(absent)
                tags.append(hash((pc[1], ts)) & 0xFFFF)
        k = len(times)
        h = sha256(chain.readings_header("M01", 1, 0, "bench", k))
        h.update(b"".join(pres))
        h.update(pack(f"<{k}q", *times))
        h.update(pack(f"<{k}d", *vals))
        prev = sha256(prev + h.digest()).digest()
        pack(f"<{k}H", *tags)
    return (time.process_time() - started) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=2_000)
    ap.add_argument("--per-message", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    tree = str(Path(gateway.__file__).resolve().parents[1])
    commits = [commit_cpu(args.readings, args.batch, args.per_message) for _ in range(args.rounds)]
    alone = [c for c in (chain_only_cpu(args.readings, args.per_message) for _ in range(args.rounds)) if c]
    out = {"tree": tree, "chains": bool(alone), "readings": args.readings, "batch": args.batch,
           "per_message": args.per_message, "rounds": args.rounds,
           "commit_us_per_reading": round(statistics.median(commits) * 1e6, 3),
           "commit_us_all_rounds": [round(c * 1e6, 3) for c in commits],
           "chain_alone_us_per_reading": round(statistics.median(alone) * 1e6, 3) if alone else None}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
