"""The Sparkplug lines of config/mosquitto/acl, as committed, on a private Mosquitto: a gateway (its real
forwarder with the Sparkplug encoder and transport, logged in as its gateway id over MQTT 5) gets births,
data, its Will and its delivery fences through, so its store is acknowledged; the host `scada` reads them;
another gateway may not publish Sparkplug messages in gw-1's name."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from gateway.encode import EncoderContext
from gateway.encode_sparkplug import SparkplugEncoder
from gateway.forwarder import Forwarder
from gateway.settings import OutputSettings, SparkplugSettings
from gateway.store import Store
from simulators.broker import PrivateBroker
from tests.integration.test_forwarder_states import readings, settings, until
from tests.sparkplug_host import SparkplugHost

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

ACL = Path(__file__).resolve().parents[2] / "config" / "mosquitto" / "acl"
USERS = {"gw-1": "pw-1", "gw-2": "pw-2", "scada": "pw-s"}


@pytest.fixture
def acl_broker() -> Iterator[PrivateBroker]:
    with PrivateBroker(users=USERS, acl_file=ACL) as b:
        yield b


def encoder(store: Store, gateway: str) -> SparkplugEncoder:
    out = OutputSettings(encoder="sparkplug", sparkplug=SparkplugSettings(group_id="carbon"))
    return SparkplugEncoder(EncoderContext("carbon", gateway, store.epoch, "v1", output=out))


async def test_the_sparkplug_acl_lets_a_node_publish_as_itself_only(
        tmp_path: Path, acl_broker: PrivateBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARBON_TEST_GW1_PW", USERS["gw-1"])
    host = SparkplugHost("127.0.0.1", acl_broker.port, user=("scada", USERS["scada"]), protocol=mqtt.MQTTv5).start()
    rogue = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="acl-gw-2", protocol=mqtt.MQTTv5)
    rogue.username_pw_set("gw-2", USERS["gw-2"])
    acks: dict[int, object] = {}
    rogue.on_publish = lambda _c, _u, mid, rc, _p: acks.__setitem__(mid, rc)
    rogue.connect("127.0.0.1", acl_broker.port)
    rogue.loop_start()
    store = Store(tmp_path / "s.db")
    s = settings(acl_broker.port, protocol="5", username="gw-1", password_env="CARBON_TEST_GW1_PW")
    enc = encoder(store, "gw-1")
    fwd = Forwarder(s, "gw-1", store, enc, meta=lambda: {}, status_extra=lambda: {}, config_version="v1",
                    transport=enc.transport(s))
    task = asyncio.create_task(fwd.run())
    try:
        await until(lambda: fwd.stats.connected)
        store.commit(readings(40), now_ms=1_795_000_000_000, per_message=10)
        fwd.notify()
        await until(lambda: store.stats().pending_messages == 0)  # fences acknowledged through the ACL
        await until(lambda: len(host.of("DDATA", "M-1")) == 4)
        assert fwd.stats.rejected == 0
        assert [m.verb for m in host.snapshot()][:3] == ["NBIRTH", "DBIRTH", "DDATA"]
        forged = rogue.publish("spBv1.0/carbon/DDATA/gw-1/M-1", b"\x00", qos=1).mid
        await until(lambda: forged in acks)
        assert str(acks[forged]) == "Not authorized"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        fwd.shutdown()
        store.close()
    await asyncio.to_thread(host.wait_for, lambda: len(host.of("NDEATH")) == 1, 10)
    assert host.violations == [], host.violations[:10]
    assert len(host.of("NDEATH")) == 1
    rogue.disconnect()
    rogue.loop_stop()
    host.stop()
