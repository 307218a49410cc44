"""Composition root: configuration -> pollers -> bounded queue -> store writer -> MQTT forwarder."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from drivers.base import PollingDriver, SubscribingDriver
from gateway import __version__, config_history, reload
from gateway.clock import REASON_CLOCK_STEPPED, Clock, SystemClock, TimeKeeper, kernel_synchronised
from gateway.corrections import Inbox, inbox_for
from gateway.derived.carbon import CarbonStage, restore_carbon
from gateway.derived.corrected import corrected_hours
from gateway.derived.stage import DerivedStage
from gateway.encode import EncoderContext, make_encoder
from gateway.errors import PublishError, StoreError
from gateway.forwarder import Forwarder
from gateway.ingest import Ingest
from gateway.instruments import InstrumentSpec
from gateway.model import REASON_GATEWAY_FAULT, Derived, Reading
from gateway.overload import LoopLag, OverloadMonitor
from gateway.poller import ConnectionPoller, failed_samples
from gateway.protocols import PROTOCOLS
from gateway.queue import ReadingQueue
from gateway.registry import Config, few_collections
from gateway.replay import attach as attach_replay
from gateway.rules_stage import RulesStage, apply_estimates, checkpoint_quota, load_rules_async
from gateway.service import run_notifier
from gateway.shutdown import stop_on_signals
from gateway.store import Store
from gateway.supervisor import FAILED, Supervisor

log = logging.getLogger("gateway.app")

AUTH_CHECK_S = 10.0  # how long `run` waits for the broker's first answer before going on regardless
SHUTDOWN_WAIT_S = 5.0
WRITE_CHUNK = 1_000  # readings per transaction at most (~20 ms of rules + commit; issue 8: loop stalls when behind)
CLOSE_SLICE = 250  # period closes made per transaction at most (issue 8: 10,000 at once held the loop ~200 ms;
# 500 made a writer round at a close ~40 ms against ~20 between closes)
INBOX_INTERVAL_S = 1.0  # how often the corrections inbox is looked at
SYNC_CHECK_S = 10.0  # how often the kernel clock's synchronisation state is read
# The cyclic collector while running (issue 8). Nearly every object a reading makes dies by reference count,
# but with CPython's default (700, 10, 10) the collector ran ~20 times a second at plant load, each time
# scanning and promoting the readings still queued or in flight: 9 % of the gateway's CPU (gc.callbacks,
# 500 meters x 20 points at 1 s, two runs). With 50,000 it runs a few times a minute: 1.4 %, no pass over 5 ms
# after start-up; cyclic garbage waits up to 50,000 allocations (a few MB at most).
RUN_GC_THRESHOLD = (50_000, 20, 100)


def group_by_endpoint(specs: Sequence[InstrumentSpec]) -> dict[str, list[InstrumentSpec]]:
    """Instruments of polling protocols that share an endpoint share one driver (one request at a time)."""
    groups: dict[str, list[InstrumentSpec]] = {}
    for s in specs:
        if s.polled and PROTOCOLS.named(s.protocol).kind == "polling":
            groups.setdefault(s.connection.endpoint, []).append(s)  # type: ignore[attr-defined]
    return groups


def make_connection(spec: InstrumentSpec, clock: Clock) -> PollingDriver:
    """The polling driver of an instrument's endpoint (shared by its group_by_endpoint group)."""
    return PROTOCOLS.named(spec.protocol).open_polling(spec.connection, clock.wall_ms)


def make_subscriber(spec: InstrumentSpec) -> SubscribingDriver:
    """The driver of an instrument of a subscribing protocol (one per instrument)."""
    return PROTOCOLS.named(spec.protocol).open_subscriber(spec.device)


@dataclass
class Gateway:
    config: Config
    clock: Clock = field(default_factory=SystemClock)
    pollers: list[ConnectionPoller] = field(default_factory=list)
    subscribers: list[tuple[InstrumentSpec, SubscribingDriver]] = field(default_factory=list)
    # Supervision: restart backoff and how long a restarted task must run to count as recovered.
    restart_backoff_s: tuple[float, float] = (1.0, 30.0)
    healthy_after_s: float = 10.0
    monitor_interval_s: float = 0.5
    sync_probe: Callable[[], bool | None] = kernel_synchronised
    supervisor: Supervisor = field(init=False)
    timekeeper: TimeKeeper = field(init=False)
    overload: OverloadMonitor = field(default_factory=OverloadMonitor)
    loop_lag: LoopLag = field(default_factory=LoopLag)  # the longest event-loop stall, on the status topic
    rules: RulesStage | None = field(default=None, init=False)  # the writer's, for tests and status
    # Live reload (issue 11 item 3, gateway/reload.py): how to read the configuration again (None: SIGHUP is
    # ignored), the last reload's outcome for the status topic, rules changes waiting for the writer.
    loader: Callable[[], Config] | None = None
    reload_status: dict[str, Any] | None = field(default=None, init=False)
    replayer: Any = field(default=None, init=False)  # issue 12: replay on request, when subscribed
    rules_changes: list[reload.RulesChange] = field(default_factory=list, init=False)
    writer_beat: float | None = field(default=None, init=False)  # loop time of the writer's last round (watchdog)

    def __post_init__(self) -> None:
        self.supervisor = Supervisor(backoff_min_s=self.restart_backoff_s[0], backoff_max_s=self.restart_backoff_s[1],
                                     healthy_after_s=self.healthy_after_s, fatal=(StoreError,))
        self.timekeeper = TimeKeeper(self.clock, sync_probe=self.sync_probe)
        self._events: list[tuple[str, Any]] = []  # clock steps / overload changes for the rules stage
        self._held: list[Reading] = []  # taken from the queue, not yet committed (kept across writer restarts)
        self.derived = DerivedStage(self.config.derived)
        self.carbon = CarbonStage(self.config.derived)

    async def run(self, *, duration_s: float | None = None) -> None:
        before = gc.get_threshold()
        gc.set_threshold(*RUN_GC_THRESHOLD)
        try:
            await self._run(duration_s=duration_s)
        finally:
            gc.set_threshold(*before)  # a gateway run inside a longer process (tests) leaves it as it was

    async def _run(self, *, duration_s: float | None) -> None:
        cfg = self.config
        st = cfg.settings
        store = Store(st.store.path, synchronous=st.store.synchronous, config_version=cfg.version)
        try:
            config_history.record_running(store, cfg, cause="start", now_ms=self.clock.wall_ms())
        except BaseException:
            store.close()
            raise
        queue = ReadingQueue(st.limits.queue_readings)
        encoder = make_encoder(st.output.encoder, EncoderContext(st.mqtt.topic_prefix, st.gateway.id,
                                                                  store.epoch, cfg.version, output=st.output))
        forwarder = Forwarder(st.mqtt, st.gateway.id, store, encoder,
                              meta=lambda: {s.id: s.metadata() for s in self.config.instruments},
                              status_extra=self._status_extra, config_version=cfg.version, site=st.gateway.site,
                              # an output with its own session (Sparkplug B: STATE, rebirth, Will per CONNECT)
                              transport=encoder.transport(st.mqtt) if hasattr(encoder, "transport") else None)
        for line in cfg.warnings:
            log.warning("%s", line)
        subscribing = [s for s in cfg.instruments if s.polled and PROTOCOLS.named(s.protocol).kind == "subscribing"]
        log.info("carbon-gateway %s: %d instruments on %d connections, store %s, broker %s:%d, config %s",
                 __version__, sum(len(g) for g in group_by_endpoint(cfg.instruments).values()) + len(subscribing),
                 len(group_by_endpoint(cfg.instruments)) + len(subscribing), st.store.path, st.mqtt.host,
                 st.mqtt.port, cfg.version)
        self.timekeeper.check_sync()
        self.timekeeper.check()
        loop = asyncio.get_running_loop()
        signals = contextlib.ExitStack()
        stop = signals.enter_context(stop_on_signals())
        sup = self.supervisor
        for specs in group_by_endpoint(cfg.instruments).values():
            self.start_poller(specs, queue)
        for spec in subscribing:
            self.start_subscriber(spec, queue)
        sup.spawn("forwarder", forwarder.run)
        self.replayer = attach_replay(forwarder, st, store, encoder, self.clock.wall_ms)  # issue 12: commands
        if self.replayer is not None:
            sup.spawn("replay", self.replayer.run)
        sup.spawn("writer", functools.partial(self._write, queue, store, forwarder))
        sup.spawn("inbox", functools.partial(self._inbox, store, forwarder))
        sup.spawn("pruner", functools.partial(self._prune, store))
        sup.spawn("monitor", functools.partial(self._monitor, queue))
        sup.spawn("loop lag", self.loop_lag.run)
        if self.loader is not None:  # SIGHUP re-reads the configuration (gateway/reload.py)
            reloader = reload.Reloader(self, queue, store, forwarder, self.loader)
            signals.enter_context(reloader.on_sighup())
            sup.spawn("reload", reloader.run)
        # Last: READY=1 to systemd once the store is open and everything above is started (gateway/service.py).
        sup.spawn("systemd notify", functools.partial(run_notifier, self, forwarder, store))
        stopper = asyncio.create_task(stop.wait(), name="stop signal")
        fatal = asyncio.create_task(sup.wait_fatal(), name="fatal failure")
        auth = asyncio.create_task(self._first_connect(forwarder), name="broker login check")
        failure: BaseException | None = None
        try:
            deadline = None if duration_s is None else loop.time() + duration_s
            waiting: set[asyncio.Task[Any]] = {stopper, fatal, auth}
            while True:
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not done or stopper in done:
                    break  # --duration elapsed, or SIGINT/SIGTERM
                if fatal in done:
                    failure = fatal.result()[1]  # the store failed: nothing can be kept, stop (exit 4)
                    break
                if auth in done:
                    waiting.discard(auth)
                    if auth.result() is not None:
                        raise PublishError(auth.result())  # e.g. bad credentials: exit 3, one line
        finally:
            for t in (stopper, fatal, auth):
                t.cancel()
            await asyncio.wait([stopper, fatal, auth], timeout=SHUTDOWN_WAIT_S)
            # Bounded: a task that ignores its cancellation must not keep the gateway from committing
            # what is queued and exiting.
            await sup.stop([n for n in sup.names if n != "writer"], timeout_s=SHUTDOWN_WAIT_S)
            for _spec, drv in self.subscribers:
                await drv.close()
            await sup.stop(["writer"], timeout_s=SHUTDOWN_WAIT_S)
            try:
                if failure is None:
                    # Nothing polled is lost on a clean stop: commit what is still queued.
                    held, self._held = self._held, []
                    closes = self.rules.take_closes() if self.rules is not None else []  # deferred, not made yet
                    if self.carbon:
                        closes += self.carbon.feed(closes, self.clock.wall_ms())
                    rest = self._mark(queue.take(len(queue)))
                    rest += self.derived.process(rest) if self.derived else []
                    store.commit(held + rest, now_ms=self.clock.wall_ms(),
                                 per_message=st.mqtt.readings_per_message,  # with the acks the store holds
                                 derived=closes)
                if failure is not None:
                    forwarder.store_failed(failure)  # the retained status says why, then `offline`
                forwarder.shutdown()
                if failure is None:
                    store.flush()
            except StoreError as err:
                failure = failure or err
            finally:
                store.close()
                signals.close()
        if failure is not None:
            raise failure

    @staticmethod
    def poller_name(p: ConnectionPoller) -> str:
        return f"poll {p.conn.name}"

    def start_poller(self, specs: Sequence[InstrumentSpec], queue: ReadingQueue) -> ConnectionPoller:
        """One supervised polling task for the instruments of one endpoint (at start and by a reload)."""
        st = self.config.settings
        p = ConnectionPoller(make_connection(specs[0], self.clock), specs, queue, self.clock,
                             backoff_min_s=st.limits.backoff_min_s, backoff_max_s=st.limits.backoff_max_s,
                             on_poll_start=self.overload.poll_started)
        self.pollers.append(p)
        self.supervisor.spawn(self.poller_name(p), p.run, on_failure=self._mark_failed(p.specs, queue))
        return p

    def start_subscriber(self, spec: InstrumentSpec, queue: ReadingQueue) -> None:
        """One supervised subscribing driver for an instrument (at start and by a reload)."""
        drv = make_subscriber(spec)
        self.subscribers.append((spec, drv))
        self.supervisor.spawn(f"subscribe {spec.id}", functools.partial(drv.run, Ingest(queue, [spec])),
                              on_failure=self._mark_failed([spec], queue))

    def _mark_failed(self, specs: Sequence[InstrumentSpec],
                     queue: ReadingQueue) -> Callable[[BaseException], Awaitable[None]]:
        """After a polling task failed: one bad reading per point, reason `gateway_fault`, so the gap that
        follows is the gateway's (cause gateway_down), never blamed on the meter's communication."""
        ingest = Ingest(queue, specs)

        async def record(_err: BaseException) -> None:
            now = self.clock.wall_ms()
            for spec in specs:
                await ingest(spec.id, failed_samples(spec, now, REASON_GATEWAY_FAULT))

        return record

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

    async def _rules(self, store: Store) -> RulesStage:
        """The rules engine, resumed from its checkpoints in the store (see rules_stage.load_rules), built in
        steps that yield to the loop: the pollers, spawned before the writer, poll meanwhile and their
        readings wait in the bounded queue, in order, until the rules stage has seen them."""
        t0, cpu0 = time.perf_counter(), time.process_time()
        # Its per-point state lives as long as the writer: frozen out of later collections, like the configuration.
        with few_collections(freeze=True):
            rules = await load_rules_async(self.config.instruments, store, self.clock.wall_ms())
        log.info("rules stage ready: %d points in %.1f s (%.1f s CPU)", len(rules.points()),
                 time.perf_counter() - t0, time.process_time() - cpu0)
        return rules

    async def _write(self, queue: ReadingQueue, store: Store, forwarder: Forwarder) -> None:
        st = self.config.settings
        interval = st.store.commit_interval_ms / 1000
        per_message = st.mqtt.readings_per_message
        loop = asyncio.get_running_loop()
        self.writer_beat = loop.time()  # the rules stage is built within the watchdog interval (docs/deployment.md)
        # Clock steps and overload changes while the rules stage is being built are given to it afterwards.
        events_seen = len(self._events)
        overloaded = self.overload.active
        built_from = self.config
        self.rules = rules = await self._rules(store)
        self.carbon = restore_carbon(self.config.derived, store, self.clock.wall_ms(), self.config.instruments)
        rules.defer_closes = True  # made CLOSE_SLICE per commit by take_closes() below
        reload.writer_ready(self, built_from)  # reloads up to that configuration are in this rules stage
        cp_at, cp_carry = loop.time(), 0.0  # checkpoints paced by time (checkpoint_quota)
        if overloaded:  # a restarted writer: its rules stage is new
            rules_hook(rules, "set_overloaded", True, self.clock.wall_ms())
        while True:
            self.writer_beat = loop.time()  # one beat per round, idle or not: the watchdog's proof of progress
            if self.rules_changes and not self._held and queue.total_out >= self.rules_changes[0].after:
                # A reload: everything queued before it is committed, now the rules stage takes the new config.
                await reload.run_rules_change(self.rules_changes.pop(0), rules, store, self.clock.wall_ms())
            if not self._held and len(queue) < WRITE_CHUNK:
                await queue.wait(interval)
                await asyncio.sleep(interval)  # gather a whole interval's readings into one transaction
            else:
                await asyncio.sleep(0)  # behind: commit the next chunk at once, but let pollers run between
            self._check_clock()
            # Bounded chunks keep each synchronous stretch (rules + commit) short, so the pollers' schedules
            # hold even when a backlog builds up. A chunk stays held until committed, so a writer that
            # fails and restarts takes it up again instead of losing it.
            if not self._held:
                taken = self._mark(queue.take(WRITE_CHUNK))
                # Derived points (formulas over other points) are readings too, computed as inputs arrive.
                self._held = taken + self.derived.process(taken) if self.derived else taken
            derived: list[Derived] = []
            now = self.clock.wall_ms()
            for kind, arg in self._events[events_seen:]:
                if kind == "step":
                    derived += rules_hook(rules, "on_clock_step", arg.delta_ms, arg.new_ms)
                else:
                    derived += rules_hook(rules, "set_overloaded", arg, now)
            events_seen = len(self._events)
            readings, more = rules.process(self._held)
            derived += more
            derived += rules.tick(tick_time(now, queue.oldest_ts()))
            derived += rules.take_closes(CLOSE_SLICE)
            if self.carbon:  # hourly CO2 per source from the hours the rules engine just settled
                derived += self.carbon.feed(derived, now)
            if readings or derived:  # the acks the forwarder gave the store go with this transaction
                # The rules checkpoint goes with the readings it has seen: same transaction.
                t = loop.time()
                cp_n, cp_carry = checkpoint_quota(rules.n_points(), 1000 * (t - cp_at), cp_carry)
                cp_at = t
                created = store.commit(readings, now_ms=now, per_message=per_message, derived=derived,
                                       rules_state=rules.checkpoint(cp_n))
                if created:
                    forwarder.notify()
            self._held = []

    def _check_clock(self) -> None:
        step = self.timekeeper.check()
        if step is not None:
            self._events.append(("step", step))

    def _mark(self, readings: list[Reading]) -> list[Reading]:
        """Readings stamped just after a wall-clock step carry reason `clock_stepped` (their value is as
        read; their timestamp may be on either side of the step). A reading that already has a reason
        keeps it."""
        tk = self.timekeeper
        if not tk.marking:
            return readings
        return [r._replace(reason=REASON_CLOCK_STEPPED) if not r.reason and tk.doubtful(r.ts_ms) else r
                for r in readings]

    async def _inbox(self, store: Store, forwarder: Forwarder) -> None:
        """Manual corrections queued by `carbon-gateway correct`, stored and published as records."""
        st = self.config.settings
        inbox = Inbox(inbox_for(st.store.path), self.config)
        while True:
            await asyncio.sleep(INBOX_INTERVAL_S)
            inbox.config = self.config  # after a reload, corrections for its instruments
            now = self.clock.wall_ms()
            got = inbox.collect(store, now)
            if got.records and self.carbon:
                # A corrected reading changes its hour's value: carbon records that used it get a new version.
                hours = corrected_hours(got.records, self.config.instruments, store, self.carbon.watch)
                got.records.extend(self.carbon.feed(hours, now))
            if got.records:
                # Issue 10 item 9: estimates re-issue the substitutes of the hours they cover, same transaction.
                derived = got.records + apply_estimates(self.rules, store, got.records)
                # The files' hashes go in the same transaction as their records: stored exactly once.
                created = store.commit([], now_ms=now, per_message=st.mqtt.readings_per_message,
                                       derived=derived, ingested=got.hashes)
                inbox.remove(got.files)  # only once its record is committed; a failure is logged, not raised
                if created:
                    forwarder.notify()

    async def _monitor(self, queue: ReadingQueue) -> None:
        """Clock steps, kernel clock synchronisation and overload, checked every monitor interval."""
        loop = asyncio.get_running_loop()
        interval = self.monitor_interval_s
        window_s, next_window, next_sync = 1.0, loop.time() + 1.0, loop.time() + SYNC_CHECK_S
        max_lag = 0.0
        while True:
            before = loop.time()
            await asyncio.sleep(interval)
            max_lag = max(max_lag, loop.time() - before - interval)  # how late the loop woke us: busy
            self._check_clock()
            now = loop.time()
            if now >= next_window:
                change = self.overload.tick(now_ms=self.clock.wall_ms(), loop_lag_s=max_lag,
                                            blocked_puts=queue.blocked_puts)
                if change is not None:
                    self._events.append(("overload", change))
                max_lag, next_window = 0.0, now + window_s
            if now >= next_sync:
                self.timekeeper.check_sync()
                next_sync = now + SYNC_CHECK_S

    async def _prune(self, store: Store) -> None:
        st = self.config.settings.store
        while True:
            await asyncio.sleep(st.prune_interval_s)
            cutoff = self.clock.wall_ms() - int(st.retention_days * 86_400_000)
            removed = store.prune_delivered(older_than_ms=cutoff)
            if removed:
                log.info("pruned %d delivered readings older than %.1f days", removed, st.retention_days)
            if st.max_size_mb is not None:
                removed = store.prune_to_size(int(st.max_size_mb * 1024 * 1024))
                if removed:
                    log.info("pruned %d delivered readings to keep the store under %.0f MB", removed, st.max_size_mb)
            stats = store.stats()
            if stats.size_bytes > st.size_alarm_mb * 1024 * 1024:
                log.error("store %s is %.0f MB (alarm at %.0f MB); undelivered data is kept",
                          store.path, stats.size_bytes / 1e6, st.size_alarm_mb)

    def _status_extra(self) -> dict[str, Any]:
        sup = self.supervisor
        instruments: dict[str, Any] = {}
        for p in self.pollers:
            task = sup.info(self.poller_name(p))
            for sid, h in p.health.items():
                instruments[sid] = {**h.status(), "late_polls": p.late_polls.get(sid, 0)}
                if task is not None and task.state == FAILED:
                    instruments[sid].update(state="failed", last_error=task.error)
        for spec, drv in self.subscribers:
            task = sup.info(f"subscribe {spec.id}")
            instruments[spec.id] = drv.health.status()
            if task is not None and task.state == FAILED:
                instruments[spec.id].update(state="failed", last_error=task.error)
        for body in instruments.values():
            if body["state"] == "ok" and not body["polls"]:
                body["state"] = "starting"  # nothing read yet: not `ok` (observation 7)
        return {"version": __version__, "instruments": instruments, "components": sup.snapshot(),
                "clock": self.timekeeper.status(), "overload": self.overload.status(),
                "loop_lag": self.loop_lag.status(),
                "derived": {**self.derived.status(), "sources": len(self.carbon.methods),
                            "carbon_records": self.carbon.issued,
                            "carbon_incomplete_hours": len(self.carbon.incomplete)},
                **({"reload": self.reload_status} if self.reload_status is not None else {}),
                **({"replay": self.replayer.status()} if self.replayer is not None else {})}


def tick_time(now_ms: int, oldest_queued_ms: int | None) -> int:
    """How far time has passed for the rules stage: no further than the oldest reading still queued.

    Readings waiting in the queue (while the rules stage is built at start-up, or while the writer is
    behind) prove their meters answered; ticking past them could open a communication_loss gap for a
    point whose readings are merely not fed yet (tests/unit/test_tick_time.py)."""
    return now_ms if oldest_queued_ms is None else min(now_ms, oldest_queued_ms)


def rules_hook(rules: RulesStage, name: str, *args: Any) -> list[Derived]:
    """Call a rules-stage hook (on_clock_step, set_overloaded) if this rules stage has it."""
    hook = getattr(rules, name, None)
    if hook is None:
        return []
    return list(hook(*args) or [])
