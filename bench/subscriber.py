"""The benchmark's MQTT subscriber (paho, QoS 1, in the bench process): counts, dedup, latency.

Every readings message is parsed; the first copy of each (instrument, seq) counts, later copies are
duplicates. End-to-end latency of a reading = wall time at receipt - its `ts` (the meter's answer
time), both from this host's clock.
"""

from __future__ import annotations

import json
import threading
import time
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.common import percentile


@dataclass
class WindowStats:
    readings: int
    messages: int
    latencies_ms: list[float]

    def latency(self, q: float) -> float | None:
        return percentile(self.latencies_ms, q)


class Subscriber:
    def __init__(self, port: int, topics: tuple[str, ...], *, max_messages: int = 5_000_000) -> None:
        self.port = port
        self.topics = topics
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self.seen: dict[str, set[int]] = {}
        self.duplicates = 0
        self.parse_errors = 0
        self.total_readings = 0
        self.total_messages = 0
        self.last_status: dict[str, Any] | None = None
        self._msg_mono = array("d")  # receive time (monotonic) of each first-copy message
        self._msg_n = array("l")  # readings in it
        self._rd_mono = array("d")  # receive time (monotonic) of each reading
        self._rd_lat = array("d")  # its latency in ms
        self.recv: dict[tuple[str, int], tuple[float, float]] = {}  # first copy: (monotonic, wall ms) at receipt
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{time.monotonic_ns()}",
                                  clean_session=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, c: mqtt.Client, *_: Any) -> None:
        c.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now_ms = time.time_ns() / 1e6
        mono = time.monotonic()
        try:
            body = json.loads(msg.payload)
        except ValueError:
            self.parse_errors += 1
            return
        if msg.topic.endswith("/status"):
            self.last_status = body
            return
        if not msg.topic.endswith("/readings"):
            return
        readings = body.get("readings") or []
        with self._lock:
            seqs = self.seen.setdefault(body["instrument"], set())
            if body["seq"] in seqs:
                self.duplicates += 1
                return
            seqs.add(body["seq"])
            if self.total_messages >= self.max_messages:
                return
            self.total_messages += 1
            self.total_readings += len(readings)
            self._msg_mono.append(mono)
            self._msg_n.append(len(readings))
            self.recv[(body["instrument"], body["seq"])] = (mono, now_ms)
            for r in readings:
                self._rd_mono.append(mono)
                self._rd_lat.append(now_ms - r["ts"])

    def start(self, timeout_s: float = 10.0) -> Subscriber:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        if not self._subscribed.wait(timeout_s):
            self.stop()
            raise RuntimeError("subscriber: no SUBACK")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def first_message_mono(self) -> float | None:
        with self._lock:
            return self._msg_mono[0] if self._msg_mono else None

    def last_message_mono(self) -> float | None:
        with self._lock:
            return self._msg_mono[-1] if self._msg_mono else None

    def window(self, t0: float, t1: float) -> WindowStats:
        """First-copy messages/readings received with t0 <= monotonic receive time < t1."""
        with self._lock:
            a, b = bisect_left(self._msg_mono, t0), bisect_left(self._msg_mono, t1)
            readings = sum(self._msg_n[a:b])
            ra, rb = bisect_left(self._rd_mono, t0), bisect_right(self._rd_mono, t1)
            lats = sorted(self._rd_lat[ra:rb])
        return WindowStats(readings=readings, messages=b - a, latencies_ms=lats)

    def holes(self) -> dict[str, int]:
        """Per instrument: seqs missing between 1 and the highest seq received."""
        with self._lock:
            return {inst: max(seqs) - len(seqs) for inst, seqs in self.seen.items() if seqs and max(seqs) != len(seqs)}

    def received_keys(self) -> set[tuple[str, int]]:
        with self._lock:
            return {(inst, s) for inst, seqs in self.seen.items() for s in seqs}

    def wait_quiet(self, quiet_s: float, timeout_s: float) -> None:
        """Wait until no readings message arrived for quiet_s (bounded by timeout_s)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            last = self.last_message_mono()
            if last is None or time.monotonic() - last >= quiet_s:
                return
            time.sleep(0.05)
