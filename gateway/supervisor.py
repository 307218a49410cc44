"""One supervisor for every long-lived task of the gateway: nothing can fail or end unnoticed.

Each task (a poller per connection, an OPC UA driver per instrument, the store writer, the forwarder,
the pruner, the corrections inbox) is started through `Supervisor.spawn`. The supervisor:

- logs an unexpected exception with the task's name and its traceback, once per distinct error
  (the same error again is one line with the restart count), and shows it in `snapshot()`
  (`state: failed`, `error`), which the status topic publishes under `components`;
- restarts the task after a capped exponential backoff with jitter; the task is `failed` until its
  new run has lasted `healthy_after_s`, then `running` again with one "recovered" log line;
- treats a long-lived task that *returns* as a failure as well;
- stops the gateway for the errors listed as `fatal` (a store failure: nothing can be kept without
  the store): one log line, no restart, and `wait_fatal()` returns the error for the caller to exit with.

States: `running`, `failed`, `stopped`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("gateway.supervisor")

RUNNING, FAILED, STOPPED = "running", "failed", "stopped"


class TaskReturned(RuntimeError):
    """A long-lived task returned: it must run until cancelled."""


@dataclass
class TaskInfo:
    name: str
    state: str = RUNNING
    restarts: int = 0
    error: str = ""
    consecutive: int = 0  # failures since the task last ran healthily (drives the backoff)
    last_signature: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"state": self.state, "restarts": self.restarts, "error": self.error}


def restart_delay(failures: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Capped exponential backoff with jitter in [d/2, d]."""
    d = min(cap, base * 2 ** max(0, failures - 1))
    return d * (0.5 + 0.5 * rng.random())


def describe(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class Supervisor:
    def __init__(self, *, backoff_min_s: float = 1.0, backoff_max_s: float = 30.0, healthy_after_s: float = 10.0,
                 fatal: tuple[type[BaseException], ...] = (), seed: int | None = None) -> None:
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.healthy_after_s = healthy_after_s
        self.fatal_types = fatal
        self._rng = random.Random(seed)
        self._info: dict[str, TaskInfo] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._fatal: asyncio.Future[tuple[str, BaseException]] | None = None

    # -- spawning ------------------------------------------------------------------------------------

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]], *,
              on_failure: Callable[[BaseException], Awaitable[None]] | None = None) -> asyncio.Task[None]:
        """Run `factory()` until cancelled, restarting it whenever it raises or returns.

        `on_failure` is awaited after each failure (before the backoff), e.g. to record bad readings
        for the instruments the task serves, so their gap is attributed to the gateway."""
        if name in self._tasks and not self._tasks[name].done():
            raise ValueError(f"task {name!r} is already supervised")
        info = self._info.setdefault(name, TaskInfo(name))
        info.state = RUNNING
        task = asyncio.create_task(self._supervise(info, factory, on_failure), name=name)
        self._tasks[name] = task
        return task

    async def _supervise(self, info: TaskInfo, factory: Callable[[], Awaitable[None]],
                         on_failure: Callable[[BaseException], Awaitable[None]] | None) -> None:
        loop = asyncio.get_running_loop()
        while True:
            healthy = loop.call_later(self.healthy_after_s, self._healthy, info) if info.consecutive else None
            try:
                await factory()
                err: BaseException = TaskReturned("task returned; long-lived tasks must run until stopped")
            except asyncio.CancelledError:
                info.state = STOPPED
                raise
            except Exception as exc:  # noqa: BLE001 - the supervisor is the one place that catches everything
                err = exc
            finally:
                if healthy is not None:
                    healthy.cancel()
            if isinstance(err, self.fatal_types):
                info.state, info.error = FAILED, describe(err)
                log.critical("%s: %s; stopping the gateway", info.name, err)
                fut = self._fatal_future()
                if not fut.done():
                    fut.set_result((info.name, err))
                return
            info.consecutive += 1
            info.restarts += 1
            delay = restart_delay(info.consecutive, base=self.backoff_min_s, cap=self.backoff_max_s, rng=self._rng)
            signature = describe(err)
            first = info.state != FAILED or signature != info.last_signature
            info.state, info.error, info.last_signature = FAILED, signature, signature
            if first:
                # The deliberate traceback: the one report a developer needs to fix the bug.
                log.error("task %s failed: %s; restarting in %.1f s", info.name, signature, delay,
                          exc_info=None if isinstance(err, TaskReturned) else err)
            else:
                log.error("task %s failed again: %s (restart %d); restarting in %.1f s", info.name, signature,
                          info.restarts, delay)
            if on_failure is not None:
                try:
                    await on_failure(err)
                except asyncio.CancelledError:
                    info.state = STOPPED
                    raise
                except Exception as exc:  # noqa: BLE001
                    log.error("task %s: failure handler failed: %s", info.name, describe(exc))
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                info.state = STOPPED
                raise

    def _healthy(self, info: TaskInfo) -> None:
        if info.state == FAILED:
            log.info("task %s recovered: running for %.0f s after %d restart(s)", info.name, self.healthy_after_s,
                     info.restarts)
        info.state = RUNNING
        info.consecutive = 0
        info.last_signature = ""

    # -- observing -----------------------------------------------------------------------------------

    def _fatal_future(self) -> asyncio.Future[tuple[str, BaseException]]:
        if self._fatal is None:
            self._fatal = asyncio.get_running_loop().create_future()
        return self._fatal

    async def wait_fatal(self) -> tuple[str, BaseException]:
        """Returns (task name, error) once a task failed with a fatal error."""
        return await asyncio.shield(self._fatal_future())

    @property
    def fatal_pending(self) -> bool:
        """A fatal failure happened and the gateway is stopping (the systemd watchdog stops pinging)."""
        return self._fatal is not None and self._fatal.done()

    def state(self, name: str) -> str:
        info = self._info.get(name)
        return info.state if info is not None else STOPPED

    def info(self, name: str) -> TaskInfo | None:
        return self._info.get(name)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """name -> {state, restarts, error}: published on the status topic under `components`."""
        return {name: info.as_json() for name, info in self._info.items()}

    @property
    def names(self) -> list[str]:
        return list(self._tasks)

    # -- stopping ------------------------------------------------------------------------------------

    def forget(self, names: Iterable[str]) -> None:
        """Drop stopped tasks from `snapshot()` (a poller or subscriber a reload removed for good)."""
        for n in names:
            task = self._tasks.get(n)
            if task is None or task.done():
                self._tasks.pop(n, None)
                self._info.pop(n, None)

    async def stop(self, names: Iterable[str] | None = None, *, timeout_s: float = 5.0) -> list[str]:
        """Cancel the named tasks (default: all) and wait at most `timeout_s`; returns those still running."""
        chosen = [self._tasks[n] for n in (self._tasks if names is None else names) if n in self._tasks]
        for t in chosen:
            t.cancel()
        if not chosen:
            return []
        _done, stuck = await asyncio.wait(chosen, timeout=timeout_s)
        for t in stuck:
            log.error("task %s did not stop within %.0f s; exiting without it", t.get_name(), timeout_s)
        for t in chosen:
            if t.done():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    t.result()
        return sorted(t.get_name() for t in stuck)
