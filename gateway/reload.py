"""Live reload on SIGHUP (issue 11 item 3): re-read the configuration and apply it without a restart.

A configuration that does not load is rejected, each error one log line (`file:line: field: message`), and
the running one stays. One that loads is compared with the running one (`plan`, a pure function of the two
manifests of gateway/config_history.py) and applied:

1. the pollers whose connection group changed (an instrument added, removed or changed on it) are parked
   between two polls (the poll under way finishes and queues its readings) and stopped; pollers of
   unchanged groups are not touched (their schedules, connections and counters run on);
2. the store writer commits every reading queued until then under the old rules, then the rules stage drops
   the removed instruments, keeps the running state of unchanged points of changed instruments, and resumes
   new or re-ruled points from the store as at a start (checkpoint plus the readings after it);
3. the new and changed groups start polling at once; a new birth is published (status and the retained `meta`
   of every instrument, with the new configuration version), and the configuration is recorded in
   `config_history` (cause `reload`).

Each stream's `seq` continues (it is the store's). Settings of gateway.yaml (broker, store, limits ...) are
not applied live: a changed section is refused with one line saying that it needs a restart.
Never silent: one log line when a reload starts and one when it ends (applied, unchanged, rejected or
failed), and `reload` on the status topic (when, result, the configuration version running).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway import config_history, service
from gateway.errors import ConfigError, ConfigErrors, StoreError

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.forwarder import Forwarder
    from gateway.poller import ConnectionPoller
    from gateway.queue import ReadingQueue
    from gateway.registry import Config
    from gateway.rules_stage import RulesStage
    from gateway.store import Store

log = logging.getLogger("gateway.reload")

PARK_TIMEOUT_S = 10.0  # how long a replaced poller's poll under way may take to finish
WRITER_TIMEOUT_S = 60.0  # how long the writer may take to commit what was queued and take the new rules


# -- the plan (pure) ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """What a reload changes. Groups are `poll <endpoint>` (one polling driver per endpoint) or
    `subscribe <instrument>` (one subscribing driver per instrument)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()  # why the configuration cannot be applied live, one line each
    start: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()

    @property
    def instruments_changed(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def groups(m: Mapping[str, Any], kind_of: Callable[[str], str]) -> dict[str, set[str]]:
    """group -> ids of the instruments polled in it (retired instruments are not polled)."""
    out: dict[str, set[str]] = {}
    for iid, inst in m.get("instruments", {}).items():
        if inst.get("status") == "retired":
            continue
        key = f"poll {inst['endpoint']}" if kind_of(inst["protocol"]) == "polling" else f"subscribe {iid}"
        out.setdefault(key, set()).add(iid)
    return out


def plan(old: Mapping[str, Any], new: Mapping[str, Any], kind_of: Callable[[str], str]) -> Plan:
    """The reload from manifest `old` to manifest `new` (config_history.manifest)."""
    o_set, n_set = old.get("settings", {}), new.get("settings", {})
    refused = tuple(f"gateway.yaml: `{s}` changed: settings take effect at a restart, not a reload "
                    f"(systemctl restart); reload refused" for s in sorted(set(o_set) | set(n_set))
                    if o_set.get(s) != n_set.get(s))
    o_inst, n_inst = old.get("instruments", {}), new.get("instruments", {})
    changed = {i for i in set(o_inst) & set(n_inst) if o_inst[i] != n_inst[i]}
    og, ng = groups(old, kind_of), groups(new, kind_of)
    start, stop, restart, keep = [], [], [], []
    for key in sorted(set(og) | set(ng)):
        a, b = og.get(key, set()), ng.get(key, set())
        if not b:
            stop.append(key)
        elif not a:
            start.append(key)
        elif a == b and not (a & changed):
            keep.append(key)
        else:
            restart.append(key)
    return Plan(added=tuple(sorted(set(n_inst) - set(o_inst))), removed=tuple(sorted(set(o_inst) - set(n_inst))),
                changed=tuple(sorted(changed)), refused=refused, start=tuple(start), stop=tuple(stop),
                restart=tuple(restart), keep=tuple(keep))


# -- the writer side ---------------------------------------------------------------------------------------

@dataclass
class RulesChange:
    """A change of the rules stage, applied by the store writer between two commits, once it has taken and
    committed every reading queued before the change (`after`: ReadingQueue.total_in when it was asked for)."""

    after: int
    config: Config
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    added: tuple[str, ...]
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


async def run_rules_change(change: RulesChange, rules: RulesStage, store: Store, now_ms: int) -> None:
    """`apply_rules_change`, with its outcome given to the reload waiting for it (a failure also fails the
    writer, which the supervisor restarts: its new rules stage is built from the new configuration)."""
    try:
        await apply_rules_change(change, rules, store, now_ms)
    except BaseException as err:
        if not change.done.done():
            change.done.set_exception(err if isinstance(err, Exception) else RuntimeError("writer stopped"))
        raise
    if not change.done.done():
        change.done.set_result(None)


async def apply_rules_change(change: RulesChange, rules: RulesStage, store: Store, now_ms: int) -> None:
    """In the writer: the removed instruments dropped, changed ones re-bound (unchanged points keep their
    state), new and re-ruled points resumed from the store as at a start; then the store labels what it
    commits with the new configuration version."""
    from gateway.rules_stage import load_rules_async

    specs = {s.id: s for s in change.config.instruments}
    for iid in change.removed:
        rules.drop_instrument(iid)
    wanted: set[tuple[str, str]] = set()
    fresh = []
    for iid in change.changed:
        missing = rules.rebind(specs[iid])
        if missing:
            wanted |= {(iid, p) for p in missing}
            fresh.append(specs[iid])
    for iid in change.added:
        fresh.append(specs[iid])
        wanted |= {(iid, p.name) for p in specs[iid].points}
    if fresh:
        rules.adopt(await load_rules_async(fresh, store, now_ms), wanted)
    store.config_version = change.config.version


def writer_ready(gw: Gateway, built_from: Config) -> None:
    """A (re)started writer built its rules stage from `built_from`: the pending changes up to that configuration
    are in it (done); later ones (a reload while it was being built) are still to be applied to it."""
    configs = [c.config for c in gw.rules_changes]
    if not any(c is built_from for c in configs):
        return
    n = next(i for i, c in enumerate(configs) if c is built_from) + 1
    for change in gw.rules_changes[:n]:
        if not change.done.done():
            change.done.set_result(None)
    del gw.rules_changes[:n]


# -- the reload itself --------------------------------------------------------------------------------------

_held_sighup: list[bool] = []  # a SIGHUP came while no reloader listened (starting, stopping)


def hold_sighup() -> None:
    """Until a reloader listens, and again after it stops: a SIGHUP is remembered instead of its default
    action (terminate, which systemd counts as a clean exit: no restart). The reloader, once listening,
    reloads once for a SIGHUP remembered while starting (the configuration may have changed after it was read)."""
    with contextlib.suppress(ValueError):  # not the main thread: nothing to hold
        signal.signal(signal.SIGHUP, lambda *_: _held_sighup.append(True))


class Reloader:
    """SIGHUP -> `reload()`, one at a time (a SIGHUP during a reload asks for one more afterwards)."""

    def __init__(self, gw: Gateway, queue: ReadingQueue, store: Store, forwarder: Forwarder,
                 loader: Callable[[], Config]) -> None:
        self.gw, self.queue, self.store, self.forwarder, self.loader = gw, queue, store, forwarder, loader
        self._wanted = asyncio.Event()
        self._manifest: tuple[str, dict[str, Any]] | None = None  # (version, manifest) of the running config

    def _load(self, old_version: str,
              old_m: Mapping[str, Any]) -> tuple[Config, dict[str, Any], config_history.Prepared]:
        new = self.loader()
        new_m = config_history.manifest(new)
        return new, new_m, config_history.prepare(new.version, new_m, (old_version, old_m))

    def request(self) -> None:
        self._wanted.set()

    @contextlib.contextmanager
    def on_sighup(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        installed = False
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self.request)
            installed = True
        if installed and _held_sighup:
            _held_sighup.clear()
            log.info("reload: a SIGHUP came while starting; reloading now")
            self.request()
        try:
            yield
        finally:
            if installed:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(signal.SIGHUP)
                hold_sighup()  # stopping: a late SIGHUP must not kill the final commit

    async def run(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            # systemd (Type=notify): RELOADING=1 while the configuration is re-read, READY=1 when done either way,
            # so `systemctl reload` returns once the reload has been applied or refused.
            service.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
            result = "failed"
            try:
                result = await self.reload()
            finally:
                service.notify("READY=1", f"STATUS=reload {result} (configuration {self.gw.config.version})")

    def _status(self, result: str, **extra: Any) -> None:
        self.gw.reload_status = {"at": self.gw.clock.wall_ms(), "result": result,
                                 "config_version": self.gw.config.version, **extra}

    async def reload(self) -> str:
        """Returns the result: applied, unchanged, rejected or failed."""
        old = self.gw.config
        t0 = time.monotonic()
        log.info("reload: reading the configuration in %s (running %s)", old.directory, old.version)
        try:
            if self._manifest is None or self._manifest[0] != old.version:
                self._manifest = (old.version, await asyncio.to_thread(config_history.manifest, old))
            old_m = self._manifest[1]
            # Off the event loop (pollers keep their schedules): parsing, and the manifest of the new configuration
            # with its history row (about a second each at plant scale, 2,500 meters).
            new, new_m, row = await asyncio.to_thread(self._load, old.version, old_m)
        except (ConfigErrors, ConfigError) as err:
            errors = err.errors if isinstance(err, ConfigErrors) else [err]
            for e in errors:
                log.error("reload: %s", e.one_line())
            log.warning("reload rejected: %d error(s) in the new configuration; still running %s", len(errors),
                        old.version)
            self._status("rejected", errors=len(errors), error=errors[0].one_line() if errors else "")
            return "rejected"
        except Exception as err:  # noqa: BLE001 - a reload never takes the gateway down
            log.error("reload failed reading the configuration: %s: %s; still running %s", type(err).__name__, err,
                      old.version)
            self._status("failed", error=f"{type(err).__name__}: {err}")
            return "failed"
        p = plan(old_m, new_m, _kind)
        if p.refused:
            for line in p.refused:
                log.error("reload: %s", line)
            log.warning("reload rejected; still running %s", old.version)
            self._status("rejected", errors=len(p.refused), error=p.refused[0], requested=new.version)
            return "rejected"
        if new.version == old.version:
            log.info("reload: configuration unchanged (%s)", old.version)
            self._status("unchanged")
            return "unchanged"
        for line in new.warnings:
            log.warning("%s", line)
        problem: Exception | None = None
        try:
            await self._apply(new, p, old_m, new_m)
        except StoreError:
            raise  # the store failed: fatal for the gateway (exit 4), never a failed reload only
        except Exception as err:  # noqa: BLE001 - a reload never takes the gateway down
            problem = err
        entry = None
        if self.gw.config is new:  # running under it (if partly: see the problem below): recorded as such
            self._manifest = (new.version, new_m)
            entry = config_history.record_running(self.store, new, cause="reload", now_ms=self.gw.clock.wall_ms(),
                                                  prepared=row)
        if problem is not None:
            log.error("reload failed while applying %s (%s; see the lines above): %s: %s", new.version,
                      "partly applied" if self.gw.config is new else "not applied", type(problem).__name__, problem)
            self._status("failed", error=f"{type(problem).__name__}: {problem}", requested=new.version)
            return "failed"
        what = config_history.summary(entry.changes) if entry is not None else "unchanged"
        log.info("reload applied: configuration %s -> %s in %.2f s: %s; pollers: %d started, %d restarted, "
                 "%d stopped, %d kept", old.version, new.version, time.monotonic() - t0, what,
                 len(p.start), len(p.restart), len(p.stop), len(p.keep))
        self._status("applied", previous=old.version, changes=what)
        return "applied"

    async def _apply(self, new: Config, p: Plan, old_m: Mapping[str, Any], new_m: Mapping[str, Any]) -> None:
        gw = self.gw
        carry = {iid: (h, poller.late_polls.get(iid, 0)) for poller in gw.pollers for iid, h in poller.health.items()}
        # 1. Affected pollers stop between two polls.
        for key in (*p.stop, *p.restart):
            await self._stop_group(key)
        # 2. The writer commits what they queued under the old rules, then takes the new ones.
        gw.config = new
        if p.instruments_changed:
            change = RulesChange(self.queue.total_in, new, p.removed, p.changed, p.added)
            gw.rules_changes.append(change)
            try:
                async with asyncio.timeout(WRITER_TIMEOUT_S):
                    await asyncio.shield(change.done)
            except TimeoutError:
                log.error("reload: the store writer did not take the new rules within %.0f s (is it failing?); "
                          "it takes them when it runs again", WRITER_TIMEOUT_S)
            except Exception as err:  # noqa: BLE001 - the writer restarts with the new configuration
                log.error("reload: the rules stage could not take the new configuration (%s: %s); the store "
                          "writer restarts with it", type(err).__name__, err)
        else:
            self.store.config_version = new.version
        # Derived points (issue 13) from the new configuration; the latest input readings carry over.
        from gateway.derived.stage import DerivedStage

        derived = DerivedStage(new.derived)
        derived.latest.update(gw.derived.latest)
        derived.computed, derived.failed = gw.derived.computed, gw.derived.failed
        kept = {(dp.instrument, dp.point) for dp in new.derived.points}
        derived.failing.update({k: v for k, v in gw.derived.failing.items() if k in kept})
        gw.derived = derived
        if p.instruments_changed or old_m.get("derived_files") != new_m.get("derived_files"):
            # Hourly carbon records per source (issue 13): rebuilt from the store, as by a restarted writer.
            from gateway.derived.carbon import restore_carbon

            gw.carbon = restore_carbon(new.derived, self.store, gw.clock.wall_ms(), new.instruments)
        # 3. The new and changed groups start at once.
        specs = {s.id: s for s in new.instruments}
        members = groups(new_m, _kind)
        failed: list[str] = []
        for key in (*p.restart, *p.start):
            ids = [s.id for s in new.instruments if s.id in members[key]]
            try:  # one group that cannot start (e.g. its driver refuses the device) does not keep the others off
                if key.startswith("poll "):
                    poller = gw.start_poller([specs[i] for i in ids], self.queue)
                    for iid in ids:
                        if iid in carry and iid not in p.changed:  # an unchanged neighbour keeps its counters
                            poller.health[iid], poller.late_polls[iid] = carry[iid]
                else:
                    gw.start_subscriber(specs[ids[0]], self.queue)
            except Exception as err:  # noqa: BLE001
                log.error("reload: cannot start %s (%s): %s: %s", key, ", ".join(ids), type(err).__name__, err)
                failed.append(f"{key}: {type(err).__name__}: {err}")
        self.forwarder.reconfigured(new.version)
        if failed:
            raise RuntimeError(f"{len(failed)} group(s) not started, first: {failed[0]}")

    async def _stop_group(self, key: str) -> None:
        gw = self.gw
        if key.startswith("poll "):
            endpoint = key.removeprefix("poll ")
            for poller in [q for q in gw.pollers if str(q.specs[0].connection.endpoint) == endpoint]:
                await _park(poller)
                name = gw.poller_name(poller)
                await gw.supervisor.stop([name])
                gw.supervisor.forget([name])
                gw.pollers.remove(poller)
        else:
            iid = key.removeprefix("subscribe ")
            for spec, drv in [x for x in gw.subscribers if x[0].id == iid]:
                name = f"subscribe {iid}"
                await gw.supervisor.stop([name])
                gw.supervisor.forget([name])
                with contextlib.suppress(Exception):
                    await drv.close()
                gw.subscribers.remove((spec, drv))


async def _park(poller: ConnectionPoller) -> None:
    timeout = max([PARK_TIMEOUT_S, *(float(getattr(s.connection, "timeout_s", 0) or 0) * 2 for s in poller.specs)])
    if not await poller.park(timeout):
        log.warning("reload: poller %s did not finish its poll within %.0f s; stopped during it (that poll "
                    "counts as not made)", poller.conn.name, timeout)


def _kind(protocol: str) -> str:
    from gateway.protocols import PROTOCOLS

    return PROTOCOLS.named(protocol).kind

