"""systemd's notify and watchdog protocol against a real `$NOTIFY_SOCKET` (issue 11 item 4).

The test binds the datagram socket systemd would (an abstract name, '@...'), runs the real
`carbon-gateway run` subprocess against a private Mosquitto and the pymodbus simulators, and reads what
arrives: READY=1 once the store is open and polling has begun, STATUS= lines, WATCHDOG=1 every half of
WATCHDOG_USEC.

A stuck loop, for real and without a debug hook: the test holds a write lock on the gateway's store
(`BEGIN IMMEDIATE` from another connection, as a `sqlite3` shell left open in a transaction would). The
gateway's next commit then blocks its event loop inside SQLite's busy handler (5 s timeout), the state a
hung disk puts it in. Pings must stop while the loop is blocked (a pinger on a thread, or one that ignored
the loop, would go on) and come back once the lock is released.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import time
from pathlib import Path

from simulators.broker import PrivateBroker
from tests.helpers import three_meters, write_config
from tests.system.conftest import start_gateway, stop_gateway, wait_until

WATCHDOG_USEC = 1_000_000  # pings every 0.5 s
HOLD_S = 4.0  # below SQLite's 5 s busy timeout: the gateway's commit waits, then goes on
QUIET_AFTER_S = 1.5  # by then the gateway has surely tried to commit (readings every 0.2 s, commits every 20 ms)


class Listener:
    """systemd's side: a datagram socket; every message with its arrival time (monotonic)."""

    def __init__(self) -> None:
        self.name = f"@carbon-gateway-test-{os.getpid()}-{time.monotonic_ns()}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []
        self._task: asyncio.Task[None] | None = None

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 4096)
            self.messages.append((time.monotonic(), data.decode()))

    def start(self) -> Listener:
        self._task = asyncio.create_task(self._collect())
        return self

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.sock.close()

    def lines(self, key: str) -> list[tuple[float, str]]:
        return [(t, line[len(key) + 1:]) for t, msg in self.messages for line in msg.split("\n")
                if line.startswith(key + "=")]


async def test_ready_status_watchdog_and_a_stuck_loop_stops_the_pings(
        tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker, meters, gateway_log: Path) -> None:
    from gateway.registry import load_config

    db = tmp_path / "gw.db"
    cfg_dir = write_config(tmp_path / "cfg", three_meters(ports), url=broker.url, store=db)
    await meters(load_config(cfg_dir))
    listener = Listener().start()
    env = {**os.environ, "NOTIFY_SOCKET": listener.name, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    gw = start_gateway(cfg_dir, gateway_log, env=env)
    try:
        # READY=1, once: the store exists by then and polling has begun.
        assert await wait_until(lambda: listener.lines("READY"), 30), gateway_log.read_text()[-2000:]
        assert db.exists()
        assert listener.lines("MAINPID")[0][1] == str(gw.pid)
        # STATUS: the one-line summary, with all three meters answering.
        assert await wait_until(lambda: any("3 instruments (3 ok, 0 failing)" in s and "broker online" in s
                                            for _, s in listener.lines("STATUS")), 20), listener.lines("STATUS")
        # WATCHDOG=1 keeps coming while healthy.
        n = len(listener.lines("WATCHDOG"))
        assert await wait_until(lambda: len(listener.lines("WATCHDOG")) >= n + 4, 10)

        # A stuck loop: hold the store's write lock; the gateway's next commit blocks its loop.
        holder = sqlite3.connect(db, isolation_level=None, timeout=10)
        holder.execute("BEGIN IMMEDIATE")
        locked_at = time.monotonic()
        await asyncio.sleep(HOLD_S)
        released_at = time.monotonic()
        holder.execute("ROLLBACK")
        holder.close()
        pings = [t for t, _ in listener.lines("WATCHDOG")]
        assert not [t for t in pings if locked_at + QUIET_AFTER_S < t < released_at], \
            "WATCHDOG=1 arrived while the gateway's event loop was blocked"
        assert not [t for t, _ in listener.lines("STATUS") if locked_at + QUIET_AFTER_S < t < released_at]
        # ... and the pings come back once the loop runs again.
        assert await wait_until(lambda: len([t for t, _ in listener.lines("WATCHDOG") if t > released_at]) >= 3, 10)
        assert gw.poll() is None

        # `systemctl reload` (ExecReload=/bin/kill -HUP $MAINPID) with a broken configuration: the gateway keeps
        # running on the old one, keeps pinging, and its STATUS line says the reload was rejected.
        plant = cfg_dir / "instruments" / "plant.yaml"
        plant.write_text(plant.read_text().replace("poll_interval_s: 0.2", "poll_interval_s: -1", 1))
        hup_at = time.monotonic()
        os.kill(gw.pid, signal.SIGHUP)
        assert await wait_until(lambda: any("last reload rejected" in s and "plant.yaml" in s
                                            for _, s in listener.lines("STATUS")), 20), listener.lines("STATUS")[-3:]
        assert await wait_until(lambda: len([t for t, _ in listener.lines("WATCHDOG") if t > hup_at]) >= 3, 10)
        assert gw.poll() is None
    finally:
        code = stop_gateway(gw)
        await asyncio.sleep(0.2)
        await listener.close()
    assert code == 0
    assert listener.lines("STOPPING"), "no STOPPING=1 on shutdown"
    # READY=1 at start, and again after the reload, which RELOADING=1 announced
    assert len(listener.lines("READY")) == 2
    (reloading,) = listener.lines("RELOADING")
    assert listener.lines("READY")[0][0] < reloading[0] <= listener.lines("READY")[1][0]
    text = gateway_log.read_text()
    assert "Traceback" not in text
