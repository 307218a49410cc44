"""MQTT forwarder: drains the store's outbox over paho-mqtt at QoS 1 and acks only on PUBACK.

paho runs its network loop in its own thread (loop_start), which also reconnects with backoff.
Its callbacks only hop onto the event loop with call_soon_threadsafe; all state lives on the loop
thread, together with the store connection.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from gateway.encode import Encoder, meta_payload, meta_topic, status_payload, status_topic
from gateway.settings import MqttSettings
from gateway.store import Message, Store

log = logging.getLogger("gateway.forwarder")

# CONNACK codes that mean "your credentials or identity are wrong": retrying will not fix them.
_AUTH_FAILURES = {"Not authorized", "Bad user name or password", "Client identifier not valid", "Banned"}


@dataclass
class ForwarderStats:
    published: int = 0
    acked: int = 0
    rejected: int = 0
    connects: int = 0
    connected: bool = False
    last_error: str = ""
    outstanding: int = 0


@dataclass
class _Cursor:
    """Which pending messages are still to be handed to paho: backlog ranges and a live cursor."""

    backlog: deque[list[int]] = field(default_factory=deque)  # [after_id, up_to_id] ranges, oldest first
    live_after: int = 0


class Forwarder:
    def __init__(self, settings: MqttSettings, gateway_id: str, store: Store, encoder: Encoder, *,
                 meta: Callable[[], dict[str, dict[str, Any]]], status_extra: Callable[[], dict[str, Any]],
                 config_version: str, site: str = "") -> None:
        self.settings = settings
        self.gateway_id = gateway_id
        self.store = store
        self.encoder = encoder
        self._meta = meta
        self._status_extra = status_extra
        self._config_version = config_version
        self._site = site
        self.stats = ForwarderStats()
        self._outstanding: dict[int, Message] = {}
        self._acks: list[int] = []
        self._retry: deque[tuple[float, int]] = deque()
        self._cursor = _Cursor()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.first_connect: asyncio.Future[str | None] | None = None  # None = ok, else an error line
        self._client = self._make_client()
        self._started_ms = int(time.time() * 1000)
        self._closing = False

    # -- paho setup --------------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        proto = mqtt.MQTTv5 if s.protocol == "5" else mqtt.MQTTv311
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=s.client_id or f"carbon-gateway-{self.gateway_id}",
                             protocol=proto, reconnect_on_failure=True)
        client.max_inflight_messages_set(s.max_inflight)
        client.reconnect_delay_set(min_delay=max(1, int(s.reconnect_min_s)), max_delay=max(1, int(s.reconnect_max_s)))
        if s.username is not None:
            client.username_pw_set(s.username, s.password())
        if s.use_tls:
            tls = s.tls
            ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls and tls.ca_file else None)
            if tls and tls.cert_file:
                ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
            if tls and tls.insecure_skip_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            client.tls_set_context(ctx)
        topic = status_topic(s.topic_prefix, self.gateway_id)
        client.will_set(topic, status_payload("offline", self.gateway_id, reason="connection_lost"), qos=1, retain=True)
        client.on_connect = self._paho_connect
        client.on_connect_fail = self._paho_connect_fail
        client.on_disconnect = self._paho_disconnect
        client.on_publish = self._paho_publish
        return client

    # paho thread -> event loop
    def _paho_connect(self, _c: mqtt.Client, _u: Any, _flags: Any, rc: ReasonCode, _p: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._on_connect, str(rc), rc.is_failure)

    def _paho_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        # paho calls this from inside its `except OSError` block, so the cause is still at hand.
        err = sys.exc_info()[1]
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._on_connect_fail, err)

    def _paho_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._on_disconnect, str(rc))

    def _paho_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._on_publish, mid, rc.is_failure, str(rc))

    # -- event-loop side -------------------------------------------------------------------------

    def _where(self) -> str:
        return f"mqtt broker {self.settings.host}:{self.settings.port}"

    def _on_connect(self, reason: str, failed: bool) -> None:
        if failed:
            line = f"{self._where()} refused the connection: {reason}"
            if self.stats.last_error != line:
                log.error(line)
            self.stats.last_error = line
            if self.first_connect is not None and not self.first_connect.done() and reason in _AUTH_FAILURES:
                self.first_connect.set_result(line)
            return
        self.stats.connects += 1
        self.stats.connected = True
        if self.stats.last_error:
            log.info("%s: connected", self._where())
        self.stats.last_error = ""
        if self.first_connect is not None and not self.first_connect.done():
            self.first_connect.set_result(None)
        # Everything committed while we were away is backlog; what arrives from now on is live.
        last = self.store.last_message_id()
        if last > self._cursor.live_after:
            self._cursor.backlog.append([self._cursor.live_after, last])
            self._cursor.live_after = last
        self._publish_status("online")
        prefix = self.settings.topic_prefix
        for instrument, meta in self._meta().items():
            self._client.publish(meta_topic(prefix, self.gateway_id, instrument),
                                 meta_payload(self.gateway_id, meta, self._config_version), qos=1, retain=True)
        self._wake.set()

    def _on_connect_fail(self, err: BaseException | None) -> None:
        why = getattr(err, "reason", None) or getattr(err, "strerror", None) or str(err or "unknown error")
        line = f"{self._where()}: cannot connect: {why}"
        if isinstance(err, ssl.SSLCertVerificationError):
            line = f"{self._where()}: TLS certificate not trusted ({err.verify_message}); check mqtt.tls.ca_file"
            if self.first_connect is not None and not self.first_connect.done():
                self.first_connect.set_result(line)  # a commissioning error: retrying cannot fix it
        if self.stats.last_error != line:
            log.error("%s (readings stay in the store; retrying)", line)
        self.stats.last_error = line

    def _on_disconnect(self, reason: str) -> None:
        if self.stats.connected and not self._closing:
            log.error("%s: connection lost (%s); readings stay in the store and are resent", self._where(), reason)
        self.stats.connected = False

    def _on_publish(self, mid: int, failed: bool, reason: str) -> None:
        msg = self._outstanding.pop(mid, None)
        if msg is None:
            return  # status/meta publishes are not tracked
        if failed:
            # MQTT 5 PUBACK with a failure reason (e.g. quota exceeded): not delivered, try again later.
            self.stats.rejected += 1
            self.stats.last_error = f"{self._where()} rejected message {msg.instrument} seq {msg.seq}: {reason}"
            self._retry.append((time.monotonic() + self.settings.reconnect_min_s, msg.id))
        else:
            self.stats.acked += 1
            self._acks.append(msg.id)
        self._wake.set()

    def take_acks(self) -> list[int]:
        """Message ids PUBACKed since the last call; the store deletes them from `pending`."""
        acks, self._acks = self._acks, []
        return acks

    def notify(self) -> None:
        """New messages were committed."""
        self._wake.set()

    def _publish_status(self, state: str) -> None:
        st = self.store.stats()
        body = {
            "site": self._site,
            "ts": int(time.time() * 1000),
            "started": self._started_ms,
            "config_version": self._config_version,
            "store": {
                "readings": st.readings,
                "pending_messages": st.pending_messages,
                "oldest_pending_age_s": None if st.oldest_pending_ms is None
                else round(time.time() - st.oldest_pending_ms / 1000, 3),
                "size_bytes": st.size_bytes,
            },
            "forwarder": {"published": self.stats.published, "acked": self.stats.acked,
                          "rejected": self.stats.rejected, "outstanding": len(self._outstanding)},
            **self._status_extra(),
        }
        self._client.publish(status_topic(self.settings.topic_prefix, self.gateway_id),
                             status_payload(state, self.gateway_id, **body), qos=1, retain=True)

    def _next_batch(self, free: int) -> list[Message]:
        out: list[Message] = []
        now = time.monotonic()
        while self._retry and free > len(out) and self._retry[0][0] <= now:
            _, msg_id = self._retry.popleft()
            out.extend(self.store.pending(after_id=msg_id - 1, up_to_id=msg_id, limit=1))
        free -= len(out)
        cur = self._cursor
        # Backlog and live traffic share the window so a long outage never starves live data.
        live_share = free // 2 if cur.backlog else free
        backlog_share = free - live_share
        while cur.backlog and backlog_share > 0:
            rng = cur.backlog[0]
            got = self.store.pending(after_id=rng[0], up_to_id=rng[1], limit=backlog_share)
            out.extend(got)
            backlog_share -= len(got)
            if got:
                rng[0] = got[-1].id
            if not got or rng[0] >= rng[1]:
                cur.backlog.popleft()
        live_share += backlog_share
        if live_share > 0:
            got = self.store.pending(after_id=cur.live_after, limit=live_share)
            out.extend(got)
            if got:
                cur.live_after = got[-1].id
        return out

    async def run(self) -> None:
        """Connect and drain forever. Cancel to stop (then call shutdown())."""
        self._loop = asyncio.get_running_loop()
        self.first_connect = self._loop.create_future()
        self._cursor.live_after = self.store.last_message_id()
        self._cursor.backlog.append([0, self._cursor.live_after])
        self._client.connect_async(self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s)
        self._client.loop_start()
        next_status = time.monotonic() + self.settings.status_interval_s
        while True:
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation (gh-86296),
                # which hung shutdown under load.
                async with asyncio.timeout(0.5):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            if time.monotonic() >= next_status and self.stats.connected:
                self._publish_status("online")
                next_status = time.monotonic() + self.settings.status_interval_s
            if not self.stats.connected:
                continue
            free = self.settings.max_inflight - len(self._outstanding)
            if free <= 0:
                continue
            for msg in self._next_batch(free):
                rows = self.store.message_rows(msg)
                topic, payload = self.encoder.message(msg, rows)
                info = self._client.publish(topic, payload, qos=1)
                if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                    self._retry.append((time.monotonic() + self.settings.reconnect_min_s, msg.id))
                    continue
                self._outstanding[info.mid] = msg
                self.stats.published += 1
            self.stats.outstanding = len(self._outstanding)

    def shutdown(self, *, timeout_s: float = 2.0) -> None:
        """Clean stop: announce offline (retained) and disconnect; in-flight rows stay pending."""
        self._closing = True
        try:
            if self.stats.connected:
                info = self._client.publish(status_topic(self.settings.topic_prefix, self.gateway_id),
                                            status_payload("offline", self.gateway_id, reason="shutdown"),
                                            qos=1, retain=True)
                info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError):
            pass
        self._client.disconnect()
        self._client.loop_stop()
