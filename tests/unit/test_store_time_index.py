"""Schema 6: time look-ups go through the coarse per-message index (no per-reading index); their
results equal a plain scan of the `readings` view, and a schema 5 store migrates with its rows intact.
Schema 10: a readings message's later rows store their time from its first row's (`ts_base`); a schema 9
store (absolute times everywhere) migrates without a row rewritten, and old and new rows read alike."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from gateway.chain_verify import verify
from gateway.corrections import NEAREST, find_reading
from gateway.export import export
from gateway.model import Calibration, Quality, Reading
from gateway.store import Store
from gateway.store_schema import _READINGS_INSERT, _READINGS_VIEW_V9, SCHEMA_VERSION

T0 = 1_795_000_000_000


def _fill(store: Store, seed: int = 7) -> None:
    """Readings of 3 instruments, out-of-order and repeated times, a point stored in two units, a point
    that is never good, and a point that stopped early, committed in several transactions."""
    rnd = random.Random(seed)
    for commit in range(12):
        batch: list[Reading] = []
        for poll in range(10):
            t = T0 + (commit * 10 + poll) * 1000
            for inst in ("A", "B", "C"):
                for p in ("co2", "o2", "dead", "gone"):
                    if p == "gone" and commit > 2:
                        continue
                    ts = t + rnd.choice([0, 0, 0, -1500, 250, -30_000])  # late and back-stepped readings
                    bad = p == "dead" or rnd.random() < 0.15
                    unit = "mg/m3" if p == "o2" and commit % 3 == 0 else "%vol"
                    batch.append(Reading(inst, p, ts, None if bad else rnd.random(), unit,
                                         Quality.BAD if bad else Quality.GOOD, "timeout" if bad else "",
                                         Calibration.VALID))
        store.commit(batch, now_ms=commit, per_message=7)


def _view(path: Path) -> list[tuple[int, str, str, int, float | None, str, str, str, str]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT id, instrument, point, ts_ms, value, unit, quality, reason, calibration "
                          "FROM readings ORDER BY id").fetchall()


def _expected_last(rows: list, inst: str, point: str) -> tuple[int, int | None] | None:
    mine = [r for r in rows if r[1] == inst and r[2] == point]
    if not mine:
        return None
    good = [r[3] for r in mine if r[6] == "good" and r[4] is not None]
    return max(r[3] for r in mine), max(good) if good else None


def _check(path: Path, store: Store) -> None:
    rows = _view(path)
    points = [(i, p) for i in ("A", "B", "C", "Z") for p in ("co2", "o2", "dead", "gone", "none")]
    expected = {k: v for k in points if (v := _expected_last(rows, *k)) is not None}
    assert store.last_readings(points) == expected
    assert expected[("A", "dead")][1] is None
    assert ("A", "none") not in expected
    rnd = random.Random(3)
    times = sorted({r[3] for r in rows})
    for inst, point in points:
        mine = sorted((r for r in rows if r[1] == inst and r[2] == point), key=lambda r: (r[3], r[0]))
        for since in (times[0] - 1, *rnd.sample(times, 5), times[-1] + 1):
            got = store.readings_since(inst, point, since)
            assert got == [Reading(*r[1:6], Quality(r[6]), r[7], Calibration(r[8])) for r in mine if r[3] >= since]
        for ts in (*rnd.sample(times, 8), times[0] - 5, times[-1] + 5, *(r[3] for r in mine[:3])):
            at = [r[0] for r in mine if r[3] == ts]
            assert store.reading_id_at(inst, point, ts) == (min(at) if at else None)
            before = sorted({r[3] for r in mine if r[3] < ts}, reverse=True)[:NEAREST]
            after = sorted({r[3] for r in mine if r[3] > ts})[:NEAREST]
            assert find_reading(path, inst, point, ts) == ((min(at), []) if at else (None, sorted(before + after)))


def _as_schema_9(db: sqlite3.Connection) -> None:
    """A store made now, put back in the schema 9 layout: every row's absolute time in `samples`, no
    `messages.ts_base`, the schema 9 view."""
    db.execute("UPDATE samples SET ts_ms = (SELECT r.ts_ms FROM readings r WHERE r.id = samples.id)")
    db.execute("DROP VIEW readings")
    db.execute("ALTER TABLE messages DROP COLUMN ts_base")
    db.execute(_READINGS_VIEW_V9)
    db.execute(_READINGS_INSERT)
    db.execute("UPDATE meta SET value = '9' WHERE key = 'schema_version'")


def _schema_9_store(path: Path, *, seed: int, config_version: str) -> None:
    """A store filled by `_fill` and put back in the schema 9 layout (the starting point of older ones)."""
    store = Store(path, config_version=config_version)
    _fill(store, seed=seed)
    store.close()
    with sqlite3.connect(path) as db:
        _as_schema_9(db)


def test_a_message_stores_its_later_rows_times_from_its_first_and_reads_back_every_time(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path, config_version="cfg")
    rows = [Reading("A", p, T0 + dt, 1.0, "%vol", Quality.GOOD, "", Calibration.VALID)
            for dt, p in ((0, "co2"), (0, "o2"), (-1500, "co2"), (2**33, "o2"), (0, "co2"))]
    store.commit(rows, now_ms=1, per_message=3)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT first_id, ts_base FROM messages ORDER BY id").fetchall() == [(1, T0), (4, T0 + 2**33)]
        # the first row of each message keeps its absolute time (readable without `messages`), the rest offsets
        assert [r[0] for r in db.execute("SELECT ts_ms FROM samples ORDER BY id")] == [T0, 0, -1500, T0 + 2**33,
                                                                                      -2**33]
        assert [r[0] for r in db.execute("SELECT ts_ms FROM readings ORDER BY id")] == [r.ts_ms for r in rows]
    assert [r.ts_ms for m in store.pending() for r in store.message_rows(m)] == [r.ts_ms for r in rows]
    store.close()


def test_a_version_9_store_migrates_untouched_and_reads_with_the_new_rows(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _schema_9_store(path, seed=13, config_version="cfg9")
    with sqlite3.connect(path) as db:
        before = db.execute("SELECT * FROM readings ORDER BY id").fetchall()
        raw = db.execute("SELECT * FROM samples ORDER BY id").fetchall()
    assert all(r[2] > T0 - 60_000 for r in raw)  # absolute times, as schema 9 stored them
    store = Store(path)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        assert db.execute("SELECT * FROM samples ORDER BY id").fetchall() == raw  # nothing rewritten
        assert db.execute("SELECT * FROM readings ORDER BY id").fetchall() == before
        assert db.execute("SELECT COUNT(*) FROM messages WHERE ts_base IS NOT NULL").fetchone()[0] == 0
    _fill(store, seed=14)  # new messages, offsets from their ts_base, beside the old ones
    with sqlite3.connect(path) as db:
        # the two fills made as many messages each: the old half without ts_base
        assert db.execute("SELECT COUNT(*) FROM messages WHERE kind = 'readings' AND ts_base IS NULL"
                          ).fetchone()[0] * 2 == db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        mixed = db.execute("SELECT * FROM readings ORDER BY id").fetchall()
    assert mixed[:len(before)] == before
    _check(path, store)  # every time look-up equals a scan of the view, across old and new rows
    pending = store.pending(limit=10_000)
    assert [(r.id, r.ts_ms) for m in pending for r in store.message_rows(m)] == [(r[0], r[3]) for r in mixed]
    store.close()
    with sqlite3.connect(path) as db:
        result = verify(db)
        assert result.problem is None
        assert result.reports
        summary = export(db, tmp_path / "out", lo_ms=T0 - 60_000, hi_ms=T0 + 10**7, instruments=None, fmt="jsonl")
    assert summary.files["readings.jsonl"] == len(mixed)


def test_time_lookups_equal_a_scan_of_every_reading_without_a_per_reading_index(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    _fill(store)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'samples'"
                          ).fetchall() == []
        assert db.execute("SELECT COUNT(*) FROM messages WHERE kind = 'readings' AND (min_ts IS NULL OR max_ts IS "
                          "NULL OR min_ts > max_ts)").fetchone()[0] == 0
    _check(path, store)
    store.close()


def test_a_version_5_store_migrates_to_the_coarse_time_index_with_every_row_intact(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _schema_9_store(path, seed=11, config_version="cfg5")
    with sqlite3.connect(path) as db:  # back to the schema 5 layout: per-reading index, no message spans
        db.execute("DROP INDEX messages_by_time")
        db.execute("ALTER TABLE messages DROP COLUMN min_ts")
        db.execute("ALTER TABLE messages DROP COLUMN max_ts")
        db.execute("CREATE INDEX samples_by_series_time ON samples (series, ts_ms)")
        db.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
        before = db.execute("SELECT * FROM readings ORDER BY id").fetchall()
        raw = db.execute("SELECT * FROM samples ORDER BY id").fetchall()
        spans = db.execute("SELECT m.id, MIN(s.ts_ms), MAX(s.ts_ms) FROM messages m JOIN samples s ON s.id "
                           "BETWEEN m.first_id AND m.last_id WHERE m.kind = 'readings' GROUP BY m.id ORDER BY m.id"
                           ).fetchall()
    store = Store(path)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "samples_by_series_time" not in indexes
        assert "messages_by_time" in indexes
        assert db.execute("SELECT * FROM readings ORDER BY id").fetchall() == before
        assert db.execute("SELECT * FROM samples ORDER BY id").fetchall() == raw  # raw rows never rewritten
        assert db.execute("SELECT id, min_ts, max_ts FROM messages WHERE kind = 'readings' ORDER BY id"
                          ).fetchall() == spans
    _check(path, store)
    n = len(before)
    store.commit([Reading("A", "co2", T0 + 10**9, 1.0, "%vol", Quality.GOOD, "", Calibration.VALID)], now_ms=99,
                 per_message=7)
    assert store.readings_since("A", "co2", T0 + 10**9)[0].ts_ms == T0 + 10**9
    assert store.reading_id_at("A", "co2", T0 + 10**9) == n + 1
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_recovered_store_finds_readings_by_time_from_a_source_without_message_spans(tmp_path: Path) -> None:
    from gateway.store_check import recover

    src, dst = tmp_path / "old.db", tmp_path / "new.db"
    store = Store(src)
    _fill(store, seed=5)
    store.close()
    with sqlite3.connect(src) as db:  # messages copied from a store that had no time spans
        db.execute("DROP INDEX messages_by_time")
        db.execute("UPDATE messages SET min_ts = NULL, max_ts = NULL")
    recover(src, dst)
    store = Store(dst)
    _check(dst, store)
    store.close()
