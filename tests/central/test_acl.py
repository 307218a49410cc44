"""Per-gateway ACLs (issue 12 item 4): config/mosquitto/acl, as committed, on a private Mosquitto.

A gateway (its real forwarder and replayer, logged in as its gateway id over MQTT 5) delivers readings and
status, reads its own command topic and answers on its response topic; a consumer reads everything and
asks for replays. Another gateway may not publish under gw-1's prefix (PUBACK "Not authorized") nor read
gw-1's command topic (Mosquitto grants the subscription and delivers nothing on it), and the consumer may
not publish data in a gateway's name.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.encode import EncoderContext, JsonEncoder
from gateway.forwarder import Forwarder
from gateway.replay import Replayer
from gateway.settings import ReplaySettings
from gateway.store import Store
from simulators.broker import PrivateBroker
from tests.integration.test_forwarder_states import readings, settings, until

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

ACL = Path(__file__).resolve().parents[2] / "config" / "mosquitto" / "acl"
USERS = {"gw-1": "pw-1", "gw-2": "pw-2", "consumer": "pw-c"}


class Client:
    """A plain MQTT 5 client that records what arrives and the reason codes of its publishes/subscribes."""

    def __init__(self, port: int, user: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.acks: dict[int, Any] = {}
        self.subacks: dict[int, list[Any]] = {}
        self._lock = threading.Lock()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"acl-{user}", protocol=mqtt.MQTTv5)
        c.username_pw_set(user, USERS[user])
        c.on_message = lambda _c, _u, m: self._add(m.topic, bytes(m.payload))
        c.on_publish = lambda _c, _u, mid, rc, _p: self.acks.__setitem__(mid, rc)
        c.on_subscribe = lambda _c, _u, mid, rcs, _p: self.subacks.__setitem__(mid, rcs)
        connected = threading.Event()
        c.on_connect = lambda *_: connected.set()
        c.connect("127.0.0.1", port)
        c.loop_start()
        assert connected.wait(10)
        self.c = c

    def _add(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self.messages.append((topic, payload))

    def on(self, topic: str) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(p) for t, p in self.messages if t == topic]

    def publish(self, topic: str, body: dict[str, Any]) -> int:
        return int(self.c.publish(topic, json.dumps(body), qos=1).mid)

    def subscribe(self, topic: str) -> int:
        return int(self.c.subscribe(topic, qos=1)[1])

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def acl_broker() -> Iterator[PrivateBroker]:
    with PrivateBroker(users=USERS, acl_file=ACL) as b:
        yield b


async def test_each_gateway_publishes_only_under_its_prefix_and_reads_only_its_commands(
        tmp_path: Path, acl_broker: PrivateBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARBON_TEST_GW1_PW", USERS["gw-1"])
    consumer = Client(acl_broker.port, "consumer")
    rogue = Client(acl_broker.port, "gw-2")
    store = Store(tmp_path / "s.db")
    s = settings(acl_broker.port, protocol="5", username="gw-1", password_env="CARBON_TEST_GW1_PW")
    fwd = Forwarder(s, "gw-1", store, meta=lambda: {}, status_extra=lambda: {}, config_version="v1")
    rp = Replayer(ReplaySettings(), store, JsonEncoder(EncoderContext("carbon", "gw-1", store.epoch)),
                  prefix="carbon", gateway="gw-1", send=fwd.send_extra, window_free=lambda: fwd.window_free,
                  max_inflight=s.max_inflight, retention_ms=lambda: 10**15)
    fwd.commands[rp.topic] = rp.request
    tasks = [asyncio.create_task(fwd.run()), asyncio.create_task(rp.run())]
    try:
        sub = consumer.subscribe("carbon/#")
        # Mosquitto grants any subscription and applies the ACL to every message it would deliver.
        peek = rogue.subscribe("carbon/gw-1/cmd/replay")
        await until(lambda: sub in consumer.subacks and peek in rogue.subacks)
        store.commit(readings(20), now_ms=1_795_000_000_000, per_message=10)
        fwd.notify()
        # The gateway's own traffic passes: readings, status, and a replay asked by the consumer.
        await until(lambda: len(consumer.on("carbon/gw-1/M-1/readings")) == 2)
        await until(lambda: any(b["state"] == "online" for b in consumer.on("carbon/gw-1/status")))
        assert fwd.stats.rejected == 0
        ask = consumer.publish("carbon/gw-1/cmd/replay", {"id": "acl-1", "instrument": "M-1", "from_seq": 1,
                                                          "to_seq": 2})
        await until(lambda: any(b["state"] == "done" for b in consumer.on("carbon/gw-1/cmd/response")))
        assert not consumer.acks[ask].is_failure
        assert len([b for b in consumer.on("carbon/gw-1/M-1/readings") if b.get("replay") == "acl-1"]) == 2
        # gw-1 got the request; another gateway subscribed to the same topic got nothing of it.
        assert rogue.on("carbon/gw-1/cmd/replay") == []

        # Another gateway may publish under its own prefix, not under gw-1's.
        own = rogue.publish("carbon/gw-2/M-1/readings", {"seq": 1})
        await until(lambda: own in rogue.acks)
        assert not rogue.acks[own].is_failure
        forged = rogue.publish("carbon/gw-1/M-1/readings", {"seq": 99})
        await until(lambda: forged in rogue.acks)
        assert str(rogue.acks[forged]) == "Not authorized"
        # The consumer cannot publish data in a gateway's name.
        fake = consumer.publish("carbon/gw-1/M-1/readings", {"seq": 100})
        await until(lambda: fake in consumer.acks)
        assert str(consumer.acks[fake]) == "Not authorized"
        assert all(b.get("seq") not in (99, 100) for b in consumer.on("carbon/gw-1/M-1/readings"))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        fwd.shutdown()
        store.close()
        consumer.close()
        rogue.close()
