"""`carbon-gateway watch`: a subscriber that shows readings arriving per instrument (demo, commissioning).

It also checks each instrument's `seq` for holes and counts duplicates, which is what a central
subscriber should do.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import ParseResult, urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@dataclass
class InstrumentView:
    messages: int = 0
    readings: int = 0
    last_seq: int = 0
    seqs: set[int] = field(default_factory=set)
    duplicates: int = 0
    bad: int = 0
    last: dict[str, tuple[float | None, str, str]] = field(default_factory=dict)

    def holes(self) -> int:
        return (max(self.seqs) - min(self.seqs) + 1 - len(self.seqs)) if self.seqs else 0


def watch(url: str, prefix: str, *, duration_s: float | None, until_instruments: int = 0) -> int:
    parsed = urlparse(url)
    views: dict[str, InstrumentView] = {}
    status: dict[str, str] = {}
    derived: dict[str, int] = {}
    carbon: dict[str, dict] = {}  # source -> its newest hourly carbon record
    lock = threading.Lock()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        with lock:
            if msg.topic.endswith("/status"):
                status[body.get("gateway", "?")] = body.get("state", "?")
            elif msg.topic.endswith("/carbon"):
                for rec in body.get("carbon", []):
                    old = carbon.get(rec["source"])
                    if old is None or (rec["hour_start"], rec["version"]) >= (old["hour_start"], old["version"]):
                        carbon[rec["source"]] = rec
            elif (kind := msg.topic.rsplit("/", 1)[-1]) in ("events", "aggregates", "substitutes", "corrections"):
                derived[kind] = derived.get(kind, 0) + len(body.get(kind, []))
            elif msg.topic.endswith("/readings"):
                v = views.setdefault(body["instrument"], InstrumentView())
                if body["seq"] in v.seqs:
                    v.duplicates += 1
                    return
                v.seqs.add(body["seq"])
                v.messages += 1
                v.last_seq = max(v.last_seq, body["seq"])
                for r in body["readings"]:
                    v.readings += 1
                    v.bad += r["quality"] == "bad"
                    v.last[r["point"]] = (r["value"], r["unit"], r["quality"])

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"carbon-watch-{int(time.time())}")
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(f"{prefix}/#", qos=1)
    def frame(elapsed: float) -> tuple[str, bool]:
        with lock:
            table = _render(views, status, elapsed)
            if derived:
                table += "\nrules engine: " + ", ".join(f"{k} {v}" for k, v in sorted(derived.items()))
            if carbon:
                table += "\n" + _render_carbon(carbon)
            done = bool(until_instruments) and sum(1 for v in views.values() if v.readings) >= until_instruments
        return table, done

    return run_table(client, parsed, frame, duration_s=duration_s, until_instruments=until_instruments)


def run_table(client: mqtt.Client, parsed: ParseResult, frame: Callable[[float], tuple[str, bool]], *,
              duration_s: float | None, until_instruments: int) -> int:
    """Connect, then print `frame(elapsed)` every second (redrawn in place on a terminal) until the duration
    ends, Ctrl-C, or the frame says it is done (exit 0; 1 when --until-instruments was not reached)."""
    host, port = parsed.hostname or "127.0.0.1", parsed.port or (8883 if parsed.scheme == "mqtts" else 1883)
    try:
        client.connect(host, port)
    except (OSError, ValueError) as err:  # refused, unreachable, unknown host: one line, exit 1
        reason = getattr(err, "strerror", None) or str(err)
        print(f"error: cannot connect to the mqtt broker {host}:{port}: {reason}", file=sys.stderr)
        return 1
    client.loop_start()
    start = time.monotonic()
    tty = sys.stdout.isatty()
    try:
        while duration_s is None or time.monotonic() - start < duration_s:
            time.sleep(1.0)
            table, done = frame(time.monotonic() - start)
            print(("\033[2J\033[H" if tty else "") + table, flush=True)
            if done:
                return 0
    except KeyboardInterrupt:
        pass
    finally:
        client.loop_stop()
        client.disconnect()
    return 0 if not until_instruments else 1


def _fmt(value: float | None) -> str:
    return "null" if value is None else f"{value:.6g}"


def _render(views: dict[str, InstrumentView], status: dict[str, str], elapsed: float) -> str:
    lines = [f"t={elapsed:5.0f}s  gateways: {', '.join(f'{g}={s}' for g, s in status.items()) or '-'}",
             f"{'instrument':<14}{'msgs':>7}{'readings':>10}{'seq':>7}{'holes':>7}{'dups':>6}{'bad':>6}  sample"]
    for name in sorted(views):
        v = views[name]
        sample = ", ".join(f"{p}={_fmt(val)} {u}" for p, (val, u, _q) in list(v.last.items())[:3])
        lines.append(f"{name:<14}{v.messages:>7}{v.readings:>10}{v.last_seq:>7}{v.holes():>7}{v.duplicates:>6}"
                     f"{v.bad:>6}  {sample}")
    return "\n".join(lines)


def _render_carbon(carbon: dict[str, dict]) -> str:
    """The newest hourly CO2 record of each emission source: kg by each method and their difference."""
    lines = ["hourly CO2 (kg)"]
    for source in sorted(carbon):
        rec = carbon[source]
        hour = time.strftime("%Y-%m-%d %H:%M", time.gmtime(rec["hour_start"] / 1000))
        methods = ", ".join(f"{name}={_fmt(m.get('co2_kg'))}" for name, m in rec["methods"].items())
        diff = rec.get("difference")
        rel = f"  diff {diff['relative'] * 100:+.1f} %" if diff and diff.get("relative") is not None else ""
        lines.append(f"{source:<20} {hour} UTC  {methods}{rel}  [{rec['quality']}, {rec['status']}, "
                     f"v{rec['version']}]")
    return "\n".join(lines)
