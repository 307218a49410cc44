"""The SQLite outbox: append-only raw readings, gap-free per-instrument seq, delete-on-ack only."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import StoreError
from gateway.model import Calibration, Quality, Reading
from gateway.store import Derived, Store
from gateway.store_schema import SCHEMA_VERSION


def reading(instrument: str, i: int, value: float | None = 1.0) -> Reading:
    return Reading(instrument, f"p{i % 3}", 1_700_000_000_000 + i, value, "kW", Quality.GOOD, "", Calibration.VALID)


def raw_rows(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT * FROM readings ORDER BY id").fetchall()


def test_commit_creates_gapless_seq_per_instrument_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    store.commit([reading("A", i) for i in range(5)] + [reading("B", i) for i in range(3)], now_ms=1, per_message=2)
    store.close()
    store = Store(path)
    store.commit([reading("A", i) for i in range(2)], now_ms=2, per_message=2)
    msgs = store.pending(limit=100)
    by_inst: dict[str, list[int]] = {}
    for m in msgs:
        by_inst.setdefault(m.instrument, []).append(m.seq)
    assert by_inst == {"A": [1, 2, 3, 4], "B": [1, 2]}
    # Each message is an id range holding exactly that instrument's readings.
    for m in msgs:
        rows = store.readings_range(m.first_id, m.last_id)
        assert {r.instrument for r in rows} == {m.instrument}
        assert 1 <= len(rows) <= 2
    store.close()


def test_ack_removes_from_pending_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.commit([reading("A", i) for i in range(4)], now_ms=1, per_message=2)
    before = raw_rows(tmp_path / "s.db")
    first = store.pending(limit=1)[0]
    store.commit([], now_ms=2, per_message=2, acked=[first.id])
    assert [m.id for m in store.pending(limit=10)] == [first.id + 1]
    assert raw_rows(tmp_path / "s.db") == before  # raw readings untouched by delivery
    stats = store.stats()
    assert stats.pending_messages == 1
    assert stats.readings == 4
    assert stats.oldest_pending_ms == 1
    store.close()


def test_prune_never_deletes_undelivered(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.commit([reading("A", i) for i in range(6)], now_ms=1_000, per_message=2)  # 3 messages
    msgs = store.pending(limit=10)
    store.commit([], now_ms=2_000, per_message=2, acked=[msgs[0].id, msgs[2].id])  # the middle one is not acked
    removed = store.prune_delivered(older_than_ms=10_000)
    assert removed == 2  # only readings of the first message: everything from the first pending one on stays
    left = [r[0] for r in raw_rows(tmp_path / "s.db")]
    assert left == [3, 4, 5, 6]
    assert [m.seq for m in store.pending(limit=10)] == [2]
    store.close()


def test_retention_cutoff_respected(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.commit([reading("A", i) for i in range(2)], now_ms=5_000, per_message=2)
    store.commit([], now_ms=6_000, per_message=2, acked=[m.id for m in store.pending()])
    assert store.prune_delivered(older_than_ms=5_000) == 0  # delivered but younger than the cutoff
    assert store.prune_delivered(older_than_ms=5_001) == 2
    store.close()


def test_second_process_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    with pytest.raises(StoreError, match="in use by another gateway process"):
        Store(tmp_path / "s.db")
    store.close()
    Store(tmp_path / "s.db").close()


def test_null_values_are_stored_as_null(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.commit([reading("A", 0, None)], now_ms=1, per_message=10)
    m = store.pending()[0]
    assert store.readings_range(m.first_id, m.last_id)[0].value is None
    store.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "s.db").close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        Store(tmp_path / "s.db")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("ABC"), st.integers(0, 30)), max_size=30), st.integers(1, 7))
def test_seq_invariants(tmp_path_factory: pytest.TempPathFactory, batches: list[tuple[str, int]], per: int) -> None:
    """Whatever the batching, each instrument's seqs are 1..n and cover its readings exactly once."""
    path = tmp_path_factory.mktemp("inv") / "s.db"
    store = Store(path, synchronous="normal")
    expected: dict[str, int] = {}
    for inst, n in batches:
        store.commit([reading(inst, i) for i in range(n)], now_ms=1, per_message=per)
        expected[inst] = expected.get(inst, 0) + n
    msgs = store.pending(limit=10_000)
    for inst, n in expected.items():
        mine = [m for m in msgs if m.instrument == inst]
        assert [m.seq for m in mine] == list(range(1, len(mine) + 1))
        assert sum(m.last_id - m.first_id + 1 for m in mine) == n
    store.close()


def test_migrates_a_version_1_store_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    store.commit([reading("A", i) for i in range(3)], now_ms=1, per_message=10)
    store.close()
    with sqlite3.connect(path) as db:  # what a first-release (schema 1) store looks like
        db.execute("DROP TABLE records")
        db.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    store = Store(path)
    assert len(store.pending()) == 1  # the undelivered message survived the migration
    store.commit([], now_ms=2, per_message=10,
                 derived=[Derived("events", "A", "p0", 5, {"type": "gap_open", "start_ms": 5})])
    assert store.records("events", "A", "p0") == [{"type": "gap_open", "start_ms": 5}]
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)


def test_derived_records_get_their_own_gapless_seq(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    d = [Derived("aggregates", "A", "p0", i, {"i": i}) for i in range(5)]
    store.commit([reading("A", 0)], now_ms=1, per_message=2, derived=d)
    msgs = store.pending(limit=10)
    assert sorted((m.kind, m.seq) for m in msgs) == [("aggregates", 1), ("aggregates", 2), ("aggregates", 3),
                                                     ("readings", 1)]
    bodies = [b for m in msgs if m.kind == "aggregates" for b in store.message_rows(m)]
    assert bodies == [{"i": i} for i in range(5)]
    store.close()


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 260), min_size=1, max_size=4), per=st.sampled_from([1, 7, 20, 100]),
       values=st.lists(st.one_of(st.none(), st.floats(allow_nan=False, width=32), st.floats(allow_nan=False)),
                       min_size=1, max_size=30))
def test_commits_of_any_size_store_every_row_in_order(tmp_path_factory: pytest.TempPathFactory, sizes: list[int],
                                                      per: int, values: list[float | None]) -> None:
    # Samples go in 100 and 20 rows a statement and the rest one a step: every count across those edges
    # stores the same rows, in order, with their values bit for bit (but for the sign of a zero, which
    # SQLite's REAL columns do not keep) and their times absolute in the view.
    s = Store(tmp_path_factory.mktemp("s") / "g.db")
    want: list[tuple[int, float | None]] = []
    t = 1_764_000_000_000
    for n in sizes:
        batch = []
        for i in range(n):
            v = values[(len(want) + i) % len(values)]
            batch.append(Reading(f"m{i % 3}", f"p{i % 5}", t + i * 10, v, "kW", Quality.GOOD, "", Calibration.VALID))
        by_inst: dict[str, list[tuple[int, float | None]]] = {}
        for r in batch:
            by_inst.setdefault(r.instrument, []).append((r.ts_ms, r.value))
        for rows in by_inst.values():  # the store gives each instrument consecutive ids, in commit order
            want += rows
        s.commit(batch, now_ms=t, per_message=per)
        t += 100_000
    got = [(ts, v) for ts, v in s._db.execute("SELECT ts_ms, value FROM readings ORDER BY id")]
    s.close()
    assert len(got) == len(want)
    for (ts_got, v_got), (ts_want, v_want) in zip(got, want, strict=True):
        assert ts_got == ts_want
        assert (v_got is None and v_want is None) or (v_got == v_want and (v_want == 0 or repr(v_got) == repr(v_want)))
