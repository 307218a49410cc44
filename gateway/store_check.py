"""`carbon-gateway store check|recover|backup`: the full integrity check, salvage of a damaged store into a
new one, and an online backup.

All three read the store without its lock, through a read-only SQLite connection, so `check` and
`backup` work while the gateway runs (WAL readers never block the writer). A recovered store and a backup
get a NEW epoch: put in place of the live store, they are visible to subscribers as another store (its
seqs may repeat numbers the old store already used), never silently mistaken for the old one.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway.errors import StoreError
from gateway.store import Store, check_lines, run_check

# Tables copied by `recover`, parents first. `meta` is merged by key (the new store keeps its own epoch and
# schema version).
TABLES = ("series", "labels", "samples", "readings", "records", "messages", "pending", "streams", "ingested",
          "rules_state", "config_history", "chain_links")
# How the report names a table: the integer-coded `samples` are the store's readings (schema 5); a
# `readings` table (an older store) is copied through the view of the same name, which codes each row.
REPORT_NAMES = {"samples": "readings"}
MAX_POINT_LOOKUPS = 1_000_000  # rows tried one by one across one damaged region at most


def _open_ro(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise StoreError(f"{path}: no such store")
    if path.is_dir():
        raise StoreError(f"{path}: is a directory, not a store")
    try:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as err:
        raise StoreError(f"{path}: cannot open the store: {err}") from None


def check(path: Path) -> list[str]:
    """PRAGMA integrity_check (every page, every index) plus the store's own invariants: one line per problem,
    [] when the store is sound."""
    if path.exists() and path.is_file() and path.stat().st_size == 0:
        return ["the store file is empty (0 bytes): truncated or lost"]
    db = _open_ro(path)
    try:
        try:
            problems = run_check(db, "integrity_check", 100)
        except sqlite3.DatabaseError as err:
            return [str(err)]
        if problems:
            return problems
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "meta" not in tables:
                return ["not a carbon-gateway store (no meta table)"]
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if "epoch" not in meta and int(meta.get("schema_version", "0")) >= 3:
                problems.append("meta: no epoch")
            if {"pending", "messages"} <= tables:
                (dangling,) = db.execute("SELECT COUNT(*) FROM pending WHERE message_id NOT IN "
                                         "(SELECT id FROM messages)").fetchone()
                if dangling:
                    problems.append(f"pending: {dangling} entries name no message")
        except sqlite3.DatabaseError as err:
            problems.append(str(err))
        return problems
    finally:
        db.close()


@dataclass
class TableReport:
    copied: int = 0
    damaged_regions: int = 0
    unreadable_rows: int = 0  # rows (or ids) that failed one by one inside damaged regions
    refused: int = 0  # read but not valid for the new store (e.g. a NULL where one is not allowed)
    # rowid spans [lo, hi) (hi None: to the end) that could not be read in full
    damaged_spans: list[tuple[int, int | None]] = field(default_factory=list)


@dataclass
class RecoverReport:
    source_epoch: str | None
    epoch: str
    tables: dict[str, TableReport] = field(default_factory=dict)
    dangling_pending: int = 0
    emptied_pending: int = 0
    repended: int = 0
    rebuilt_messages: int = 0
    rebuilt_rows: int = 0
    timeless_rows: int = 0

    def lines(self) -> list[str]:
        out = [f"new store epoch {self.epoch} (was {self.source_epoch or 'unknown'})"]
        for name, t in self.tables.items():
            line = f"{name}: {t.copied} rows copied"
            if t.damaged_regions:
                line += f", {t.damaged_regions} damaged region(s) skipped ({t.unreadable_rows} rows unreadable)"
            if t.refused:
                line += f", {t.refused} damaged rows refused"
            out.append(line)
        if self.dangling_pending:
            out.append(f"pending: {self.dangling_pending} entries dropped (their message was lost)")
        if self.repended:
            out.append(f"pending: {self.repended} messages marked undelivered again (their delivery state was on "
                       f"damaged pages)")
        if self.rebuilt_messages:
            out.append(f"messages: {self.rebuilt_messages} new messages for {self.rebuilt_rows} rows whose message "
                       f"was lost (new seqs, pending)")
        if self.timeless_rows:
            out.append(f"readings: {self.timeless_rows} rows dropped: their message was lost and so was the first "
                       f"row of it, which held the time their own is an offset from")
        if self.emptied_pending:
            out.append(f"pending: {self.emptied_pending} messages dropped (all their rows were lost: their seqs "
                       f"stay holes)")
        return out


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in db.execute(f"PRAGMA table_info({table})").fetchall()]


def _rows(src: sqlite3.Connection, table: str, cols: list[str], report: TableReport) -> Iterator[tuple[object, ...]]:
    """Every readable row of a table in rowid order: a plain scan while it works; across a damaged region,
    probe forward (doubling steps) for a rowid from which the scan works again and try the rows in between
    one by one, so only the rows on bad pages are lost."""
    select = ", ".join(cols)
    pos = -(2**63)  # the scan continues after this rowid
    tried_to = 0  # rowids below this were already tried one by one
    prev_pos, step = None, 1
    while True:
        try:
            for row in src.execute(f"SELECT rowid, {select} FROM {table} WHERE rowid > ? ORDER BY rowid", (pos,)):
                pos = row[0]
                yield row[1:]
            return
        except sqlite3.DatabaseError:
            report.damaged_regions += pos != prev_pos
        step = step * 2 if pos == prev_pos else 1  # failed again at the same place: jump further
        prev_pos = pos
        base = max(pos, 0)  # the gateway's rowids are positive
        while True:
            if step >= 2**62:
                report.damaged_spans.append((base + 1, None))
                return  # nothing readable after the damage
            probe = base + step
            try:
                found = src.execute(f"SELECT rowid FROM {table} WHERE rowid >= ? ORDER BY rowid LIMIT 1",
                                    (probe,)).fetchone()
                break
            except sqlite3.DatabaseError:
                step *= 2
        report.damaged_spans.append((base + 1, probe if found is not None else None))
        for rowid in range(max(base + 1, tried_to, probe - MAX_POINT_LOOKUPS), probe):
            try:
                row = src.execute(f"SELECT {select} FROM {table} WHERE rowid = ?", (rowid,)).fetchone()
            except sqlite3.DatabaseError:
                report.unreadable_rows += 1
                continue
            if row is not None:
                yield row
        tried_to = max(tried_to, probe)
        if found is None:
            return
        pos = probe - 1


# A stored time at least this far from 1970 (about 35 years) is absolute; below it, in a schema-10 message, an offset.
ABSOLUTE_TS = 2**40


def _absolute_times(dst: sqlite3.Connection, rows: list[tuple[int, str, int]]) -> tuple[list[tuple[int, str]], int]:
    """Readings rows (id, instrument, stored ts) of lost schema-10 messages store their time as an offset from
    their message's first row (store_schema.BASE_OF_ROW), which holds it absolute: with the message row gone,
    each offset row gets its absolute time written in the recovered copy, from the nearest row before it of
    the same unbroken run of its instrument (the same time, stored self-contained: the chain hashes the
    absolute time). An offset row with no such row before it (that first row was damaged too) has lost its
    time: deleted from the copy and counted. Returns the rows kept and the number deleted."""
    kept: list[tuple[int, str]] = []
    lost: list[int] = []
    base: int | None = None
    prev: tuple[int, str] | None = None
    for rid, instrument, ts in rows:
        if prev is None or prev != (rid - 1, instrument):
            base = None  # a gap or another instrument: a new message starts here
        prev = (rid, instrument)
        if type(ts) is not int:
            kept.append((rid, instrument))  # an edited row: copied as it is, for verify to name
        elif abs(ts) >= ABSOLUTE_TS:
            base = ts
            kept.append((rid, instrument))
        elif base is None:
            lost.append(rid)
        else:
            dst.execute("UPDATE samples SET ts_ms = ? WHERE id = ?", (base + ts, rid))
            kept.append((rid, instrument))
    dst.executemany("DELETE FROM samples WHERE id = ?", [(rid,) for rid in lost])
    return kept, len(lost)


def _rebuild_lost_messages(dst: sqlite3.Connection, spans: list[tuple[int, int | None]],
                           now_ms: int, per_message: int = 100) -> tuple[int, int, int]:
    """Readings and records left without a message by damaged `messages` pages: cut into new messages
    (one instrument's consecutive rows, new seqs of its stream), pending. Returns (messages, rows, readings
    dropped for their lost time)."""
    kinds = ["readings", *(k for (k,) in dst.execute("SELECT DISTINCT kind FROM records"))]
    windows: list[tuple[str, int, int]] = []
    for lo, hi in spans:  # message ids and row ids grow together: the lost rows lie between the neighbours
        for kind in kinds:
            below = dst.execute("SELECT MAX(last_id) FROM messages WHERE kind = ? AND id < ?", (kind, lo)).fetchone()[0]
            above = None if hi is None else dst.execute(
                "SELECT MIN(first_id) FROM messages WHERE kind = ? AND id >= ?", (kind, hi)).fetchone()[0]
            windows.append((kind, below or 0, 2**62 if above is None else above))
    seqs = dict(dst.execute("SELECT stream, last_seq FROM streams").fetchall())
    next_id = int(dst.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0]) + 1
    made = rows_n = timeless = 0
    uncovered = ("AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.kind = ? AND m.first_id <= {id} "
                 "AND m.last_id >= {id})")
    for kind, below, above in windows:
        if kind == "readings":
            rows, dropped = _absolute_times(dst, dst.execute(
                "SELECT s.id, se.instrument, s.ts_ms FROM samples s JOIN series se ON se.id = s.series "
                "WHERE s.id > ? AND s.id < ? " + uncovered.format(id="s.id") + " ORDER BY s.id",
                (below, above, kind)).fetchall())
            timeless += dropped
        else:
            rows = dst.execute("SELECT c.id, c.instrument FROM records c WHERE c.kind = ? AND c.id > ? AND c.id < ? "
                               + uncovered.format(id="c.id") + " ORDER BY c.id", (kind, below, above, kind)).fetchall()
        chunks: list[list[tuple[int, str]]] = []
        for rid, instrument in rows:
            last = chunks[-1][-1] if chunks else None
            if last is None or last[0] != rid - 1 or last[1] != instrument or len(chunks[-1]) >= per_message:
                chunks.append([])
            chunks[-1].append((rid, instrument))
        for chunk in chunks:
            instrument = chunk[0][1]
            stream = f"{instrument}/{kind}"
            seqs[stream] = seqs.get(stream, 0) + 1
            dst.execute("INSERT INTO messages (id, stream, seq, kind, instrument, first_id, last_id, created_ms) "
                        "VALUES (?,?,?,?,?,?,?,?)", (next_id, stream, seqs[stream], kind, instrument, chunk[0][0],
                                                     chunk[-1][0], now_ms))
            dst.execute("INSERT OR IGNORE INTO pending (message_id) VALUES (?)", (next_id,))
            dst.execute("INSERT INTO streams (stream, last_seq) VALUES (?, ?) ON CONFLICT(stream) DO UPDATE SET "
                        "last_seq = excluded.last_seq", (stream, seqs[stream]))
            next_id += 1
            made += 1
            rows_n += len(chunk)
    return made, rows_n, timeless


def recover(source: Path, target: Path) -> RecoverReport:
    """Copy every readable row of `source` into a new store at `target` (which must not exist)."""
    if target.exists():
        raise StoreError(f"{target}: already exists; recover writes a new store, give a new path")
    if target.resolve() == source.resolve():
        raise StoreError(f"{target}: is the damaged store itself; give a new path")
    src = _open_ro(source)
    try:
        try:
            src_tables = {r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as err:
            hint = " (the sqlite3 shell's `.recover` may still salvage pages)" if shutil.which("sqlite3") else ""
            raise StoreError(f"{source}: the store's schema itself is unreadable ({err}); nothing can be copied "
                             f"row by row{hint}") from None
        source_epoch = None
        old_meta: list[tuple[object, ...]] = []
        if "meta" in src_tables:
            meta_report = TableReport()
            old_meta = list(_rows(src, "meta", ["key", "value"], meta_report))
            source_epoch = next((str(v) for k, v in old_meta if k == "epoch"), None)
        new = Store(target, synchronous="normal")
        report = RecoverReport(source_epoch=source_epoch, epoch=new.epoch)
        new.close()
        dst = sqlite3.connect(target, isolation_level=None)
        try:
            dst.execute("PRAGMA synchronous=NORMAL")
            dst.execute("BEGIN")
            dst_tables = {r[0] for r in dst.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            for table in TABLES:
                if table not in src_tables:
                    continue
                t = report.tables.setdefault(REPORT_NAMES.get(table, table), TableReport())
                cols = [c for c in _columns(src, table) if c in set(_columns(dst, table))]
                marks = ", ".join("?" for _ in cols)
                insert = f"INSERT OR IGNORE INTO {table} ({', '.join(cols)}) VALUES ({marks})"
                via_view = table not in dst_tables  # its INSTEAD OF trigger reports no rowcount
                for row in _rows(src, table, cols, t):
                    before = dst.total_changes
                    done = dst.execute(insert, row).rowcount == 1 if not via_view else dst.total_changes > before
                    if done:
                        t.copied += 1
                    elif table != "labels" or row[0] != 0:  # the empty label every store starts with
                        t.refused += 1
            for key, value in old_meta:
                if key not in ("epoch", "schema_version") and isinstance(key, str):
                    dst.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(value)))
            dst.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('recovered_from', ?)",
                        (f"{source} epoch {source_epoch or 'unknown'} at {int(time.time() * 1000)}",))
            # A lost streams row must not let a seq be used twice.
            dst.execute("INSERT INTO streams (stream, last_seq) SELECT stream, MAX(seq) FROM messages WHERE true "
                        "GROUP BY stream ON CONFLICT(stream) DO UPDATE SET "
                        "last_seq = MAX(last_seq, excluded.last_seq)")
            # When in doubt, send again: a message whose delivery state was on a damaged page of `pending`
            # is undelivered (a duplicate under the new epoch costs less than a reading never sent).
            pending_report = report.tables.get("pending")
            for lo, hi in pending_report.damaged_spans if pending_report else []:
                report.repended += dst.execute(
                    "INSERT OR IGNORE INTO pending (message_id) SELECT id FROM messages WHERE id >= ? AND id < ?",
                    (lo, 2**62 if hi is None else hi)).rowcount
            # Rows whose message was on a damaged page of `messages` get new messages (new seqs), pending.
            messages_report = report.tables.get("messages")
            if messages_report and messages_report.damaged_spans:
                report.rebuilt_messages, report.rebuilt_rows, report.timeless_rows = _rebuild_lost_messages(
                    dst, messages_report.damaged_spans, int(time.time() * 1000))
            # Readings messages without a time span (rebuilt above, or copied from an older store) get it
            # from their rows: the time look-ups (schema 6) find readings through it.
            ts = "ts_ms + IIF(id > messages.first_id, IFNULL(messages.ts_base, 0), 0)"
            dst.execute(f"UPDATE messages SET min_ts = (SELECT MIN({ts}) FROM samples WHERE id BETWEEN "
                        f"messages.first_id AND messages.last_id), max_ts = (SELECT MAX({ts}) FROM samples WHERE "
                        "id BETWEEN messages.first_id AND messages.last_id) WHERE kind = 'readings' "
                        "AND (min_ts IS NULL OR max_ts IS NULL)")
            # A lost message row leaves its pending entry naming nothing.
            report.dangling_pending = dst.execute(
                "DELETE FROM pending WHERE message_id NOT IN (SELECT id FROM messages)").rowcount
            # A pending message whose rows were all lost cannot be published (a message has at least one
            # reading or record): its seq stays a hole, which subscribers see as lost data.
            report.emptied_pending = dst.execute(
                "DELETE FROM pending WHERE message_id IN (SELECT m.id FROM messages m JOIN pending p "
                "ON p.message_id = m.id WHERE CASE WHEN m.kind = 'readings' "
                "THEN NOT EXISTS (SELECT 1 FROM samples r WHERE r.id BETWEEN m.first_id AND m.last_id) "
                "ELSE NOT EXISTS (SELECT 1 FROM records c WHERE c.id BETWEEN m.first_id AND m.last_id) END)"
            ).rowcount
            dst.execute("INSERT INTO streams (stream, last_seq) SELECT stream, MAX(seq) FROM messages WHERE true "
                        "GROUP BY stream ON CONFLICT(stream) DO UPDATE SET "
                        "last_seq = MAX(last_seq, excluded.last_seq)")
            dst.execute("COMMIT")
            dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except BaseException:
            if dst.in_transaction:
                dst.execute("ROLLBACK")
            raise
        finally:
            dst.close()
    finally:
        src.close()
    problems = check(target)
    if problems:
        raise StoreError(f"{target}: the recovered store fails its own check: {problems[0]}")
    return report


def backup(source: Path, target: Path) -> str:
    """An online, consistent copy of `source` at `target` (SQLite backup API), given a new epoch. Returns it."""
    if target.exists():
        raise StoreError(f"{target}: already exists; give a new path")
    src = _open_ro(source)
    tmp = target.with_name(target.name + ".partial")
    tmp.unlink(missing_ok=True)
    try:
        dst = sqlite3.connect(tmp, isolation_level=None)
        try:
            src.backup(dst, pages=1024, sleep=0.005)  # in steps: the running gateway keeps committing
            problems = check_lines(dst.execute("PRAGMA quick_check").fetchall())
            if problems:
                raise StoreError(f"{source}: the backup copy fails its check ({problems[0]}); run "
                                 f"`carbon-gateway store check --store {source}`")
        finally:
            dst.close()
    except sqlite3.Error as err:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"{source}: backup failed: {err}") from None
    finally:
        src.close()
    old_epoch = _epoch_of(tmp)
    epoch = _renew_epoch(tmp, copied_from=old_epoch)
    tmp.rename(target)
    return epoch


def _epoch_of(path: Path) -> str | None:
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
    return str(row[0]) if row else None


def _renew_epoch(path: Path, *, copied_from: str | None) -> str:
    import uuid

    epoch = uuid.uuid4().hex
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN")
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('epoch', ?)", (epoch,))
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('copied_from', ?)",
                   (f"epoch {copied_from or 'unknown'} at {int(time.time() * 1000)}",))
        db.execute("COMMIT")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return epoch
