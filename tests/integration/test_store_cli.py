"""`carbon-gateway store check|recover|backup` and a damaged store at `run`: real processes, one line, exit code."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from gateway.store import Store, read_epoch_marker
from tests.helpers import three_meters, write_config
from tests.unit.test_store_identity import reading, store_with_data, write_garbage_in_the_middle

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd or ROOT)


def count(path: Path, table: str) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def epoch_of(path: Path) -> str:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return str(db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0])


def write_garbage_over_readings(path: Path, pages: int = 16) -> None:
    """64 KB of garbage over the middle of the pages that hold readings (schema 5: table `samples`;
    the middle of the file may hold messages instead, now that readings are integer-coded)."""
    with sqlite3.connect(path) as db:
        nos = [p for (p,) in db.execute("SELECT pageno FROM dbstat WHERE name = 'samples' AND pagetype = 'leaf' "
                                        "ORDER BY pageno")]
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    start = len(nos) // 2 - pages // 2
    with path.open("r+b") as f:
        for p in nos[start:start + pages]:
            f.seek((p - 1) * page_size)
            f.write(bytes((i * 151 + 7) % 256 for i in range(page_size)))


def test_run_refuses_a_store_with_garbage_in_the_middle_with_one_line(tmp_path: Path,
                                                                      ports: tuple[int, int, int]) -> None:
    """Observation 4: a store with 64 KB of garbage in the middle used to start and run."""
    db = tmp_path / "gw.db"
    store_with_data(db)
    write_garbage_in_the_middle(db)
    cfg = write_config(tmp_path / "cfg", three_meters(ports), store=db)
    before = db.read_bytes()
    out = cli("run", "--config", str(cfg), "--duration", "5")
    assert out.returncode == 4  # the store failed: nothing can be kept
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"error: {db}: the store is corrupt")
    assert f"carbon-gateway store recover --store {db} --to NEW.db" in line
    assert db.read_bytes() == before  # refused, not touched


def test_run_refuses_a_zero_length_store_with_one_line(tmp_path: Path, ports: tuple[int, int, int]) -> None:
    """Observation 8: a zero-length store file used to become a fresh store, every seq back at 1, no warning."""
    db = tmp_path / "gw.db"
    store = Store(db)
    epoch = store.epoch
    store.commit([reading("PM-01", i) for i in range(3)], now_ms=1, per_message=1)
    store.close()
    db.write_bytes(b"")
    cfg = write_config(tmp_path / "cfg", three_meters(ports), store=db)
    out = cli("run", "--config", str(cfg), "--duration", "5")
    assert out.returncode == 4
    (line,) = out.stderr.splitlines()
    assert f"{db}: the store file is empty (0 bytes) (it held epoch {epoch})" in line
    assert db.stat().st_size == 0


def test_store_check_ok_and_damaged(tmp_path: Path, ports: tuple[int, int, int]) -> None:
    db = tmp_path / "gw.db"
    store_with_data(db, n=6_000)
    cfg = write_config(tmp_path / "cfg", three_meters(ports), store=db)
    out = cli("store", "check", "--config", str(cfg))  # the store found from the configuration
    assert (out.returncode, out.stdout, out.stderr) == (0, f"{db}: ok\n", "")
    write_garbage_in_the_middle(db, size=16 * 1024)
    out = cli("store", "check", "--store", str(db))
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert len(lines) >= 2
    assert all(line.startswith(f"{db}: ") for line in lines)
    assert "Traceback" not in out.stderr
    assert lines[-1].startswith(f"{db}: damaged (")
    out = cli("store", "check", "--store", str(tmp_path / "missing.db"))
    assert out.returncode == 4
    assert out.stderr == f"error: {tmp_path / 'missing.db'}: no such store\n"


def test_store_recover_copies_every_readable_row_into_a_new_store_with_a_new_epoch(tmp_path: Path) -> None:
    db, new = tmp_path / "gw.db", tmp_path / "new.db"
    store_with_data(db)
    old_epoch = epoch_of(db)
    write_garbage_over_readings(db)
    out = cli("store", "recover", "--store", str(db), "--to", str(new))
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    new_epoch = epoch_of(new)
    assert new_epoch != old_epoch
    assert f"new store epoch {new_epoch} (was {old_epoch})" in out.stdout
    readings = count(new, "readings")
    # 64 KB is 16 pages of about 200 integer-coded readings each: only the rows on them are lost
    assert 20_000 - 16 * 250 < readings < 20_000
    assert f"readings: {readings} rows copied, 1 damaged region(s) skipped" in out.stdout
    assert cli("store", "check", "--store", str(new)).returncode == 0
    # The recovered store is a working store: it opens, continues every seq, and drains what was pending.
    store = Store(new)
    pending = store.pending(limit=100_000)
    assert pending
    assert all(store.message_rows(m) for m in pending)  # no message left that has nothing to publish
    last_seq = max(m.seq for m in pending)
    store.commit([reading("A", 1)], now_ms=2, per_message=1)
    assert max(m.seq for m in store.pending(limit=100_000)) == last_seq + 1
    store.close()
    assert read_epoch_marker(new) == new_epoch
    # It refuses to overwrite anything.
    again = cli("store", "recover", "--store", str(db), "--to", str(new))
    assert again.returncode == 4
    assert again.stderr == f"error: {new}: already exists; recover writes a new store, give a new path\n"


def test_store_backup_is_a_consistent_copy_with_a_new_epoch_while_the_store_is_open(tmp_path: Path) -> None:
    db, copy = tmp_path / "gw.db", tmp_path / "backup.db"
    store = Store(db)
    store.commit([reading("A", i) for i in range(500)], now_ms=1, per_message=10)
    out = cli("store", "backup", "--store", str(db), str(copy))  # the gateway holds the store meanwhile
    assert out.returncode == 0, out.stderr
    store.close()
    assert count(copy, "readings") == 500
    assert epoch_of(copy) != epoch_of(db)
    assert f"{copy}: backup of {db}, epoch {epoch_of(copy)}" in out.stdout
    assert cli("store", "check", "--store", str(copy)).returncode == 0


def test_recover_drops_pending_messages_whose_rows_were_all_lost(tmp_path: Path) -> None:
    """A message with nothing left to publish would stop the encoder; its seq stays a visible hole."""
    from gateway.store_check import recover

    db, new = tmp_path / "gw.db", tmp_path / "new.db"
    store = Store(db)
    store.commit([reading("A", i) for i in range(6)], now_ms=1, per_message=2)  # seqs 1..3
    store.close()
    with sqlite3.connect(db) as conn:  # the rows of seq 2 were on a page that did not survive
        conn.execute("DELETE FROM samples WHERE id IN (3, 4)")
    report = recover(db, new)
    assert report.emptied_pending == 1
    assert "pending: 1 messages dropped (all their rows were lost: their seqs stay holes)" in report.lines()
    store = Store(new)
    assert [m.seq for m in store.pending(limit=10)] == [1, 3]
    store.close()


def test_recover_knows_every_table_of_the_schema() -> None:
    from gateway.store_check import TABLES
    from gateway.store_schema import metadata

    assert {t.name for t in metadata.sorted_tables} - {"meta"} <= set(TABLES)


def _garbage_over_leaf_pages(path: Path, table: str, where: slice) -> None:
    with sqlite3.connect(path) as conn:
        pages = [p for (p,) in conn.execute("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' "
                                            "ORDER BY pageno", (table,))]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    with path.open("r+b") as f:
        for p in pages[where]:
            f.seek((p - 1) * size)
            f.write(b"\x5a" * size)


def test_recover_never_leaves_a_readable_undelivered_reading_unsent(tmp_path: Path) -> None:
    """Damaged `pending` pages: those messages are sent again (when in doubt, resend). Damaged `messages`
    pages: their readings get new messages (new seqs), pending. No readable reading is left without one."""
    from gateway.store_check import recover

    db, new = tmp_path / "gw.db", tmp_path / "new.db"
    store_with_data(db)  # 20,000 readings, one message each
    store = Store(db)
    store.commit([], now_ms=2, per_message=1, acked=range(1, 10_001))  # the first half delivered
    store.close()
    with sqlite3.connect(db) as conn:
        undelivered = {r for (r,) in conn.execute("SELECT m.first_id FROM pending p JOIN messages m "
                                                  "ON m.id = p.message_id")}
    _garbage_over_leaf_pages(db, "pending", slice(-12, -8))
    _garbage_over_leaf_pages(db, "messages", slice(10, 14))
    report = recover(db, new)
    assert report.repended > 0
    assert report.rebuilt_messages > 0
    assert report.rebuilt_messages <= report.rebuilt_rows <= 100 * report.rebuilt_messages
    with sqlite3.connect(new) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        orphans = conn.execute("SELECT COUNT(*) FROM samples s WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE "
                               "m.kind = 'readings' AND s.id BETWEEN m.first_id AND m.last_id)").fetchone()[0]
        assert orphans == 0
        sent_again = {r for (r,) in conn.execute("SELECT s.id FROM samples s JOIN messages m ON m.kind = 'readings' "
                                                 "AND s.id BETWEEN m.first_id AND m.last_id JOIN pending p "
                                                 "ON p.message_id = m.id")}
        survivors = {r for (r,) in conn.execute("SELECT id FROM samples")}
        seqs = conn.execute("SELECT COUNT(*), COUNT(DISTINCT seq) FROM messages WHERE stream = 'A/readings'").fetchone()
    assert undelivered & survivors <= sent_again
    assert seqs[0] == seqs[1]  # no seq used twice
    assert "messages: " in "\n".join(report.lines())


def test_recover_gives_rows_of_lost_messages_their_absolute_time_or_drops_them_named(tmp_path: Path) -> None:
    """Schema 10: a readings message's later rows store their time as an offset from its first row's. When
    the `messages` rows are lost, recover writes each surviving row's absolute time from the first row of its
    message; a row whose first row was lost too has no time left: dropped and counted, never given a wrong one."""
    from gateway.model import Calibration, Quality, Reading
    from gateway.store_check import recover

    db, new = tmp_path / "gw.db", tmp_path / "new.db"
    t0 = 1_795_000_000_000

    def true_ts(i: int) -> int:
        return t0 + 1000 * (i // 2) + 37 * (i % 3)

    store = Store(db)
    for lo in range(0, 6_000, 1_000):
        store.commit([Reading("A" if (i // 7) % 2 else "B", f"p{i % 2}", true_ts(i), float(i), "V", Quality.GOOD, "",
                              Calibration.VALID) for i in range(lo, lo + 1_000)], now_ms=1, per_message=7)
    store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM samples WHERE ts_ms < ?", (2**40,)).fetchone()[0] > 4_000
    _garbage_over_leaf_pages(db, "messages", slice(None))  # every message row lost
    for k in (3, 9, 15):  # and three pages of rows, each cutting some message after its first row
        _garbage_over_leaf_pages(db, "samples", slice(k, k + 1))
    report = recover(db, new)
    with sqlite3.connect(new) as conn:
        kept = conn.execute("SELECT ts_ms, value FROM readings").fetchall()
        uncovered = conn.execute("SELECT COUNT(*) FROM samples s WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE "
                                 "m.kind = 'readings' AND s.id BETWEEN m.first_id AND m.last_id)").fetchone()[0]
    assert [ts for ts, _ in kept] == [true_ts(int(v)) for _, v in kept]  # every kept row: its true time
    assert uncovered == 0  # each kept row is in a new message, to be sent
    assert 0 < report.timeless_rows < 3 * 7  # at most a message's tail after each damaged page
    assert report.timeless_rows + len(kept) == report.tables["readings"].copied
    assert "rows dropped: their message was lost" in "\n".join(report.lines())
