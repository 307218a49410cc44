"""A Sparkplug B 3.0 host application for the tests, written from the specification (not from the gateway):
it subscribes to `spBv1.0/#`, decodes every payload, keeps each edge node's session (bdSeq, aliases,
expected seq) and writes down every rule the node breaks. It can play the primary host: STATE online/
offline (retained, QoS 1, its Will the offline STATE) and NCMD rebirth requests.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.sparkplug.payload import BOOLEAN, REBIRTH, Metric, decode, encode


@dataclass
class Msg:
    index: int
    topic: str
    verb: str
    group: str
    node: str
    device: str | None
    qos: int
    retain: bool
    body: dict[str, Any]  # decoded; in DATA each metric's "name" is resolved from its alias


@dataclass
class NodeSession:
    bdseq: int | None = None
    next_seq: int | None = None
    aliases: dict[tuple[str | None, int], str] = field(default_factory=dict)
    born_devices: set[str] = field(default_factory=set)
    online: bool = False


class SparkplugHost:
    def __init__(self, host: str, port: int, *, host_id: str | None = None, user: tuple[str, str] | None = None,
                 protocol: int = mqtt.MQTTv311) -> None:
        self.host_id = host_id
        self.messages: list[Msg] = []
        self.violations: list[str] = []
        self.sessions: dict[tuple[str, str], NodeSession] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"spb-host-{time.monotonic_ns()}",
                                  protocol=protocol, **({"clean_session": True} if protocol != mqtt.MQTTv5 else {}))
        if user is not None:
            self.client.username_pw_set(*user)
        self.client.on_connect = lambda c, *_: c.subscribe("spBv1.0/#", qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self._addr = (host, port)
        self.connect_ts = int(time.time() * 1000)
        if host_id is not None:  # 3.0: the host's Will is its offline STATE with the CONNECT-time timestamp
            self.client.will_set(self.state_topic, json.dumps({"online": False, "timestamp": self.connect_ts}),
                                 qos=1, retain=True)

    @property
    def state_topic(self) -> str:
        return f"spBv1.0/STATE/{self.host_id}"

    def start(self) -> SparkplugHost:
        self.client.connect(*self._addr)
        self.client.loop_start()
        assert self._subscribed.wait(10), "host did not get SUBACK"
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    # -- primary host --------------------------------------------------------------------------------

    def publish_state(self, online: bool, ts: int) -> None:
        info = self.client.publish(self.state_topic, json.dumps({"online": online, "timestamp": ts}), qos=1,
                                   retain=True)
        info.wait_for_publish(10)

    def request_rebirth(self, group: str, node: str) -> None:
        payload = encode([Metric(REBIRTH, None, BOOLEAN, True)], timestamp=int(time.time() * 1000), seq=None,
                         types=True)
        self.client.publish(f"spBv1.0/{group}/NCMD/{node}", payload, qos=0).wait_for_publish(10)

    # -- decoding and the rules -------------------------------------------------------------------------

    def _bad(self, line: str) -> None:
        self.violations.append(line)

    def _on_message(self, _c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        levels = m.topic.split("/")
        with self._lock:
            if levels[1] == "STATE":
                return
            verb, group, node = levels[2], levels[1], levels[3]
            device = levels[4] if len(levels) > 4 else None
            try:
                body = decode(m.payload)
            except Exception as err:  # a malformed payload is a violation to report
                self._bad(f"{m.topic}: not a Sparkplug B payload ({err})")
                return
            msg = Msg(len(self.messages), m.topic, verb, group, node, device, m.qos, bool(m.retain), body)
            self.messages.append(msg)
            if verb not in ("NCMD", "DCMD"):  # commands are the hosts' messages, not the node's
                self._check(msg)

    def _check(self, msg: Msg) -> None:
        s = self.sessions.setdefault((msg.group, msg.node), NodeSession())
        body, where = msg.body, f"#{msg.index} {msg.topic}"
        if msg.retain:
            self._bad(f"{where}: retained (edge node messages are never retained)")
        if msg.verb == "NDEATH":
            if msg.qos != 1:
                self._bad(f"{where}: NDEATH not QoS 1")
            if body["seq"] is not None:
                self._bad(f"{where}: NDEATH with a seq")
            bd = [m["value"] for m in body["metrics"] if m["name"] == "bdSeq"]
            if len(bd) != 1:
                self._bad(f"{where}: NDEATH without one bdSeq")
            elif s.bdseq is not None and bd[0] == s.bdseq:
                s.online, s.born_devices = False, set()
            # a NDEATH whose bdSeq is not the current session's is a late Will: ignored (3.0)
            return
        if msg.qos != 0:
            self._bad(f"{where}: {msg.verb} not QoS 0")
        seq = body["seq"]
        if seq is None or not 0 <= seq <= 255:
            self._bad(f"{where}: seq {seq} outside 0-255")
        if msg.verb == "NBIRTH":
            if seq != 0:
                self._bad(f"{where}: NBIRTH seq {seq} (must be 0)")
            bd = [m["value"] for m in body["metrics"] if m["name"] == "bdSeq"]
            names = {m["name"] for m in body["metrics"]}
            if len(bd) != 1 or REBIRTH not in names:
                self._bad(f"{where}: NBIRTH without bdSeq or {REBIRTH}")
            s.bdseq, s.online, s.born_devices = (bd[0] if bd else None), True, set()
            s.aliases = {k: v for k, v in s.aliases.items() if k[0] is not None}
            self._learn(s, None, body, where)
            s.next_seq = 1
            return
        if not s.online:
            self._bad(f"{where}: {msg.verb} before NBIRTH")
            return
        if s.next_seq is not None and seq != s.next_seq:
            self._bad(f"{where}: seq {seq}, expected {s.next_seq}")
        s.next_seq = ((seq or 0) + 1) % 256
        if msg.verb == "DBIRTH":
            s.born_devices.add(msg.device or "")
            self._learn(s, msg.device, body, where)
        elif msg.verb in ("DDATA", "NDATA"):
            if msg.verb == "DDATA" and msg.device not in s.born_devices:
                self._bad(f"{where}: DDATA before DBIRTH of {msg.device}")
            for metric in body["metrics"]:
                if metric["datatype"] is not None or metric["name"] is not None:
                    self._bad(f"{where}: DATA metric with a name or datatype (aliases are in use)")
                name = s.aliases.get((msg.device, metric["alias"]))
                if name is None:
                    self._bad(f"{where}: unknown alias {metric['alias']}")
                metric["name"] = name
        elif msg.verb == "DDEATH":
            s.born_devices.discard(msg.device or "")

    def _learn(self, s: NodeSession, device: str | None, body: dict[str, Any], where: str) -> None:
        for m in body["metrics"]:
            if m["datatype"] is None or m["name"] is None:
                self._bad(f"{where}: BIRTH metric without name or datatype: {m}")
            if m["alias"] is not None:
                s.aliases[(device, m["alias"])] = m["name"]

    # -- queries ---------------------------------------------------------------------------------------

    def snapshot(self) -> list[Msg]:
        with self._lock:
            return list(self.messages)

    def of(self, verb: str, device: str | None = None) -> list[Msg]:
        return [m for m in self.snapshot() if m.verb == verb and (device is None or m.device == device)]

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()
