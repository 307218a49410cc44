"""Composition root: configuration -> pollers -> bounded queue -> store writer -> MQTT forwarder."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from drivers.modbus.client import ModbusConnection
from drivers.modbus.tcp import tcp_connection
from gateway import __version__
from gateway.clock import Clock, SystemClock
from gateway.corrections import Inbox, inbox_for
from gateway.encode import JsonEncoder
from gateway.errors import PublishError
from gateway.forwarder import Forwarder
from gateway.ingest import Ingest
from gateway.instruments import InstrumentSpec
from gateway.poller import ConnectionPoller
from gateway.queue import ReadingQueue
from gateway.registry import Config
from gateway.rules_stage import RulesStage
from gateway.shutdown import stop_on_signals
from gateway.store import Store

log = logging.getLogger("gateway.app")

AUTH_CHECK_S = 10.0  # how long `run` waits for the broker's first answer before going on regardless
SHUTDOWN_WAIT_S = 5.0
WRITE_CHUNK = 2_000  # readings per transaction at most (~40 ms of rules + commit on this machine)


def group_by_endpoint(specs: Sequence[InstrumentSpec]) -> dict[str, list[InstrumentSpec]]:
    """Instruments that share an endpoint share one connection (one request at a time)."""
    groups: dict[str, list[InstrumentSpec]] = {}
    for s in specs:
        if s.polled and not s.is_opcua:
            groups.setdefault(s.connection.endpoint, []).append(s)
    return groups


def make_connection(spec: InstrumentSpec, clock: Clock) -> ModbusConnection:
    c = spec.connection
    if c.protocol == "modbus_rtu":
        from drivers.modbus.rtu import serial_connection

        return serial_connection(c.port, baudrate=c.baudrate, parity=c.parity, stopbits=c.stopbits,
                                 bytesize=c.bytesize, timeout_s=c.timeout_s,
                                 inter_frame_delay_s=c.inter_frame_delay_ms / 1000, clock=clock.wall_ms)
    return tcp_connection(c.host, c.port, timeout_s=c.timeout_s, rtu_framing=c.protocol == "modbus_rtu_over_tcp",
                          clock=clock.wall_ms)


@dataclass
class Gateway:
    config: Config
    clock: Clock = field(default_factory=SystemClock)
    pollers: list[ConnectionPoller] = field(default_factory=list)
    subscribers: list[tuple[InstrumentSpec, Any]] = field(default_factory=list)  # (spec, OpcUaDriver)

    async def run(self, *, duration_s: float | None = None) -> None:
        cfg = self.config
        st = cfg.settings
        store = Store(st.store.path, synchronous=st.store.synchronous, config_version=cfg.version)
        queue = ReadingQueue(st.limits.queue_readings)
        forwarder = Forwarder(st.mqtt, st.gateway.id, store, JsonEncoder(st.mqtt.topic_prefix, st.gateway.id),
                              meta=lambda: {s.id: s.metadata() for s in cfg.instruments},
                              status_extra=self._status_extra, config_version=cfg.version, site=st.gateway.site)
        self.pollers = [
            ConnectionPoller(make_connection(specs[0], self.clock), specs, queue, self.clock,
                             backoff_min_s=st.limits.backoff_min_s, backoff_max_s=st.limits.backoff_max_s)
            for specs in group_by_endpoint(cfg.instruments).values()
        ]
        for line in cfg.warnings:
            log.warning("%s", line)
        ua_specs = [s for s in cfg.instruments if s.polled and s.is_opcua]
        if ua_specs:
            from drivers.opcua.driver import OpcUaDriver

            # asyncua logs a traceback per lost connection; the driver logs one line per state change.
            logging.getLogger("asyncua").setLevel(logging.CRITICAL)
            self.subscribers = [(s, OpcUaDriver(s.device)) for s in ua_specs]  # type: ignore[arg-type]
        log.info("carbon-gateway %s: %d instruments on %d connections, store %s, broker %s:%d, config %s",
                 __version__, sum(len(p.specs) for p in self.pollers) + len(self.subscribers),
                 len(self.pollers) + len(self.subscribers), st.store.path, st.mqtt.host, st.mqtt.port, cfg.version)
        loop = asyncio.get_running_loop()
        signals = contextlib.ExitStack()
        stop = signals.enter_context(stop_on_signals())
        tasks = [asyncio.create_task(p.run(), name=f"poll {p.conn.name}") for p in self.pollers]
        ingest = Ingest(queue, [spec for spec, _drv in self.subscribers])
        tasks += [asyncio.create_task(drv.run(ingest), name=f"subscribe {spec.id}")
                  for spec, drv in self.subscribers]
        tasks.append(asyncio.create_task(forwarder.run(), name="forwarder"))
        writer = asyncio.create_task(self._write(queue, store, forwarder), name="writer")
        pruner = asyncio.create_task(self._prune(store), name="pruner")
        stopper = asyncio.create_task(stop.wait(), name="stop signal")
        auth = asyncio.create_task(self._first_connect(forwarder), name="broker login check")
        try:
            deadline = None if duration_s is None else loop.time() + duration_s
            waiting: set[asyncio.Task[Any]] = {stopper, writer, auth}
            while True:
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not done or stopper in done:
                    break  # --duration elapsed, or SIGINT/SIGTERM
                if writer in done:
                    writer.result()  # a store failure is fatal: surface it
                    break
                if auth in done:
                    waiting.discard(auth)
                    if auth.result() is not None:
                        raise PublishError(auth.result())  # e.g. bad credentials: exit 3, one line
        finally:
            for t in [*tasks, pruner, stopper, auth]:
                t.cancel()
            # Bounded: a task that ignores its cancellation must not keep the gateway from committing
            # what is queued and exiting.
            _done, stuck = await asyncio.wait([*tasks, pruner, stopper, auth], timeout=SHUTDOWN_WAIT_S)
            for t in stuck:
                log.error("task %s did not stop within %.0f s; exiting without it", t.get_name(), SHUTDOWN_WAIT_S)
            for _spec, drv in self.subscribers:
                await drv.close()
            writer.cancel()
            await asyncio.wait([writer], timeout=SHUTDOWN_WAIT_S)
            # Nothing polled is lost on a clean stop: commit what is still queued.
            store.commit(queue.take(len(queue)), now_ms=self.clock.wall_ms(),
                         per_message=st.mqtt.readings_per_message, acked=forwarder.take_acks())
            forwarder.shutdown()
            store.commit([], now_ms=self.clock.wall_ms(), per_message=1, acked=forwarder.take_acks())
            store.close()
            signals.close()

    async def _first_connect(self, forwarder: Forwarder) -> str | None:
        for _ in range(int(AUTH_CHECK_S / 0.05)):
            if forwarder.first_connect is not None:
                break
            await asyncio.sleep(0.05)
        if forwarder.first_connect is None:
            return None
        try:
            async with asyncio.timeout(AUTH_CHECK_S):
                return await asyncio.shield(forwarder.first_connect)
        except TimeoutError:
            return None  # broker unreachable: keep polling and storing, the forwarder keeps retrying

    def _rules(self, store: Store) -> RulesStage:
        """The rules engine, with each point's history and open period reloaded from the store."""
        now = self.clock.wall_ms()
        points = [(i.id, p.name) for i in self.config.instruments for p in i.points]
        rules = RulesStage(self.config.instruments, now_ms=now, last_readings=store.last_readings(points))
        month_ago = now - 31 * 86_400_000
        for instrument, point in rules.points():
            # The substitution lookback needs the period history; other points only where they stopped.
            aggregates = store.records("aggregates", instrument, point, since_ms=now - 3 * 365 * 86_400_000,
                                       last=None if rules.wants_history(instrument, point) else 1)
            subs = store.records("substitutes", instrument, point, since_ms=month_ago)
            open_from = aggregates[-1]["period_end"] if aggregates else None
            current = store.readings_since(instrument, point, int(open_from)) if open_from is not None else []
            rules.restore(instrument, point, aggregates, subs, current)
        return rules

    async def _write(self, queue: ReadingQueue, store: Store, forwarder: Forwarder) -> None:
        st = self.config.settings
        interval = st.store.commit_interval_ms / 1000
        per_message = st.mqtt.readings_per_message
        rules = self._rules(store)
        inbox = Inbox(inbox_for(st.store.path), self.config)
        next_inbox = 0.0
        loop = asyncio.get_running_loop()
        while True:
            if len(queue) < WRITE_CHUNK:
                await queue.wait(interval)
                await asyncio.sleep(interval)  # gather a whole interval's readings into one transaction
            else:
                await asyncio.sleep(0)  # behind: commit the next chunk at once, but let pollers run between
            # Bounded chunks keep each synchronous stretch (rules + commit) short, so the pollers' schedules
            # hold even when a backlog builds up.
            readings, derived = rules.process(queue.take(WRITE_CHUNK))
            now = self.clock.wall_ms()
            derived += rules.tick(now)
            ingested: list[Any] = []
            if loop.time() >= next_inbox:
                corrections, ingested = inbox.collect(store, now)
                derived += corrections
                next_inbox = loop.time() + 1.0
            acks = forwarder.take_acks()
            if readings or acks or derived:
                created = store.commit(readings, now_ms=now, per_message=per_message, acked=acks, derived=derived)
                for path in ingested:
                    path.unlink(missing_ok=True)  # only once its record is committed
                if created:
                    forwarder.notify()

    async def _prune(self, store: Store) -> None:
        st = self.config.settings.store
        while True:
            await asyncio.sleep(st.prune_interval_s)
            cutoff = self.clock.wall_ms() - int(st.retention_days * 86_400_000)
            removed = store.prune_delivered(older_than_ms=cutoff)
            if removed:
                log.info("pruned %d delivered readings older than %.1f days", removed, st.retention_days)
            stats = store.stats()
            if stats.size_bytes > st.size_alarm_mb * 1024 * 1024:
                log.error("store %s is %.0f MB (alarm at %.0f MB); undelivered data is kept",
                          store.path, stats.size_bytes / 1e6, st.size_alarm_mb)

    def _status_extra(self) -> dict[str, Any]:
        instruments: dict[str, Any] = {}
        for p in self.pollers:
            for sid, h in p.health.items():
                instruments[sid] = h.status()
        for spec, drv in self.subscribers:
            instruments[spec.id] = drv.health.status()
        return {"version": __version__, "instruments": instruments}
