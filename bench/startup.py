"""Start-up with a plant-size configuration (issue 8.5): how long until the gateway polls.

Generates N meters x 20 float32 points (as ../shared/peer-bench/cg/gen_cg_config.py does: 100 meters a
file, one 40-register read per meter), then for each run measures, in fresh processes:

- `validate`: wall and CPU seconds of loading and checking the whole configuration;
- `run`: wall seconds from the process start until it logs that it starts polling ("... instruments
  on ... connections"), and until its first poll reaches a meter (the first 250 meters share one
  endpoint, a socket this bench listens on: the first request that arrives on it is the first poll),
  i.e. start-up to first poll; the process is stopped right after.

"cold" runs delete the parse cache first (<store dir>/config-cache); "cached" runs keep it. The
other meters point at closed loopback ports and the broker URL at a closed port: start-up does not
wait for either. Figures are printed, never asserted.

    python -m bench.startup                 # 2,500 meters, 3 runs of each
    python -m bench.startup --meters 500 --runs 1
"""

from __future__ import annotations

import argparse
import os
import resource
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Table, child_env, machine_info, print_header, stop_process, write_json

POINTS = 20
UNITS_PER_PORT = 250  # unit ids per Modbus TCP endpoint (a serial gateway or a meter farm)


def write_config(directory: Path, meters: int, *, per_file: int = 100, base_port: int = 1,
                 first_port: int | None = None) -> Path:
    """gateway.yaml + instruments/meters_NNN.yaml for `meters` meters of 20 float32 points each (the first
    UNITS_PER_PORT meters on `first_port` if given)."""
    inst = directory / "instruments"
    inst.mkdir(parents=True)
    store = directory / "data" / "gateway.db"
    store.parent.mkdir()
    (directory / "gateway.yaml").write_text(f"""\
gateway: {{id: bench-startup, site: "start-up bench ({meters} meters x {POINTS} points)", timezone: UTC}}
mqtt: {{url: "mqtt://127.0.0.1:1", topic_prefix: carbon}}
store: {{path: "{store}"}}
limits: {{default_poll_interval_s: 1.0, max_config_file_bytes: 10000000}}
""")
    for k, start in enumerate(range(0, meters, per_file)):
        lines = ["instruments:"]
        for i in range(start, min(meters, start + per_file)):
            port, unit = base_port + i // UNITS_PER_PORT, i % UNITS_PER_PORT + 1
            if first_port is not None and i < UNITS_PER_PORT:
                port = first_port
            lines += [
                f"  - id: m{i:05d}",
                f'    name: "bench meter {i}"',
                "    kind: power_meter",
                f'    serial_number: "BENCH-{i:05d}"',
                "    calibration: {last_date: 2026-03-01, interval_months: 24}",
                f"    connection: {{protocol: modbus_tcp, host: 127.0.0.1, port: {port}, unit_id: {unit}, "
                "timeout_s: 1}",
                "    poll_interval_s: 1",
                "    points:",
            ]
            lines += [f'      - {{name: v{2 * p}, table: holding, address: {2 * p}, type: float32, order: ABCD, '
                      f'device_unit: "1"}}' for p in range(POINTS)]
        (inst / f"meters_{k:03d}.yaml").write_text("\n".join(lines) + "\n")
    return store


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def time_validate(config: Path) -> tuple[float, float]:
    cpu0, t0 = children_cpu(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "gateway", "validate", "--config", str(config)],
                          capture_output=True, text=True, timeout=600, env=child_env())
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"validate failed: {proc.stderr[-2000:]}")
    return wall, cpu


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) a running process has used so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_first_poll(config: Path, log: Path,
                    listener: socket.socket) -> tuple[float | None, float | None, float | None]:
    """Seconds from the process start to the log line that polling starts and to the first request that
    reaches `listener` (the first poll of the first meters: connected and sent, not only connecting), and
    the CPU seconds used by then; None if it never came."""
    t0 = time.perf_counter()
    logged: float | None = None
    conn: socket.socket | None = None
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(config), "--duration", "600"],
                                stdout=subprocess.DEVNULL, stderr=err, env=child_env())
    try:
        deadline = t0 + 600
        while time.perf_counter() < deadline and proc.poll() is None:
            if logged is None and b" instruments on " in log.read_bytes():
                logged = time.perf_counter() - t0
            if conn is None and select.select([listener], [], [], 0)[0]:
                conn = listener.accept()[0]
            if conn is not None and select.select([conn], [], [], 0.01)[0]:  # its first request came
                polled, cpu = time.perf_counter() - t0, process_cpu(proc.pid)
                if logged is None and b" instruments on " in log.read_bytes():
                    logged = polled  # both within the last look
                return logged, polled, cpu
            if conn is None:
                time.sleep(0.01)
        return logged, None, None
    finally:
        stop_process(proc)
        if conn is not None:
            conn.close()
        while select.select([listener], [], [], 0)[0]:  # the other connections of this run
            listener.accept()[0].close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meters", type=int, default=2500)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-run", action="store_true", help="measure validate only (no gateway process)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    info = machine_info()
    print_header("start-up with a plant-size configuration", info,
                 {"meters": a.meters, "points_per_meter": POINTS, "runs": a.runs})
    table = Table()
    with tempfile.TemporaryDirectory(prefix="cg-startup-") as tmp, socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        config = Path(tmp) / "cfg"
        store = write_config(config, a.meters, first_port=listener.getsockname()[1])
        size = sum(f.stat().st_size for f in (config / "instruments").iterdir())
        print(f"configuration: {a.meters} meters, {a.meters * POINTS} points, "
              f"{len(list((config / 'instruments').iterdir()))} files, {size / 1e6:.1f} MB")
        cache = store.parent / "config-cache"
        results: dict[str, list[float | None]] = {k: [] for k in (
            "validate_cold_wall", "validate_cold_cpu", "validate_cached_wall", "validate_cached_cpu",
            "polling_logged_cold", "polling_logged_cached", "first_poll_cold", "first_poll_cached",
            "first_poll_cold_cpu", "first_poll_cached_cpu")}
        for _ in range(a.runs):
            shutil.rmtree(cache, ignore_errors=True)
            wall, cpu = time_validate(config)
            results["validate_cold_wall"].append(wall)
            results["validate_cold_cpu"].append(cpu)
            wall, cpu = time_validate(config)  # the cold run filled the cache
            results["validate_cached_wall"].append(wall)
            results["validate_cached_cpu"].append(cpu)
            if not a.no_run:
                shutil.rmtree(cache, ignore_errors=True)
                for kind in ("cold", "cached"):  # the cold run fills the cache
                    logged, polled, cpu = time_first_poll(config, Path(tmp) / "run.log", listener)
                    results[f"polling_logged_{kind}"].append(logged)
                    results[f"first_poll_{kind}"].append(polled)
                    results[f"first_poll_{kind}_cpu"].append(cpu)
                for f in store.parent.glob("gateway.db*"):
                    f.unlink()
        for name, values in results.items():
            if values:
                table.add(name.replace("_", " "), "s", values)
    print(table.render())
    print(f"(load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}; "
          "the machine is shared, so wall times include waiting for a core)")
    write_json(a.json, {"machine": info, "meters": a.meters, "figures": table.as_json()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
