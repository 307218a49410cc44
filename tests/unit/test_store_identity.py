"""Store identity (epoch) and integrity at open, against real SQLite files."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import pytest

from gateway.errors import StoreError
from gateway.model import Calibration, Quality, Reading
from gateway.store import Store, epoch_marker_path, read_epoch_marker
from gateway.store_schema import SCHEMA_VERSION


def reading(instrument: str, i: int) -> Reading:
    return Reading(instrument, f"p{i % 3}", 1_700_000_000_000 + i, float(i), "kW", Quality.GOOD, "",
                   Calibration.VALID)


def store_with_data(path: Path, n: int = 20_000) -> None:
    store = Store(path, synchronous="normal")
    for start in range(0, n, 2_000):
        store.commit([reading("A", i) for i in range(start, start + 2_000)], now_ms=1, per_message=1)
    store.close()


def write_garbage_in_the_middle(path: Path, size: int = 64 * 1024) -> None:
    length = path.stat().st_size
    assert length > 4 * size, "the store must be much larger than the garbage"
    garbage = bytes((i * 151 + 7) % 256 for i in range(size))
    with path.open("r+b") as f:
        f.seek(length // 2 - size // 2)
        f.write(garbage)


def test_a_new_store_has_an_epoch_kept_in_meta_and_in_a_marker(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    epoch = store.epoch
    assert len(epoch) == 32
    assert int(epoch, 16) >= 0
    assert store.created
    assert store.previous_epoch is None
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()[0] == epoch
    assert read_epoch_marker(path) == epoch
    assert oct(epoch_marker_path(path).stat().st_mode & 0o777) == "0o644"
    again = Store(path)
    assert again.epoch == epoch
    assert not again.created
    assert again.previous_epoch is None
    again.close()
    assert not list(tmp_path.glob("*.creating*"))  # built beside its path and renamed into place


def test_a_store_from_before_epochs_gets_one_on_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    store.commit([reading("A", i) for i in range(3)], now_ms=1, per_message=10)
    store.close()
    with sqlite3.connect(path) as db:  # what a schema 2 store looks like
        db.execute("DELETE FROM meta WHERE key='epoch'")
        db.execute("DROP TABLE ingested")
        db.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
    epoch_marker_path(path).unlink()
    with caplog.at_level(logging.INFO, logger="gateway.store"):
        store = Store(path)
    assert len(store.epoch) == 32
    assert len(store.pending()) == 1  # data kept
    assert not store.is_ingested("0" * 64)
    store.close()
    assert "had no epoch" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # an upgrade is not a replacement
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert Store(path).epoch == store.epoch


def test_a_fresh_store_where_one_was_before_is_a_loud_warning(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    old = store.epoch
    store.commit([reading("A", i) for i in range(3)], now_ms=1, per_message=1)
    store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    with caplog.at_level(logging.INFO, logger="gateway.store"):
        store = Store(path)
    new = store.epoch
    assert new != old
    assert store.previous_epoch == old
    store.close()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert old in warning
    assert new in warning
    assert "replaced or reset" in warning
    assert "(instrument, epoch, seq)" in warning
    assert read_epoch_marker(path) == new  # warned once: the next start is quiet
    caplog.clear()
    Store(path).close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_another_store_file_moved_in_is_a_warning_too(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    Store(a).close()
    store_b = Store(b)
    epoch_b = store_b.epoch
    store_b.close()
    os.replace(b, a)  # e.g. a backup restored over the live store
    with caplog.at_level(logging.WARNING, logger="gateway.store"):
        store = Store(a)
    assert store.epoch == epoch_b
    assert store.previous_epoch is not None
    store.close()
    assert "another store file" in caplog.text


@pytest.mark.parametrize("with_marker", [True, False])
def test_a_zero_length_store_file_is_refused_not_recreated(tmp_path: Path, with_marker: bool) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    epoch = store.epoch
    store.commit([reading("A", 1)], now_ms=1, per_message=1)
    store.close()
    path.write_bytes(b"")  # truncated
    if not with_marker:
        epoch_marker_path(path).unlink()
    with pytest.raises(StoreError) as err:
        Store(path)
    text = str(err.value)
    assert "\n" not in text
    assert "empty (0 bytes)" in text
    assert "restore it from a backup" in text
    assert (epoch in text) == with_marker
    assert path.stat().st_size == 0  # untouched: nothing was created over it
    path.unlink()
    Store(path).close()  # deleting it on purpose starts a new store


def test_a_store_with_garbage_in_the_middle_is_refused_with_how_to_recover(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store_with_data(path)
    write_garbage_in_the_middle(path)
    with pytest.raises(StoreError) as err:
        Store(path)
    text = str(err.value)
    assert "\n" not in text
    assert "the store is corrupt" in text
    assert "carbon-gateway store recover" in text
    Store(path, check=False).close()  # the refusal is the check's, not SQLite's


def test_reading_pending_messages_over_a_garbage_page_raises_store_error(tmp_path: Path) -> None:
    """Observation 3 (store side): a corrupt page met at run time is a StoreError, never swallowed."""
    path = tmp_path / "s.db"
    store_with_data(path)
    with sqlite3.connect(path) as db:
        pages = [p for (p,) in db.execute("SELECT pageno FROM dbstat WHERE name = 'messages' "
                                          "AND pagetype = 'leaf' ORDER BY pageno")]
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    with path.open("r+b") as f:
        for p in pages[len(pages) // 3: len(pages) // 3 + 4]:
            f.seek((p - 1) * page_size)
            f.write(b"\xa5" * page_size)
    store = Store(path, check=False)  # as if the page went bad while running
    try:
        with pytest.raises(StoreError, match=r"s\.db: reading pending messages failed: .*malformed"):
            store.pending(limit=100_000)
    finally:
        store.close()


def test_an_older_copy_of_the_same_store_put_back_gets_a_new_epoch(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A restored file copy would reuse seqs already published with other content: it becomes a new epoch."""
    path, copy = tmp_path / "s.db", tmp_path / "copy.db"
    store = Store(path)
    old = store.epoch
    store.commit([reading("A", i) for i in range(3)], now_ms=1, per_message=1)
    store.close()
    copy.write_bytes(path.read_bytes())  # a cold copy, then the store goes on
    store = Store(path)
    store.commit([reading("A", i) for i in range(2)], now_ms=2, per_message=1)
    store.close()
    os.replace(copy, path)
    with caplog.at_level(logging.WARNING, logger="gateway.store"):
        store = Store(path)
    assert store.epoch != old
    assert store.previous_epoch == old
    assert [m.seq for m in store.pending(limit=10)] == [1, 2, 3]  # the data is kept, under a new epoch
    store.close()
    assert "went back in time" in caplog.text
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()[0] == store.epoch
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gateway.store"):
        Store(path).close()
    assert not caplog.records
