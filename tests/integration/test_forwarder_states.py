"""The forwarder's state tells the truth (issue 7, observations 3, 5 and 9), against real peers.

A broker that accepts TCP and never answers, a mosquitto frozen with SIGSTOP while messages are in
flight, paho's network thread dying on a topic it cannot encode, a store page going bad under
pending messages: each is one log line when it starts and one when it ends, and the `state` of
the forwarder (the retained status payload's `state`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from gateway.errors import StoreError
from gateway.forwarder import Forwarder
from gateway.model import Calibration, Quality, Reading
from gateway.settings import MqttSettings
from gateway.store import Store
from simulators.broker import PrivateBroker, free_port
from tests.helpers import Recorder, dedup_by_seq

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schema"


def settings(port: int, **kw: object) -> MqttSettings:
    base: dict[str, object] = {"url": f"mqtt://127.0.0.1:{port}", "keepalive_s": 5, "reconnect_min_s": 0.2,
                               "reconnect_max_s": 1, "status_interval_s": 0.5, "connack_timeout_s": 0.5,
                               "puback_timeout_s": 0.5, "max_inflight": 20}
    base.update(kw)
    return MqttSettings(**base)  # type: ignore[arg-type]


def forwarder(s: MqttSettings, store: Store) -> Forwarder:
    return Forwarder(s, "gw-st", store, meta=lambda: {}, status_extra=lambda: {}, config_version="v1")


def readings(n: int, start: int = 0) -> list[Reading]:
    return [Reading("M-1", f"p{i % 4}", 1_795_000_000_000 + i, float(i), "kW", Quality.GOOD, "", Calibration.VALID)
            for i in range(start, start + n)]


class Committer:
    """Commits the next `n` readings (default 8) and tells the forwarder, as the gateway's writer does."""

    def __init__(self, store: Store, fwd: Forwarder, *, per_message: int) -> None:
        self.store, self.fwd, self.per_message, self.committed = store, fwd, per_message, 0

    def __call__(self, n: int = 8) -> None:
        self.store.commit(readings(n, self.committed), now_ms=self.committed, per_message=self.per_message)
        self.committed += n
        self.fwd.notify()


async def until(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    assert predicate(), "condition not met"


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def stop(fwd: Forwarder, task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    fwd.shutdown()


async def test_a_broker_that_never_sends_connack_is_connecting_then_online(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.forwarder")
    port = free_port()
    silent = socket.socket()
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    silent.bind(("127.0.0.1", port))
    silent.listen(8)  # accepts TCP (the kernel does), never says a word
    store = Store(tmp_path / "s.db")
    store.commit(readings(40), now_ms=1, per_message=10)
    fwd = forwarder(settings(port), store)
    task = asyncio.create_task(fwd.run(), name="forwarder")
    broker: PrivateBroker | None = None
    try:
        await until(lambda: bool(lines(caplog, "no CONNACK within 0.5 s")))
        assert fwd.state == "connecting"
        assert len(lines(caplog, "no CONNACK")) == 1  # one line however long it lasts
        silent.close()
        broker = PrivateBroker(port=port).start()
        rec = Recorder("127.0.0.1", port, topic="carbon/#").start()
        try:
            await until(lambda: fwd.state == "online")
            await until(lambda: store.stats().pending_messages == 0)
            ended = lines(caplog, "connecting for")
            assert len(ended) == 1, ended
            assert ended[0].endswith("now online"), ended
            await until(lambda: any(b["state"] == "online" for b in rec.by_topic_suffix("/status")))
        finally:
            rec.stop()
    finally:
        silent.close()
        await stop(fwd, task)
        store.close()
        if broker is not None:
            broker.close()


async def test_a_frozen_broker_is_stalled_and_everything_is_delivered_after_it_resumes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.forwarder")
    status = Draft202012Validator(json.loads((SCHEMAS / "status.schema.json").read_text()))
    with PrivateBroker() as broker:
        rec = Recorder("127.0.0.1", broker.port, topic="carbon/#").start()
        store = Store(tmp_path / "s.db", synchronous="normal")
        fwd = forwarder(settings(broker.port), store)
        task = asyncio.create_task(fwd.run(), name="forwarder")
        commit = Committer(store, fwd, per_message=4)

        try:
            await until(lambda: fwd.state == "online")
            for _ in range(10):
                commit()
                await asyncio.sleep(0.02)
            await until(lambda: len(rec.readings()) >= 20)
            os.kill(broker.pid, signal.SIGSTOP)  # the broker hangs: TCP stays up, nothing answers
            try:
                while fwd.state != "stalled":
                    commit()
                    await asyncio.sleep(0.05)
                assert len(lines(caplog, "no PUBACK for 0.5 s")) == 1
                for _ in range(10):  # still committing while stalled: nothing lost, nothing logged again
                    commit()
                    await asyncio.sleep(0.02)
                assert len(lines(caplog, "no PUBACK")) == 1
            finally:
                os.kill(broker.pid, signal.SIGCONT)
            await until(lambda: fwd.state == "online")
            commit()
            await until(lambda: store.stats().pending_messages == 0, 30)
            ended = lines(caplog, "stalled for")
            assert len(ended) == 1, ended
            with sqlite3.connect(tmp_path / "s.db") as db:
                sent = {(i, s) for i, s in db.execute("SELECT instrument, seq FROM messages")}
            await until(lambda: set(dedup_by_seq(rec.readings())) >= sent)
            states = [b["state"] for b in rec.by_topic_suffix("/status")]
            assert "stalled" in states, states
            assert states[-1] == "online", states
            for body in rec.by_topic_suffix("/status"):
                status.validate(body)
        finally:
            await stop(fwd, task)
            store.close()
            rec.stop()


async def test_paho_thread_dying_is_noticed_reported_and_restarted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Observation 5: a 70,000-character prefix killed paho's network thread while polling went on.
    `validate` refuses such a prefix now; the forwarder must notice a dead thread whatever the cause."""
    caplog.set_level(logging.INFO, logger="gateway.forwarder")
    with PrivateBroker() as broker:
        s = settings(broker.port).model_copy(update={"topic_prefix": "p" * 70_000})  # past validation
        store = Store(tmp_path / "s.db")
        store.commit(readings(8), now_ms=1, per_message=4)
        fwd = forwarder(s, store)
        task = asyncio.create_task(fwd.run(), name="forwarder")
        try:
            await until(lambda: fwd.stats.transport_restarts >= 3)
            assert fwd.state == "offline"
            died = lines(caplog, "MQTT network thread died")
            assert len(died) == 1, died  # one line per episode, not one per restart
            assert store.stats().pending_messages == 2  # nothing marked delivered
        finally:
            await stop(fwd, task)
            store.close()


async def test_a_bad_page_under_pending_messages_is_store_failed_and_raised(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Observation 3: garbage in a store page holding pending messages used to stop forwarding
    silently while the retained status still said online."""
    caplog.set_level(logging.INFO, logger="gateway.forwarder")
    path = tmp_path / "s.db"
    store = Store(path, synchronous="normal")
    for start in range(0, 20_000, 2_000):
        store.commit(readings(2_000, start), now_ms=1, per_message=1)
    store.close()
    with sqlite3.connect(path) as db:
        pages = [p for (p,) in db.execute("SELECT pageno FROM dbstat WHERE name = 'messages' "
                                          "AND pagetype = 'leaf' ORDER BY pageno")]
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    with path.open("r+b") as f:
        for p in pages[len(pages) // 3: len(pages) // 3 + 4]:
            f.seek((p - 1) * page_size)
            f.write(b"\xa5" * page_size)
    with PrivateBroker() as broker:
        rec = Recorder("127.0.0.1", broker.port, topic="carbon/gw-st/status").start()
        store = Store(path, check=False)  # as if the page went bad while running
        fwd = forwarder(settings(broker.port, max_inflight=100), store)
        task = asyncio.create_task(fwd.run(), name="forwarder")
        try:
            await until(lambda: task.done(), 60)
            with pytest.raises(StoreError, match="malformed"):
                task.result()
            assert fwd.state == "store_failed"
            failed = lines(caplog, "forwarding stopped")
            assert len(failed) == 1, failed
            await until(lambda: any(b["state"] == "store_failed" for b in rec.by_topic_suffix("/status")))
        finally:
            await stop(fwd, task)
            store.close()
            rec.stop()


async def test_sending_in_slices_across_a_broker_restart_loses_nothing(tmp_path: Path) -> None:
    # Every message is its own slice (the loop runs between any two), while the broker restarts under a
    # full window: what was handed out and not sent when the connection dropped is offered again.
    port = free_port()
    persist = tmp_path / "broker"
    persist.mkdir()
    broker = PrivateBroker(port=port, persistence_dir=persist).start()
    rec = Recorder("127.0.0.1", port, client_id="central", topic="carbon/#").start()
    store = Store(tmp_path / "s.db", synchronous="normal")
    fwd = forwarder(settings(port, max_inflight=100), store)
    fwd.send_slice_s = 0.0
    task = asyncio.create_task(fwd.run(), name="forwarder")
    commit = Committer(store, fwd, per_message=2)

    try:
        await until(lambda: fwd.state == "online")
        commit(400)  # 200 messages: two windows
        await asyncio.sleep(0)
        rec.stop()
        broker.stop()
        for _ in range(10):
            commit(40)
            await asyncio.sleep(0.05)
        broker = PrivateBroker(port=port, persistence_dir=persist).start()
        rec = Recorder("127.0.0.1", port, client_id="central", topic="carbon/#").start()
        await until(lambda: fwd.state == "online")
        commit(40)
        await until(lambda: store.stats().pending_messages == 0, 30)
        with sqlite3.connect(tmp_path / "s.db") as db:
            sent = {(i, s) for i, s in db.execute("SELECT instrument, seq FROM messages")}
        assert len(sent) == commit.committed // 2
    finally:
        await stop(fwd, task)
        store.close()
        rec.stop()
        broker.close()
