"""Transports: move (topic, payload, qos, retain) messages and report what became of them.

A transport knows nothing of the store or the payload formats. It reports to a `TransportListener`,
always on the event loop thread: connected, disconnected, a connection attempt that failed (fatal
when retrying cannot help: a refused login, an untrusted certificate), the acknowledgement or
failure of each publish it accepted, and the death of its own machinery.

`MqttTransport` is paho-mqtt with its network loop in paho's thread (loop_start), which also
reconnects with backoff; its callbacks only hop onto the event loop with call_soon_threadsafe.
aiomqtt was not adopted: it puts the socket work on the event loop thread beside the pollers and
leaves reconnecting to the application, and its throughput on this path was not measured here.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import threading
from collections import deque
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.encode import Publish
from gateway.settings import MqttSettings, credential_path

# CONNACK codes that mean "your credentials or identity are wrong": retrying will not fix them.
_AUTH_FAILURES = {"Not authorized", "Bad user name or password", "Client identifier not valid", "Banned"}


class TransportListener(Protocol):
    def transport_connected(self) -> None: ...

    def transport_disconnected(self, reason: str) -> None: ...

    def transport_failed(self, line: str, *, fatal: bool) -> None: ...

    def transport_acked(self, token: int, failure: str | None) -> None: ...

    def transport_died(self, err: BaseException) -> None: ...

    def transport_message(self, topic: str, payload: bytes) -> None:
        """A message on a subscribed topic (commands to the gateway, issue 12)."""
        ...


class Transport(Protocol):
    @property
    def where(self) -> str: ...

    def start(self, listener: TransportListener, will: Publish) -> None: ...

    def publish(self, msg: Publish) -> int | None:
        """Queue a message; returns the token its acknowledgement will carry, or None if refused now."""
        ...

    def alive(self) -> bool: ...

    def hold(self, on: bool) -> None:
        """While on, publish() queues without sending at once; turning it off (or flush()) sends the lot."""
        ...

    def flush(self) -> None:
        """Send what publish() queued while held."""
        ...

    def subscribe(self, topics: list[str]) -> None:
        """Subscribe (QoS 1) on the current connection; called again after every (re)connect."""
        ...

    def restart(self) -> None:
        """Start anew after its machinery died; whatever was in flight is gone (the caller resends)."""
        ...

    def stop(self, last: Publish | None, *, timeout_s: float) -> None: ...


# A PUBACK of two bytes (3.1.1, or MQTT 5 without reason code or properties) means success; paho decodes each
# one into a new ReasonCode and Properties, which our callback does not read (issue 8: that decoding was the
# largest part of paho's cost per message).
_PUBACK_OK = ReasonCode(PacketTypes.PUBACK)
_PUBACK_NO_PROPERTIES = Properties(PacketTypes.PUBACK)
WRITE_BLOCK = 65_536  # bytes of queued packets written with one `send` at most


class _PahoClient(mqtt.Client):
    """paho's client, telling us when its network thread dies instead of only printing a traceback, and
    cheaper per message where paho does work we do not use (issue 8; each override is pinned against
    paho's own path by tests/unit/test_transport_paho.py):

    - a successful two-byte PUBACK skips paho's generic decoding (same mid, same reason, same callback);
    - paho's scan for queued messages after each PUBACK is skipped when nothing is queued (the forwarder
      keeps its window at or under paho's, so normally nothing is);
    - the socket is read in blocks, not three `recv` calls per PUBACK (header, length, mid);
    - a burst of publishes (``hold_wake``, set by `MqttTransport.hold`) wakes the network thread once, not
      once per message, and it writes queued PUBLISH packets in blocks of up to `WRITE_BLOCK` bytes, one
      `send` each, not one `send` per packet.
    """

    on_thread_death: Any = None
    hold_wake = False  # set on the event loop thread during a burst of publishes (MqttTransport.hold)
    _rbuf: bytes = b""
    _rpos: int = 0
    _rsock: Any = None

    def _thread_main(self) -> None:
        try:
            super()._thread_main()
        except BaseException as err:
            if self.on_thread_death is not None:
                self.on_thread_death(err)
            else:
                raise

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        if cmd == "PUBACK" and len(packet) == 2:
            mid = packet[0] << 8 | packet[1]
            with self._out_message_mutex:
                if mid in self._out_messages:
                    return self._do_on_publish(mid, _PUBACK_OK, _PUBACK_NO_PROPERTIES)
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._handle_pubackcomp(cmd)

    def _update_inflight(self) -> MQTTErrorCode:
        # Every message paho holds counts as in flight: none is queued for a free slot, nothing to send.
        if len(self._out_messages) <= self._inflight_messages:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._update_inflight()

    def _sock_recv(self, bufsize: int) -> bytes:
        buf, pos = self._rbuf, self._rpos
        if pos < len(buf) and self._rsock is self._sock and self._sock is not None:
            end = pos + bufsize
            self._rpos = end
            return buf[pos:end]
        data = super()._sock_recv(max(bufsize, 65536))
        if len(data) <= bufsize:
            self._rbuf, self._rpos = b"", 0
            return data
        self._rbuf, self._rpos, self._rsock = data, bufsize, self._sock
        return data[:bufsize]

    def _packet_queue(self, command: int, packet: bytes | bytearray, mid: int, qos: int,
                      info: mqtt.MQTTMessageInfo | None = None) -> MQTTErrorCode:
        if not self.hold_wake or self._thread is None:
            return super()._packet_queue(command, packet, mid, qos, info)
        # paho's own, less the byte that wakes the network thread for each packet: wake() sends one for the
        # burst. A packet the network thread queues itself meanwhile needs none: it writes before it waits.
        self._out_packet.append({"command": command, "mid": mid, "qos": qos, "pos": 0, "to_process": len(packet),
                                 "packet": packet, "info": info})
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def wake(self) -> None:
        """Wake the network thread to write what a burst queued (paho's own wake-up byte)."""
        w = self._sockpairW
        if w is not None:
            try:
                w.send(mqtt.sockpair_data)
            except OSError:  # full (a wake-up is pending anyway), or closed by a reconnect that writes anyway
                pass

    def _packet_write(self) -> MQTTErrorCode:
        # Queued packets go out in as few `send` calls as the socket takes; a DISCONNECT (paho closes the socket
        # after it) takes paho's path. The event loop thread may append meanwhile: only popleft, appendleft and
        # extendleft here, so the order holds.
        out = self._out_packet
        while True:
            batch: list[Any] = []
            size = 0
            while size < WRITE_BLOCK:
                try:
                    p = out.popleft()
                except IndexError:
                    break
                if p["command"] & 0xF0 == mqtt.DISCONNECT:
                    out.appendleft(p)
                    break
                batch.append(p)
                size += p["to_process"]
            if not batch:  # nothing queued, or a DISCONNECT first
                return super()._packet_write()
            try:
                sent = self._sock_send(b"".join([p["packet"][p["pos"]:] for p in batch]) if len(batch) > 1
                                       else batch[0]["packet"][batch[0]["pos"]:])
            except (AttributeError, ValueError):
                out.extendleft(reversed(batch))
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            except BlockingIOError:
                out.extendleft(reversed(batch))
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError as err:
                out.extendleft(reversed(batch))
                self._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            for i, p in enumerate(batch):
                if sent < p["to_process"]:  # cut short: this one (what is left of it) and the rest go back
                    p["pos"] += sent
                    p["to_process"] -= sent
                    out.extendleft(reversed(batch[i:]))
                    break
                sent -= p["to_process"]
                p["pos"] += p["to_process"]
                p["to_process"] = 0
                if p["command"] & 0xF0 == mqtt.PUBLISH and p["qos"] == 0:
                    self._published_qos0(p)
            with self._msgtime_mutex:
                self._last_msg_out = mqtt.time_func()

    def _published_qos0(self, packet: Any) -> None:
        """What paho's _packet_write does once a QoS 0 PUBLISH is written: on_publish, then the info's flag."""
        with self._callback_mutex:
            on_publish = self.on_publish
        if on_publish:
            with self._in_callback_mutex:
                try:
                    on_publish(self, self._userdata, packet["mid"], ReasonCode(PacketTypes.PUBACK),
                               Properties(PacketTypes.PUBACK))
                except Exception as err:
                    self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_publish: %s", err)
                    if not self.suppress_exceptions:
                        raise
        if packet["info"] is not None:
            packet["info"]._set_as_published()

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        # paho reads at most max_packets, then waits for the socket to be readable again: bytes already in
        # our block would wait with it (a PINGRESP left there would look like a dead broker).
        rc = super().loop_read(max_packets)
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._rpos < len(self._rbuf) and self._sock is not None \
                and self._rsock is self._sock:
            rc = super().loop_read(max_packets)
        return rc


class MqttTransport:
    def __init__(self, settings: MqttSettings, client_id: str) -> None:
        self.settings = settings
        self.client_id = client_id
        self._listener: TransportListener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._will: Publish | None = None
        self._client: _PahoClient | None = None
        self._acks: deque[tuple[int, str | None]] = deque()  # PUBACKs from paho's thread, taken on the loop
        self._acks_hop = False  # a hop to take them is scheduled

    @property
    def where(self) -> str:
        return f"mqtt broker {self.settings.host}:{self.settings.port}"

    def _make_client(self, will: Publish) -> _PahoClient:
        s = self.settings
        proto = mqtt.MQTTv5 if s.protocol == "5" else mqtt.MQTTv311
        client = _PahoClient(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=proto,
                             reconnect_on_failure=True)
        client.max_inflight_messages_set(s.max_inflight)
        client.reconnect_delay_set(min_delay=max(1, int(s.reconnect_min_s)), max_delay=max(1, int(s.reconnect_max_s)))
        if s.username is not None:
            client.username_pw_set(s.username, s.password())
        if s.use_tls:
            tls = s.tls
            ctx = ssl.create_default_context(cafile=str(credential_path(tls.ca_file)) if tls and tls.ca_file else None)
            if tls and tls.cert_file:
                ctx.load_cert_chain(str(credential_path(tls.cert_file)),
                                    str(credential_path(tls.key_file)) if tls.key_file else None)
            if tls and tls.insecure_skip_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            client.tls_set_context(ctx)
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.on_connect = self._paho_connect
        client.on_connect_fail = self._paho_connect_fail
        client.on_disconnect = self._paho_disconnect
        client.on_publish = self._paho_publish
        client.on_thread_death = self._paho_thread_death
        client.on_message = self._paho_message
        return client

    def start(self, listener: TransportListener, will: Publish) -> None:
        self._listener, self._will = listener, will
        self._loop = asyncio.get_running_loop()
        self._launch()

    def _launch(self) -> None:
        assert self._will is not None
        self._client = self._make_client(self._will)
        self._client.connect_async(self.settings.host, self.settings.port, keepalive=self.settings.keepalive_s)
        self._client.loop_start()

    def restart(self) -> None:
        old, self._client = self._client, None
        if old is not None:
            old.on_connect = old.on_connect_fail = old.on_disconnect = old.on_publish = None
            old.on_thread_death = old.on_message = None
            self._teardown(old)
        self._launch()

    @staticmethod
    def _teardown(client: mqtt.Client) -> None:
        try:
            client.disconnect()
        except Exception:  # noqa: BLE001 - a broken client is being discarded
            pass
        if threading.current_thread() is not getattr(client, "_thread", None):
            client.loop_stop()

    def alive(self) -> bool:
        thread = getattr(self._client, "_thread", None)
        return thread is not None and thread.is_alive()

    def publish(self, msg: Publish) -> int | None:
        assert self._client is not None
        try:
            info = self._client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
        except ValueError:
            return None  # e.g. a topic paho refuses to encode
        # Publishing QoS 1 while disconnected queues the message in paho (NO_CONN); it goes out after
        # the next CONNACK and its PUBACK arrives like any other.
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            return None
        return int(info.mid)

    def hold(self, on: bool) -> None:
        # A window of messages: one wake-up of paho's thread and a few `send` calls, not one each (issue 8).
        client = self._client
        if client is not None:
            client.hold_wake = on
            if not on:
                client.wake()

    def flush(self) -> None:
        if self._client is not None:
            self._client.wake()

    def subscribe(self, topics: list[str]) -> None:
        if self._client is not None and topics:
            self._client.subscribe([(t, 1) for t in topics])

    def stop(self, last: Publish | None, *, timeout_s: float) -> None:
        client = self._client
        if client is None:
            return
        try:
            if last is not None and client.is_connected():
                info = client.publish(last.topic, last.payload, qos=last.qos, retain=last.retain)
                info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError):
            pass
        self._teardown(client)

    # -- paho thread -> event loop -------------------------------------------------------------------

    def _hop(self, fn: Any, *args: Any) -> bool:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)
            return True
        return False

    def _paho_connect(self, _c: mqtt.Client, _u: Any, _flags: Any, rc: ReasonCode, _p: Any) -> None:
        self._hop(self._on_connect, str(rc), rc.is_failure)

    def _paho_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        # paho calls this from inside its `except OSError` block, so the cause is still at hand.
        self._hop(self._on_connect_fail, sys.exc_info()[1])

    def _paho_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        assert self._listener is not None
        self._hop(self._listener.transport_disconnected, str(rc))

    def _paho_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        # MQTT 5 PUBACK with a failure reason (e.g. quota exceeded): not delivered.
        self._acks.append((mid, str(rc) if rc.is_failure else None))
        # One hop for every PUBACK that arrives before the loop takes them, not one wake-up of the event loop
        # per PUBACK (500 a second at plant load; issue 8). The flag is cleared before the acks are taken, so
        # an ack appended meanwhile is either taken by that hop or schedules the next one: none waits.
        if not self._acks_hop:
            self._acks_hop = True  # before the hop: the loop may take the acks before _hop returns
            if not self._hop(self._take_acks):
                self._acks_hop = False  # no loop (stopping): nothing to take them

    def _take_acks(self) -> None:
        self._acks_hop = False
        acks, listener = self._acks, self._listener
        assert listener is not None
        while acks:
            mid, failure = acks.popleft()
            listener.transport_acked(mid, failure)

    def _paho_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        assert self._listener is not None
        self._hop(self._listener.transport_message, msg.topic, bytes(msg.payload))

    def _paho_thread_death(self, err: BaseException) -> None:
        assert self._listener is not None
        self._hop(self._listener.transport_died, err)

    # -- event loop side -------------------------------------------------------------------------------

    def _on_connect(self, reason: str, failed: bool) -> None:
        assert self._listener is not None
        if failed:
            self._listener.transport_failed(f"{self.where} refused the connection: {reason}",
                                            fatal=reason in _AUTH_FAILURES)
        else:
            self._listener.transport_connected()

    def _on_connect_fail(self, err: BaseException | None) -> None:
        assert self._listener is not None
        if isinstance(err, ssl.SSLCertVerificationError):
            # A commissioning error: retrying cannot fix it.
            self._listener.transport_failed(
                f"{self.where}: TLS certificate not trusted ({err.verify_message}); check mqtt.tls.ca_file",
                fatal=True)
            return
        why = getattr(err, "reason", None) or getattr(err, "strerror", None) or str(err or "unknown error")
        self._listener.transport_failed(f"{self.where}: cannot connect: {why}", fatal=False)
