"""Sparkplug B edge node session over paho (the session half of gateway/encode_sparkplug.py).

What the specification asks of an edge node's MQTT session, on top of `MqttTransport`:

- **Will = NDEATH, bdSeq per CONNECT.** Just before every CONNECT (paho's `on_pre_connect`, also before
  paho's own reconnects) the encoder counts a new bdSeq and its NDEATH is registered as the Will, so
  NBIRTH and the Will of one connection always carry the same bdSeq.
- **Subscriptions** (QoS 1, before any birth): NCMD, DCMD and, with a primary host, its
  `spBv1.0/STATE/{host}`.
- **Primary host gating.** With `output.sparkplug.primary_host_id`, the forwarder is told "connected"
  (and so publishes the births and starts draining the store) only once the host's STATE says online
  with a timestamp no older than the last one seen. An offline STATE ends the session: in-flight
  messages are handed back to the store unacknowledged, NDEATH is published and the connection is made
  anew (3.0: disconnect and walk to the next server; there is one). What is committed meanwhile waits in
  the store and goes out after the next births with `is_historical`.
- **Rebirth** on NCMD `Node Control/Rebirth = true`: NBIRTH and every DBIRTH again (seq from 0).

**Delivery.** Sparkplug data is QoS 0 (a MUST), so there is no PUBACK per DDATA. The store's rule stays:
a message is marked delivered only after a PUBACK. After each batch the transport publishes a QoS 1
*fence* (`{prefix}/{gateway}/sparkplug/delivered`, outside the Sparkplug namespace); the broker
answers a PUBACK only after it has read everything sent before it on the same connection, so the fence's
PUBACK acknowledges every QoS 0 part sent before it. A connection lost first hands those messages back
to the store: they are sent again (as historical), never lost; a host may see one twice and can
deduplicate on (device, `Readings/Seq`) or (metric, timestamp).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from gateway.encode import Publish
from gateway.encode_sparkplug import Bundle, parts
from gateway.settings import MqttSettings
from gateway.sparkplug.payload import REBIRTH, decode, parse_state, state_topic
from gateway.transport import MqttTransport, TransportListener

if TYPE_CHECKING:
    from gateway.encode_sparkplug import SparkplugEncoder

log = logging.getLogger("gateway.sparkplug")

HOST_WAIT_REPORT_S = 2.0  # connected without the primary host's online STATE this long: one log line
_SENT = (MQTTErrorCode.MQTT_ERR_SUCCESS,)
_QUEUED = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)  # QoS 1 waits in paho for CONNACK


@dataclass(slots=True)
class _Pending:
    """One forwarder token: the QoS 1 parts still without PUBACK and the fence its QoS 0 parts wait for."""

    waiting: set[int] = field(default_factory=set)
    fence: int | None = None
    failure: str | None = None


class SparkplugTransport(MqttTransport):
    def __init__(self, settings: MqttSettings, client_id: str, encoder: SparkplugEncoder) -> None:
        super().__init__(settings, client_id)
        self.encoder = encoder
        self.host = encoder.primary_host
        self._outer: TransportListener | None = None
        self._mqtt_up = False
        self._host_online = self.host is None
        self._host_ts = -1  # timestamp of the last STATE taken into account
        self._session = False  # births sent: the forwarder was told "connected"
        self._tokens: dict[int, _Pending] = {}
        self._last_token = 0
        self._qos1: dict[int, int] = {}  # paho mid of a QoS 1 part -> token
        self._fence_mids: dict[int, int] = {}  # paho mid of a fence -> fence number
        self._fence_n = 0  # last fence sent
        self._fenced = 0  # highest fence acknowledged
        self._fence_due = False
        self.rebirths = 0  # NCMD rebirths served (status, tests)
        self._relaunch: asyncio.TimerHandle | None = None  # a new connection after the primary host went offline

    # -- paho client ------------------------------------------------------------------------------

    def start(self, listener: TransportListener, will: Publish) -> None:
        # `will` (the encoder's NDEATH when the forwarder started) is registered anew before each CONNECT.
        self._outer = listener
        super().start(self, will)

    def _make_client(self, will: Publish) -> Any:
        client = super()._make_client(will)
        client.on_pre_connect = self._pre_connect
        client.message_callback_add(self.encoder.node_topic("NCMD"), self._paho_ncmd)
        client.message_callback_add(self.encoder.device_topic("DCMD", "+"), self._paho_dcmd)
        if self.host is not None:
            client.message_callback_add(state_topic(self.host), self._paho_state)
        return client

    def _pre_connect(self, client: mqtt.Client, _u: Any) -> None:
        """paho thread, before every CONNECT (first and reconnects): a new bdSeq and its NDEATH as the Will."""
        self.encoder.new_connection()
        will = self.encoder.will()
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)

    def _paho_connect(self, client: mqtt.Client, u: Any, flags: Any, rc: ReasonCode, p: Any) -> None:
        if not rc.is_failure:  # subscribe before any birth goes out (the CONNACK hop comes after this)
            subs = [(self.encoder.node_topic("NCMD"), 1), (self.encoder.device_topic("DCMD", "+"), 1)]
            if self.host is not None:
                subs.append((state_topic(self.host), 1))
            client.subscribe(subs)
        super()._paho_connect(client, u, flags, rc, p)

    def _paho_ncmd(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._hop(self._on_ncmd, bytes(msg.payload))

    def _paho_dcmd(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._hop(log.info, "Sparkplug DCMD on %s ignored: the gateway's instruments take no writes", msg.topic)

    def _paho_state(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._hop(self._on_state, bytes(msg.payload))

    def restart(self) -> None:
        self._mqtt_up = self._session = False
        self._cancel_relaunch()
        self._clear()
        super().restart()

    def alive(self) -> bool:
        return self._relaunch is not None or super().alive()  # pausing between two connections is not death

    def _cycle(self) -> None:
        """Disconnect now and connect anew after `mqtt.reconnect_min_s` (at least 1 s): a CONNECT that reached
        the broker before it had read our DISCONNECT would take the old session over, and the broker would
        then publish its Will, a second NDEATH."""
        old, self._client = self._client, None
        if old is not None:
            old.on_connect = old.on_connect_fail = old.on_disconnect = old.on_publish = None
            old.on_thread_death = old.on_message = None
            self._teardown(old)
        assert self._loop is not None
        self._relaunch = self._loop.call_later(max(1.0, self.settings.reconnect_min_s), self._relaunched)

    def _relaunched(self) -> None:
        self._relaunch = None
        if self._client is None:
            self._launch()

    def _cancel_relaunch(self) -> None:
        if self._relaunch is not None:
            self._relaunch.cancel()
            self._relaunch = None

    def stop(self, last: Publish | Bundle | None, *, timeout_s: float) -> None:
        self._cancel_relaunch()
        client = self._client
        if client is None:
            return
        if last is not None and client.is_connected():
            infos = []
            for part in parts(last):
                try:
                    infos.append(client.publish(part.topic, part.payload, qos=part.qos, retain=part.retain))
                except ValueError:
                    pass
            for info in infos:
                try:
                    info.wait_for_publish(timeout_s)
                except (RuntimeError, ValueError):
                    pass
        self._teardown(client)

    # -- publishing (event loop) --------------------------------------------------------------------

    def publish(self, msg: Publish | Bundle) -> int | None:  # type: ignore[override]
        client = self._client
        if not self._session or client is None:
            return None  # QoS 0 while disconnected would be dropped by paho: refuse, it stays in the store
        self._last_token += 1
        token, p = self._last_token, _Pending()
        for i, part in enumerate(parts(msg)):
            try:
                info = client.publish(part.topic, part.payload, qos=part.qos, retain=part.retain)
            except ValueError:
                info = None
            if info is None or info.rc not in (_SENT if part.qos == 0 else _QUEUED):
                if i == 0:
                    return None
                p.failure = f"publish to {part.topic} refused ({info.rc if info else 'bad topic'})"
                break
            if part.qos == 0:
                p.fence = self._fence_n + 1
                self._schedule_fence()
            else:
                p.waiting.add(info.mid)
                self._qos1[info.mid] = token
        self._tokens[token] = p
        if p.failure is not None and self._loop is not None:
            self._loop.call_soon(self._settle)  # reported after the forwarder has registered the token
        return token

    def _schedule_fence(self) -> None:
        if not self._fence_due and self._loop is not None:
            self._fence_due = True
            self._loop.call_soon(self._send_fence)  # one fence after the forwarder's whole batch

    def _send_fence(self) -> None:
        self._fence_due = False
        client = self._client
        n = self._fence_n + 1
        if not self._session or client is None:
            return  # the session ended: its tokens were handed back already
        try:
            fence = self.encoder.fence(n)
            info = client.publish(fence.topic, fence.payload, qos=1)
            ok = info.rc in _QUEUED
        except ValueError:
            ok = False
        if not ok:
            for tp in self._tokens.values():
                if tp.fence == n:
                    tp.fence, tp.failure = None, "the delivery fence could not be published"
            self._settle()
            return
        self._fence_n = n
        self._fence_mids[info.mid] = n

    def _settle(self) -> None:
        """Report every token whose parts are all acknowledged (or one failed)."""
        done = [t for t, p in self._tokens.items()
                if not p.waiting and (p.fence is None or p.fence <= self._fenced or p.failure is not None)]
        for t in done:
            p = self._tokens.pop(t)
            if self._outer is not None:
                self._outer.transport_acked(t, p.failure)

    def _clear(self) -> None:
        self._tokens.clear()
        self._qos1.clear()
        self._fence_mids.clear()
        self._fenced = self._fence_n

    def _end_session(self, why: str) -> None:
        """Hand every message in flight back (unacknowledged: it stays in the store and is sent again)."""
        self._session = False
        pending = list(self._tokens)
        self._clear()
        if self._outer is not None:
            for t in pending:
                self._outer.transport_acked(t, why)

    def _rebirth(self) -> None:
        client = self._client
        if client is None:
            return
        for pub in self.encoder.rebirth():
            client.publish(pub.topic, pub.payload, qos=pub.qos, retain=pub.retain)

    # -- MqttTransport's listener: its reports come here first (event loop) ------------------------

    def transport_connected(self) -> None:
        self._mqtt_up = True
        if self.host is not None:
            self._host_online = False  # this connection waits for the host's (retained) STATE
            if self._loop is not None:  # say so, rather than let the forwarder report a missing CONNACK
                self._loop.call_later(HOST_WAIT_REPORT_S, self._still_waiting, self._client)
        self._begin()

    def _still_waiting(self, client: Any) -> None:
        if self._mqtt_up and not self._session and client is self._client and self._outer is not None:
            self._outer.transport_failed(
                f"{self.where}: connected, waiting for primary host {self.host} to say online on "
                f"spBv1.0/STATE/{self.host}; readings stay in the store", fatal=False)

    def _begin(self) -> None:
        if self._mqtt_up and self._host_online and not self._session:
            self._session = True
            assert self._outer is not None
            self._outer.transport_connected()  # the forwarder publishes the births, then drains

    def transport_disconnected(self, reason: str) -> None:
        self._mqtt_up = False
        self._end_session(f"connection lost ({reason})")
        assert self._outer is not None
        self._outer.transport_disconnected(reason)

    def transport_failed(self, line: str, *, fatal: bool) -> None:
        assert self._outer is not None
        self._outer.transport_failed(line, fatal=fatal)

    def transport_acked(self, token: int, failure: str | None) -> None:
        fence = self._fence_mids.pop(token, None)
        if fence is not None:
            if failure is not None:
                for p in self._tokens.values():
                    if p.fence is not None and p.fence <= fence:
                        p.failure = p.failure or f"delivery fence rejected: {failure}"
            else:
                self._fenced = max(self._fenced, fence)
            self._settle()
            return
        t = self._qos1.pop(token, None)  # None: a QoS 0 part written to the socket, or an old connection's
        p = self._tokens.get(t) if t is not None else None
        if p is None:
            return
        p.waiting.discard(token)
        if failure is not None:
            p.failure = p.failure or failure
        self._settle()

    def transport_message(self, topic: str, payload: bytes) -> None:
        assert self._outer is not None
        self._outer.transport_message(topic, payload)  # the forwarder's command topics (replay requests)

    def transport_died(self, err: BaseException) -> None:
        self._mqtt_up = self._session = False
        self._clear()  # the forwarder hands its in-flight messages back itself
        assert self._outer is not None
        self._outer.transport_died(err)

    # -- commands and host state --------------------------------------------------------------------

    def _on_ncmd(self, payload: bytes) -> None:
        try:
            body = decode(payload)
        except Exception as err:  # noqa: BLE001 - any malformed payload is one log line, never a crash
            log.warning("Sparkplug NCMD ignored: not a Sparkplug B payload (%s)", err)
            return
        rebirth_alias = self.encoder.alias("", REBIRTH)
        for m in body["metrics"]:
            if (m["name"] == REBIRTH or m["alias"] == rebirth_alias) and m["value"] is True:
                if self._session:
                    log.info("Sparkplug rebirth requested (NCMD %s): NBIRTH and every DBIRTH again", REBIRTH)
                    self.rebirths += 1
                    self._rebirth()
                return
        log.info("Sparkplug NCMD without a rebirth request ignored (%d metrics)", len(body["metrics"]))

    def _on_state(self, payload: bytes) -> None:
        state = parse_state(payload)
        if state is None:
            log.warning("STATE of primary host %s ignored: not a Sparkplug 3.0 STATE payload: %r", self.host,
                        payload[:80])
            return
        online, ts = state
        if ts < self._host_ts:
            return  # an older STATE (e.g. a late Will of the host's previous session)
        self._host_ts = ts
        if online:
            if not self._host_online:
                log.info("primary host %s is online: Sparkplug births and data start", self.host)
            self._host_online = True
            self._begin()
            return
        was = self._host_online or self._session
        self._host_online = False
        line = (f"{self.where}: primary host {self.host} is offline (spBv1.0/STATE/{self.host}); "
                "readings stay in the store and are sent as historical when it is back")
        if self._session:
            self._end_session(f"primary host {self.host} offline")
            assert self._outer is not None
            self._outer.transport_disconnected(f"primary host {self.host} offline")
            client = self._client
            if client is not None:  # a clean DISCONNECT discards the Will: say NDEATH ourselves
                death = self.encoder.will()
                client.publish(death.topic, death.payload, qos=death.qos, retain=death.retain)
            self._cycle()  # 3.0: disconnect and connect anew (new bdSeq), then wait for online
        if was or self._outer is not None:
            assert self._outer is not None
            self._outer.transport_failed(line, fatal=False)
