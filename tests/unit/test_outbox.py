"""The store's outbox: begin/ack/release with one cursor; live traffic from memory equals what a re-read gives."""

from __future__ import annotations

import sqlite3
from itertools import pairwise
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from gateway.model import Calibration, Quality, Reading
from gateway.store import Derived, Store, id_ranges
from gateway.store_schema import SCHEMA_VERSION


def reading(instrument: str, i: int, value: float | None = 1.5) -> Reading:
    return Reading(instrument, f"p{i % 3}", 1_700_000_000_000 + i, value, "kW", Quality.GOOD, "", Calibration.VALID)


def pending_ids(path: Path) -> list[int]:
    with sqlite3.connect(path) as db:
        return [r[0] for r in db.execute("SELECT message_id FROM pending ORDER BY message_id")]


def test_begin_hands_out_each_message_once_and_ack_marks_it_delivered(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.commit([reading("A", i) for i in range(6)], now_ms=1, per_message=2)  # 3 messages
    first = store.begin(2)
    assert [(o.instrument, o.seq) for o in first] == [("A", 1), ("A", 2)]
    assert [o.id for o in store.begin(10)] == [3]  # handed-out messages are not offered again
    assert store.begin(10) == []
    store.ack([first[0].id])
    store.flush()
    assert pending_ids(tmp_path / "s.db") == [2, 3]
    assert store.stats().pending_messages == 2
    store.close()


def test_acks_ride_with_the_next_commit(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.commit([reading("A", i) for i in range(2)], now_ms=1, per_message=1)
    store.ack([o.id for o in store.begin(10)])
    assert store.stats().pending_messages == 0  # as the status topic sees it, at once
    assert pending_ids(tmp_path / "s.db") == [1, 2]  # not yet on disk: no transaction of its own
    store.commit([reading("B", 0)], now_ms=2, per_message=1)
    assert pending_ids(tmp_path / "s.db") == [3]
    store.close()


def test_released_messages_are_offered_again_first(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.commit([reading("A", i) for i in range(3)], now_ms=1, per_message=1)
    got = store.begin(2)
    store.release([got[1].id])
    again = store.begin(10)
    assert [o.id for o in again] == [got[1].id, 3]
    assert again[0].rows == got[1].rows
    store.close()


def test_live_messages_from_memory_equal_what_the_store_rereads(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    derived = [Derived("events", "A", "p0", 5, {"type": "gap_open", "start_ms": 5, "end_ms": None})]
    store.commit([reading("A", i, float(i) / 3) for i in range(7)] + [reading("B", 1, None)], now_ms=1,
                 per_message=3, derived=derived)
    live = store.begin(100)
    store.close()
    store = Store(path)  # everything is backlog now, read back from SQLite
    backlog = store.begin(100)
    assert [(o.id, o.instrument, o.kind, o.seq) for o in live] == [(o.id, o.instrument, o.kind, o.seq)
                                                                     for o in backlog]
    fields = ("point", "ts_ms", "value", "unit", "quality", "reason", "calibration")
    for a, b in zip(live, backlog, strict=True):
        if a.kind == "readings":
            assert [tuple(getattr(r, f) for f in fields) for r in a.rows] == \
                   [tuple(getattr(r, f) for f in fields) for r in b.rows]
        else:
            assert list(a.rows) == list(b.rows)
    store.close()


def test_evicted_live_messages_are_read_back(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.recent_rows_max = 4
    store.commit([reading("A", i) for i in range(10)], now_ms=1, per_message=2)  # 5 messages, 3 evicted
    got = store.begin(100)
    assert [o.seq for o in got] == [1, 2, 3, 4, 5]
    assert [len(o.rows) for o in got] == [2, 2, 2, 2, 2]
    store.close()


def test_backlog_and_live_share_the_window(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    store.commit([reading("OLD", i) for i in range(50)], now_ms=1, per_message=1)
    store.close()
    store = Store(path)  # 50 messages of backlog
    store.commit([reading("NEW", i) for i in range(50)], now_ms=2, per_message=1)
    got = store.begin(10)
    assert sorted({o.instrument for o in got}) == ["NEW", "OLD"]  # live data is not starved by the backlog
    assert [o.seq for o in got if o.instrument == "OLD"] == [1, 2, 3, 4, 5]
    assert [o.seq for o in got if o.instrument == "NEW"] == [1, 2, 3, 4, 5]
    store.close()


def test_mark_backlog_on_reconnect_keeps_order_and_loses_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.commit([reading("A", i) for i in range(4)], now_ms=1, per_message=1)
    store.mark_backlog()  # a reconnect: what was committed meanwhile drains beside new traffic
    store.commit([reading("A", i) for i in range(4, 6)], now_ms=2, per_message=1)
    seen: list[int] = []
    while batch := store.begin(2):
        seen += [o.seq for o in batch]
        store.ack([o.id for o in batch])
    assert sorted(seen) == [1, 2, 3, 4, 5, 6]
    store.flush()
    assert pending_ids(tmp_path / "s.db") == []
    store.close()


def test_retention_by_size_prunes_delivered_only_and_the_file_stops_growing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path, synchronous="normal")
    for k in range(10):
        store.commit([reading("A", i) for i in range(k * 2_000, (k + 1) * 2_000)], now_ms=1, per_message=100)
    delivered = store.begin(150)  # 150 of the 200 messages delivered, the newest 50 still pending
    store.ack([o.id for o in delivered])
    store.flush()
    used = store.used_bytes()
    limit = used // 2
    removed = store.prune_to_size(limit)
    assert removed > 0
    assert store.used_bytes() <= limit
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT MIN(id) FROM readings").fetchone()[0] == removed + 1  # oldest first
    assert len(pending_ids(path)) == 50
    assert store.stats().pending_messages == 50
    def file_pages() -> int:  # the database's size in pages, WAL included
        with sqlite3.connect(path) as db:
            return int(db.execute("PRAGMA page_count").fetchone()[0])

    pages = file_pages()
    for _ in range(5):  # new data reuses the freed pages: the file does not grow past the limit much
        store.commit([reading("A", i) for i in range(2_000)], now_ms=2, per_message=100)
        store.ack([o.id for o in store.begin(1_000)])
        store.flush()
        store.prune_to_size(limit)
    assert store.used_bytes() <= limit
    assert file_pages() <= pages
    store.close()


def test_retention_by_size_never_deletes_undelivered(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db", synchronous="normal")
    store.commit([reading("A", i) for i in range(5_000)], now_ms=1, per_message=100)
    assert store.prune_to_size(1) == 0  # all of it is undelivered: kept, however small the limit
    assert store.stats().pending_messages == 50
    store.close()


V4_DDL = [  # the store layout of schema version 4 (text columns per reading), as released
    "CREATE TABLE meta (key TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE readings (id INTEGER NOT NULL PRIMARY KEY, instrument TEXT NOT NULL, point TEXT NOT NULL, "
    "ts_ms INTEGER NOT NULL, value FLOAT, unit TEXT NOT NULL, quality TEXT NOT NULL, reason TEXT NOT NULL, "
    "calibration TEXT NOT NULL, config_version TEXT NOT NULL, stored_ms INTEGER NOT NULL, hash BLOB)",
    "CREATE INDEX readings_by_point_time ON readings (instrument, point, ts_ms)",
    "CREATE TABLE messages (id INTEGER NOT NULL PRIMARY KEY, stream TEXT NOT NULL, seq INTEGER NOT NULL, "
    "kind TEXT NOT NULL, instrument TEXT NOT NULL, first_id INTEGER NOT NULL, last_id INTEGER NOT NULL, "
    "created_ms INTEGER NOT NULL, UNIQUE (stream, seq))",
    "CREATE TABLE pending (message_id INTEGER NOT NULL PRIMARY KEY)",
    "CREATE TABLE streams (stream TEXT NOT NULL PRIMARY KEY, last_seq INTEGER NOT NULL)",
    "CREATE TABLE records (id INTEGER NOT NULL PRIMARY KEY, kind TEXT NOT NULL, instrument TEXT NOT NULL, "
    "point TEXT NOT NULL, ts_ms INTEGER NOT NULL, body TEXT NOT NULL, config_version TEXT NOT NULL, "
    "stored_ms INTEGER NOT NULL)",
    "CREATE INDEX records_by_point ON records (kind, instrument, point, ts_ms)",
    "CREATE TABLE ingested (sha256 TEXT NOT NULL PRIMARY KEY, name TEXT NOT NULL, stored_ms INTEGER NOT NULL)",
    "CREATE TABLE rules_state (instrument TEXT NOT NULL, point TEXT NOT NULL, hwm INTEGER NOT NULL, "
    "state TEXT NOT NULL, stored_ms INTEGER NOT NULL, PRIMARY KEY (instrument, point))",
    "INSERT INTO meta VALUES ('schema_version', '4')",
    "INSERT INTO meta VALUES ('epoch', '0123456789abcdef0123456789abcdef')",
]


def test_a_version_4_store_migrates_to_integer_coded_readings_with_every_row_and_message_intact(
        tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    rows = []
    qualities = [("good", ""), ("bad", "timeout"), ("uncertain", "over_range"), ("bad", "code:BadSensorFailure")]
    for i in range(1, 301):
        q, r = qualities[i % 4] if i % 7 == 0 else ("good", "")
        rows.append((i, f"I{i % 3}", f"p{i % 5}", 1_795_000_000_000 + i * 10, None if r == "timeout" else i / 7,
                     "kW" if i % 5 else "%vol", q, r, ["valid", "due_soon", "expired", "unknown"][i % 4],
                     "cfgA" if i <= 150 else "cfgB", 1_000 + i // 10, None))
    with sqlite3.connect(path) as db:
        for statement in V4_DDL:
            db.execute(statement)
        db.executemany("INSERT INTO readings VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        # one message per 10 readings (ids in order); the first 20 delivered, the last 10 pending
        for m in range(30):
            first, last = m * 10 + 1, m * 10 + 10
            db.execute("INSERT INTO messages VALUES (?,?,?,?,?,?,?,?)",
                       (m + 1, "I0/readings", m + 1, "readings", "I0", first, last, rows[last - 1][10]))
        db.executemany("INSERT INTO pending VALUES (?)", [(m,) for m in range(21, 31)])
        db.execute("INSERT INTO streams VALUES ('I0/readings', 30)")
    store = Store(path)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        assert db.execute("SELECT type FROM sqlite_master WHERE name = 'readings'").fetchone()[0] == "view"
        after = db.execute("SELECT * FROM readings ORDER BY id").fetchall()
    # every column of every row as it was, the commit time and configuration version now per message
    assert after == [(*r[:10], rows[(r[0] - 1) // 10 * 10 + 9][10], None) for r in rows]
    assert [o.seq for o in store.begin(100)] == list(range(21, 31))  # the undelivered messages, unchanged
    store.commit([reading("I0", 0)], now_ms=2_000, per_message=10)
    assert [o.seq for o in store.begin(100)] == [31]  # seq and ids carry on
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT id FROM readings ORDER BY id DESC LIMIT 1").fetchone()[0] == 301
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_integer_coded_rows_read_back_exactly(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path, config_version="cfg1")
    rs = [Reading("A", "co2", 1_795_000_000_000 + i, v, u, q, r, c)
          for i, (v, u, q, r, c) in enumerate([
              (1.5, "%vol", Quality.GOOD, "", Calibration.VALID),
              (None, "%vol", Quality.BAD, "timeout", Calibration.EXPIRED),
              (2.25, "mg/m3", Quality.UNCERTAIN, "over_range", Calibration.DUE_SOON),
              (3.0, "%vol", Quality.BAD, "code:BadSensorFailure", Calibration.UNKNOWN)])]
    store.commit(rs, now_ms=42, per_message=10)
    store.close()
    with sqlite3.connect(path) as db:
        got = db.execute("SELECT instrument, point, ts_ms, value, unit, quality, reason, calibration, config_version, "
                         "stored_ms FROM readings ORDER BY id").fetchall()
    assert got == [(*r, "cfg1", 42) for r in rs]
    store = Store(path)
    assert store.last_readings([("A", "co2")]) == {("A", "co2"): (1_795_000_000_003, 1_795_000_000_000)}
    (msg,) = store.pending()
    decoded = store.message_rows(msg)  # the outbox's own decoding equals the view's
    assert [(r.instrument, r.point, r.ts_ms, r.value, r.unit, r.quality, r.reason, r.calibration)
            for r in decoded] == [tuple(r) for r in rs]
    store.close()


@given(st.sets(st.integers(1, 300), max_size=120))
def test_id_ranges_cover_exactly_the_acked_ids(ids: set[int]) -> None:
    ranges = id_ranges(ids)
    covered = [i for lo, hi in ranges for i in range(lo, hi + 1)]
    assert covered == sorted(ids)  # each id once, nothing else, ascending
    assert all(b[0] > a[1] + 1 for a, b in pairwise(ranges))  # maximal runs


def test_acks_out_of_order_and_with_holes_delete_exactly_their_pending_rows(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.commit([reading("A", i) for i in range(10)], now_ms=1, per_message=1)  # messages 1..10
    store.begin(10)
    store.ack([9, 2, 1, 8, 5, 3])
    store.flush()
    assert pending_ids(tmp_path / "s.db") == [4, 6, 7, 10]
