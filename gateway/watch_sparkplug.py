"""`carbon-gateway watch --sparkplug`: the live table of `watch`, read from Sparkplug B (spBv1.0/#).

A small host application: it learns aliases from NBIRTH/DBIRTH, resolves DDATA through them, checks the
node's seq (0-255, wrapping) and counts what a host would reject (data before a birth, unknown aliases,
seq gaps), and shows historical (store-and-forward) values apart from live ones. Holes and duplicates
are counted on each device's `Readings/Seq` (the store's seq), as `watch` does on the JSON `seq`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.sparkplug.payload import decode
from gateway.watch import InstrumentView, _render, run_table

QUALITY_BAD = 0


@dataclass
class NodeView:
    bdseq: int | None = None
    online: bool = False
    next_seq: int | None = None
    births: int = 0
    seq_errors: int = 0
    rejected: int = 0  # data before birth, unknown alias
    historical: int = 0
    aliases: dict[tuple[str | None, int], str] = field(default_factory=dict)
    units: dict[tuple[str | None, str], str] = field(default_factory=dict)

    def line(self, name: str) -> str:
        state = "online" if self.online else "offline"
        return (f"{name}={state} (bdSeq {self.bdseq}, births {self.births}, seq errors {self.seq_errors}, "
                f"rejected {self.rejected}, historical {self.historical})")


class SparkplugView:
    def __init__(self) -> None:
        self.nodes: dict[str, NodeView] = {}
        self.devices: dict[str, InstrumentView] = {}
        self.lock = threading.Lock()

    def feed(self, topic: str, payload: bytes) -> None:
        levels = topic.split("/")
        if len(levels) < 4 or levels[1] == "STATE":
            return
        verb, node_name, device = levels[2], f"{levels[1]}/{levels[3]}", (levels[4] if len(levels) > 4 else None)
        if verb in ("NCMD", "DCMD"):
            return
        try:
            body = decode(payload)
        except Exception:  # noqa: BLE001 - a malformed payload is counted, never a crash
            with self.lock:
                self.nodes.setdefault(node_name, NodeView()).rejected += 1
            return
        with self.lock:
            self._feed(self.nodes.setdefault(node_name, NodeView()), verb, device, body)

    def _feed(self, n: NodeView, verb: str, device: str | None, body: dict) -> None:
        if verb == "NDEATH":
            bd = next((m["value"] for m in body["metrics"] if m["name"] == "bdSeq"), None)
            if bd == n.bdseq:  # a late Will of an older session carries another bdSeq: ignored
                n.online = False
            return
        seq = body["seq"]
        if verb == "NBIRTH":
            n.bdseq = next((m["value"] for m in body["metrics"] if m["name"] == "bdSeq"), None)
            n.online, n.births, n.next_seq = True, n.births + 1, 1
            n.aliases = {k: v for k, v in n.aliases.items() if k[0] is not None}
            self._learn(n, None, body)
            return
        if not n.online:
            n.rejected += 1
            return
        if seq != n.next_seq:
            n.seq_errors += 1
        n.next_seq = ((seq or 0) + 1) % 256
        if verb == "DBIRTH":
            self._learn(n, device, body)
        elif verb == "DDATA" and device is not None:
            self._data(n, device, body)

    @staticmethod
    def _learn(n: NodeView, device: str | None, body: dict) -> None:
        for m in body["metrics"]:
            if m["alias"] is not None and m["name"] is not None:
                n.aliases[(device, m["alias"])] = m["name"]
            if m["properties"].get("engUnit"):
                n.units[(device, m["name"])] = m["properties"]["engUnit"]

    def _data(self, n: NodeView, device: str, body: dict) -> None:
        v = self.devices.setdefault(device, InstrumentView())
        rows = []
        store_seq = None
        for m in body["metrics"]:
            name = n.aliases.get((device, m["alias"]))
            if name is None:
                n.rejected += 1
                continue
            if name == "Readings/Seq":
                store_seq = m["value"]
            elif not name.startswith(("Records/", "Properties/", "Calibration/", "Meta")):
                rows.append((name, m))
        if store_seq is None:
            return
        if store_seq in v.seqs:
            v.duplicates += 1
            return
        v.seqs.add(store_seq)
        v.messages += 1
        v.last_seq = max(v.last_seq, store_seq)
        for name, m in rows:
            v.readings += 1
            props = m["properties"]
            v.bad += props.get("Quality") == QUALITY_BAD
            n.historical += bool(m["is_historical"])
            unit = n.units.get((device, name), "")
            v.last[name] = (m["value"], f"{unit} (historical)" if m["is_historical"] else unit, "")

    def render(self, elapsed: float) -> str:
        with self.lock:
            status = {"sparkplug": "; ".join(n.line(k) for k, n in self.nodes.items()) or "-"}
            return _render(self.devices, status, elapsed)


def watch_sparkplug(url: str, *, duration_s: float | None, until_instruments: int = 0) -> int:
    parsed = urlparse(url)
    view = SparkplugView()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"carbon-watch-spb-{int(time.time())}")
    client.on_message = lambda _c, _u, msg: view.feed(msg.topic, bytes(msg.payload))
    client.on_connect = lambda c, *_: c.subscribe("spBv1.0/#", qos=1)
    def frame(elapsed: float) -> tuple[str, bool]:
        table = view.render(elapsed)
        with view.lock:
            done = bool(until_instruments) and sum(1 for v in view.devices.values() if v.readings) >= until_instruments
        return table, done

    return run_table(client, parsed, frame, duration_s=duration_s, until_instruments=until_instruments)
