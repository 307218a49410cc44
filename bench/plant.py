"""Plant-scale benchmarks (issue 8.6): a soak across period closes, the overload ramp, the backlog drain.

    python -m bench.plant soak  [--meters 500] [--period-s 60] [--closes 2] [--runs 1]
    python -m bench.plant ramp  [--meters 500] [--search 10000,20000,30000,40000,50000] [--window 20]
    python -m bench.plant drain [--meters 500] [--outage 200]
    python -m bench.plant short          # make bench: all three, small and short (a few minutes)
    common options: [--encoder json|json_compact] [--json out.json] [--profile DIR] [--wait-quiet S]

Per run, everything on 127.0.0.1 and bounded in time: a private Mosquitto, the meter farm
(`bench/farm.py`: 20 float32 points per meter, point 0 = the unix second it was produced), the
configuration written by `bench/peer/gen_cg_config.py` (the same one the side-by-side harness uses:
one 40-register read per meter per poll, `synchronous: full`, 50 ms commits, QoS 1, 100 readings per
message, `status_interval_s: 1`), `carbon-gateway run` in its own process, and a QoS 1 subscriber in
this process that deduplicates by (instrument, epoch, seq). Once a second the bench samples the
gateway's CPU time and RSS (psutil), the subscriber's counts and the gateway's status topic
(`loop_lag.max_ms`: the longest event-loop stall in that second, and `cpu_ms`, the same in the loop
thread's CPU time; overload; store backlog; poll
counters). At the end the farm is stopped, the gateway drains its store and stops, and every committed
readings message is looked up among those received: `lost` = committed, never received, not pending.

- soak: METERS x 20 points at 1 s across `--closes` period closes. Every point has
  `aggregate: {period_s: PERIOD}` (default 60 s: two closes in ~2.5 minutes instead of two hours; a
  close is O(points) whatever the period length, since the rules stage keeps running summaries).
  Figures: CPU % and µs per delivered reading, RSS at start/end/max and its change, the longest loop
  stall (overall and within 15 s after each close), latency p50/p99 (receipt wall time - the reading's
  `ts`), lag (receipt - the production second of point 0), delivery, gap events, loss.
- ramp: capacity first (the highest offered load in `--search` delivered >= 99 % in the window), then
  1x, 1.5x, 2x and 3x of it. The offered load is set by the poll interval (METERS x 20 / interval), one
  fresh gateway and store per load. Figures per load: delivered readings/s and share, gap events in the
  window, overload, CPU, RSS.
- drain: plant load; after a warm-up the gateway's link to the broker is cut (`bench/tcpproxy.py`)
  for `--outage` s (10,000 readings/s x 200 s = 2 million readings), then restored while polling goes
  on. Figures: backlog at restore, time to drain it, delivered readings/s while draining (backlog plus
  live), backlog readings / drain time, RSS and CPU, loss.

Benchmarks print figures; they assert nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import (
    REPO,
    Watchdog,
    child_env,
    machine_info,
    percentile,
    print_header,
    stop_process,
    summarize,
    wait_for_quiet,
    write_json,
)
from simulators.broker import PrivateBroker, free_port

GEN = REPO / "bench" / "peer" / "gen_cg_config.py"
POINTS = 20
MIN_INTERVAL_S = 0.05  # the registry's shortest poll interval
M = 1_000_000


def port_block(n: int, start: int = 21000, stop: int = 60000) -> int:
    """The first port of n consecutive free loopback ports."""
    p = start
    while p + n < stop:
        bad = None
        for q in range(p, p + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", q))
                except OSError:
                    bad = q
                    break
        if bad is None:
            return p
        p = bad + 1
    raise RuntimeError("no block of free ports")


# -- subscriber ---------------------------------------------------------------------------------------


class PlantSubscriber:
    """QoS 1 subscriber: readings (both encoders), status and gap events, per-second counters."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.keys: set[tuple[str, str, int]] = set()
        self.duplicates = 0
        self.readings = 0
        self.messages = 0
        self.payload_bytes = 0  # readings payloads, first copies
        self.per_sec: Counter[int] = Counter()  # receipt second -> readings (first copies)
        self.lag_max: dict[int, float] = {}  # receipt second -> max(receipt - production second of point 0), ms
        self.lat_sec = array("l")  # receipt second of each reading (first copies)
        self.lat_ms = array("d")  # its latency: receipt wall time - ts
        self.status: list[dict[str, Any]] = []  # one compact record per status message
        self.events: Counter[int] = Counter()  # receipt second -> gap-ledger records
        self.event_kinds: Counter[str] = Counter()
        self._sub = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"plant-sub-{os.getpid()}", clean_session=True)
        self.c.on_connect = lambda c, *_: c.subscribe([("carbon/+/+/readings", 1), ("carbon/+/status", 1),
                                                        ("carbon/+/+/events", 1)])
        self.c.on_subscribe = lambda *_: self._sub.set()
        self.c.on_message = self._on_message
        self.c.reconnect_delay_set(0.1, 1)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now_ms = time.time() * 1000
        sec = int(now_ms // 1000)
        topic = msg.topic
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        if topic.endswith("/readings"):
            if "readings" in body:
                rs = body["readings"]
                ts = [r["ts"] for r in rs]
                prod = [r["value"] for r in rs if r["point"] == "v0" and r["value"] is not None]
            else:  # json_compact
                t0 = body["t0"]
                ts = [t0 + dt for dt in body["t"]]
                k0 = next((i for i, p in enumerate(body["points"]) if p[0] == "v0"), -1)
                prod = [v for k, v in zip(body["p"], body["v"], strict=True) if k == k0 and v is not None]
            key = (body["instrument"], body.get("epoch", ""), body["seq"])
            with self.lock:
                if key in self.keys:
                    self.duplicates += 1
                    return
                self.keys.add(key)
                n = len(ts)
                self.payload_bytes += len(msg.payload)
                self.messages += 1
                self.readings += n
                self.per_sec[sec] += n
                self.lat_sec.extend([sec] * n)
                self.lat_ms.extend([now_ms - t for t in ts])
                if prod:
                    # production second (mod 1e6) of the oldest poll in the message
                    lag = ((sec % M) - min(prod)) % M * 1000.0 + now_ms % 1000
                    if lag > self.lag_max.get(sec, -1):
                        self.lag_max[sec] = lag
        elif topic.endswith("/status"):
            if body.get("state") not in ("online", "stalled") or msg.retain:
                return
            inst = body.get("instruments") or {}
            rec = {"t": now_ms / 1000,
                   "loop_lag_ms": (body.get("loop_lag") or {}).get("max_ms"),
                   "loop_lag_total_ms": (body.get("loop_lag") or {}).get("max_ms_total"),
                   "loop_cpu_ms": (body.get("loop_lag") or {}).get("cpu_ms"),
                   "overload": bool((body.get("overload") or {}).get("active")),
                   "pending": (body.get("store") or {}).get("pending_messages"),
                   "polls": sum(int(v.get("polls") or 0) for v in inst.values()),
                   "missed": sum(int(v.get("missed_polls") or 0) for v in inst.values()),
                   "late": sum(int(v.get("late_polls") or 0) for v in inst.values())}
            with self.lock:
                self.status.append(rec)
        elif topic.endswith("/events"):
            evs = body.get("events") or []
            with self.lock:
                self.events[sec] += len(evs)
                for e in evs:
                    self.event_kinds[f"{e.get('type')}:{e.get('cause')}"] += 1

    def start(self, timeout_s: float = 10.0) -> PlantSubscriber:
        self.c.connect("127.0.0.1", self.port, 30)
        self.c.loop_start()
        if not self._sub.wait(timeout_s):
            self.stop()
            raise RuntimeError("subscriber: no SUBACK")
        return self

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()

    def delivered(self, t0: float, t1: float) -> int:
        with self.lock:
            return sum(n for s, n in self.per_sec.items() if t0 <= s < t1)

    def latencies(self, t0: float, t1: float) -> list[float]:
        with self.lock:
            return sorted(v for s, v in zip(self.lat_sec, self.lat_ms, strict=True) if t0 <= s < t1)

    def events_in(self, t0: float, t1: float) -> int:
        with self.lock:
            return sum(n for s, n in self.events.items() if t0 <= s < t1)

    def last_message_age(self) -> float:
        with self.lock:
            last = max(self.per_sec) if self.per_sec else 0
        return time.time() - last


# -- one gateway run ------------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    cpu_s: float
    rss_mib: float


@dataclass
class Plant:
    """Broker, farm, (proxy), gateway and subscriber of one run; stop() stops everything it started."""

    meters: int
    interval_s: float
    tmp: Path
    encoder: str = "json"
    period_s: int = 0
    per_port: int = 1
    proxy: bool = False
    profile: Path | None = None
    bound_s: float = 900.0
    broker: PrivateBroker | None = None
    farm: subprocess.Popen[bytes] | None = None
    proxy_proc: subprocess.Popen[bytes] | None = None
    gw: subprocess.Popen[bytes] | None = None
    gwp: psutil.Process | None = None
    sub: PlantSubscriber | None = None
    samples: list[Sample] = field(default_factory=list)
    db: Path = field(init=False)
    _stop: threading.Event = field(default_factory=threading.Event)
    _sampler: threading.Thread | None = None
    _files: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def _log(self, name: str) -> Any:
        f = self._files.enter_context((self.tmp / name).open("wb"))
        return f

    def start(self) -> Plant:
        self.db = self.tmp / "data" / "gateway.db"
        self.broker = PrivateBroker().start()
        mqtt_port = self.broker.port
        if self.proxy:
            mqtt_port = free_port()
            self.proxy_proc = subprocess.Popen(
                [sys.executable, "-m", "bench.tcpproxy", "--listen", f"127.0.0.1:{mqtt_port}",
                 "--target", f"127.0.0.1:{self.broker.port}", "--duration", str(self.bound_s)],
                cwd=REPO, env=child_env(), stdout=self._log("proxy.log"), stderr=subprocess.STDOUT)
        ports = -(-self.meters // self.per_port)
        base = port_block(ports)
        self.farm = subprocess.Popen(
            [sys.executable, "-m", "bench.farm", "--meters", str(self.meters), "--per-port", str(self.per_port),
             "--base-port", str(base), "--duration", str(self.bound_s), "--stats", str(self.tmp / "farm.json")],
            cwd=REPO, env=child_env(), stdout=self._log("farm.log"), stderr=subprocess.STDOUT)
        conf = self.tmp / "conf"
        gen = [sys.executable, str(GEN), "--dir", str(conf), "--meters", str(self.meters),
               "--mode", "ports" if self.per_port == 1 else "units", "--per-port", str(self.per_port),
               "--base-port", str(base), "--mqtt-port", str(mqtt_port), "--data-dir", str(self.tmp / "data"),
               "--status-interval-s", "1", "--poll-s", f"{self.interval_s:g}",
               "--timeout-s", f"{min(1.0, max(0.05, self.interval_s * 0.9)):g}", "--encoder", self.encoder,
               "--queue-readings", str(max(20000, int(self.meters * POINTS * 2)))]
        if self.period_s:
            gen += ["--period-s", str(self.period_s)]
        subprocess.run(gen, check=True, timeout=120)
        for _ in range(100):  # the farm listens
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", base + ports - 1)) == 0:
                    break
            time.sleep(0.1)
        self.sub = PlantSubscriber(self.broker.port).start()
        args = ["--log-level", "INFO", "run", "--config", str(conf)]
        cmd = ([sys.executable, "-m", "bench.profiled", str(self.profile), *args] if self.profile
               else [sys.executable, "-m", "gateway", *args])
        self.gw = subprocess.Popen(cmd, cwd=self.tmp, env=child_env(), stdout=self._log("gateway.log"),
                                   stderr=subprocess.STDOUT)
        self.gwp = psutil.Process(self.gw.pid)
        self._sampler = threading.Thread(target=self._sample_loop, daemon=True)
        self._sampler.start()
        return self

    def _sample_loop(self) -> None:
        end = time.monotonic() + self.bound_s
        while not self._stop.is_set() and time.monotonic() < end:
            self.sample()
            self._stop.wait(1.0 - time.time() % 1.0)  # on the second

    def sample(self) -> Sample | None:
        try:
            assert self.gwp is not None
            ct = self.gwp.cpu_times()
            s = Sample(time.time(), ct.user + ct.system, round(self.gwp.memory_info().rss / 2**20, 1))
        except psutil.Error:
            return None
        self.samples.append(s)
        return s

    def wait_first_readings(self, timeout_s: float = 120.0) -> float:
        """Seconds from the gateway's start to the first readings message."""
        t = time.time()
        assert self.sub is not None
        assert self.gw is not None
        while time.time() - t < timeout_s:
            if self.sub.readings:
                return time.time() - t
            if self.gw.poll() is not None:
                raise RuntimeError(f"gateway exited rc={self.gw.returncode}: see {self.tmp / 'gateway.log'}")
            time.sleep(0.1)
        raise RuntimeError("no readings from the gateway")

    def proxy_cut(self, cut: bool) -> None:
        assert self.proxy_proc is not None
        self.proxy_proc.send_signal(signal.SIGUSR1 if cut else signal.SIGUSR2)

    def cpu_window(self, t0: float, t1: float) -> tuple[float | None, float | None, float | None]:
        """(CPU % of one core, RSS at start, RSS at end) of the gateway between two sample times."""
        inside = [s for s in self.samples if t0 - 0.5 <= s.t <= t1 + 0.5]
        if len(inside) < 2:
            return None, None, None
        a, b = inside[0], inside[-1]
        return (b.cpu_s - a.cpu_s) / (b.t - a.t) * 100, a.rss_mib, b.rss_mib

    def status_in(self, t0: float, t1: float) -> list[dict[str, Any]]:
        assert self.sub is not None
        with self.sub.lock:
            return [r for r in self.sub.status if t0 <= r["t"] < t1]

    def finish(self, drain_timeout_s: float = 120.0) -> dict[str, Any]:
        """Stop the farm, let the gateway drain, stop it; compare the store with what was received."""
        out: dict[str, Any] = {}
        assert self.farm is not None
        assert self.gw is not None
        assert self.sub is not None
        stop_process(self.farm, sig=signal.SIGTERM)
        t = time.time()
        while time.time() - t < drain_timeout_s:
            # everything polled before the farm stopped is delivered (the meters' failures after it may
            # still be in flight: they are committed, and pending at the stop at worst, never lost)
            oldest = oldest_pending_created_ms(self.db)
            if oldest is None or oldest >= t * 1000 or self.gw.poll() is not None:
                break
            time.sleep(0.25)
        out["drain_after_farm_stop_s"] = round(time.time() - t, 1)
        deadline = time.time() + 10
        while time.time() < deadline and self.sub.last_message_age() < 2:
            time.sleep(0.2)
        out["gateway_rc"] = stop_process(self.gw, sig=signal.SIGTERM, timeout_s=30)
        self._stop.set()
        allm, pend, epoch = committed(self.db)
        recv = {(i, s) for i, e, s in self.sub.keys if e == epoch}
        out["committed_messages"] = len(allm)
        out["received_messages"] = len(recv)
        out["lost_messages"] = len(allm - recv - pend)
        out["still_pending"] = len(pend)
        out["duplicates"] = self.sub.duplicates
        out["received_not_committed"] = len(recv - allm)
        out["derived"] = derived_counts(self.db)
        out["store_bytes"] = self.db.stat().st_size if self.db.exists() else None
        n = committed_readings(self.db)
        out["committed_readings"] = n
        if n and out["store_bytes"]:
            out["store_bytes_per_reading"] = round(out["store_bytes"] / n, 1)
        if self.sub.readings:
            out["wire_bytes_per_reading"] = round(self.sub.payload_bytes / self.sub.readings, 1)
        out["event_kinds"] = dict(self.sub.event_kinds)
        return out

    def stop(self) -> None:
        self._stop.set()
        for p in (self.gw, self.farm, self.proxy_proc):
            if p is not None:
                stop_process(p, sig=signal.SIGTERM, timeout_s=20)
        if self.sub is not None:
            with contextlib.suppress(Exception):
                self.sub.stop()
        if self.broker is not None:
            self.broker.close()
        self._files.close()


def _ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)


def store_pending(db: Path) -> int | None:
    if not db.exists():
        return None
    with contextlib.suppress(sqlite3.Error), contextlib.closing(_ro(db)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM pending").fetchone()[0])
    return None


def pending_readings(db: Path) -> int | None:
    with contextlib.suppress(sqlite3.Error), contextlib.closing(_ro(db)) as conn:
        return int(conn.execute("SELECT COALESCE(SUM(m.last_id - m.first_id + 1), 0) FROM pending p "
                                "JOIN messages m ON m.id = p.message_id WHERE m.kind = 'readings'").fetchone()[0])
    return None


def oldest_pending_created_ms(db: Path) -> int | None:
    """created_ms of the oldest readings message not yet acknowledged (None: nothing pending)."""
    with contextlib.suppress(sqlite3.Error), contextlib.closing(_ro(db)) as conn:
        row = conn.execute("SELECT MIN(m.created_ms) FROM pending p JOIN messages m ON m.id = p.message_id "
                           "WHERE m.kind = 'readings'").fetchone()
        return None if row[0] is None else int(row[0])
    return None


def committed_readings(db: Path) -> int | None:
    with contextlib.suppress(sqlite3.Error), contextlib.closing(_ro(db)) as conn:
        return int(conn.execute("SELECT COALESCE(SUM(last_id - first_id + 1), 0) FROM messages "
                                "WHERE kind = 'readings'").fetchone()[0])
    return None


def committed(db: Path) -> tuple[set[tuple[str, int]], set[tuple[str, int]], str]:
    """(committed readings messages, those still pending, the store's epoch)."""
    with contextlib.closing(_ro(db)) as conn:
        allm = set(conn.execute("SELECT instrument, seq FROM messages WHERE kind='readings'"))
        pend = set(conn.execute("SELECT m.instrument, m.seq FROM pending p JOIN messages m ON m.id = p.message_id "
                                "WHERE m.kind='readings'"))
        row = conn.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
    return allm, pend, (row[0] if row else "")


def derived_counts(db: Path) -> dict[str, int]:
    with contextlib.suppress(sqlite3.Error), contextlib.closing(_ro(db)) as conn:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='records'").fetchone():
            return {k: int(n) for k, n in conn.execute("SELECT kind, COUNT(*) FROM records GROUP BY kind")}
    return {}


def sleep_until(t: float) -> None:
    while (d := t - time.time()) > 0:
        time.sleep(min(d, 0.5))


def pct(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or not b else (a - b) / b * 100


# -- scenarios --------------------------------------------------------------------------------------------


def soak(a: argparse.Namespace, run: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"plant-soak{run}-"))
    period = a.period_s
    p = Plant(a.meters, 1.0, tmp, encoder=a.encoder, period_s=period,
              profile=(a.profile / f"soak{run}.prof") if a.profile else None,
              bound_s=a.warmup + (a.closes + 2) * period + 300)
    try:
        p.start()
        first = p.wait_first_readings()
        time.sleep(a.warmup)
        t0 = float(int(time.time()) + 1)
        sleep_until(t0)
        first_close = (int(t0) // period + 1) * period
        closes = [first_close + k * period for k in range(a.closes)]
        t1 = closes[-1] + a.after_close
        sleep_until(t1)
        t1 = float(int(t1))
        res = window_figures(p, t0, t1, a.meters * POINTS)
        res["startup_to_first_message_s"] = round(first, 1)
        res["closes"] = closes
        per_close = []
        for c in closes:
            st = p.status_in(c, c + a.after_close)
            rss = [s.rss_mib for s in p.samples if c - 2 <= s.t <= c + a.after_close]
            per_close.append({"close": c, "after_s": a.after_close,
                              "loop_stall_max_ms": max((r["loop_lag_ms"] or 0 for r in st), default=None),
                              "loop_stall_cpu_max_ms": max((r["loop_cpu_ms"] or 0 for r in st), default=None),
                              "rss_before_mib": rss[0] if rss else None,
                              "rss_after_max_mib": max(rss) if rss else None})
        res["per_close"] = per_close
        res["timeline"] = timeline(p, t0, t1)
        res.update(p.finish())
        return res
    finally:
        p.stop()
        if not a.keep:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)


def window_figures(p: Plant, t0: float, t1: float, offered: float) -> dict[str, Any]:
    assert p.sub is not None
    cpu, rss0, rss1 = p.cpu_window(t0, t1)
    delivered = p.sub.delivered(t0, t1) / (t1 - t0)
    lats = p.sub.latencies(t0, t1)
    st = p.status_in(t0, t1)
    rss_all = [s.rss_mib for s in p.samples if t0 <= s.t <= t1]
    lagmax = [v for s, v in p.sub.lag_max.items() if t0 <= s < t1]
    res: dict[str, Any] = {
        "window_s": t1 - t0, "offered_per_s": offered, "delivered_per_s": round(delivered, 1),
        "delivered_share": round(delivered / offered, 4),
        "cpu_pct": None if cpu is None else round(cpu, 1),
        "cpu_us_per_reading": None if cpu is None or not delivered else round(cpu / 100 / delivered * 1e6, 2),
        "rss_start_mib": rss0, "rss_end_mib": rss1, "rss_max_mib": max(rss_all) if rss_all else None,
        "rss_change_pct": None if rss0 is None else round(pct(rss1, rss0) or 0.0, 1),
        "loop_stall_max_ms": max((r["loop_lag_ms"] or 0 for r in st), default=None),
        # the same stall in the loop thread's CPU time: without the waits for a core on a shared machine
        "loop_stall_cpu_max_ms": max((r["loop_cpu_ms"] or 0 for r in st), default=None),
        "latency_p50_ms": percentile(lats, 50), "latency_p99_ms": percentile(lats, 99),
        "latency_max_ms": lats[-1] if lats else None,
        "lag_max_s": round(max(lagmax) / 1000, 2) if lagmax else None,
        "gap_events": p.sub.events_in(t0, t1),
        "overload_seconds": sum(1 for r in st if r["overload"]),
        "pending_max": max((r["pending"] or 0 for r in st), default=None),
    }
    if len(st) >= 2:
        res["missed_polls"] = st[-1]["missed"] - st[0]["missed"]
        res["late_polls"] = st[-1]["late"] - st[0]["late"]
        res["polls_per_s"] = round((st[-1]["polls"] - st[0]["polls"]) / (st[-1]["t"] - st[0]["t"]), 1)
    for k in ("latency_p50_ms", "latency_p99_ms", "latency_max_ms"):
        if res[k] is not None:
            res[k] = round(res[k], 1)
    return res


def timeline(p: Plant, t0: float, t1: float) -> list[list[Any]]:
    """One row a second: [t - t0, CPU % over the second, RSS MiB, readings delivered, loop stall ms,
    production lag s, gap events, overload, pending messages, loop stall ms of CPU]."""
    assert p.sub is not None
    st = {int(r["t"]): r for r in p.status_in(t0, t1 + 1)}
    rows = []
    prev = None
    for s in p.samples:
        if not t0 - 1 <= s.t <= t1:
            continue
        sec = round(s.t)
        if prev is not None:
            r = st.get(sec) or st.get(sec - 1) or {}
            lag = p.sub.lag_max.get(sec - 1)
            rows.append([sec - int(t0), round((s.cpu_s - prev.cpu_s) / (s.t - prev.t) * 100, 1), round(s.rss_mib, 1),
                         p.sub.per_sec.get(sec - 1, 0), r.get("loop_lag_ms"),
                         None if lag is None else round(lag / 1000, 2), p.sub.events.get(sec - 1, 0),
                         r.get("overload"), r.get("pending"), r.get("loop_cpu_ms")])
        prev = s
    return rows


def load_step(a: argparse.Namespace, offered: float, tag: str) -> dict[str, Any]:
    interval = a.meters * POINTS / offered
    tmp = Path(tempfile.mkdtemp(prefix=f"plant-{tag}-"))
    p = Plant(a.meters, interval, tmp, encoder=a.encoder, bound_s=a.warmup + a.window + 300,
              profile=(a.profile / f"{tag}.prof") if a.profile else None)
    try:
        p.start()
        p.wait_first_readings()
        time.sleep(a.warmup)
        t0 = float(int(time.time()) + 1)
        sleep_until(t0 + a.window)
        res = window_figures(p, t0, t0 + a.window, offered)
        res["interval_s"] = round(interval, 4)
        res.update(p.finish(drain_timeout_s=min(a.drain_timeout, 30.0)))
        return res
    finally:
        p.stop()
        if not a.keep:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)


def ramp(a: argparse.Namespace, run: int) -> dict[str, Any]:
    search = [float(x) for x in a.search.split(",")]
    steps: list[dict[str, Any]] = []
    capacity = None
    for load in search:
        if a.meters * POINTS / load < MIN_INTERVAL_S:
            print(f"  search {load:,.0f}/s needs a poll interval below {MIN_INTERVAL_S} s: more meters (--meters)",
                  flush=True)
            break
        r = load_step(a, load, f"search{int(load)}")
        r["phase"] = "search"
        steps.append(r)
        print(f"  search {load:,.0f}/s: delivered {r['delivered_per_s']:,.0f}/s ({r['delivered_share']:.1%}), "
              f"CPU {r['cpu_pct']} %, gap events {r['gap_events']}, lost {r['lost_messages']}", flush=True)
        if r["delivered_share"] >= 0.99 and r["lost_messages"] == 0:
            capacity = load
        else:
            break
    out: dict[str, Any] = {"capacity_per_s": capacity, "steps": steps,
                           # every load tried was delivered: the capacity is at least this, not this
                           "capacity_is_lower_bound": capacity is not None and capacity == search[-1]}
    if capacity is None:
        return out
    for r in steps:
        if r["offered_per_s"] == capacity:
            r["phase"] = "search = 1x"
            r["share_of_capacity"] = round(r["delivered_per_s"] / capacity, 3)
    for mult in [float(x) for x in a.multiples.split(",") if x]:  # 1x is the search step that set the capacity
        load = capacity * mult
        if a.meters * POINTS / load < MIN_INTERVAL_S:
            print(f"  {mult:g}x: {load:,.0f}/s needs a poll interval below {MIN_INTERVAL_S} s: more meters (--meters)",
                  flush=True)
            continue
        r = load_step(a, load, f"x{mult:g}")
        r["phase"] = f"{mult:g}x"
        r["share_of_capacity"] = round(r["delivered_per_s"] / capacity, 3)
        steps.append(r)
        print(f"  {mult:g}x = {load:,.0f}/s: delivered {r['delivered_per_s']:,.0f}/s "
              f"({r['share_of_capacity']:.1%} of capacity), CPU {r['cpu_pct']} %, gap events {r['gap_events']}, "
              f"overload {r['overload_seconds']} s, RSS {r['rss_end_mib']:.0f} MiB", flush=True)
    return out


def drain(a: argparse.Namespace, run: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"plant-drain{run}-"))
    p = Plant(a.meters, 1.0, tmp, encoder=a.encoder, proxy=True,
              profile=(a.profile / f"drain{run}.prof") if a.profile else None,
              bound_s=a.warmup + a.outage + a.drain_timeout + 300)
    offered = a.meters * POINTS
    try:
        p.start()
        p.wait_first_readings()
        time.sleep(a.warmup)
        t_cut = time.time()
        p.proxy_cut(True)
        sleep_until(t_cut + a.outage)
        backlog = pending_readings(p.db)
        t_up = time.time()
        p.proxy_cut(False)
        t_done = None
        while time.time() - t_up < a.drain_timeout:
            # drained: nothing committed before the link came back is still waiting for its PUBACK
            oldest = oldest_pending_created_ms(p.db)
            if oldest is None or oldest >= t_up * 1000:
                t_done = time.time()
                break
            time.sleep(0.25)
        assert p.sub is not None
        with p.sub.lock:
            t_first = min((s for s in p.sub.per_sec if s >= int(t_up)), default=None)
        res: dict[str, Any] = {"offered_per_s": offered, "outage_s": round(t_up - t_cut, 1),
                               "backlog_readings_at_restore": backlog,
                               "reconnect_s": None if t_first is None else round(t_first - t_up, 1)}
        if t_done is not None:
            dt = t_done - t_up
            start = t_first if t_first is not None else int(t_up)
            secs = max(1, int(t_done) + 1 - start)
            got = p.sub.delivered(start, int(t_done) + 1)
            cpu, _, _ = p.cpu_window(start, t_done)
            res.update(drain_s=round(dt, 1),
                       delivered_per_s_while_draining=round(got / secs, 1),
                       backlog_per_s=round((backlog or 0) / secs, 1),
                       cpu_pct_draining=None if cpu is None else round(cpu, 1))
        else:
            res["drain_s"] = None
        res["rss_max_mib"] = max(s.rss_mib for s in p.samples)
        res["rss_at_cut_mib"] = next((s.rss_mib for s in p.samples if s.t >= t_cut), None)
        res["rss_at_restore_mib"] = next((s.rss_mib for s in p.samples if s.t >= t_up), None)
        res["timeline"] = timeline(p, t_cut - 5, (t_done or time.time()) + 5)
        res.update(p.finish(drain_timeout_s=a.drain_timeout))
        return res
    finally:
        p.stop()
        if not a.keep:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)


# -- output ------------------------------------------------------------------------------------------------


def med(runs: list[dict[str, Any]], key: str) -> str:
    s = summarize(r.get(key) for r in runs)
    if s is None:
        return "-"
    if s.n == 1:
        return f"{s.median:,.6g}"
    return f"{s.median:,.6g} ({s.min:,.6g}-{s.max:,.6g}, n={s.n})"


SOAK_KEYS = ("offered_per_s", "delivered_per_s", "delivered_share", "cpu_pct", "cpu_us_per_reading", "rss_start_mib",
             "rss_end_mib", "rss_max_mib", "rss_change_pct", "loop_stall_max_ms", "loop_stall_cpu_max_ms",
             "latency_p50_ms", "latency_p99_ms", "latency_max_ms", "lag_max_s", "gap_events", "overload_seconds",
             "missed_polls", "late_polls", "lost_messages", "duplicates", "still_pending",
             "startup_to_first_message_s", "store_bytes_per_reading", "wire_bytes_per_reading")
DRAIN_KEYS = ("offered_per_s", "outage_s", "backlog_readings_at_restore", "reconnect_s", "drain_s",
              "delivered_per_s_while_draining",
              "backlog_per_s", "cpu_pct_draining", "rss_at_cut_mib", "rss_at_restore_mib", "rss_max_mib",
              "lost_messages", "duplicates", "still_pending")


def report(kind: str, runs: list[dict[str, Any]]) -> None:
    print(f"\n## {kind}: {len(runs)} run(s); median (min-max)")
    if kind == "soak":
        for k in SOAK_KEYS:
            print(f"  {k:32s} {med(runs, k)}")
        for i, r in enumerate(runs, 1):
            for c in r.get("per_close", []):
                print(f"  run {i} close at {time.strftime('%H:%M:%S', time.gmtime(c['close']))} UTC: loop stall "
                      f"{c['loop_stall_max_ms']} ms ({c.get('loop_stall_cpu_max_ms')} ms CPU) in the "
                      f"{c.get('after_s')} s after, RSS "
                      f"{c['rss_before_mib']} -> max {c['rss_after_max_mib']} MiB")
            print(f"  run {i}: RSS {r.get('rss_start_mib')} -> {r.get('rss_end_mib')} MiB "
                  f"({r.get('rss_change_pct')} %) across {len(r.get('per_close', []))} closes; "
                  f"derived {r.get('derived')}")
    elif kind == "drain":
        for k in DRAIN_KEYS:
            print(f"  {k:32s} {med(runs, k)}")
    else:
        for i, r in enumerate(runs, 1):
            print(f"  run {i}: capacity {r['capacity_per_s']}"
                  + (" (every load tried was delivered: a lower bound)" if r.get("capacity_is_lower_bound") else ""))
            print("  | phase | offered/s | delivered/s | share | CPU % | gap events | overload s | RSS end MiB "
                  "| lost |")
            for s in r["steps"]:
                print(f"  | {s['phase']} | {s['offered_per_s']:,.0f} | {s['delivered_per_s']:,.0f} | "
                      f"{s['delivered_share']:.3f} | {s['cpu_pct']} | {s['gap_events']} | {s['overload_seconds']} | "
                      f"{s['rss_end_mib']} | {s['lost_messages']} |")
    sys.stdout.flush()


def print_profile(directory: Path, top: int = 30) -> None:
    import pstats

    for f in sorted(directory.glob("*.prof")):
        print(f"\n### cProfile (CPU clock, event-loop thread): {f.name}")
        with contextlib.suppress(Exception):
            pstats.Stats(str(f)).sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=["soak", "ramp", "drain", "short"])
    ap.add_argument("--meters", type=int, default=500)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--encoder", choices=["json", "json_compact"], default="json")
    ap.add_argument("--warmup", type=float, default=15.0, help="seconds after the first message before measuring")
    ap.add_argument("--period-s", type=int, default=60, help="soak: aggregate.period_s of every point (>= 60)")
    ap.add_argument("--closes", type=int, default=2, help="soak: period closes to cross")
    ap.add_argument("--after-close", type=float, default=15.0, help="soak: seconds measured after the last close")
    ap.add_argument("--search", default="10000,20000,30000,40000,50000,60000",
                    help="ramp: offered loads (readings/s) tried in order until one is not delivered")
    ap.add_argument("--window", type=float, default=20.0, help="ramp: measured seconds per load")
    ap.add_argument("--multiples", default="1.5,2,3", help="ramp: loads run after the search, as multiples of "
                                                            "the capacity ('' for none)")
    ap.add_argument("--outage", type=float, default=200.0, help="drain: seconds the broker link is cut")
    ap.add_argument("--drain-timeout", type=float, default=300.0)
    ap.add_argument("--wait-quiet", type=float, default=0.0, help="wait up to S s for an idle machine before a run")
    ap.add_argument("--profile", type=Path, help="run the gateway under cProfile (CPU clock); do not read rates")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the run directories (logs, store)")
    a = ap.parse_args(argv)
    if a.profile:
        a.profile.mkdir(parents=True, exist_ok=True)
    plan: list[tuple[str, Any]] = []
    if a.scenario == "short":
        a.meters = min(a.meters, 100)
        a.warmup = min(a.warmup, 5.0)
        a.outage = min(a.outage, 20.0)
        a.window = min(a.window, 10.0)
        a.search = "2000,4000,8000"
        plan = [("soak", soak), ("ramp", ramp), ("drain", drain)]
    else:
        plan = [(a.scenario, {"soak": soak, "ramp": ramp, "drain": drain}[a.scenario])]
    info = machine_info()
    print_header(f"bench.plant {a.scenario}", info, {k: v for k, v in vars(a).items() if k not in ("json",)})
    results: dict[str, list[dict[str, Any]]] = {}
    limit = 3600.0 * max(1, a.runs) * len(plan)
    with Watchdog(limit):
        for kind, fn in plan:
            results[kind] = []
            for run in range(1, (1 if a.scenario == "short" else a.runs) + 1):
                busy = wait_for_quiet(a.wait_quiet)
                load = os.getloadavg()
                print(f"{kind} run {run}: load average {load[0]:.2f}" + (f", busy {busy:.0f} %" if busy else ""),
                      flush=True)
                r = fn(a, run)
                r["loadavg_at_start"] = [round(x, 2) for x in load]
                results[kind].append(r)
                brief = {k: v for k, v in r.items() if k not in ("timeline", "steps", "per_close")}
                print("  " + json.dumps(brief, default=str), flush=True)
            report(kind, results[kind])
    if a.profile:
        print_profile(a.profile)
    write_json(a.json, {"machine": info, "args": {k: str(v) for k, v in vars(a).items()}, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
