"""The MQTT ceiling: a bare paho QoS 1 publisher sending gateway-shaped readings messages.

Same topic pattern and JSON shape as the gateway's `JsonEncoder` (compact separators, one message per
instrument and seq, k readings each), json.dumps'ed inside the timed loop as the gateway does for
every message. Closed loop with at most `--inflight` (default 100, the gateway's `max_inflight`)
messages awaiting PUBACK, so paho's internal queue never grows. Bounded by --seconds and --max-messages.
Timing ends at the last PUBACK. Prints one JSON line.

    python -m bench.rawmqtt --port 1883 --readings-per-message 10 --instruments 20 --seconds 4
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import cpu_seconds

# (point, unit, typical value) of the cems_generic profile, in the order a poll yields them.
CEMS_POINTS: tuple[tuple[str, str, float], ...] = (
    ("co2", "%vol", 12.0), ("o2", "%vol", 6.5), ("flue_gas_flow", "Nm3/h", 300000.0),
    ("flue_gas_temperature", "degC", 135.0), ("flue_gas_pressure", "kPa", 100.8), ("moisture", "%vol", 8.0),
    ("co2_mass_flow", "t/h", 71.16), ("co2_total", "t", 150012.3), ("flue_gas_total", "Nm3", 2000123456.7),
    ("status_word", "1", 0.0),
)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


def body(gateway: str, instrument: str, seq: int, k: int, ts_ms: int, rng: random.Random) -> dict[str, Any]:
    readings = []
    for i in range(k):
        point, unit, typical = CEMS_POINTS[i % len(CEMS_POINTS)]
        readings.append({"point": point, "ts": ts_ms, "value": typical * (1 + 0.01 * rng.random()), "unit": unit,
                         "quality": "good", "reason": "", "calibration": "valid"})
    return {"schema": "carbon-gateway/readings/1", "gateway": gateway, "instrument": instrument, "seq": seq,
            "readings": readings}


def publish(port: int, *, k: int, instruments: int, seconds: float, inflight: int = 100,
            max_messages: int = 500_000, prefix: str = "raw", gateway: str = "gw-raw") -> dict[str, Any]:
    cond = threading.Condition()
    state = {"outstanding": 0, "acked": 0, "last_ack": 0.0}
    connected = threading.Event()

    def on_publish(_c: mqtt.Client, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
        with cond:
            state["outstanding"] -= 1
            state["acked"] += 1
            state["last_ack"] = time.monotonic()
            cond.notify()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-raw-pub-{time.monotonic_ns()}")
    client.max_inflight_messages_set(inflight)
    client.on_publish = on_publish
    client.on_connect = lambda *_: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    rng = random.Random(1)
    names = [f"RAW-{i + 1:03d}" for i in range(instruments)]
    seqs = dict.fromkeys(names, 0)
    sent = payload_bytes = 0
    try:
        if not connected.wait(10):
            raise RuntimeError("raw publisher: no CONNACK within 10 s")
        me = psutil.Process()
        cpu0, t0 = cpu_seconds(me), time.monotonic()
        deadline = t0 + seconds
        while sent < max_messages and time.monotonic() < deadline:
            with cond:
                for _ in range(1000):  # bounded wait: at most ~1000 x 10 ms
                    if state["outstanding"] < inflight:
                        break
                    cond.wait(0.01)
                state["outstanding"] += 1
            name = names[sent % instruments]
            seqs[name] += 1
            payload = dumps(body(gateway, name, seqs[name], k, time.time_ns() // 1_000_000, rng))
            payload_bytes += len(payload)
            client.publish(f"{prefix}/{gateway}/{name}/readings", payload, qos=1)
            sent += 1
        drain_until = time.monotonic() + 10
        with cond:
            while state["outstanding"] > 0 and time.monotonic() < drain_until:
                cond.wait(0.05)
        end = state["last_ack"] or time.monotonic()
        elapsed = end - t0
        cpu = cpu_seconds(me) - cpu0
    finally:
        client.disconnect()
        client.loop_stop()
    acked = state["acked"]
    return {"sent": sent, "acked": acked, "elapsed_s": elapsed, "msg_per_s": acked / elapsed if elapsed else 0.0,
            "readings_per_s": acked * k / elapsed if elapsed else 0.0, "readings_per_message": k,
            "payload_bytes_mean": payload_bytes / sent if sent else 0, "cpu_pct": 100.0 * cpu / elapsed,
            "unacked": state["outstanding"]}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.rawmqtt", description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True, help="loopback broker port")
    ap.add_argument("--readings-per-message", type=int, default=10)
    ap.add_argument("--instruments", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--inflight", type=int, default=100)
    ap.add_argument("--max-messages", type=int, default=500_000)
    ap.add_argument("--prefix", default="raw")
    args = ap.parse_args(argv)
    res = publish(args.port, k=max(1, args.readings_per_message), instruments=max(1, args.instruments),
                  seconds=args.seconds, inflight=args.inflight, max_messages=args.max_messages, prefix=args.prefix)
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
