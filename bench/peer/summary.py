"""Summarise the side-by-side harness's results: medians per gateway and load, and carbon-gateway / ThingsBoard.

    python bench/peer/summary.py $BENCH_TMP/results.jsonl [--json out.json]

Reads the `RESULT` lines bench.py appended (one per run; `load` scenario only). CPU per point = the
gateway's CPU seconds in the window / points delivered in it. The ratio is taken between the medians
of the runs in the file: give each session its own BENCH_TMP (the harness takes TB_VENV and
HARNESS_VENV from the environment, so the virtualenvs can live elsewhere): one file, one session.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def load(path: Path) -> list[dict[str, Any]]:
    runs = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("scenario") != "load" or not r.get("delivered_points_per_s"):
            continue
        runs.append(r)
    return runs


def fig(values: list[float]) -> dict[str, float | int] | None:
    v = [x for x in values if x is not None]
    if not v:
        return None
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    runs = load(a.results)
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[(r["name"], r["meters"], r.get("variant") or "")].append(r)
    out: dict[str, Any] = {}
    for (name, meters, variant), rs in sorted(groups.items()):
        key = f"{name}{'/' + variant if variant else ''} {meters * 20} points/s"
        out[key] = {
            "cpu_us_per_point": fig([r["cpu_pct"] / 100 / r["delivered_points_per_s"] * 1e6 for r in rs]),
            "cpu_pct": fig([r["cpu_pct"] for r in rs]),
            "delivered_ratio": fig([r["delivered_ratio"] for r in rs]),
            "rss_start_mib": fig([r.get("rss_start_mib") for r in rs]),
            "rss_end_mib": fig([r.get("rss_end_mib") for r in rs]),
            "rss_max_mib": fig([r.get("rss_max_mib") for r in rs]),
            "lag_max_ms_window": fig([r.get("lag_max_ms_window") for r in rs]),
            "polled_delivered_by_end": fig([r.get("polled_delivered_by_end") for r in rs]),
            "other_cpu_pct": fig([r.get("other_cpu_pct") for r in rs]),
        }
    for meters in sorted({m for _, m, _ in groups}):
        tb = out.get(f"tb {meters * 20} points/s")
        for key in [k for k in out if k.startswith("cg") and k.endswith(f" {meters * 20} points/s")]:
            cg = out[key]
            if tb and tb["cpu_us_per_point"] and cg["cpu_us_per_point"]:
                cg["ratio_cpu_per_point_vs_tb"] = round(cg["cpu_us_per_point"]["median"]
                                                        / tb["cpu_us_per_point"]["median"], 3)
                cg["ratio_rss_end_vs_tb"] = round(cg["rss_end_mib"]["median"] / tb["rss_end_mib"]["median"], 3)
    for key, v in out.items():
        print(f"## {key}")
        for k, f in v.items():
            if isinstance(f, dict):
                print(f"  {k:28s} {f['median']:,.4g} ({f['min']:,.4g}-{f['max']:,.4g}, n={f['n']})")
            elif f is not None:
                print(f"  {k:28s} {f}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
