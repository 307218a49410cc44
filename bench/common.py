"""Shared pieces of the benchmarks: machine header, process meters, statistics, tables, configs.

Benchmarks print figures; they never assert on timings. Every loop here is bounded in count and
time, every process started is stopped, and all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import faulthandler
import json
import math
import os
import platform
import select
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from simulators.broker import free_port

REPO = Path(__file__).resolve().parents[1]
POINTS_PER_CEMS_POLL = 10  # cems_generic: 10 points from one read of 23 holding registers
CEMS_REGISTERS = 23


# -- machine ----------------------------------------------------------------------------------------


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            key = key.strip()
            if key and key not in out:
                out[key] = value.strip()
    return out


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def code_version() -> str:
    """The commit the figures belong to, "+modified" if tracked files outside bench/ and docs/ differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10, check=False).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = [line[3:] for line in status.splitlines() if not line[3:].startswith(("bench/", "docs/"))]
    return (head or "unknown") + (f" +modified ({len(changed)} files)" if changed else "")


def machine_info() -> dict[str, Any]:
    ci = _cpuinfo()
    return {
        "code": code_version(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cpu": f"{ci.get('model name', platform.processor() or '?')} (family {ci.get('cpu family', '?')} "
               f"model {ci.get('model', '?')}, {ci.get('cpu MHz', '?')} MHz, cache {ci.get('cache size', '?')})",
        "nproc": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "pymodbus": _version("pymodbus"),
        "paho-mqtt": _version("paho-mqtt"),
        "pyserial": _version("pyserial"),
        "sqlite": sqlite3.sqlite_version,
        "psutil": psutil.__version__,
    }


def print_header(title: str, info: dict[str, Any], params: dict[str, Any]) -> None:
    print(f"# {title}")
    print(f"machine: {info['cpu']}, nproc {info['nproc']}, {info['memory_gib']} GiB, kernel {info['kernel']}")
    print(f"software: {info['python']}, pymodbus {info['pymodbus']}, paho-mqtt {info['paho-mqtt']}, "
          f"pyserial {info['pyserial']}, SQLite {info['sqlite']}, psutil {info['psutil']}")
    print(f"date: {info['date']}, code: {info['code']}")
    print("parameters: " + ", ".join(f"{k}={v}" for k, v in params.items()))
    print(flush=True)


# -- statistics and tables --------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    median: float
    min: float
    max: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"median": self.median, "min": self.min, "max": self.max, "n": self.n}


def summarize(values: Iterable[float | None]) -> Summary | None:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return Summary(statistics.median(vals), min(vals), max(vals), len(vals))


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return float(sorted_values[k])


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    a = abs(v)
    if isinstance(v, int) or v == 0:
        return f"{int(v):,}"
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


@dataclass
class Table:
    """Rows of (figure, unit, per-run values) printed as median / min / max."""

    rows: list[tuple[str, str, list[float | None]]] = field(default_factory=list)

    def add(self, name: str, unit: str, values: list[float | None]) -> None:
        self.rows.append((name, unit, values))

    def render(self) -> str:
        head = ("figure", "unit", "median", "min", "max", "runs")
        lines = [head]
        for name, unit, values in self.rows:
            s = summarize(values)
            runs = " ".join(fmt(v) for v in values)
            ints = all(isinstance(v, int) for v in values if v is not None)

            def f(x: float, ints: bool = ints) -> str:
                return fmt(int(x) if ints and float(x).is_integer() else x)

            lines.append((name, unit, f(s.median) if s else "-", f(s.min) if s else "-", f(s.max) if s else "-",
                          runs))
        widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
        out = []
        for j, r in enumerate(lines):
            cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])] + [r[i].rjust(widths[i]) for i in (2, 3, 4)]
            cells.append(r[5].ljust(widths[5]))
            out.append("| " + " | ".join(cells) + " |")
            if j == 0:
                out.append("|" + "|".join("-" * (w + 2) for w in widths[:2]) + "|"
                           + "|".join("-" * (w + 1) + ":" for w in widths[2:5]) + "|" + "-" * (widths[5] + 2) + "|")
        return "\n".join(out)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, unit, values in self.rows:
            s = summarize(values)
            out[name] = {"unit": unit, "runs": values, **(s.as_dict() if s else {})}
        return out


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"results written to {path}")


# -- process meters ---------------------------------------------------------------------------------


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


class CpuWindow:
    """CPU% of a process over a window: process CPU time / wall time (100 % = one core)."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc = proc
        self._cpu0 = 0.0
        self._t0 = 0.0
        self.cpu_s: float | None = None
        self.wall_s: float | None = None

    def start(self) -> None:
        self._cpu0, self._t0 = cpu_seconds(self.proc), time.monotonic()

    def stop(self) -> float | None:
        try:
            cpu = cpu_seconds(self.proc)
        except psutil.Error:
            return None
        self.cpu_s, self.wall_s = cpu - self._cpu0, time.monotonic() - self._t0
        return self.pct

    @property
    def pct(self) -> float | None:
        if self.cpu_s is None or not self.wall_s:
            return None
        return 100.0 * self.cpu_s / self.wall_s


def _busy_core_seconds() -> float:
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0)
                 - getattr(t, "guest_nice", 0.0))


class SystemCpu:
    """Whole-machine busy CPU over a window, in % of one core (up to nproc x 100)."""

    def __init__(self) -> None:
        self._busy0 = 0.0
        self._t0 = 0.0
        self.pct: float | None = None

    def start(self) -> None:
        self._busy0, self._t0 = _busy_core_seconds(), time.monotonic()

    def stop(self) -> float | None:
        wall = time.monotonic() - self._t0
        self.pct = 100.0 * (_busy_core_seconds() - self._busy0) / wall if wall > 0 else None
        return self.pct


def background_pct(system: float | None, own: Iterable[float | None]) -> float | None:
    """CPU used by processes other than ours during a window (% of one core), never below 0."""
    if system is None:
        return None
    return max(0.0, system - sum(v for v in own if v is not None))


def wait_for_quiet(max_wait_s: float, *, below_pct: float = 25.0, probe_s: float = 1.0) -> float | None:
    """Wait (at most max_wait_s) until the machine's busy CPU over a probe_s probe is below below_pct.

    Returns the last probe's busy % (None when not waiting). Other people's jobs on a shared machine
    compete for the same cores; waiting for a quiet moment makes runs comparable."""
    if max_wait_s <= 0:
        return None
    deadline = time.monotonic() + max_wait_s
    last: float | None = None
    for _ in range(int(max_wait_s / probe_s) + 1):
        s = SystemCpu()
        s.start()
        time.sleep(probe_s)
        last = s.stop()
        if (last is not None and last < below_pct) or time.monotonic() >= deadline:
            break
    return last


class RssSampler:
    """Samples a process's RSS every `interval_s` in a daemon thread (bounded by max_s) and keeps the peak."""

    def __init__(self, proc: psutil.Process, *, interval_s: float = 0.1, max_s: float = 600.0) -> None:
        self.proc = proc
        self.interval_s = interval_s
        self.max_samples = int(max_s / interval_s)
        self.peak_bytes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        for _ in range(self.max_samples):
            try:
                rss = self.proc.memory_info().rss
            except psutil.Error:
                return
            self.peak_bytes = max(self.peak_bytes, rss)
            self.samples += 1
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> float:
        """Stop sampling; returns the peak in MiB."""
        self._stop.set()
        self._thread.join(5)
        return self.peak_bytes / 2**20


def stop_process(proc: subprocess.Popen[Any], *, sig: int = signal.SIGINT, timeout_s: float = 10.0) -> int | None:
    """Signal a child we started, wait for it, and kill it if it does not stop in time."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_for_lines(proc: subprocess.Popen[bytes], prefix: bytes, count: int, timeout_s: float) -> int:
    """Read the child's stdout until `count` lines starting with `prefix` came (bounded by timeout_s).

    The child must be started with bufsize=0: a buffered reader would hide lines from select()."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    seen = 0
    while seen < count:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            break
        line = proc.stdout.readline()
        if not line:
            break
        seen += line.startswith(prefix)
    return seen


def start_simulators(config_dir: Path, endpoints: int, *, log: IO[bytes] | None = None, timeout_s: float = 30.0,
                     max_duration_s: float = 1800.0) -> subprocess.Popen[bytes]:
    """`python -m gateway simulate` in its own process; returns once every endpoint listens.

    The simulator stops by itself after max_duration_s even if we never get to stop it."""
    proc = subprocess.Popen(python_cmd("-m", "gateway", "simulate", "--config", str(config_dir), "--duration",
                                       str(max_duration_s)),
                            stdout=subprocess.PIPE, stderr=log if log is not None else subprocess.DEVNULL,
                            cwd=REPO, env=child_env(), bufsize=0)
    seen = wait_for_lines(proc, b"simulating", endpoints, timeout_s)
    if seen < endpoints:
        stop_process(proc)
        raise RuntimeError(f"simulator did not start ({seen} of {endpoints} endpoints listening)")
    return proc


class Watchdog:
    """Bounds a whole benchmark: after limit_s, dump every thread's stack and interrupt the main thread
    (SIGINT -> KeyboardInterrupt), so the `finally` blocks stop every process we started."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._timer = threading.Timer(limit_s, self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        print(f"\nwatchdog: benchmark still running after {self.limit_s:.0f} s; stacks:", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        # A real SIGINT (not _thread.interrupt_main) also breaks a blocking wait in the main thread.
        os.kill(os.getpid(), signal.SIGINT)

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


# -- configuration ----------------------------------------------------------------------------------

GATEWAY_YAML = """\
gateway: {{id: {gateway_id}, site: benchmark, timezone: UTC}}
mqtt: {{url: "{url}", topic_prefix: carbon, max_inflight: 100, readings_per_message: {per_message},
        status_interval_s: {status_interval_s}}}
store: {{path: "{store}", synchronous: {synchronous}, commit_interval_ms: {commit_ms}}}
limits: {{queue_readings: {queue_readings}, backoff_min_s: 0.5, backoff_max_s: 30}}
"""


@dataclass(frozen=True)
class Layout:
    """N cems_generic meters spread over `ports` loopback endpoints, unit ids 1..k behind each."""

    meters: int
    ports: tuple[int, ...]

    @classmethod
    def new(cls, meters: int, endpoints: int) -> Layout:
        endpoints = max(1, min(endpoints, meters))
        return cls(meters, tuple(free_port() for _ in range(endpoints)))

    def placement(self) -> list[tuple[str, int, int]]:
        """(instrument id, port, unit id) per meter, round-robin over the ports."""
        out = []
        for i in range(self.meters):
            port = self.ports[i % len(self.ports)]
            unit = i // len(self.ports) + 1
            out.append((f"CEMS-{i + 1:03d}", port, unit))
        return out

    def endpoints(self) -> dict[int, list[int]]:
        """port -> unit ids behind it."""
        out: dict[int, list[int]] = {}
        for _iid, port, unit in self.placement():
            out.setdefault(port, []).append(unit)
        return out


def instruments_yaml(layout: Layout, *, interval_s: float, timeout_s: float = 1.0) -> str:
    lines = ["instruments:"]
    for iid, port, unit in layout.placement():
        lines += [
            f"  - id: {iid}",
            f"    name: benchmark CEMS {iid}",
            "    kind: gas_analyzer",
            "    calibration: {last_date: 2025-01-10, interval_months: 36, certificate: BENCH-1}",
            "    profile: cems_generic",
            f"    connection: {{protocol: modbus_tcp, host: 127.0.0.1, port: {port}, unit_id: {unit}, "
            f"timeout_s: {timeout_s}}}",
            f"    poll_interval_s: {interval_s}",
        ]
    return "\n".join(lines) + "\n"


def write_bench_config(directory: Path, instruments: str, *, url: str, store: Path, per_message: int = 100,
                       commit_ms: int = 50, synchronous: str = "full", status_interval_s: float = 1.0,
                       queue_readings: int = 20_000, gateway_id: str = "gw-bench") -> Path:
    """A configuration directory with the gateway's production defaults (unless overridden)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "instruments").mkdir(exist_ok=True)
    (directory / "gateway.yaml").write_text(GATEWAY_YAML.format(
        gateway_id=gateway_id, url=url, store=store, per_message=per_message, commit_ms=commit_ms,
        synchronous=synchronous, status_interval_s=status_interval_s, queue_readings=queue_readings))
    (directory / "instruments" / "bench.yaml").write_text(instruments)
    return directory
