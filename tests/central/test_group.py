"""Issue 12 acceptance: three gateways, a consumer group of two, one consumer killed, a broker-side hole
healed by replay; the database ends with every message exactly once.

All peers are real processes or servers: three `carbon-gateway run` subprocesses polling pymodbus
simulators (three meters each, in this test's event loop), a private Mosquitto, a private PostgreSQL, and
two `carbon-gateway consume` subprocesses in one shared-subscription group.

1. Both consumers write (the group splits the load).
2. Consumer c2 is killed with SIGKILL: whatever it held unacknowledged is lost with its clean session.
3. The broker-side hole: consumer c1 is frozen (SIGSTOP) so messages pile up in flight towards it, and
   the broker is restarted without persistence; the gateways reconnect and deliver to it before any
   consumer has subscribed again. Those messages are PUBACKed to the gateways and gone: a sure hole
   (what was in flight may or may not survive in c1's socket buffer).
4. c1 is thawed, reconnects, finds the holes in the database and asks the gateways for replays.
5. Every message the gateways' stores hold (readings, events, aggregates ...) is in PostgreSQL once,
   every reading with the same content; the replays are there to see.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from jsonschema import Draft202012Validator

from simulators.broker import PrivateBroker, free_port
from tests.helpers import three_meters, write_config

GATEWAYS = ("gw-1", "gw-2", "gw-3")
STATUS = Draft202012Validator(json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "schema" / "status.schema.json").read_text()))

GATEWAY_YAML = """\
gateway: {{id: {gw}, site: test site, timezone: UTC}}
mqtt: {{url: "{url}", topic_prefix: carbon, status_interval_s: 1, readings_per_message: 4, reconnect_min_s: 0.2,
        reconnect_max_s: 1}}
store: {{path: "{store}", commit_interval_ms: 20}}
limits: {{backoff_min_s: 0.1, backoff_max_s: 0.5, default_poll_interval_s: 0.2}}
commands: {{subscribe: [replay], replay: {{rate_msgs_s: 200}}}}
"""


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str,
                     logs: Callable[[], str] = lambda: "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.2)
    assert predicate(), f"timed out waiting for: {what}\n{logs()}"


Key = tuple[str, str, int]  # (instrument, kind, seq)


def store_messages(db: Path) -> tuple[str, dict[Key, list[tuple[Any, ...]]], set[Key]]:
    """(epoch, (instrument, kind, seq) -> rows, pending keys) of a gateway's store (read-only, WAL reader)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        epoch = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
        out: dict[tuple[str, str, int], list[tuple[Any, ...]]] = {}
        for inst, kind, seq, first, last in conn.execute(
                "SELECT instrument, kind, seq, first_id, last_id FROM messages").fetchall():
            if kind == "readings":
                rows = conn.execute("SELECT point, ts_ms, value, unit, quality, reason, calibration FROM readings "
                                    "WHERE id BETWEEN ? AND ? ORDER BY id", (first, last)).fetchall()
            else:
                rows = [(json.loads(b),) for (b,) in conn.execute(
                    "SELECT body FROM records WHERE id BETWEEN ? AND ? ORDER BY id", (first, last))]
            out[(inst, kind, seq)] = rows
        pending = {tuple(r) for r in conn.execute(
            "SELECT m.instrument, m.kind, m.seq FROM pending p JOIN messages m ON m.id = p.message_id")}
    return epoch, out, pending  # type: ignore[return-value]


def last_seqs(db: Path) -> dict[tuple[str, str], int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {tuple(s.split("/", 1)): n for s, n in conn.execute("SELECT stream, last_seq FROM streams")}  # type: ignore[misc]


def last_message_id(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0])


def delivered_upto(db: Path, message_id: int) -> bool:
    """Every message up to this id exists and got its PUBACK."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        top = conn.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0]
        low = conn.execute("SELECT MIN(message_id) FROM pending").fetchone()[0]
    return bool(top >= message_id and (low is None or low > message_id))


def pg(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()  # type: ignore[arg-type]


def pg_keys(dsn: str, gateway: str) -> set[tuple[str, str, int]]:
    return {(i, k, int(s)) for i, k, s in pg(dsn, "SELECT instrument, kind, seq FROM carbon.messages "
                                                  "WHERE gateway = %s", gateway)}


def consume(broker: PrivateBroker, dsn: str, name: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as err:
        return subprocess.Popen([sys.executable, "-m", "gateway", "consume", "--broker", broker.url, "--db", dsn,
                                 "--group", "g", "--name", name, "--hole-check-s", "0.5", "--hole-grace-s", "1.5",
                                 "--lag-report-s", "2"], stdout=subprocess.DEVNULL, stderr=err)


@pytest.mark.timeout(300)
async def test_three_gateways_two_consumers_a_kill_and_a_broker_hole_end_exactly_once(
        tmp_path: Path, db: str) -> None:
    from gateway.registry import load_config
    from simulators.runner import build_servers

    broker = PrivateBroker(port=free_port()).start()  # no persistence: a restart forgets what it held
    procs: list[subprocess.Popen[bytes]] = []
    servers: list[Any] = []
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        consumers = {name: consume(broker, db, name, logs / f"{name}.log") for name in ("c1", "c2")}
        procs += consumers.values()
        stores: dict[str, Path] = {}
        gws: dict[str, subprocess.Popen[bytes]] = {}
        for gw in GATEWAYS:
            store = tmp_path / gw / "gw.db"
            cfg_dir = write_config(tmp_path / gw / "cfg", three_meters((free_port(), free_port(), free_port())),
                                   gateway_yaml=GATEWAY_YAML.format(gw=gw, url=broker.url, store=store))
            for server, _ in build_servers(load_config(cfg_dir)).values():
                await server.start()
                servers.append(server)
            stores[gw] = store
            with open(logs / f"{gw}.log", "ab") as err:
                gws[gw] = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(cfg_dir)],
                                           stdout=subprocess.DEVNULL, stderr=err)
            procs.append(gws[gw])

        def tail() -> str:
            if consumers["c1"].poll() is None:
                os.kill(consumers["c1"].pid, signal.SIGUSR1)  # its threads' stacks, should it hang
                __import__("time").sleep(0.5)
            blog = Path(broker._tmp.name) / "mosquitto.log"
            return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in [*sorted(logs.iterdir()), blog])

        await wait_until(lambda: pg(db, "SELECT to_regclass('carbon.lag')") != [(None,)], 60,
                         "the consumers created the schema", tail)
        # 1. Both members of the group write, for every gateway.
        await wait_until(lambda: {r[0] for r in pg(db, "SELECT DISTINCT consumer FROM carbon.messages")} ==
                         {"c1", "c2"} and len(pg(db, "SELECT DISTINCT gateway FROM carbon.messages")) == 3,
                         90, "both consumers writing messages of three gateways", tail)

        # 2. One consumer killed midway.
        os.kill(consumers["c2"].pid, signal.SIGKILL)
        consumers["c2"].wait(10)
        await asyncio.sleep(1.0)

        # 3. A hole on the broker side: messages in flight to a frozen consumer when the broker restarts, and
        # the messages the gateways deliver to the new broker before any consumer subscribed again.
        os.kill(consumers["c1"].pid, signal.SIGSTOP)
        before = {gw: sum(last_seqs(s).values()) for gw, s in stores.items()}
        await wait_until(lambda: all(sum(last_seqs(s).values()) > before[gw] + 20 for gw, s in stores.items()), 30,
                         "messages committed while the consumer is frozen")
        await asyncio.to_thread(broker.stop)  # in a thread: the meters in this loop keep answering
        await asyncio.to_thread(broker.start)
        upto = {gw: last_message_id(s) + 10 for gw, s in stores.items()}
        await wait_until(lambda: all(delivered_upto(s, upto[gw]) for gw, s in stores.items()), 60,
                         "the gateways delivering to the restarted broker (no subscriber there yet)", tail)
        thawed = {gw: last_seqs(s) for gw, s in stores.items()}
        os.kill(consumers["c1"].pid, signal.SIGCONT)

        # 4. The holes heal: once c1 is back and writing live messages, everything committed up to then
        # reaches the database, through replays.
        def live_again() -> bool:
            return all(any(s > thawed[gw].get((i, k), 0) for i, k, s in pg_keys(db, gw)) for gw in GATEWAYS)

        await wait_until(live_again, 60, "c1 writing live messages again", tail)
        mark = {gw: last_seqs(s) for gw, s in stores.items()}

        def healed() -> bool:
            for gw in GATEWAYS:
                have = pg_keys(db, gw)
                if any((i, k, s) not in have for (i, k), n in mark[gw].items() for s in range(1, n + 1)):
                    return False
            return True

        await wait_until(healed, 120, "every message committed before the broker restart in PostgreSQL", tail)
        done = pg(db, "SELECT gateway, instrument, from_seq, to_seq, messages FROM carbon.replay_requests "
                      "WHERE state = 'done' AND messages > 0")
        assert done, "no replay request was served\n" + tail()
        replayed = pg(db, "SELECT count(*) FROM carbon.messages WHERE replay IS NOT NULL")[0][0]
        assert replayed > 0

        # The gateways say so on their status topic (as stored by the consumer), in the published schema.
        await wait_until(lambda: sum(int(b["replay"]["done"]) for (b,) in pg(
            db, "SELECT body FROM carbon.gateway_status WHERE state = 'online'")) >= len(done), 30,
                         "the replays counted on the gateways' status topic", tail)
        for (body,) in pg(db, "SELECT body FROM carbon.gateway_status"):
            STATUS.validate(body)

        # 5. Stop the gateways (a clean stop), let the consumer drain, compare with the stores.
        for gw in GATEWAYS:
            gws[gw].terminate()
        for gw in GATEWAYS:
            assert gws[gw].wait(30) == 0, tail()
        contents = {gw: store_messages(s) for gw, s in stores.items()}

        def drained() -> bool:
            return all(set(msgs) - pending <= pg_keys(db, gw) for gw, (_e, msgs, pending) in contents.items())

        await wait_until(drained, 60, "every delivered message in PostgreSQL", tail)
        total_readings = 0
        for gw, (epoch, msgs, pending) in contents.items():
            have = pg_keys(db, gw)
            lost = set(msgs) - pending - have
            extra = have - set(msgs)
            assert not lost, f"{gw}: {len(lost)} messages lost, e.g. {sorted(lost)[:5]}"
            assert not extra, f"{gw}: {len(extra)} messages the store does not have, e.g. {sorted(extra)[:5]}"
            assert {e for (e,) in pg(db, "SELECT DISTINCT epoch FROM carbon.messages WHERE gateway = %s", gw)} == {
                epoch}
            rows: dict[tuple[str, int], list[tuple[Any, ...]]] = {}
            for inst, seq, *row in pg(db, "SELECT instrument, seq, point, ts_ms, value, unit, quality, reason, "
                                          "calibration FROM carbon.readings WHERE gateway = %s ORDER BY seq, idx", gw):
                rows.setdefault((inst, int(seq)), []).append(tuple(row))
            for (inst, kind, seq), want in msgs.items():
                if kind == "readings" and (inst, kind, seq) in have:
                    assert rows.get((inst, seq)) == want, (gw, inst, seq)  # same rows, once each
                    total_readings += len(want)
            assert sum(len(v) for v in rows.values()) == sum(
                len(want) for (i, k, s), want in msgs.items() if k == "readings" and (i, k, s) in have)
            for kind in ("events", "aggregates", "substitutes", "corrections"):
                n = pg(db, f"SELECT count(*) FROM carbon.{kind} WHERE gateway = %s", gw)[0][0]
                assert n == sum(len(want) for (i, k, s), want in msgs.items() if k == kind and (i, k, s) in have)
        assert total_readings == pg(db, "SELECT count(*) FROM carbon.readings")[0][0]
        assert pg(db, "SELECT count(*) FROM carbon.lost") == [(0,)]
        assert {g for (g,) in pg(db, "SELECT gateway FROM carbon.gateway_lag")} == set(GATEWAYS)
    finally:
        for p in procs:
            if p.poll() is None:
                with __import__("contextlib").suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGCONT)
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for server in servers:
            await server.stop()
        broker.close()
