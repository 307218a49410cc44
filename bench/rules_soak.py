"""Rules-stage soak: plant load fed straight into the RulesStage (no I/O), across period closes.

    python -m bench.rules_soak [--meters 500] [--points 20] [--period-s 300] [--periods 2.2]

Synthetic readings for METERS x POINTS points at 1 s (cems_generic points, totalizers included,
repeated to POINTS per meter) go through `RulesStage.process` in chunks of at most `--chunk`
readings (the store writer's bound), with a `tick` after each second, across at least two period
closes. Prints RSS at start, peak and end, CPU µs per reading of the rules stage alone, and the
longest single call (the close pause; the median call for comparison), in CPU time (meaningful on a
shared machine) and in wall time. Reading generation is not timed. To compare with an older tree, run
the same script from that tree's directory (so its `gateway` package is imported). Benchmarks print
figures; they assert nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

from gateway.model import Calibration, Quality, Reading
from gateway.registry import load_config
from gateway.rules_stage import RulesStage

H = 3_600_000
T0 = 490_000 * H  # an hour boundary

GATEWAY = """\
gateway: {id: soak, site: soak, timezone: UTC}
mqtt: {url: "mqtt://127.0.0.1:1883", topic_prefix: carbon}
store: {path: "/tmp/unused.db"}
"""
INSTRUMENT = """\
instruments:
  - id: M0
    name: meter
    kind: gas_analyzer
    measuring_range: {min: 0, max: 25, unit: "%vol"}
    profile: cems_generic
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15999, unit_id: 1}
    poll_interval_s: 1
    points:
      - {name: co2, aggregate: {period_s: PERIOD, rule: mrr}}
      - {name: o2, aggregate: {period_s: PERIOD, rule: fraction, min_fraction: 0.75}}
"""


PLANT_INSTRUMENT = """\
instruments:
  - id: M0
    name: meter
    kind: power_meter
    calibration: {last_date: 2026-03-01, interval_months: 24}
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15999, unit_id: 1}
    poll_interval_s: 1
    points:
""" + "".join(f"      - {{name: v{2 * p}, table: holding, address: {2 * p}, type: float32, order: ABCD, "
              f'device_unit: "1", aggregate: {{period_s: PERIOD, rule: mrr}}}}\n' for p in range(20))


def build(meters: int, points: int, period_s: int, like: str = "cems") -> list:
    d = Path(tempfile.mkdtemp(prefix="rules-soak-"))
    (d / "instruments").mkdir()
    (d / "gateway.yaml").write_text(GATEWAY)
    template = PLANT_INSTRUMENT if like == "plant" else INSTRUMENT
    (d / "instruments" / "plant.yaml").write_text(template.replace("PERIOD", str(period_s)))
    spec = load_config(d).instruments[0]
    ruled = [p for p in spec.points if p.rules is not None]
    with_period = [p if p.rules.period_ms == period_s * 1000 else
                   dataclasses.replace(p, rules=dataclasses.replace(p.rules, period_ms=period_s * 1000))
                   for p in ruled]
    pts = [dataclasses.replace(with_period[i % len(with_period)], name=f"{with_period[i % len(with_period)].name}_{i}")
           for i in range(points)]
    base = dataclasses.replace(spec, points=tuple(pts)) if isinstance(spec.points, tuple) else \
        dataclasses.replace(spec, points=pts)
    return [dataclasses.replace(base, id=f"M{m:04d}") for m in range(meters)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meters", type=int, default=500)
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--period-s", type=int, default=300)
    ap.add_argument("--periods", type=float, default=2.2, help="how many periods to run (>= 2 for two closes)")
    ap.add_argument("--chunk", type=int, default=2000,
                    help="readings per process() call, as the store writer takes them (app.WRITE_CHUNK)")
    ap.add_argument("--like", choices=["cems", "plant"], default="cems",
                    help="cems: cems_generic points (totalizers included); plant: bench.plant's 20 float32 "
                         "power_meter points (gen_cg_config.py), all with the mrr rule")
    ap.add_argument("--ticks-per-s", type=int, default=1,
                    help="tick() calls a second (the store writer ticks at every commit: 20 with 50 ms commits)")
    ap.add_argument("--spread-ms", type=int, default=0,
                    help="meter m's readings are stamped m * SPREAD / meters ms into the second (0: all at once)")
    ap.add_argument("--label", default="")
    args = ap.parse_args(argv)
    proc = psutil.Process()
    specs = build(args.meters, args.points, args.period_s, args.like)
    keys = [(s.id, p.name, p.unit, p.rules.totalizer is not None) for s in specs for p in s.points]
    stage = RulesStage(specs, now_ms=T0)
    # Meters answer one after the other through the second (the gateway's event loop serialises them).
    spread = {s.id: m * args.spread_ms // max(1, len(specs)) for m, s in enumerate(specs)}
    seconds = int(args.period_s * args.periods)
    gc.collect()
    rss0 = proc.memory_info().rss
    peak = rss0
    calls: list[float] = []
    call_cpu: list[float] = []
    cpu = 0.0
    n = 0
    for s in range(seconds):
        ts = T0 + s * 1000
        wave = (s % 97) * 0.01
        batch = [Reading(i, p, ts + spread[i], (s * 0.5 + 1000.0) if total else 10.0 + wave, u, Quality.GOOD, "",
                         Calibration.VALID) for i, p, u, total in keys]
        for i in range(0, len(batch), args.chunk):
            chunk = batch[i : i + args.chunk]
            last = i + args.chunk >= len(batch)
            t_cpu, t_wall = time.process_time(), time.perf_counter()
            stage.process(chunk)
            if last:
                stage.tick(ts + 500)
                for k in range(1, args.ticks_per_s):  # the store writer ticks at every commit
                    stage.tick(ts + 500 + k * 1000 // args.ticks_per_s)
            calls.append(time.perf_counter() - t_wall)
            call_cpu.append(time.process_time() - t_cpu)
            cpu += call_cpu[-1]
        n += len(batch)
        if s % 10 == 0:
            peak = max(peak, proc.memory_info().rss)
    rss1 = proc.memory_info().rss
    peak = max(peak, rss1)
    out = {"label": args.label, "meters": args.meters, "points": args.points, "period_s": args.period_s,
           "seconds": seconds, "readings": n, "chunk": args.chunk, "rss_start_mib": round(rss0 / 2**20, 1),
           "rss_peak_mib": round(peak / 2**20, 1), "rss_end_mib": round(rss1 / 2**20, 1),
           "us_per_reading": round(cpu / n * 1e6, 2),
           "longest_call_cpu_ms": round(max(call_cpu) * 1000, 1),
           "median_call_cpu_ms": round(statistics.median(call_cpu) * 1000, 1),
           "longest_call_wall_ms": round(max(calls) * 1000, 1),
           "median_call_wall_ms": round(statistics.median(calls) * 1000, 1)}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
