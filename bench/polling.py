"""Polling throughput of the gateway's own pollers against the bare pymodbus client (issue 3).

    python -m bench.polling [--runs 3] [--seconds 5] [--meters 20] [--endpoints 4] [--interval 0.001]
                            [--rtu-meters 32] [--rtu-interval 0.05] [--rtu-timeout 0.04] [--baud 115200]
                            [--json out.json]

This process is "the polling process": it runs the gateway's `ConnectionPoller`s (one per endpoint,
connections from `gateway.app.make_connection`, i.e. the real Modbus TCP / RTU drivers) feeding a
`gateway.queue.ReadingQueue`, drained by a consumer task at the store writer's cadence (wait for
data, gather one commit interval, take everything) that only counts what it takes. No store, no
MQTT: this isolates poll + decode + tag + queue.

With the default --interval 0.001 every meter is always due, so the pollers run back to back and the
figure is their capacity (the poller counts the slots it could not serve as missed polls). Give a
realistic interval (e.g. 1.0) to see the cost of a paced load instead.

In the same run, the ceiling: the bare pymodbus client doing the same requests (FC03, 23 registers
per cems_generic meter) in a tight loop over the same connections, in this same process.

TCP part: `python -m gateway simulate` serves N meters on E loopback ports (one process).
RTU part: one RS-485 bus made of a socat pseudo-terminal pair, `simulators.modbus_rtu_server` on one
end serving M meters (unit ids 1..M), the gateway's serial driver on the other. The registry requires
every response timeout on a bus to be below the other meters' poll intervals, so the bus is saturated
by its number of meters (32 x 1/0.05 s = 640 polls/s offered) rather than by a tiny interval. A pty has no baud
rate: bytes cross it at memory speed, so the RTU figures measure software cost (pyserial, pymodbus
RTU framing, the driver's t3.5 bus silence), not wire time; the wire-time bound at --baud is printed
beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    CEMS_REGISTERS,
    POINTS_PER_CEMS_POLL,
    REPO,
    CpuWindow,
    Layout,
    RssSampler,
    SystemCpu,
    Table,
    Watchdog,
    background_pct,
    child_env,
    instruments_yaml,
    machine_info,
    print_header,
    python_cmd,
    start_simulators,
    stop_process,
    wait_for_lines,
    wait_for_quiet,
    write_bench_config,
    write_json,
)
from bench.rawmodbus import run_clients, serial_client, tcp_clients
from gateway.app import group_by_endpoint, make_connection
from gateway.clock import SystemClock
from gateway.errors import ConfigErrors
from gateway.model import Quality
from gateway.poller import ConnectionPoller
from gateway.queue import ReadingQueue
from gateway.registry import Config, load_config

WARMUP_S = 1.0
COMMIT_INTERVAL_S = 0.05  # the store writer's default cadence (store.commit_interval_ms: 50)


# -- the gateway's pollers -----------------------------------------------------------------------------


@dataclass
class PollResult:
    polls_per_s: float
    readings_per_s: float
    good_fraction: float | None
    failures: int
    cpu_pct: float | None
    cpu_us_per_poll: float | None
    peak_rss_mib: float
    sim_cpu_pct: float | None
    background_cpu_pct: float | None
    blocked_puts: int


async def _consume(queue: ReadingQueue, counts: dict[str, int], stop: asyncio.Event) -> None:
    """The writer's cadence without the store: wait for data, gather one commit interval, take it all."""
    while not stop.is_set():
        await queue.wait(COMMIT_INTERVAL_S)
        await asyncio.sleep(COMMIT_INTERVAL_S)
        batch = queue.take(len(queue))
        counts["readings"] += len(batch)
        counts["good"] += sum(1 for r in batch if r.quality is Quality.GOOD)


async def poll_phase(cfg: Config, seconds: float, sim: psutil.Process | None) -> PollResult:
    clock = SystemClock()
    lim = cfg.settings.limits
    queue = ReadingQueue(lim.queue_readings)
    pollers = [ConnectionPoller(make_connection(specs[0], clock), specs, queue, clock,
                                backoff_min_s=lim.backoff_min_s, backoff_max_s=lim.backoff_max_s, seed=1)
               for specs in group_by_endpoint(cfg.instruments).values()]
    counts = {"readings": 0, "good": 0}
    stop = asyncio.Event()
    me = psutil.Process()
    rss = RssSampler(me).start()
    tasks = [asyncio.create_task(p.run(), name=f"poll {p.conn.name}") for p in pollers]
    consumer = asyncio.create_task(_consume(queue, counts, stop), name="consumer")

    def totals() -> tuple[int, int]:
        hs = [h for p in pollers for h in p.health.values()]
        return sum(h.polls for h in hs), sum(h.failures for h in hs)

    try:
        await asyncio.sleep(WARMUP_S)
        windows = [CpuWindow(me), *([CpuWindow(sim)] if sim else []), SystemCpu()]
        for w in windows:
            w.start()
        polls0, fail0 = totals()
        read0, good0 = counts["readings"], counts["good"]
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        span = time.monotonic() - t0
        polls1, fail1 = totals()
        read1, good1 = counts["readings"], counts["good"]
        for w in windows:
            w.stop()
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        peak = rss.stop()
    own, sim_w, system = windows[0], (windows[1] if sim else None), windows[-1]
    polls = polls1 - polls0
    readings = read1 - read0
    return PollResult(
        polls_per_s=polls / span, readings_per_s=readings / span,
        good_fraction=(good1 - good0) / readings if readings else None, failures=fail1 - fail0,
        cpu_pct=own.pct, cpu_us_per_poll=1e6 * own.cpu_s / polls if polls and own.cpu_s is not None else None,
        peak_rss_mib=peak, sim_cpu_pct=sim_w.pct if sim_w else None,
        background_cpu_pct=background_pct(system.pct, (own.pct, sim_w.pct if sim_w else None)),
        blocked_puts=queue.blocked_puts)


async def raw_phase(make_clients: Callable[[], list[tuple[Any, Sequence[int]]]], seconds: float,
                    sim: psutil.Process | None) -> dict[str, Any]:
    simw = CpuWindow(sim) if sim else None
    system = SystemCpu()
    for w in (system, *([simw] if simw else [])):
        w.start()
    res = await run_clients(make_clients(), seconds=seconds)
    out = res.as_dict()
    out["sim_cpu_pct"] = simw.stop() if simw else None
    out["readings_per_s"] = res.rate * POINTS_PER_CEMS_POLL
    # Our own CPU covers connect time too; the figure is an upper bound on the others' use.
    out["background_cpu_pct"] = background_pct(system.stop(), (res.cpu_pct, out["sim_cpu_pct"]))
    return out


def print_run(label: str, r: int, runs: int, res: dict[str, Any]) -> None:
    g, raw = res["gateway"], res["raw"]
    print(f"{label} run {r}/{runs}: pollers {g['polls_per_s']:,.0f} polls/s ({g['cpu_pct']:.0f}% CPU), "
          f"raw pymodbus {raw['req_per_s']:,.0f} req/s ({raw['cpu_pct']:.0f}% CPU), "
          f"ratio {res['ratio_polls']:.2f}, other load {g['background_cpu_pct']:.0f}%", flush=True)


def run_pair(cfg: Config, make_clients: Callable[[], list[tuple[Any, Sequence[int]]]], seconds: float,
             sim: psutil.Process | None) -> dict[str, Any]:
    gw = asyncio.run(poll_phase(cfg, seconds, sim))
    raw = asyncio.run(raw_phase(make_clients, seconds, sim))
    out: dict[str, Any] = {"gateway": gw.__dict__, "raw": raw}
    out["ratio_polls"] = gw.polls_per_s / raw["req_per_s"] if raw["req_per_s"] else None
    out["ratio_cpu_per_poll"] = (gw.cpu_us_per_poll / (1e6 * (raw["cpu_pct"] or 0) / 100 / raw["req_per_s"])
                                 if gw.cpu_us_per_poll and raw["req_per_s"] and raw["cpu_pct"] else None)
    return out


# -- TCP ----------------------------------------------------------------------------------------------------


def tcp_part(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    layout = Layout.new(args.meters, args.endpoints)
    cfg_dir = write_bench_config(tmp / "tcp", instruments_yaml(layout, interval_s=args.interval),
                                 url="mqtt://127.0.0.1:1", store=tmp / "tcp.db")
    cfg = load_config(cfg_dir)
    runs = []
    with open(tmp / "sim-tcp.log", "wb") as log:
        sim = start_simulators(cfg_dir, len(layout.ports), log=log)
        try:
            simp = psutil.Process(sim.pid)
            for r in range(1, args.runs + 1):
                busy = wait_for_quiet(args.wait_quiet)
                res = run_pair(cfg, lambda: tcp_clients(layout.endpoints()), args.seconds, simp)
                res["machine_busy_before_pct"] = busy
                runs.append(res)
                print_run("TCP", r, args.runs, res)
        finally:
            stop_process(sim)
    return runs


# -- RTU ----------------------------------------------------------------------------------------------------


def rtu_available() -> str | None:
    """None if the RTU driver and simulator can be used, else why not."""
    if not (REPO / "drivers" / "modbus" / "rtu.py").exists():
        return "drivers/modbus/rtu.py not available"
    try:
        import drivers.modbus.rtu  # noqa: F401
        import simulators.modbus_rtu_server  # noqa: F401
    except ImportError as err:
        return f"RTU modules cannot be imported ({err})"
    import shutil

    if shutil.which("socat") is None and not Path("/usr/bin/socat").exists():
        return "socat is not installed (apt-get install socat)"
    return None


def rtu_yaml(meters: int, port: Path, *, baud: int, interval_s: float, timeout_s: float) -> str:
    lines = ["instruments:"]
    for u in range(1, meters + 1):
        lines += [
            f"  - id: RTU-{u:03d}",
            f"    name: benchmark CEMS RTU-{u:03d}",
            "    kind: gas_analyzer",
            "    profile: cems_generic",
            f'    connection: {{protocol: modbus_rtu, port: "{port}", baudrate: {baud}, parity: N, stopbits: 1, '
            f"bytesize: 8, unit_id: {u}, timeout_s: {timeout_s}}}",
            f"    poll_interval_s: {interval_s}",
        ]
    return "\n".join(lines) + "\n"


def wire_bound_polls_per_s(baud: int) -> float:
    """Polls/s a real line at `baud` (8N1) allows for one cems_generic read: request 8 bytes, response
    5 + 2 x 23 bytes, plus the driver's t3.5 silence between transactions (device turnaround not counted)."""
    from drivers.modbus.rtu import t35_s

    chars = 8 + 5 + 2 * CEMS_REGISTERS
    return 1.0 / (chars * 10 / baud + t35_s(baud))


def rtu_part(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    from simulators.modbus_rtu_server import SocatPtyPair

    sim_end, gw_end = tmp / "ttySIM", tmp / "ttyGW"
    cfg_dir = write_bench_config(tmp / "rtu", rtu_yaml(args.rtu_meters, gw_end, baud=args.baud,
                                                       interval_s=args.rtu_interval, timeout_s=args.rtu_timeout),
                                 url="mqtt://127.0.0.1:1", store=tmp / "rtu.db")
    try:
        cfg = load_config(cfg_dir)
    except ConfigErrors as err:
        print("RTU part: the bus configuration was rejected:\n  " + "\n  ".join(e.one_line() for e in err.errors))
        return []
    units = list(range(1, args.rtu_meters + 1))
    from drivers.modbus.rtu import t35_s

    gap_s = t35_s(args.baud)  # the driver keeps the bus silent this long between transactions (no extra delay set)
    runs = []
    with SocatPtyPair(sim_end, gw_end), open(tmp / "sim-rtu.log", "wb") as log:
        # coreutils `timeout` makes the simulator stop by itself even if we never get to stop it (it has no
        # --duration); our SIGINT is passed on to it.
        limit = str(int(60 + args.runs * 3 * (WARMUP_S + 2 * args.seconds + args.wait_quiet)))
        sim = subprocess.Popen(["timeout", "--signal=INT", "--kill-after=5", limit,
                                *python_cmd("-m", "simulators.modbus_rtu_server", str(cfg_dir), "--serve",
                                            str(sim_end))],
                               stdout=subprocess.PIPE, stderr=log, cwd=REPO, env=child_env(), bufsize=0)
        try:
            # one "simulating ..." line per meter once the port is open
            if wait_for_lines(sim, b"simulating", args.rtu_meters, 30.0) < args.rtu_meters:
                raise RuntimeError(f"RTU simulator did not start: {(tmp / 'sim-rtu.log').read_text()[-800:]}")
            kids = psutil.Process(sim.pid).children()
            simp = kids[0] if kids else None
            for r in range(1, args.runs + 1):
                busy = wait_for_quiet(args.wait_quiet)
                res = run_pair(cfg, lambda: serial_client(str(gw_end), units, baudrate=args.baud), args.seconds, simp)
                res["machine_busy_before_pct"] = busy
                pps = res["gateway"]["polls_per_s"]
                res["rtu_ms_per_poll_without_gap"] = 1e3 * (1 / pps - gap_s) if pps else None
                runs.append(res)
                print_run("RTU", r, args.runs, res)
        finally:
            stop_process(sim)
    return runs


# -- report -------------------------------------------------------------------------------------------------


def add_rows(t: Table, label: str, runs: list[dict[str, Any]]) -> None:
    def g(key: str) -> list[float | None]:
        return [r["gateway"][key] for r in runs]

    def raw(key: str) -> list[float | None]:
        return [r["raw"][key] for r in runs]

    t.add(f"{label} pollers: polls", "polls/s", g("polls_per_s"))
    t.add(f"{label} pollers: readings", "readings/s", g("readings_per_s"))
    t.add(f"{label} pollers: good readings", "fraction", g("good_fraction"))
    t.add(f"{label} pollers: poll failures in window", "polls", g("failures"))
    t.add(f"{label} polling process: CPU", "% of 1 core", g("cpu_pct"))
    t.add(f"{label} polling process: CPU per poll", "us", g("cpu_us_per_poll"))
    t.add(f"{label} polling process: peak RSS", "MiB", g("peak_rss_mib"))
    t.add(f"{label} simulator CPU (pollers)", "% of 1 core", g("sim_cpu_pct"))
    t.add(f"{label} other processes CPU (pollers)", "% of 1 core", g("background_cpu_pct"))
    t.add(f"{label} raw pymodbus: requests", "req/s", raw("req_per_s"))
    t.add(f"{label} raw pymodbus: readings equivalent", "readings/s", raw("readings_per_s"))
    t.add(f"{label} raw pymodbus: CPU", "% of 1 core", raw("cpu_pct"))
    t.add(f"{label} raw pymodbus: errors", "requests", raw("errors"))
    t.add(f"{label} simulator CPU (raw)", "% of 1 core", raw("sim_cpu_pct"))
    t.add(f"{label} other processes CPU (raw, upper bound)", "% of 1 core", raw("background_cpu_pct"))
    if label == "RTU":
        t.add("RTU pollers: wall time per poll minus the driver's t3.5 bus silence", "ms",
              [r.get("rtu_ms_per_poll_without_gap") for r in runs])
    t.add(f"{label} ratio pollers / raw (polls/s)", "x", [r["ratio_polls"] for r in runs])
    t.add(f"{label} ratio pollers / raw (CPU per request)", "x", [r["ratio_cpu_per_poll"] for r in runs])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.polling", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="measuring window of each phase")
    ap.add_argument("--meters", type=int, default=20, help="TCP cems_generic meters")
    ap.add_argument("--endpoints", type=int, default=4, help="loopback ports the TCP meters are spread over")
    ap.add_argument("--interval", type=float, default=0.001, help="poll interval (tiny = back to back)")
    ap.add_argument("--rtu-meters", type=int, default=32, help="meters on the RTU bus (0 = skip the RTU part)")
    ap.add_argument("--rtu-interval", type=float, default=0.05,
                    help="RTU poll interval; the registry wants every timeout on a bus below the others' intervals")
    ap.add_argument("--rtu-timeout", type=float, default=0.04, help="RTU response timeout per meter")
    ap.add_argument("--baud", type=int, default=115200, help="RTU line speed (sets t3.5; a pty ignores it)")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="before each run wait up to S seconds for the machine to be nearly idle")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    args.runs = max(1, min(args.runs, 50))
    args.seconds = max(1.0, min(args.seconds, 600.0))
    info = machine_info()
    params = {"runs": args.runs, "seconds": args.seconds, "warmup_s": WARMUP_S, "meters": args.meters,
              "endpoints": args.endpoints, "interval_s": args.interval, "rtu_meters": args.rtu_meters,
              "rtu_interval_s": args.rtu_interval, "rtu_timeout_s": args.rtu_timeout, "baud": args.baud,
              "profile": "cems_generic (1 read of 23 registers -> 10 readings)"}
    print_header("carbon-gateway polling (ConnectionPoller vs bare pymodbus)", info, params)
    started = time.monotonic()
    result: dict[str, Any] = {"benchmark": "polling", "machine": info, "parameters": params}
    table = Table()
    # Expected: runs x 2 parts x 2 phases x (warm-up + window + set-up); the watchdog allows 3x that.
    limit = 60 + 3 * args.runs * 4 * (WARMUP_S + args.seconds + 3 + args.wait_quiet)
    with Watchdog(limit), tempfile.TemporaryDirectory(prefix="carbon-bench-poll-") as tmpdir:
        tmp = Path(tmpdir)
        t = time.monotonic()
        result["tcp"] = tcp_part(args, tmp)
        result["tcp_runtime_s"] = time.monotonic() - t
        add_rows(table, "TCP", result["tcp"])
        why_not = rtu_available() if args.rtu_meters > 0 else "disabled (--rtu-meters 0)"
        if why_not is None:
            t = time.monotonic()
            result["rtu"] = rtu_part(args, tmp)
            result["rtu_runtime_s"] = time.monotonic() - t
            if result["rtu"]:
                result["rtu_wire_bound_polls_per_s"] = wire_bound_polls_per_s(args.baud)
                add_rows(table, "RTU", result["rtu"])
        else:
            print(f"RTU part: {why_not}")
            result["rtu_skipped"] = why_not
    print()
    print(table.render())
    if "rtu_wire_bound_polls_per_s" in result:
        print(f"\nRTU wire-time bound on a real line at {args.baud} baud (8N1, no device turnaround): "
              f"{result['rtu_wire_bound_polls_per_s']:,.0f} polls/s for the whole bus")
    total = time.monotonic() - started
    print(f"\ntotal runtime {total:.0f} s")
    result["summary"] = table.as_json()
    result["runtime_s"] = total
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
