"""End-to-end throughput: simulated meters -> `carbon-gateway run` -> private Mosquitto -> subscriber.

    python -m bench.throughput [--runs 3] [--seconds 10] [--meters 20] [--interval 0.05] [--json out.json]

Per run, on one private broker (see docs/benchmarks.md for what each figure means):

1. simulators (`python -m gateway simulate`, one process) for N `cems_generic` meters on E loopback ports;
2. Modbus ceiling: the bare pymodbus client (bench.rawmodbus, own process) reading the same simulators
   over the same E connections as fast as it can;
3. the gateway (`python -m gateway run`, own process, production defaults: synchronous=full, 50 ms
   commits, max_inflight 100) with a QoS 1 subscriber in this process; warm-up, then the measuring window;
4. simulators stopped, the gateway left to drain its outbox, then stopped (SIGTERM); the subscriber's
   (instrument, seq) set is checked against what the store committed: holes, duplicates, lost messages;
5. MQTT ceiling: a bare paho QoS 1 publisher (bench.rawmqtt, own process, max_inflight 100) sending
   messages of the shape and size the gateway sent in this run, to the same broker and subscriber.

Nothing is asserted: figures are printed (median, min, max over runs) and optionally written as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pstats
import signal
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
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
    percentile,
    print_header,
    python_cmd,
    start_simulators,
    stop_process,
    summarize,
    wait_for_quiet,
    write_bench_config,
    write_json,
)
from bench.subscriber import Subscriber
from simulators.broker import PrivateBroker

WARMUP_S = 2.0
FIRST_MESSAGE_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 15.0


def broker_process(broker: PrivateBroker) -> psutil.Process | None:
    """The private mosquitto we started (a child of this process listening on broker.port)."""
    for child in psutil.Process().children(recursive=False):
        with contextlib.suppress(psutil.Error):
            if "mosquitto" in child.name() and any(c.laddr and c.laddr.port == broker.port
                                                   for c in child.net_connections(kind="tcp")):
                return child
    return None


def backlog(db: Path) -> tuple[int, int]:
    """(pending messages, readings they cover) in the store, read-only (WAL lets us read beside the writer)."""
    if not db.exists():
        return 0, 0
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        row = conn.execute("SELECT COUNT(*), COALESCE(SUM(m.last_id - m.first_id + 1), 0) FROM pending p "
                           "JOIN messages m ON m.id = p.message_id WHERE m.kind = 'readings'").fetchone()
    return int(row[0]), int(row[1])


def committed(db: Path) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
    """(all committed readings messages, those still pending) as (instrument, seq) sets."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        allm = {(i, s) for i, s in conn.execute("SELECT instrument, seq FROM messages WHERE kind='readings'")}
        pend = {(i, s) for i, s in conn.execute(
            "SELECT m.instrument, m.seq FROM pending p JOIN messages m ON m.id = p.message_id "
            "WHERE m.kind='readings'")}
    return allm, pend


def thread_cpu(proc: psutil.Process) -> dict[int, float]:
    """CPU seconds per thread id (the main thread's id is the pid)."""
    try:
        return {t.id: t.user_time + t.system_time for t in proc.threads()}
    except psutil.Error:
        return {}


def latency_split(db: Path, sub: Subscriber, t0: float, t1: float) -> dict[str, float | None]:
    """Split the end-to-end latency of the window's messages at the store commit (messages.created_ms):
    poll -> commit (per reading: created_ms - ts) and commit -> receipt (per message)."""
    recv = {k: wall for k, (mono, wall) in sub.recv.items() if t0 <= mono < t1}
    to_commit: list[float] = []
    to_rx: list[float] = []
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        for inst, seq, created, first, last in conn.execute(
                "SELECT instrument, seq, created_ms, first_id, last_id FROM messages WHERE kind='readings'"):
            wall = recv.get((inst, seq))
            if wall is None:
                continue
            to_rx.append(wall - created)
            to_commit += [created - ts for (ts,) in conn.execute(
                "SELECT ts_ms FROM readings WHERE id BETWEEN ? AND ?", (first, last))]
    to_commit.sort()
    to_rx.sort()
    out: dict[str, float | None] = {}
    for q in (50, 99):
        out[f"poll_to_commit_p{q}_ms"] = percentile(to_commit, q)
        out[f"commit_to_receipt_p{q}_ms"] = percentile(to_rx, q)
    return out


def derived_records(db: Path) -> dict[str, int]:
    """Records the rules stage derived during the run, per kind (events, aggregates, substitutes...)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='records'").fetchone():
            return {}
        return {k: int(n) for k, n in conn.execute("SELECT kind, COUNT(*) FROM records GROUP BY kind")}


def status_totals(status: dict[str, Any] | None) -> dict[str, int]:
    inst = (status or {}).get("instruments") or {}
    return {k: sum(int(v.get(k, 0)) for v in inst.values()) for k in ("polls", "failures", "missed_polls")}


def run_json(cmd: list[str], timeout_s: float) -> dict[str, Any]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=REPO, env=child_env(),
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:4])} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def modbus_ceiling(layout: Layout, sim: psutil.Process, seconds: float) -> dict[str, Any]:
    args = []
    for port, units in layout.endpoints().items():
        args += ["--endpoint", f"127.0.0.1:{port}:{','.join(map(str, units))}"]
    sim_cpu, me, system = CpuWindow(sim), CpuWindow(psutil.Process()), SystemCpu()
    for w in (sim_cpu, me, system):
        w.start()
    res = run_json(python_cmd("-m", "bench.rawmodbus", *args, "--seconds", str(seconds)), timeout_s=seconds + 60)
    res["sim_cpu_pct"] = sim_cpu.stop()
    # The client's own figure covers its timed loop; its start-up (imports) falls outside it but inside
    # our window, so the background figure here is an upper bound.
    res["background_cpu_pct"] = background_pct(system.stop(), (res["sim_cpu_pct"], me.stop(), res["cpu_pct"]))
    res["readings_per_s"] = res["req_per_s"] * POINTS_PER_CEMS_POLL
    return res


def mqtt_ceiling(broker: PrivateBroker, bproc: psutil.Process | None, *, k: int, instruments: int,
                 seconds: float) -> dict[str, Any]:
    sub = Subscriber(broker.port, ("raw/+/+/readings",)).start()
    try:
        bcpu = CpuWindow(bproc) if bproc else None
        me, system = CpuWindow(psutil.Process()), SystemCpu()
        for w in (me, system, *([bcpu] if bcpu else [])):
            w.start()
        res = run_json(python_cmd("-m", "bench.rawmqtt", "--port", str(broker.port), "--readings-per-message",
                                  str(k), "--instruments", str(instruments), "--seconds", str(seconds)),
                       timeout_s=seconds + 60)
        res["broker_cpu_pct"] = bcpu.stop() if bcpu else None
        res["background_cpu_pct"] = background_pct(system.stop(), (res["broker_cpu_pct"], me.stop(), res["cpu_pct"]))
        sub.wait_quiet(0.3, 5)
        res["subscriber_messages"] = sub.total_messages
        res["subscriber_duplicates"] = sub.duplicates
    finally:
        sub.stop()
    return res


def one_run(args: argparse.Namespace, run: int, tmp: Path) -> dict[str, Any]:
    layout = Layout.new(args.meters, args.endpoints)
    out: dict[str, Any] = {"run": run, "offered_readings_per_s": args.meters * POINTS_PER_CEMS_POLL / args.interval}
    out["machine_busy_before_pct"] = wait_for_quiet(args.wait_quiet)
    with PrivateBroker() as broker:
        bproc = broker_process(broker)
        db = tmp / f"gw-{run}.db"
        cfg = write_bench_config(tmp / f"cfg-{run}", instruments_yaml(layout, interval_s=args.interval),
                                 url=broker.url, store=db)
        sim_log = open(tmp / f"sim-{run}.log", "wb")  # noqa: SIM115 - closed in finally
        gw_log_path = tmp / f"gw-{run}.log"
        gw_log = open(gw_log_path, "wb")  # noqa: SIM115 - closed in finally
        sim = start_simulators(cfg, len(layout.ports), log=sim_log,
                               max_duration_s=args.baseline_seconds + WARMUP_S + args.seconds + 120)
        gw: subprocess.Popen[bytes] | None = None
        sub: Subscriber | None = None
        rss: RssSampler | None = None
        try:
            simp = psutil.Process(sim.pid)
            # -- Modbus ceiling, gateway not running yet ------------------------------------------------
            out["modbus"] = modbus_ceiling(layout, simp, args.baseline_seconds)
            # -- the gateway ------------------------------------------------------------------------------
            sub = Subscriber(broker.port, ("carbon/+/+/readings", "carbon/+/status")).start()
            safety = WARMUP_S + args.seconds + DRAIN_TIMEOUT_S + 90  # the gateway stops by itself at the latest
            entry = (["-m", "gateway"] if args.profile is None
                     else ["-m", "bench.profiled", str(args.profile / f"gateway-{run}.prof")])
            gw = subprocess.Popen(python_cmd(*entry, "--log-level", "INFO", "run", "--config",
                                             str(cfg), "--mqtt-url", broker.url, "--store", str(db),
                                             "--duration", str(safety)),
                                  stdout=subprocess.DEVNULL, stderr=gw_log, cwd=REPO, env=child_env())
            gwp = psutil.Process(gw.pid)
            rss = RssSampler(gwp).start()
            deadline = time.monotonic() + FIRST_MESSAGE_TIMEOUT_S
            while sub.first_message_mono() is None and time.monotonic() < deadline and gw.poll() is None:
                time.sleep(0.05)
            if sub.first_message_mono() is None:
                raise RuntimeError(f"no readings from the gateway; log: {gw_log_path.read_text()[-1500:]}")
            time.sleep(WARMUP_S)
            cpus = {name: CpuWindow(p) for name, p in (("gateway", gwp), ("sim", simp), ("broker", bproc),
                                                        ("bench", psutil.Process())) if p}
            system = SystemCpu()
            for c in (*cpus.values(), system):
                c.start()
            threads0 = thread_cpu(gwp)
            status0 = status_totals(sub.last_status)
            log0 = gw_log_path.stat().st_size
            t0 = time.monotonic()
            time.sleep(args.seconds)
            t1 = time.monotonic()
            for c in (*cpus.values(), system):
                c.stop()
            threads1 = thread_cpu(gwp)
            with open(gw_log_path, "rb") as f:
                f.seek(log0)
                out["gateway_log_errors_in_window"] = f.read().count(b" ERROR ")
            status1 = status_totals(sub.last_status)
            w = sub.window(t0, t1)
            span = t1 - t0
            out["readings_per_s"] = w.readings / span
            out["messages_per_s"] = w.messages / span
            out["readings_per_message"] = w.readings / w.messages if w.messages else None
            out["gateway_cpu_pct"] = cpus["gateway"].pct
            out["gateway_cpu_us_per_reading"] = (1e6 * cpus["gateway"].cpu_s / w.readings
                                                 if w.readings and cpus["gateway"].cpu_s is not None else None)
            main_s = threads1.get(gwp.pid, 0.0) - threads0.get(gwp.pid, 0.0)
            out["gateway_main_thread_cpu_pct"] = 100.0 * main_s / span
            out["gateway_other_threads_cpu_pct"] = (100.0 * (sum(threads1.values()) - sum(threads0.values())) / span
                                                    - out["gateway_main_thread_cpu_pct"])
            out["sim_cpu_pct"] = cpus["sim"].pct
            out["broker_cpu_pct"] = cpus["broker"].pct if "broker" in cpus else None
            out["bench_cpu_pct"] = cpus["bench"].pct
            out["background_cpu_pct"] = background_pct(system.pct, (c.pct for c in cpus.values()))
            for q in (50, 95, 99):
                out[f"latency_p{q}_ms"] = w.latency(q)
            out["latency_max_ms"] = w.latencies_ms[-1] if w.latencies_ms else None
            out["polls_in_window_by_status"] = status1["polls"] - status0["polls"]
            out["missed_polls_in_window"] = status1["missed_polls"] - status0["missed_polls"]
            out["poll_failures_in_window"] = status1["failures"] - status0["failures"]
            out["backlog_at_window_end_messages"], out["backlog_at_window_end_readings"] = backlog(db)
            # -- stop the meters, let the gateway drain, stop it -----------------------------------------
            stop_process(sim)
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            t_drain = time.monotonic()
            while time.monotonic() < deadline and backlog(db)[0] > 0:
                time.sleep(0.1)
            out["drain_s"] = time.monotonic() - t_drain
            out["gateway_peak_rss_mib"] = rss.stop()
            rss = None
            out["gateway_exit"] = stop_process(gw, sig=signal.SIGTERM, timeout_s=20)
            sub.wait_quiet(0.5, 5)
            allm, pend = committed(db)
            got = sub.received_keys()
            out["backlog_at_stop_messages"] = len(pend)
            out["seq_holes"] = sum(sub.holes().values())
            out["duplicates"] = sub.duplicates
            out["lost_messages"] = len(allm - got - pend)  # acked by the broker, never seen by the subscriber
            out["unknown_messages"] = len(got - allm)
            out.update(latency_split(db, sub, t0, t1))
            out["committed_messages"] = len(allm)
            out["derived_records"] = derived_records(db)
            out["derived_records_total"] = sum(out["derived_records"].values())
            out["gap_events"] = out["derived_records"].get("events", 0)
            sub.stop()
            sub = None
            # -- MQTT ceiling with this run's message shape ------------------------------------------------
            k = round(out["readings_per_message"] or POINTS_PER_CEMS_POLL)
            out["mqtt"] = mqtt_ceiling(broker, bproc, k=max(1, min(1000, k)), instruments=args.meters,
                                       seconds=args.baseline_seconds)
        finally:
            if rss is not None:
                rss.stop()
            if gw is not None:
                stop_process(gw, sig=signal.SIGTERM, timeout_s=20)
            stop_process(sim)
            if sub is not None:
                sub.stop()
            sim_log.close()
            gw_log.close()
    out["ratio_to_mqtt_ceiling"] = out["readings_per_s"] / out["mqtt"]["readings_per_s"]
    out["ratio_to_modbus_ceiling"] = out["readings_per_s"] / out["modbus"]["readings_per_s"]
    return out


def build_table(runs: list[dict[str, Any]]) -> Table:
    t = Table()

    def col(key: str, sub: str | None = None) -> list[float | None]:
        return [(r[sub] if sub else r).get(key) for r in runs]

    t.add("offered load (meters x 10 points / interval)", "readings/s", col("offered_readings_per_s"))
    t.add("gateway: readings delivered to the subscriber", "readings/s", col("readings_per_s"))
    t.add("gateway: messages delivered", "msg/s", col("messages_per_s"))
    t.add("gateway: readings per message", "readings", col("readings_per_message"))
    t.add("gateway: CPU", "% of 1 core", col("gateway_cpu_pct"))
    t.add("gateway: CPU, event-loop thread", "% of 1 core", col("gateway_main_thread_cpu_pct"))
    t.add("gateway: CPU, other threads (paho)", "% of 1 core", col("gateway_other_threads_cpu_pct"))
    t.add("gateway: CPU per delivered reading", "us", col("gateway_cpu_us_per_reading"))
    t.add("gateway: peak RSS", "MiB", col("gateway_peak_rss_mib"))
    t.add("simulators: CPU", "% of 1 core", col("sim_cpu_pct"))
    t.add("broker: CPU", "% of 1 core", col("broker_cpu_pct"))
    t.add("bench process (subscriber): CPU", "% of 1 core", col("bench_cpu_pct"))
    t.add("other processes on the machine: CPU", "% of 1 core", col("background_cpu_pct"))
    t.add("latency p50 (receipt - ts)", "ms", col("latency_p50_ms"))
    t.add("latency p95", "ms", col("latency_p95_ms"))
    t.add("latency p99", "ms", col("latency_p99_ms"))
    t.add("latency split: poll -> store commit p50", "ms", col("poll_to_commit_p50_ms"))
    t.add("latency split: poll -> store commit p99", "ms", col("poll_to_commit_p99_ms"))
    t.add("latency split: store commit -> receipt p50", "ms", col("commit_to_receipt_p50_ms"))
    t.add("latency split: store commit -> receipt p99", "ms", col("commit_to_receipt_p99_ms"))
    t.add("polls in window (gateway status, +-1 s)", "polls", col("polls_in_window_by_status"))
    t.add("missed polls in window (status, +-1 s)", "polls", col("missed_polls_in_window"))
    t.add("poll failures in window (status, +-1 s)", "polls", col("poll_failures_in_window"))
    t.add("backlog at window end", "messages", col("backlog_at_window_end_messages"))
    t.add("backlog at window end", "readings", col("backlog_at_window_end_readings"))
    t.add("drain time after meters stopped", "s", col("drain_s"))
    t.add("backlog at stop (pending in store)", "messages", col("backlog_at_stop_messages"))
    t.add("seq holes at the subscriber (end)", "messages", col("seq_holes"))
    t.add("duplicates at the subscriber", "messages", col("duplicates"))
    t.add("lost (acked, never received)", "messages", col("lost_messages"))
    t.add("gateway ERROR log lines in window", "lines", col("gateway_log_errors_in_window"))
    t.add("derived records stored, whole run (rules stage)", "records", col("derived_records_total"))
    t.add("  of which gap events", "records", col("gap_events"))
    t.add("MQTT ceiling: raw paho QoS1 readings", "readings/s", col("readings_per_s", "mqtt"))
    t.add("MQTT ceiling: messages", "msg/s", col("msg_per_s", "mqtt"))
    t.add("MQTT ceiling: payload size", "bytes", col("payload_bytes_mean", "mqtt"))
    t.add("MQTT ceiling: publisher CPU", "% of 1 core", col("cpu_pct", "mqtt"))
    t.add("MQTT ceiling: broker CPU", "% of 1 core", col("broker_cpu_pct", "mqtt"))
    t.add("MQTT ceiling: other processes CPU", "% of 1 core", col("background_cpu_pct", "mqtt"))
    t.add("Modbus ceiling: raw pymodbus readings", "readings/s", col("readings_per_s", "modbus"))
    t.add("Modbus ceiling: requests", "req/s", col("req_per_s", "modbus"))
    t.add("Modbus ceiling: client CPU", "% of 1 core", col("cpu_pct", "modbus"))
    t.add("Modbus ceiling: simulator CPU", "% of 1 core", col("sim_cpu_pct", "modbus"))
    t.add("Modbus ceiling: errors", "requests", col("errors", "modbus"))
    t.add("Modbus ceiling: other processes CPU (upper bound)", "% of 1 core", col("background_cpu_pct", "modbus"))
    t.add("ratio gateway / MQTT ceiling", "x", col("ratio_to_mqtt_ceiling"))
    t.add("ratio gateway / Modbus ceiling", "x", col("ratio_to_modbus_ceiling"))
    return t


def print_profile(directory: Path, runs: int, top: int = 25) -> None:
    paths = [directory / f"gateway-{r}.prof" for r in range(1, runs + 1)]
    files = [str(p) for p in paths if p.exists()]
    if not files:
        return
    print(f"\n## cProfile (CPU time) of the gateway's event-loop thread ({len(files)} runs merged, top {top})")
    st = pstats.Stats(*files)
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0, help="measuring window per run (after warm-up)")
    ap.add_argument("--meters", type=int, default=20, help="cems_generic meters (10 points, 23 registers each)")
    ap.add_argument("--endpoints", type=int, default=4, help="loopback ports the meters are spread over")
    ap.add_argument("--interval", type=float, default=0.05, help="poll interval per meter, seconds")
    ap.add_argument("--baseline-seconds", type=float, default=4.0, help="window of each ceiling measurement")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="before each run wait up to S seconds for the machine to be nearly idle (shared machines)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="run the gateway under cProfile (CPU clock, event-loop thread), .prof files into DIR")
    args = ap.parse_args(argv)
    args.runs = max(1, min(args.runs, 50))
    args.seconds = max(1.0, min(args.seconds, 600.0))
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    params = {"runs": args.runs, "seconds": args.seconds, "warmup_s": WARMUP_S, "meters": args.meters,
              "endpoints": args.endpoints, "interval_s": args.interval, "baseline_seconds": args.baseline_seconds,
              "profile": "cems_generic (1 read of 23 registers -> 10 readings)",
              "gateway": "synchronous=full, commit 50 ms, max_inflight 100, readings_per_message 100"}
    print_header("carbon-gateway end-to-end throughput", info, params)
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    per_run = 2 * args.baseline_seconds + WARMUP_S + args.seconds + DRAIN_TIMEOUT_S + 20 + args.wait_quiet
    with Watchdog(60 + 3 * args.runs * per_run), tempfile.TemporaryDirectory(prefix="carbon-bench-") as tmpdir:
        for r in range(1, args.runs + 1):
            t = time.monotonic()
            res = one_run(args, r, Path(tmpdir))
            runs.append(res)
            print(f"run {r}/{args.runs}: {res['readings_per_s']:,.0f} readings/s delivered, gateway "
                  f"{res['gateway_cpu_pct']:.0f}% CPU, p99 {res['latency_p99_ms']:.0f} ms, holes {res['seq_holes']}, "
                  f"lost {res['lost_messages']}, other load {res['background_cpu_pct']:.0f}%; "
                  f"ceilings MQTT {res['mqtt']['readings_per_s']:,.0f} / Modbus "
                  f"{res['modbus']['readings_per_s']:,.0f} readings/s ({time.monotonic() - t:.0f} s)", flush=True)
    table = build_table(runs)
    print()
    print(table.render())
    total = time.monotonic() - started
    print(f"\ntotal runtime {total:.0f} s")
    if args.profile is not None:
        print_profile(args.profile, args.runs)
    med = summarize(r["readings_per_s"] for r in runs)
    write_json(args.json, {"benchmark": "throughput", "machine": info, "parameters": params, "runs": runs,
                           "summary": table.as_json(), "runtime_s": total,
                           "headline_readings_per_s": med.as_dict() if med else None})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
