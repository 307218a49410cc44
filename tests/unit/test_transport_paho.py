"""The transport's cheaper paho paths (issue 8) give what paho's own paths give.

`_PahoClient` overrides three of paho's internals: the decoding of a two-byte PUBACK, the scan for queued
messages after each PUBACK, and the socket read (a block at a time instead of three `recv` a PUBACK). The
pure part is checked against paho's decoder for every mid; the rest against a real Mosquitto, under
MQTT 3.1.1 and 5, with a window larger than paho's own (so paho queues, and the scan must run).
"""

from __future__ import annotations

import struct
import threading

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.transport import _PUBACK_NO_PROPERTIES, _PUBACK_OK, _PahoClient
from simulators.broker import PrivateBroker


@given(mid=st.integers(1, 65535), v5=st.booleans())
def test_two_byte_puback_decodes_as_paho_does(mid: int, v5: bool) -> None:
    proto = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
    paho = _packet.decode_puback(0x40, struct.pack("!H", mid), proto)
    assert paho.mid == mid
    assert paho.reason == _PUBACK_OK
    assert paho.reason.is_failure is False
    assert str(paho.reason) == str(_PUBACK_OK)
    assert paho.properties.json() == _PUBACK_NO_PROPERTIES.json() == {}


class _Counting(_PahoClient):
    """Counts the socket reads our block reader does, and paho's scans that were not skipped."""

    reads = 0
    scans = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        if not (self._rpos < len(self._rbuf) and self._rsock is self._sock):
            self.reads += 1
        return super()._sock_recv(bufsize)

    def _update_inflight(self):  # type: ignore[no-untyped-def]
        if len(self._out_messages) > self._inflight_messages:
            self.scans += 1
        return super()._update_inflight()


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5])
@pytest.mark.parametrize("subscribed", [False, True])
def test_every_publish_is_acknowledged_once_through_the_cheap_paths(protocol: int, subscribed: bool) -> None:
    # Unsubscribed under MQTT 5, Mosquitto answers "No matching subscribers" (a three-byte PUBACK, paho's own
    # path); subscribed, or under 3.1.1, a two-byte PUBACK (ours).
    n, window = 3000, 20
    with PrivateBroker() as broker:
        sub = None
        if subscribed:
            sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sub", protocol=protocol)
            got = threading.Event()
            sub.on_subscribe = lambda *_a: got.set()
            sub.connect("127.0.0.1", broker.port)
            sub.loop_start()
            sub.subscribe("t/#", qos=1)
            assert got.wait(10)
        c = _Counting(CallbackAPIVersion.VERSION2, client_id="pub", protocol=protocol)
        c.max_inflight_messages_set(window)  # smaller than the burst: paho queues, and must send the rest
        acks: list[tuple[int, bool]] = []
        reasons: set[str] = set()
        done = threading.Event()

        def on_publish(_c, _u, mid, rc, _p) -> None:  # type: ignore[no-untyped-def]
            acks.append((mid, rc.is_failure))
            reasons.add(str(rc))
            if len(acks) == n:
                done.set()

        c.on_publish = on_publish
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        mids = [c.publish(f"t/{i % 7}", b"x" * (i % 300), qos=1).mid for i in range(n)]
        try:
            assert done.wait(30), f"{len(acks)} of {n} acknowledged"
        finally:
            c.disconnect()
            c.loop_stop()
            if sub is not None:
                sub.disconnect()
                sub.loop_stop()
    assert sorted(m for m, _ in acks) == sorted(mids)  # each once
    assert not any(failed for _, failed in acks)
    assert c.scans > 0  # queued messages were there, and paho's scan ran for them
    assert c.reads < 2 * n  # three recv a PUBACK before; a block now holds many
    if protocol == mqtt.MQTTv5 and not subscribed:
        assert reasons == {"No matching subscribers"}
    else:
        assert reasons == {"Success"}


class _Sends(_PahoClient):
    """Counts the `send` calls that carry packets."""

    sends = 0

    def _sock_send(self, buf):  # type: ignore[no-untyped-def]
        self.sends += 1
        return super()._sock_send(buf)


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5])
def test_a_held_burst_arrives_whole_and_in_order_in_fewer_sends(protocol: int) -> None:
    # Sizes from a few bytes to several blocks (WRITE_BLOCK), so sends are cut short by a full socket and
    # packets are split across sends; QoS 0 packets among them take paho's own path. A subscriber sees every
    # payload once, in order, and every QoS 1 publish is acknowledged once.
    n = 1500
    sizes = [(i * 7919) % 4000 + (200_000 if i % 97 == 0 else 0) for i in range(n)]
    qos = [0 if i % 50 == 7 else 1 for i in range(n)]
    with PrivateBroker() as broker:
        got: list[bytes] = []
        all_in = threading.Event()
        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sub", protocol=protocol)
        subscribed = threading.Event()
        sub.on_subscribe = lambda *_a: subscribed.set()

        def on_message(_c, _u, msg) -> None:  # type: ignore[no-untyped-def]
            got.append(msg.payload)
            if len(got) == n:
                all_in.set()

        sub.on_message = on_message
        sub.connect("127.0.0.1", broker.port)
        sub.loop_start()
        sub.subscribe("t/#", qos=1)
        assert subscribed.wait(10)
        c = _Sends(CallbackAPIVersion.VERSION2, client_id="pub", protocol=protocol)
        c.max_inflight_messages_set(n)
        acked: list[int] = []
        c.on_publish = lambda _c, _u, mid, _rc, _p: acked.append(mid)
        connected = threading.Event()
        c.on_connect = lambda *_a: connected.set()
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        assert connected.wait(10)
        sends_before = c.sends
        payloads = [i.to_bytes(4, "big") + bytes([i % 251]) * s for i, s in enumerate(sizes)]
        c.hold_wake = True
        try:
            mids = [c.publish("t/a", body, qos=q).mid for body, q in zip(payloads, qos, strict=True)]
        finally:
            c.hold_wake = False
            c.wake()
        try:
            assert all_in.wait(60), f"{len(got)} of {n} received"
            for _ in range(200):
                if len(acked) >= n:
                    break
                threading.Event().wait(0.05)
        finally:
            c.disconnect()
            c.loop_stop()
            sub.disconnect()
            sub.loop_stop()
    assert got == payloads  # each once, in order, byte for byte
    assert sorted(acked) == sorted(mids)  # QoS 1: at the PUBACK; QoS 0: when written (paho's path)
    assert c.sends - sends_before < n // 4  # a block holds many packets
