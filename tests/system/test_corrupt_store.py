"""Issue 7.5, a corrupted store at start (observations 4 and 8): refused, recovered, and visible to subscribers.

A store holding undelivered readings gets 64 KB of garbage in the middle. The gateway refuses to start on
it (one line saying how to recover) and leaves it untouched; `store recover` copies every readable row
into a new store with a new epoch; put in place, the gateway starts with one WARNING naming both epochs,
delivers what the recovered store had pending under the new epoch, and the subscriber's data deduplicated
by (instrument, epoch, seq) equals what the store committed. The store passes PRAGMA integrity_check.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.errors import StoreError
from gateway.model import Calibration, Quality, Reading
from gateway.registry import load_config
from gateway.store import Store
from gateway.store_check import recover
from simulators.broker import PrivateBroker
from simulators.runner import build_servers
from tests.helpers import Recorder, three_meters, write_config
from tests.system.conftest import assert_status_schema, wait_until
from tests.unit.test_store_identity import write_garbage_in_the_middle

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")
N = 20_000


def undelivered_store(path: Path) -> str:
    """A store with N undelivered PM-01 readings from the last hour, 100 per message. Returns its epoch."""
    start = int(time.time() * 1000) - 3_600_000
    store = Store(path, synchronous="normal")
    epoch = store.epoch
    for first in range(0, N, 2_000):
        store.commit([Reading("PM-01", "voltage_l1", start + i * 100, 230.0 + (i % 50) / 10, "V", Quality.GOOD, "",
                              Calibration.VALID) for i in range(first, first + 2_000)], now_ms=start, per_message=100)
    store.close()
    return epoch


def ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def pending_up_to(path: Path, last_id: int) -> int:
    with ro(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM pending WHERE message_id <= ?", (last_id,)).fetchone()[0])


async def test_a_corrupted_store_is_refused_recovered_and_a_new_epoch_to_subscribers(
        tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker, recorder: Recorder,
        caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "gw.db"
    old_epoch = undelivered_store(db)
    with ro(db) as conn:  # rows a page holds at most (about 200 since schema 10 stores offsets in 0-2 bytes)
        per_page = conn.execute("SELECT MAX(ncell) FROM dbstat WHERE name = 'samples' AND pagetype = 'leaf'"
                                ).fetchone()[0]
    write_garbage_in_the_middle(db)
    cfg = load_config(write_config(tmp_path / "cfg", three_meters(ports), url=broker.url, store=db))
    damaged = db.read_bytes()

    with pytest.raises(StoreError, match=r"the store is corrupt .*carbon-gateway store recover"):
        await Gateway(cfg).run(duration_s=5)
    assert db.read_bytes() == damaged  # refused before anything was written

    report = recover(db, tmp_path / "recovered.db")
    assert report.source_epoch == old_epoch
    copied = report.tables["readings"].copied
    assert N - 16 * per_page <= copied < N  # only rows on the 16 garbage pages are lost
    os.replace(db, tmp_path / "damaged.db")  # kept for analysis
    os.replace(tmp_path / "recovered.db", db)
    with ro(db) as conn:
        # every kept reading has its true time (reading i was stored at start + 100 i, as id i + 1)
        assert len({ts - 100 * (rid - 1) for rid, ts in conn.execute("SELECT id, ts_ms FROM readings")}) == 1
        recovered_last = int(conn.execute("SELECT MAX(id) FROM messages").fetchone()[0])
        recovered_pending = int(conn.execute("SELECT COUNT(*) FROM pending").fetchone()[0])
    assert recovered_pending > 0

    servers = build_servers(cfg)
    for server, _ in servers.values():
        await server.start()
    caplog.set_level(logging.INFO)
    run = asyncio.create_task(Gateway(cfg).run())
    try:
        assert await wait_until(lambda: pending_up_to(db, recovered_last) == 0, 60), "recovered backlog not drained"
        assert await wait_until(lambda: any(s.get("state") == "online" for s in recorder.by_topic_suffix("/status")),
                                20)
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        for server, _ in servers.values():
            await server.stop()

    (warning,) = [r.getMessage() for r in caplog.records
                  if r.levelno == logging.WARNING and r.name == "gateway.store"]
    assert f"epoch {old_epoch} was here before, this store is epoch {report.epoch}" in warning
    assert "(instrument, epoch, seq)" in warning

    statuses = recorder.by_topic_suffix("/status")
    for status in statuses:
        assert_status_schema(status)
    assert {s["epoch"] for s in statuses} == {report.epoch}
    bodies = recorder.readings()
    assert {b["epoch"] for b in bodies} == {report.epoch}  # nothing under the old epoch, nothing unmarked

    # Deduplicated by (instrument, epoch, seq), the subscriber has exactly what the store committed: every
    # delivered message, and nothing that differs from the store (a message whose PUBACK came after the
    # last commit may be received and still pending: it will be resent with the same content).
    received: dict[tuple[str, str, int], dict[str, Any]] = {}
    for body in bodies:
        received.setdefault((body["instrument"], body["epoch"], body["seq"]), body)
    with ro(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

        def stored(instrument: str, seq: int) -> list[tuple[str, int, float]]:
            first, last = conn.execute("SELECT first_id, last_id FROM messages WHERE kind = 'readings' AND "
                                       "instrument = ? AND seq = ?", (instrument, seq)).fetchone()
            return [tuple(r) for r in conn.execute("SELECT point, ts_ms, value FROM readings WHERE id BETWEEN ? "
                                                   "AND ? ORDER BY id", (first, last))]

        for (instrument, _epoch, seq), body in received.items():  # what arrived is what is stored
            assert [(r["point"], r["ts"], r["value"]) for r in body["readings"]] == stored(instrument, seq)
        # Messages whose rows were all on the garbage pages were dropped by recover: their seqs are holes.
        lost = {(i, report.epoch, s) for i, s in conn.execute(
            "SELECT instrument, seq FROM messages m WHERE kind = 'readings' AND NOT EXISTS "
            "(SELECT 1 FROM samples r WHERE r.id BETWEEN m.first_id AND m.last_id)")}
        delivered = {(i, report.epoch, s) for i, s in conn.execute(
            "SELECT instrument, seq FROM messages WHERE kind = 'readings' AND id NOT IN "
            "(SELECT message_id FROM pending)")} - lost
    assert len(lost) == report.emptied_pending
    assert delivered
    assert delivered <= set(received)
    assert not lost & set(received)
