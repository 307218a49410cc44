"""`carbon-gateway consume`: MQTT 5 shared subscription -> PostgreSQL, holes healed by replay requests.

Several processes with the same `--group` split the gateways' messages between them (`$share/{group}/...`,
MQTT 5 shared subscriptions: each message goes to one member). paho's network thread only queues what
arrives; the main thread writes a batch (at most `batch_max` messages or `batch_s` of them) in one
transaction and only then acknowledges them (manual PUBACK, QoS 1), so what was not written is never
acknowledged, and the broker sends a member at most `receive_max` unacknowledged messages (flow control
instead of an unbounded queue in memory). Sessions are clean: what a consumer that dies held
unacknowledged is lost with its session, and comes back through the hole check and a replay request.
Every `hole_check_s` one member of the group checks the streams for holes (gateway.central.holes);
every `lag_report_s` each member logs the lag of the gateways it wrote.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.central.decode import KINDS, BadMessage, Batch, Response, Status, decode
from gateway.central.holes import HoleHealer
from gateway.central.pgschema import migrate
from gateway.central.writer import Writer
from gateway.replay import replay_topic

log = logging.getLogger("gateway.central")


class BrokerRefused(RuntimeError):
    pass


@dataclass
class ConsumerOptions:
    broker: str
    db: str
    group: str = "carbon"
    prefix: str = "carbon"
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    write: str = "copy"
    batch_max: int = 500
    batch_s: float = 0.1
    receive_max: int = 2000
    hole_check_s: float = 2.0
    hole_grace_s: float = 5.0
    replay_timeout_s: float = 30.0
    replay_chunk: int = 1000
    lag_report_s: float = 10.0


def subscriptions(prefix: str, group: str) -> list[str]:
    """The shared subscriptions of a group member: the data topics, the status and command responses."""
    own = [f"{prefix}/+/+/{k}" for k in KINDS] + [f"{prefix}/+/status", f"{prefix}/+/cmd/response"]
    return [f"$share/{group}/{t}" for t in own]


@dataclass
class Stats:
    received: int = 0
    written: int = 0
    duplicates: int = 0
    rows: int = 0
    bad: int = 0
    replayed: int = 0


class Consumer:
    def __init__(self, opts: ConsumerOptions) -> None:
        self.opts = opts
        self.stats = Stats()
        # (connection number, message): an acknowledgement goes only on the connection the message came on
        # (message ids restart per connection: a stale ack would acknowledge another, unwritten message).
        self._inbox: queue.Queue[tuple[int, mqtt.MQTTMessage]] = queue.Queue()
        self._conn_no = 0
        self._connected = threading.Event()
        self._refused: str | None = None
        u = urlparse(opts.broker)
        self._host, self._port = u.hostname or "127.0.0.1", u.port or (8883 if u.scheme == "mqtts" else 1883)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"carbon-consumer-{opts.name}"[:64],
                             protocol=mqtt.MQTTv5, manual_ack=True)
        if u.username:
            client.username_pw_set(unquote(u.username), unquote(u.password) if u.password else None)
        if u.scheme == "mqtts":
            client.tls_set()
        client.reconnect_delay_set(1, 10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = lambda _c, _u, msg: self._inbox.put((self._conn_no, msg))
        self.client = client
        self.db = psycopg.connect(opts.db, autocommit=True)
        migrate(self.db)
        self.writer = Writer(self.db, opts.name, write=opts.write)
        self.healer = HoleHealer(self.db, opts.name, self._request_replay, grace_s=opts.hole_grace_s,
                                 timeout_s=opts.replay_timeout_s, chunk=opts.replay_chunk)

    # -- paho thread ------------------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        if rc.is_failure:
            self._refused = str(rc)
            return
        self._conn_no += 1
        # Clean start: subscribe again on every connection (a broker restarted without persistence
        # forgets everything).
        client.subscribe([(t, 1) for t in subscriptions(self.opts.prefix, self.opts.group)])
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        if self._connected.is_set():
            log.warning("consumer %s: broker connection lost (%s); reconnecting", self.opts.name, rc)
        self._connected.clear()

    # -- main thread ---------------------------------------------------------------------------------------

    def _request_replay(self, gateway: str, _rid: str, body: dict[str, object]) -> bool:
        info = self.client.publish(replay_topic(self.opts.prefix, gateway), json.dumps(body), qos=1)
        return info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN)

    def start(self, timeout_s: float = 20.0) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.ReceiveMaximum = self.opts.receive_max
        props.SessionExpiryInterval = 0
        self.client.connect_async(self._host, self._port, keepalive=15, clean_start=True, properties=props)
        self.client.loop_start()
        deadline = time.monotonic() + timeout_s
        while not self._connected.wait(0.1):
            if self._refused is not None:
                raise BrokerRefused(f"mqtt broker {self._host}:{self._port} refused the consumer: {self._refused}")
            if time.monotonic() > deadline:
                raise BrokerRefused(f"mqtt broker {self._host}:{self._port}: no connection within {timeout_s:g} s")
        log.info("consumer %s: group %s on %s:%d, writing to PostgreSQL (%s)", self.opts.name, self.opts.group,
                 self._host, self._port, self.opts.write)

    def step(self) -> int:
        """Take one batch from the inbox, write it, acknowledge it; returns the messages taken."""
        o = self.opts
        try:
            first = self._inbox.get(timeout=o.batch_s)
        except queue.Empty:
            return 0
        msgs = [first]
        deadline = time.monotonic() + o.batch_s
        while len(msgs) < o.batch_max:
            try:
                msgs.append(self._inbox.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        batches: list[Batch] = []
        statuses: list[Status] = []
        responses: list[Response] = []
        for _n, m in msgs:
            try:
                d = decode(m.topic, m.payload)
            except BadMessage as err:
                self.stats.bad += 1
                log.warning("consumer %s: %s: %s (acknowledged, not written)", o.name, m.topic, err)
                continue
            if isinstance(d, Batch):
                batches.append(d)
                self.stats.replayed += d.replay is not None
            elif isinstance(d, Status):
                statuses.append(d)
            else:
                responses.append(d)
        while True:
            try:
                res = self.writer.write(batches, statuses, responses)
                break
            except psycopg.OperationalError as err:
                # The database went away: keep the batch (unacknowledged: the broker holds the rest back).
                log.error("consumer %s: cannot write to PostgreSQL (%s); retrying", o.name, " ".join(str(err).split()))
                time.sleep(1.0)
                self._reconnect_db()
        for n, m in msgs:
            if m.qos > 0 and n == self._conn_no:
                self.client.ack(m.mid, m.qos)  # those of a lost connection are the broker's to resend or drop
        self.stats.received += len(msgs)
        self.stats.written += res.new
        self.stats.duplicates += res.duplicates
        self.stats.rows += res.rows
        return len(msgs)

    def _reconnect_db(self) -> None:
        try:
            self.db.close()
            self.db = psycopg.connect(self.opts.db, autocommit=True)
            self.writer.conn = self.healer.conn = self.db
        except psycopg.OperationalError:
            pass

    def report_lag(self) -> None:
        rows = self.db.execute("SELECT gateway, lag_ms, gateway_backlog FROM carbon.gateway_lag ORDER BY gateway"
                               ).fetchall()
        if rows:
            log.info("consumer %s: lag %s; written %d messages (%d duplicates, %d replayed), %d rows", self.opts.name,
                     ", ".join(f"{g} {'?' if lag is None else f'{lag / 1000:.1f} s'}"
                               f"{'' if b is None else f' (backlog {b})'}" for g, lag, b in rows),
                     self.stats.written, self.stats.duplicates, self.stats.replayed, self.stats.rows)

    def run(self, stop: threading.Event, duration_s: float | None = None) -> None:
        self.start()
        o = self.opts
        now = time.monotonic()
        end = None if duration_s is None else now + duration_s
        next_holes, next_lag = now + o.hole_check_s, now + o.lag_report_s
        while not stop.is_set() and (end is None or time.monotonic() < end):
            self.step()
            now = time.monotonic()
            if now >= next_holes:
                next_holes = now + o.hole_check_s
                try:
                    self.healer.check()
                except psycopg.OperationalError as err:
                    log.error("consumer %s: hole check failed: %s", o.name, " ".join(str(err).split()))
            if now >= next_lag:
                next_lag = now + o.lag_report_s
                try:
                    self.report_lag()
                except psycopg.OperationalError:
                    pass
        # Leave the group first, then write and acknowledge what already arrived.
        self.client.unsubscribe(subscriptions(o.prefix, o.group))
        while self.step():
            pass

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.db.close()
