"""Forwarder: hands the store's outbox to a transport and tells the store what was delivered.

It reads no table: `Store.begin(limit)` gives the next undelivered messages (the store owns the
cursor, backlog and live traffic sharing the window), the encoder turns each into a
(topic, payload) and the transport sends it; the transport's acknowledgement goes straight back to
`Store.ack` (and a failure to `Store.release`). All of it runs on the event loop thread, together
with the store's single connection (perf-limits: SQLite in a worker thread collapsed throughput).

`state` tells the truth about delivery, on the retained status topic and in the log (one line when
a problem starts, one when it ends):

- `connecting`: no connection to the broker (yet, or again); logged once no CONNACK has come for
  `mqtt.connack_timeout_s`, or at the first error of the attempt;
- `online`: connected and delivering;
- `stalled`: connected, messages in flight, and no PUBACK for `mqtt.puback_timeout_s`;
- `offline`: the transport's machinery died (it is restarted with backoff), or a clean stop;
- `store_failed`: the outbox cannot be read; logged once and raised, the process stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from gateway.encode import Encoder, EncoderContext, JsonEncoder
from gateway.errors import StoreError
from gateway.settings import MqttSettings
from gateway.store import Store
from gateway.transport import MqttTransport, Transport

log = logging.getLogger("gateway.forwarder")

STATES = ("connecting", "online", "stalled", "store_failed", "offline")
SEND_SLICE_S = 0.01  # encoding and publishing at most this long before the loop runs its other work


@dataclass
class ForwarderStats:
    published: int = 0
    acked: int = 0
    rejected: int = 0
    connects: int = 0
    connected: bool = False
    last_error: str = ""
    outstanding: int = 0
    transport_restarts: int = 0


class Forwarder:
    def __init__(self, settings: MqttSettings, gateway_id: str, store: Store, encoder: Encoder | None = None, *,
                 meta: Callable[[], dict[str, dict[str, Any]]], status_extra: Callable[[], dict[str, Any]],
                 config_version: str, site: str = "", transport: Transport | None = None) -> None:
        self.settings = settings
        self.gateway_id = gateway_id
        self.store = store
        self.epoch: str = getattr(store, "epoch", "")
        self.encoder: Encoder = encoder or JsonEncoder(
            EncoderContext(settings.topic_prefix, gateway_id, self.epoch, config_version))
        self.transport: Transport = transport or MqttTransport(
            settings, settings.client_id or f"carbon-gateway-{gateway_id}")
        self._meta = meta
        self._status_extra = status_extra
        self._config_version = config_version
        self._site = site
        self.stats = ForwarderStats()
        self._outstanding: dict[int, int | None] = {}  # transport token -> message id (None: status/meta)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.first_connect: asyncio.Future[str | None] | None = None  # None = ok, else an error line
        self._started_ms = int(time.time() * 1000)
        self._closing = False
        self._state = "connecting"
        self._state_since = time.monotonic()
        self._problem_logged = False  # the current state's start line was logged: log its end too
        self._progress = time.monotonic()  # last PUBACK, or when the in-flight window last became non-empty
        self._restart_at: float | None = None
        self._restart_delay = settings.reconnect_min_s
        self._tick_handle: asyncio.TimerHandle | None = None
        self.send_slice_s = SEND_SLICE_S
        # Commands to the gateway (issue 12: replay on request): topic -> handler, subscribed on every
        # connect; only the topics configured are ever subscribed.
        self.commands: dict[str, Callable[[bytes], None]] = {}

    # -- state ------------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def where(self) -> str:
        return self.transport.where

    def _set_state(self, new: str, line: str | None = None, *, announce: bool = True) -> None:
        old = self._state
        if new == old:
            if line is not None:
                self._problem(line)
            return
        now = time.monotonic()
        if self._problem_logged:
            log.warning("%s: %s for %.1f s, now %s", self.where, old, now - self._state_since, new)
        self._state, self._state_since, self._problem_logged = new, now, False
        if line is not None:
            self._problem(line)
        if announce and new in ("online", "stalled") and not self._closing:
            self._publish_status()

    def _problem(self, line: str) -> None:
        """The start line of the current problem state (once), and the status topic's last_error."""
        self.stats.last_error = line
        if not self._problem_logged:
            log.error("%s", line)
            self._problem_logged = True

    # -- transport listener (event loop thread) ------------------------------------------------------

    def transport_connected(self) -> None:
        self.stats.connects += 1
        self.stats.connected = True
        self.stats.last_error = ""
        self._restart_delay = self.settings.reconnect_min_s
        if self.first_connect is not None and not self.first_connect.done():
            self.first_connect.set_result(None)
        # Everything committed while we were away is backlog; what arrives from now on is live.
        self.store.mark_backlog()
        self._progress = time.monotonic()
        self._set_state("online", announce=False)
        for pub in self.encoder.birth(self._status_body(), self._meta()):  # status online, then each meta
            self._send(pub)
        self.transport.subscribe(sorted(self.commands))
        self._wake.set()

    def transport_failed(self, line: str, *, fatal: bool) -> None:
        if fatal and self.first_connect is not None and not self.first_connect.done():
            self.first_connect.set_result(line)
        self._set_state("offline" if self._state == "offline" else "connecting",
                        line if fatal else f"{line} (readings stay in the store; retrying)")

    def transport_disconnected(self, reason: str) -> None:
        was = self.stats.connected
        self.stats.connected = False
        if self._closing:
            return
        if was:
            self._set_state("connecting", f"{self.where}: connection lost ({reason}); "
                                          "readings stay in the store and are resent")
        elif self._state != "offline":
            self._set_state("connecting")

    def transport_acked(self, token: int, failure: str | None) -> None:
        msg_id = self._outstanding.pop(token, -1)
        self._progress = time.monotonic()
        if self._state == "stalled":
            self._set_state("online")
        if msg_id is None or msg_id < 0:
            return  # status/meta publishes, or a token of a transport that was restarted
        if failure is not None:
            self.stats.rejected += 1
            self.stats.last_error = f"{self.where} rejected message {msg_id}: {failure}"
            self.store.release([msg_id], delay_s=self.settings.reconnect_min_s)
        else:
            self.stats.acked += 1
            self.store.ack((msg_id,))
        self._wake.set()

    def transport_message(self, topic: str, payload: bytes) -> None:
        handler = self.commands.get(topic)
        if handler is None:
            return  # not a command topic of ours (e.g. a broker that sends what was never asked for)
        try:
            handler(payload)
        except Exception:
            log.exception("%s: command on %s failed", self.where, topic)

    def send_extra(self, pub: Any) -> bool:
        """Publish something the store does not track (command responses, replays): QoS as given, its
        acknowledgement only counts as progress. False when the transport refused it now."""
        return self.stats.connected and self._send(pub)

    @property
    def window_free(self) -> int:
        """How many more messages the in-flight window takes now."""
        return self.settings.max_inflight - len(self._outstanding)

    def transport_died(self, err: BaseException) -> None:
        if self._state == "offline" and self._restart_at is not None:
            return  # this death is already being handled (noticed by _check before its report arrived)
        self.stats.connected = False
        self.stats.transport_restarts += 1
        self._transport_lost()
        self._restart_at = time.monotonic() + self._restart_delay
        self._set_state("offline", f"{self.where}: the MQTT network thread died ({type(err).__name__}: {err}); "
                                   f"restarting it, readings stay in the store")
        self._restart_delay = min(self._restart_delay * 2, self.settings.reconnect_max_s)

    def _transport_lost(self) -> None:
        """Whatever the transport held in flight is gone with it: offer those messages again."""
        ids = [m for m in self._outstanding.values() if m is not None]
        self._outstanding.clear()
        self.store.release(ids)

    def notify(self) -> None:
        """New messages were committed."""
        self._wake.set()

    def reconfigured(self, config_version: str) -> None:
        """A reload applied a new configuration: its version from now on, and a new birth at once when online
        (status, then the retained `meta` of every configured instrument; Sparkplug: NBIRTH and the DBIRTHs
        with the new configuration), else at the next connect."""
        self._config_version = config_version
        _set_config_version(self.encoder, config_version)
        if self.stats.connected and not self._closing and self._state == "online":
            for pub in self.encoder.birth(self._status_body(), self._meta()):
                self._send(pub)

    # -- publishing ---------------------------------------------------------------------------------

    def _status_body(self) -> dict[str, Any]:
        st = self.store.stats()
        return {
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
            "chain": self.store.chain_heads(),  # the hash chains' heads (issue 11; docs/hash-chain.md)
            "forwarder": {"published": self.stats.published, "acked": self.stats.acked,
                          "rejected": self.stats.rejected, "outstanding": self._count_outstanding(),
                          "transport_restarts": self.stats.transport_restarts,
                          "last_error": self.stats.last_error},
            **self._status_extra(),
        }

    def _count_outstanding(self) -> int:
        """Readings and records messages in flight (status and meta publishes are not counted)."""
        self.stats.outstanding = sum(1 for m in self._outstanding.values() if m is not None)
        return self.stats.outstanding

    def _publish_status(self) -> None:
        try:
            body = self._status_body()
        except StoreError:
            body = {"ts": int(time.time() * 1000)}
        self._send(self.encoder.status(self._state, body))

    def _send(self, pub: Any, msg_id: int | None = None) -> bool:
        token = self.transport.publish(pub)
        if token is None:
            return False
        if not self._outstanding:
            self._progress = time.monotonic()  # the stall clock starts with the first message in flight
        self._outstanding[token] = msg_id
        return True

    def _check(self, now: float) -> None:
        """Notice what no callback reports: a dead network thread, a CONNACK or PUBACK that never comes."""
        s = self.settings
        if self._state != "offline" and not self.transport.alive():
            self.transport_died(RuntimeError("stopped without a report"))
        if self._state == "offline" and self._restart_at is not None and now >= self._restart_at:
            self._restart_at = None
            self.transport.restart()  # still `offline` until it connects: a thread that dies again is no news
        if self._state == "connecting" and now - self._state_since >= s.connack_timeout_s:
            self._problem(f"{self.where}: no CONNACK within {s.connack_timeout_s:g} s "
                          "(the broker does not answer); readings stay in the store; retrying")
        if (self._state == "online" and self._outstanding and now - self._progress >= s.puback_timeout_s):
            self._set_state("stalled", f"{self.where}: no PUBACK for {s.puback_timeout_s:g} s with "
                                       f"{len(self._outstanding)} messages in flight; readings stay in the store")

    async def run(self) -> None:
        """Connect and drain forever. Cancel to stop (then call shutdown())."""
        self._loop = asyncio.get_running_loop()
        self.first_connect = self._loop.create_future()
        self._state_since = time.monotonic()
        self.transport.start(self, self.encoder.will())
        next_status = time.monotonic() + self.settings.status_interval_s
        # One repeating timer wakes the loop at least every 0.5 s for _check(), instead of a timeout armed and
        # cancelled around every wait (the loop wakes for each batch of PUBACKs; issue 8).
        self._tick_handle = self._loop.call_later(0.5, self._tick)
        try:
            await self._drain(next_status)
        finally:
            self._tick_handle.cancel()

    def _tick(self) -> None:
        self._wake.set()
        assert self._loop is not None
        self._tick_handle = self._loop.call_later(0.5, self._tick)

    async def _drain(self, next_status: float) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            now = time.monotonic()
            self._check(now)
            if now >= next_status and self.stats.connected:
                self._publish_status()
                next_status = now + self.settings.status_interval_s
            if not self.stats.connected:
                continue
            free = self.settings.max_inflight - len(self._outstanding)
            if free <= 0:
                continue
            try:
                batch = self.store.begin(free)
            except StoreError as err:
                self._set_state("store_failed", f"forwarding stopped: {err}")
                self._publish_status()
                raise
            slice_s = self.send_slice_s
            yield_at = time.monotonic() + slice_s
            transport = self.transport
            transport.hold(True)  # the window goes out together when it is queued (or at each slice)
            try:
                for i, out in enumerate(batch):
                    if time.monotonic() >= yield_at:
                        # A window of large messages (a period close's records) is encoded in slices, so the
                        # pollers' timers are not held behind it (issue 8: the longest loop stall).
                        transport.flush()
                        await asyncio.sleep(0)
                        yield_at = time.monotonic() + slice_s
                        if not self.stats.connected or self._state == "offline":
                            self.store.release([o.id for o in batch[i:]])  # offered again after the reconnect
                            break
                    if not self._send(self.encoder.message(out), out.id):
                        self.store.release([out.id], delay_s=self.settings.reconnect_min_s)
                        continue
                    self.stats.published += 1
            finally:
                transport.hold(False)

    def store_failed(self, err: BaseException) -> None:
        """The store writer failed (the process is stopping): say so on the status topic before going offline."""
        if self.stats.connected and not self._closing:
            self._set_state("store_failed", f"store failed, stopping: {err}")
            self._publish_status()

    def shutdown(self, *, timeout_s: float = 2.0) -> None:
        """Clean stop: announce offline (retained) and disconnect; in-flight messages stay pending."""
        self._closing = True
        self.transport.stop(self.encoder.death() if self.stats.connected else None, timeout_s=timeout_s)
        self.stats.connected = False
        self._state = "offline"


def _set_config_version(encoder: Any, config_version: str) -> None:
    """The encoder's context (and that of the encoders it wraps, e.g. Sparkplug's JSON topics) gets the new
    configuration version: meta and births carry it."""
    for enc in (encoder, *vars(encoder).values()) if hasattr(encoder, "__dict__") else (encoder,):
        ctx = getattr(enc, "ctx", None)
        if isinstance(ctx, EncoderContext):
            enc.ctx = replace(ctx, config_version=config_version)
