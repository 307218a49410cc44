"""The reference consumer against real peers: a private Mosquitto, a private PostgreSQL, and a gateway's
store, forwarder and replayer in-process.

Messages published while no consumer is subscribed are gone (clean sessions): the consumer finds the
hole once later messages arrive, asks the gateway for a replay, and the database ends with every
message exactly once. Duplicates (a replay of what is already there) write nothing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from gateway.central.consumer import Consumer, ConsumerOptions
from gateway.central.pgschema import SCHEMA_VERSION, migrate
from gateway.encode import EncoderContext, JsonEncoder
from gateway.forwarder import Forwarder
from gateway.replay import Replayer
from gateway.settings import ReplaySettings
from gateway.store import Store
from simulators.broker import PrivateBroker
from tests.integration.test_forwarder_states import readings, settings

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")
GW = "gw-c"


async def until(predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
    for _ in range(int(timeout_s / 0.1)):
        if predicate():
            return
        await asyncio.sleep(0.1)
    assert predicate(), "condition not met"


class Running:
    """A consumer in a thread (it is synchronous: paho's thread plus a writing loop)."""

    def __init__(self, opts: ConsumerOptions) -> None:
        self.consumer = Consumer(opts)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.consumer.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.consumer.close()


def q(db: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(db) as conn:
        return conn.execute(sql).fetchall()  # type: ignore[arg-type]


def test_the_schema_is_created_once_and_migrations_are_recorded(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        assert migrate(conn) == 0
        assert migrate(conn) == SCHEMA_VERSION  # a second start finds it done
        assert conn.execute("SELECT value FROM carbon.meta WHERE key = 'schema_version'").fetchone() == (
            str(SCHEMA_VERSION),)


async def test_a_hole_is_found_and_healed_by_a_replay_exactly_once(tmp_path: Path, broker: PrivateBroker,
                                                                   db: str) -> None:
    store = Store(tmp_path / "s.db")
    s = settings(broker.port)
    fwd = Forwarder(s, GW, store, meta=lambda: {}, status_extra=lambda: {}, config_version="v1")
    rp = Replayer(ReplaySettings(rate_msgs_s=100), store, JsonEncoder(EncoderContext("carbon", GW, store.epoch)),
                  prefix="carbon", gateway=GW, send=fwd.send_extra, window_free=lambda: fwd.window_free,
                  max_inflight=s.max_inflight, retention_ms=lambda: 10**15)
    fwd.commands[rp.topic] = rp.request
    tasks = [asyncio.create_task(fwd.run()), asyncio.create_task(rp.run())]
    opts = ConsumerOptions(broker=broker.url, db=db, group="g1", name="c1", hole_check_s=0.3, hole_grace_s=0.5,
                           lag_report_s=1.0, replay_chunk=4)
    t0 = 1_795_000_000_000
    running = Running(opts)
    try:
        await until(lambda: fwd.stats.connected)

        def commit(n: int, start: int) -> None:
            store.commit(readings(n, start=start), now_ms=t0 + start, per_message=10)
            fwd.notify()

        def delivered() -> bool:
            return store.stats().pending_messages == 0

        def in_db() -> int:
            return int(q(db, "SELECT count(*) FROM carbon.messages")[0][0])

        commit(100, 0)  # seq 1..10
        await until(lambda: in_db() == 10)
        running.close()  # nobody subscribed: seq 11..20 reach the broker and are dropped
        commit(100, 100)
        await until(delivered)
        running = Running(opts)
        await asyncio.sleep(0.5)  # give it a moment to subscribe (the test does not depend on it: holes heal)
        commit(100, 200)  # seq 21..30: the hole 11..20 shows
        await until(lambda: in_db() == 30)
        rows = q(db, "SELECT seq, replay IS NOT NULL FROM carbon.messages ORDER BY seq")
        assert [r[0] for r in rows] == list(range(1, 31))
        assert {r[0] for r in rows if r[1]} >= set(range(11, 21))  # those came by replay
        # One request per hole at a time, at most replay_chunk seqs each: 11-14, 15-18, 19-20.
        reqs = q(db, "SELECT from_seq, to_seq, messages FROM carbon.replay_requests WHERE state = 'done' "
                     "ORDER BY from_seq")
        assert {(a, b, n) for a, b, n in reqs} == {(11, 14, 4), (15, 18, 4), (19, 20, 2)}
        # Every reading exactly once, the same as in the store.
        got = q(db, "SELECT point, ts_ms, value FROM carbon.readings ORDER BY ts_ms")
        assert got == [(r.point, r.ts_ms, r.value) for r in readings(300)]

        # A replay of what is already there writes nothing new.
        rp.request(b'{"id": "again", "instrument": "M-1", "from_seq": 1, "to_seq": 30}')
        await until(lambda: q(db, "SELECT count(*) FROM carbon.replay_requests WHERE id = 'again'") == [(0,)]
                    and running.consumer.stats.duplicates >= 30)
        assert in_db() == 30
        assert q(db, "SELECT count(*) FROM carbon.readings") == [(300,)]
        assert q(db, "SELECT gateway FROM carbon.gateway_lag") == [(GW,)]
    finally:
        running.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        fwd.shutdown()
        store.close()


async def test_hourly_carbon_records_are_written_once(tmp_path: Path, broker: PrivateBroker, db: str) -> None:
    from gateway.model import Derived

    store = Store(tmp_path / "s.db")
    fwd = Forwarder(settings(broker.port), GW, store, meta=lambda: {}, status_extra=lambda: {}, config_version="v1")
    task = asyncio.create_task(fwd.run())
    running = Running(ConsumerOptions(broker=broker.url, db=db, group="g2", name="c2", hole_check_s=0.3,
                                      hole_grace_s=0.5, lag_report_s=1.0))
    try:
        await until(lambda: fwd.stats.connected)
        await asyncio.sleep(0.5)
        body = {"record_id": "co2-abc", "source": "boiler1", "hour_start": 1_795_000_000_000 - 1_795_000_000_000
                % 3_600_000, "version": 1, "supersedes": None, "status": "final", "quality": "measured",
                "methods": {"cems": {"kind": "measurement", "co2_kg": 123.5}}}
        store.commit([], now_ms=1_795_000_000_000, per_message=10,
                     derived=[Derived("carbon", "boiler1", "", body["hour_start"], body)])
        fwd.notify()
        await until(lambda: q(db, "SELECT count(*) FROM carbon.carbon") == [(1,)])
        ((got,),) = q(db, "SELECT body FROM carbon.carbon WHERE instrument = 'boiler1' AND seq = 1")
        assert got["record_id"] == "co2-abc"  # type: ignore[index]
        assert got["methods"]["cems"]["co2_kg"] == 123.5  # type: ignore[index]
    finally:
        running.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        fwd.shutdown()
        store.close()


@pytest.mark.parametrize(("args", "code", "text"), [
    (["--broker", "http://127.0.0.1:1", "--db", "postgresql://127.0.0.1:1/x"], 2, "--broker"),
    (["--broker", "mqtt://127.0.0.1:1", "--db", "postgresql://postgres@127.0.0.1:1/x"], 1, "--db: cannot use"),
])
def test_consume_fails_with_one_line_and_its_exit_code(args: list[str], code: int, text: str) -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "gateway", "consume", *args], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert text in lines[0]


def test_consume_exits_3_when_the_broker_refuses(db: str) -> None:
    import subprocess
    import sys

    with PrivateBroker(users={"someone": "pw"}) as refusing:
        r = subprocess.run([sys.executable, "-m", "gateway", "consume", "--broker", refusing.url, "--db", db],
                           capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 3, r.stderr
    assert "refused the consumer" in r.stderr.strip().splitlines()[-1]
