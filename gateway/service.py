"""systemd integration (issue 11 item 4): `Type=notify` readiness, STATUS lines and the watchdog.

The sd_notify protocol is one datagram per message to the AF_UNIX socket named by `$NOTIFY_SOCKET`
(a path, or an abstract name written with a leading '@'), text of `KEY=VALUE` lines; no dependency.
Outside systemd (`NOTIFY_SOCKET` unset) every call here is a no-op.

- `READY=1` is sent once the store is open and every poller, the writer and the forwarder are started
  (the caller spawns `run_notifier` after them, so systemctl start returns when polling has begun).
- `STATUS=` carries a one-line health summary (instruments ok/failing, broker state, backlog, store
  size), sent when it changes and at least every `status_interval_s`; `systemctl status` shows it.
- `WATCHDOG=1` is sent every half of `$WATCHDOG_USEC` **only while the gateway is healthy** (`health`):
  * the event loop runs: the pings come from a task on the loop, so a loop blocked by a synchronous call
    (a hung disk, a lock held on the store, an endless computation) sends none;
  * the store writer makes progress: it beats on every round (`Gateway.writer_beat`), every
    `commit_interval_ms` even when idle; no beat for a whole watchdog interval (failing and backing
    off, or stuck awaiting) stops the pings;
  * the supervisor has no fatal failure pending and none of the core tasks (writer, forwarder,
    monitor) has stayed `failed` for a whole watchdog interval.
  systemd then kills the process (SIGABRT) after `WatchdogSec` and `Restart=on-failure` starts it again.
  A broker outage or failing meters are *not* unhealthy: storing while the broker is away is the design.
- `STOPPING=1` when the gateway shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.supervisor import FAILED

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.forwarder import Forwarder
    from gateway.store import Store

log = logging.getLogger("gateway.service")

CORE_TASKS = ("writer", "forwarder", "monitor")
STATUS_INTERVAL_S = 10.0  # STATUS= refresh when nothing changed (the summary reads the store's backlog)


def notify_address(env: Mapping[str, str] = os.environ) -> str | None:
    """The socket address of `$NOTIFY_SOCKET` ('@name' is the abstract name '\\0name'), or None."""
    addr = env.get("NOTIFY_SOCKET", "")
    if addr.startswith("@"):
        return "\0" + addr[1:]
    if addr.startswith("/"):
        return addr
    return None  # unset, or a transport this gateway does not speak (vsock:)


def watchdog_interval_s(env: Mapping[str, str] = os.environ, pid: int | None = None) -> float | None:
    """`WatchdogSec` in seconds if the watchdog is on for this process (`$WATCHDOG_PID` absent or ours)."""
    usec = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 1_000_000


class Notifier:
    """A datagram socket to the service manager; a failed send is one log line, never an exception."""

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        self.address = notify_address(env)
        self._sock: socket.socket | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode("utf-8"), self.address)
        except OSError as err:
            if not self._failing:
                log.error("cannot notify systemd at NOTIFY_SOCKET (%s); readiness/watchdog messages are lost "
                          "until it works again", err)
            self._failing = True
            return False
        if self._failing:
            log.info("notifying systemd works again")
            self._failing = False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def notify(*lines: str) -> bool:
    """One message to the service manager (e.g. `notify("RELOADING=1")`, `notify("READY=1")`); no-op outside systemd."""
    n = Notifier()
    try:
        return n.send(*lines)
    finally:
        n.close()


@dataclass(frozen=True)
class Health:
    ok: bool
    problem: str  # why not ok ("" when ok)


def health(*, now: float, writer_beat: float | None, limit_s: float, fatal: bool,
           components: Mapping[str, Mapping[str, Any]], failed_since: Mapping[str, float]) -> Health:
    """Is the gateway healthy enough to ping the watchdog? (pure; the loop being alive is implied by the
    caller running at all.) `failed_since` gives, for each core task seen failed, when it was first seen so."""
    if fatal:
        return Health(False, "a fatal failure is stopping the gateway")
    if writer_beat is None or now - writer_beat > limit_s:
        age = "never ran" if writer_beat is None else f"no progress for {now - writer_beat:.0f} s"
        return Health(False, f"store writer {age}")
    for name in CORE_TASKS:
        body = components.get(name)
        if body is not None and body.get("state") == FAILED and now - failed_since.get(name, now) > limit_s:
            return Health(False, f"task {name} failed for {now - failed_since[name]:.0f} s: {body.get('error', '')}")
    return Health(True, "")


def summary(gw: Gateway, forwarder: Forwarder, store: Store) -> str:
    """The one-line STATUS= text: what `systemctl status carbon-gateway` shows."""
    ok = failing = 0
    for p in gw.pollers:
        for h in p.health.values():
            ok, failing = (ok + 1, failing) if h.state == "ok" else (ok, failing + 1)
    for _spec, drv in gw.subscribers:
        ok, failing = (ok + 1, failing) if drv.health.state == "ok" else (ok, failing + 1)
    failed = sorted(n for n, c in gw.supervisor.snapshot().items() if c["state"] == FAILED)
    try:
        st = store.stats()
        store_part = f"backlog {st.pending_messages} messages, store {st.size_bytes / 1e6:.1f} MB"
    except Exception as err:  # noqa: BLE001 - a status line must not fail; the writer reports store errors
        store_part = f"store unreadable ({type(err).__name__})"
    parts = [f"{ok + failing} instruments ({ok} ok, {failing} failing)", f"broker {forwarder.state}", store_part]
    if gw.overload.active:
        parts.append("overloaded")
    if failed:
        parts.append("failed tasks: " + ", ".join(failed))
    reload = getattr(gw, "reload_status", None)  # issue 11 item 3: `systemctl reload` shows its outcome here
    if reload and reload.get("result") in ("rejected", "failed"):
        parts.append(f"last reload {reload['result']} ({reload.get('error', '')}), running config {gw.config.version}")
    return "; ".join(parts)


async def run_notifier(gw: Gateway, forwarder: Forwarder, store: Store, *,
                       env: Mapping[str, str] = os.environ) -> None:
    """READY=1 at once, then STATUS= and (while healthy) WATCHDOG=1 until cancelled; STOPPING=1 at the end."""
    notifier = Notifier(env)
    if not notifier.enabled:
        await asyncio.Event().wait()  # not under systemd: nothing to do, but stay a long-lived task
    loop = asyncio.get_running_loop()
    wd = watchdog_interval_s(env)
    tick = min(wd / 2, STATUS_INTERVAL_S) if wd else STATUS_INTERVAL_S
    limit = wd if wd else float("inf")
    failed_since: dict[str, float] = {}
    last_status, next_status = "", 0.0
    unhealthy = ""
    first = True
    try:
        while True:
            now = loop.time()
            components = gw.supervisor.snapshot()
            for name in CORE_TASKS:
                if components.get(name, {}).get("state") == FAILED:
                    failed_since.setdefault(name, now)
                else:
                    failed_since.pop(name, None)
            h = health(now=now, writer_beat=gw.writer_beat, limit_s=limit, fatal=gw.supervisor.fatal_pending,
                       components=components, failed_since=failed_since)
            text = summary(gw, forwarder, store)
            if not h.ok:
                text = f"{text}; UNHEALTHY: {h.problem}"
            lines = []
            if first:
                lines.append("READY=1")
                lines.append(f"MAINPID={os.getpid()}")
                first = False
            if text != last_status or now >= next_status:
                lines.append(f"STATUS={text}")
                last_status, next_status = text, now + STATUS_INTERVAL_S
            if wd and h.ok:
                lines.append("WATCHDOG=1")
            if h.ok and unhealthy:
                log.info("healthy again (was: %s)%s", unhealthy, "; pinging the systemd watchdog again" if wd else "")
                unhealthy = ""
            elif not h.ok and not unhealthy:
                log.error("unhealthy: %s%s", h.problem, f"; not pinging the systemd watchdog (systemd restarts the "
                          f"gateway {wd:g} s after the last ping)" if wd else "")
                unhealthy = h.problem
            if lines:
                notifier.send(*lines)
            await asyncio.sleep(tick)
    finally:
        with contextlib.suppress(Exception):
            notifier.send("STOPPING=1")
        notifier.close()
