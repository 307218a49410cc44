"""Consumer throughput into PostgreSQL (issue 12 item 4): one and two `carbon-gateway consume` processes,
COPY and batched INSERT.

A private Mosquitto and a private PostgreSQL (durable: fsync and synchronous commit on, as in production)
on this machine; the consumers are real `carbon-gateway consume` subprocesses in one shared-subscription
group; the messages are real gateway payloads (JsonEncoder, `readings_per_message` readings each, of
`--gateways` gateways x 5 instruments), published QoS 1 as fast as the broker takes them once the
consumers are subscribed. A run ends when every reading is in PostgreSQL.

Reported per run: wall readings/s (publish start -> last row), and CPU time per reading of the consumers
(process CPU), of PostgreSQL (all its processes) and of the broker. On a shared, busy machine the wall
rate is a lower bound; the CPU figures say what a dedicated core would do:
capacity ~ 1e6 / (CPU us per reading) readings/s per core. Never asserted on (bench/common.py).

    python -m bench.consumer [--readings 200000] [--per-message 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import cpu_seconds, machine_info, print_header, write_json
from gateway.encode import EncoderContext, JsonEncoder
from gateway.model import Calibration, Quality, StoredReading
from gateway.store import KIND_READINGS, Outgoing
from simulators.broker import PrivateBroker
from simulators.postgres import PrivatePostgres

PLANT_RATE = 10_000  # readings/s of one gateway at plant load (docs/benchmarks.md)


def payloads(gateways: int, per_message: int, total: int) -> list[tuple[str, bytes]]:
    """Real gateway payloads: `total` readings in messages of `per_message`, round-robin over the streams."""
    out: list[tuple[str, bytes]] = []
    encoders = [JsonEncoder(EncoderContext("carbon", f"gw-{g:03d}", f"{g:032x}", "bench")) for g in range(gateways)]
    seqs: dict[tuple[int, str], int] = {}
    t0 = int(time.time() * 1000) - 3_600_000
    n = 0
    while n < total:
        for g, enc in enumerate(encoders):
            for i in range(5):
                inst = f"M-{i:02d}"
                seq = seqs[(g, inst)] = seqs.get((g, inst), 0) + 1
                rows = [StoredReading(0, inst, f"p{k % 10}", t0 + seq * 1000 + k, 20.0 + k % 7, "kW",
                                      Quality.GOOD.value, "", Calibration.VALID.value) for k in range(per_message)]
                pub = enc.message(Outgoing(seq, inst, KIND_READINGS, seq, t0, rows))
                out.append((pub.topic, pub.payload))
                n += per_message
                if n >= total:
                    return out
    return out


def publish_all(url_port: int, msgs: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    client.max_inflight_messages_set(1000)
    done = threading.Event()
    acked = [0]

    def on_publish(*_: Any) -> None:
        acked[0] += 1
        if acked[0] == len(msgs):
            done.set()

    client.on_publish = on_publish
    client.connect("127.0.0.1", url_port)
    client.loop_start()
    for topic, payload in msgs:
        client.publish(topic, payload, qos=1)
    done.wait(600)
    client.disconnect()
    client.loop_stop()


def count(dsn: str) -> int:
    try:
        with psycopg.connect(dsn) as conn:
            return int(conn.execute("SELECT count(*) FROM carbon.readings").fetchone()[0])  # type: ignore[index]
    except psycopg.Error:
        return -1


def tree_cpu(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += cpu_seconds(p)
        except psutil.Error:
            pass
    return total


def run(consumers: int, write: str, msgs: list[tuple[str, bytes]], total: int, tmp: Path) -> dict[str, Any]:
    with PrivatePostgres(durable=True) as pg, PrivateBroker() as broker:
        dsn = pg.create_database("bench")
        procs = []
        for i in range(consumers):
            with open(tmp / f"c{i}-{write}.log", "ab") as log:
                procs.append(subprocess.Popen([sys.executable, "-m", "gateway", "--log-level", "WARNING", "consume",
                                               "--broker", broker.url, "--db", dsn, "--group", "bench", "--name",
                                               f"c{i}", "--write", write, "--hole-check-s", "3600"], stderr=log))
        try:
            # Subscribed: a probe message of a separate gateway, written by one of them.
            probe = payloads(1, 1, 1)[0]
            deadline = time.monotonic() + 60
            while count(dsn) < 1 and time.monotonic() < deadline:
                publish_all(broker.port, [(probe[0].replace("gw-000", "gw-probe"),
                                           probe[1].replace(b"gw-000", b"gw-probe"))])
                time.sleep(0.5)
            if count(dsn) < 1:
                raise RuntimeError("consumers did not start")
            base = count(dsn)
            ps = [psutil.Process(p.pid) for p in procs]
            pgp = psutil.Process(pg._proc.pid)  # type: ignore[union-attr]
            bp = psutil.Process(broker.pid)
            cpu0 = ([cpu_seconds(p) for p in ps], tree_cpu(pgp), cpu_seconds(bp))
            t0 = time.monotonic()
            threading.Thread(target=publish_all, args=(broker.port, msgs), daemon=True).start()
            while count(dsn) < base + total and time.monotonic() - t0 < 900:
                time.sleep(0.2)
            wall = time.monotonic() - t0
            got = count(dsn) - base
            c_cpu = sum(cpu_seconds(p) for p in ps) - sum(cpu0[0])
            pg_cpu = tree_cpu(pgp) - cpu0[1]
            b_cpu = cpu_seconds(bp) - cpu0[2]
            with psycopg.connect(dsn) as conn:
                split = dict(conn.execute("SELECT consumer, sum(rows) FROM carbon.messages WHERE gateway != "
                                          "'gw-probe' GROUP BY consumer").fetchall())
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
    return {"consumers": consumers, "write": write, "readings": got, "wall_s": wall, "rate": got / wall,
            "consumer_us": 1e6 * c_cpu / max(1, got), "postgres_us": 1e6 * pg_cpu / max(1, got),
            "broker_us": 1e6 * b_cpu / max(1, got), "split": {k: int(v) for k, v in split.items()},
            "load1": psutil.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--per-message", type=int, default=100)
    ap.add_argument("--gateways", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    info = machine_info()
    info["psycopg"] = psycopg.__version__
    print_header("consumer throughput into PostgreSQL (issue 12)", info,
                 {"readings": args.readings, "per_message": args.per_message, "gateways": args.gateways})
    msgs = payloads(args.gateways, args.per_message, args.readings)
    total = sum(1 for _ in msgs) * args.per_message
    tmp = Path(__import__("tempfile").mkdtemp(prefix="carbon-bench-consumer-"))
    results = []
    for consumers, write in ((1, "copy"), (1, "insert"), (2, "copy")):
        r = run(consumers, write, msgs, total, tmp)
        results.append(r)
        print(f"  {consumers} consumer(s), {write}: {r['readings']} readings in {r['wall_s']:.1f} s, "
              f"load {r['load1']:.1f}", flush=True)
    head = ["consumers", "write", "readings/s (wall)", "consumer CPU us/reading", "PostgreSQL CPU us/reading",
            "broker CPU us/reading", "readings per consumer", "gateways at 10k/s (wall)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in results:
        cells = [r["consumers"], r["write"], f"{r['rate']:,.0f}", f"{r['consumer_us']:.1f}", f"{r['postgres_us']:.1f}",
                 f"{r['broker_us']:.1f}", "/".join(str(v) for v in r["split"].values()),
                 f"{r['rate'] / PLANT_RATE:.1f}"]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    write_json(args.json, {"machine": info, "results": results})


if __name__ == "__main__":
    main()
