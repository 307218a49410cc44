"""SQLite store: the single source of truth, and the outbox the forwarder drains.

One connection, used only from the event loop thread, in batched transactions: perf-limits.md
measured a worker-thread commit path collapsing throughput 180x (GIL convoy), while inline batched
commits cost ~3.6 us per reading. One process writes a file (a lock file enforces it).

The outbox is owned here, with its one cursor: `begin(limit)` hands out the next undelivered
messages (backlog and live traffic sharing the window), `ack(ids)` marks them delivered (applied
in the next transaction, so an ack costs no fsync of its own), `release(ids)` offers them again.
Messages committed by this process are handed out from memory with the records they carry, so
live traffic is never read back from SQLite; only a backlog (after an outage or a restart) is.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import sqlite3
import struct
import time
import uuid
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine
from sqlalchemy.pool import StaticPool

from gateway import chain, config_history
from gateway.errors import StoreError
from gateway.model import Calibration, Derived, Message, Quality, Reading, StoredReading
from gateway.store_schema import (
    ABS_TS,
    ABS_TS_OF_MESSAGE,
    CALIBRATION_CODES,
    MIGRATION_GUARDS,
    MIGRATIONS,
    QUALITY_CODES,
    SCHEMA_VERSION,
    VIEWS,
    metadata,
)

log = logging.getLogger("gateway.store")

KIND_READINGS = "readings"
_HEADER_PACK = chain.HEADER_NUM.pack
_QUALITY_NAMES = {code: name for name, code in QUALITY_CODES.items()} | {3: "bad"}
_CALIBRATION_NAMES = {code: name for name, code in CALIBRATION_CODES.items()}

_F = TypeVar("_F", bound=Callable[..., Any])


def _guarded(what: str) -> Callable[[_F], _F]:
    """Turn any SQLite error of a store method into StoreError naming the store: a corrupt page or an
    I/O error met at run time is never swallowed as a library exception somewhere up the stack."""

    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        def guarded(self: Store, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(self, *args, **kwargs)
            except sqlite3.Error as err:
                if getattr(self, "_db", None) is not None and self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise StoreError(f"{self.path}: {what} failed: {err}{_corrupt_hint(err, self.path)}") from err

        return guarded  # type: ignore[return-value]

    return wrap
DERIVED_KINDS = ("events", "aggregates", "substitutes", "corrections", "carbon")

# Re-exported: the record types live in gateway.model; `from gateway.store import Derived` keeps working.
__all__ = ["DERIVED_KINDS", "KIND_READINGS", "Derived", "Message", "Store", "StoreStats", "StoredReading"]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message handed out by `Store.begin`: its identity in the stream and the records it carries.

    `rows` are readings (objects with point, ts_ms, value, unit, quality, reason, calibration) for
    kind "readings", else the stored record bodies (dicts), in order. A resend carries the same rows.
    """

    id: int
    instrument: str
    kind: str
    seq: int
    created_ms: int
    rows: Sequence[Any]
    # The message's link in its hash chain (gateway/chain.py): the last row id it covers and the link's hash.
    chain_pos: int = 0
    chain_hash: bytes = b""


_SAMPLE_COLUMNS = 5  # id, series, ts_ms, value, code
_SAMPLE_BLOCKS = (100, 20)  # rows per INSERT statement, largest first; what is left goes one row a step


def _samples_insert(rows: int) -> str:
    return ("INSERT INTO samples (id, series, ts_ms, value, code) VALUES "
            + ",".join(["(?,?,?,?,?)"] * rows))


_SAMPLES_INSERT = {n: _samples_insert(n) for n in (*_SAMPLE_BLOCKS, 1)}


def _insert_samples(db: sqlite3.Connection, flat: list[object]) -> None:
    """Insert samples rows given flat (`_SAMPLE_COLUMNS` values a row), in order, 100 rows a statement where
    it can: one step for 100 rows instead of 100 executemany steps, 0.79 -> 0.46 us a row of the commit's
    CPU (bench, SQLite 3.40). Three statement texts, so the connection's statement cache keeps them."""
    pos, end = 0, len(flat)
    for block in _SAMPLE_BLOCKS:
        step = block * _SAMPLE_COLUMNS
        sql = _SAMPLES_INSERT[block]
        while end - pos >= step:
            db.execute(sql, flat[pos:pos + step])
            pos += step
    if pos < end:
        db.executemany(_SAMPLES_INSERT[1], [flat[i:i + _SAMPLE_COLUMNS] for i in range(pos, end, _SAMPLE_COLUMNS)])


@dataclass(frozen=True, slots=True)
class StoreStats:
    readings: int
    pending_messages: int
    oldest_pending_ms: int | None
    size_bytes: int


class Store:
    """The gateway's store. Opening it checks its integrity and its identity (`epoch`).

    A new store is built beside its final path and renamed into place, so a crash while creating
    it never leaves a zero-length file; a zero-length store file is therefore damage and is refused.
    """

    def __init__(self, path: Path, *, synchronous: str = "full", config_version: str = "",
                 check: bool = True) -> None:
        self.path = path
        self.config_version = config_version
        self.epoch = ""
        self.previous_epoch: str | None = None  # set when this store replaced another one at the same path
        self.created = False
        self._lock_fd = -1
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise StoreError(f"{path}: store is in use by another gateway process") from None
        try:
            self._refuse_empty_file()
            if not path.exists():
                _create(path)
                self.created = True
            # SQLAlchemy owns the schema (DDL from store_schema); the hot path uses the same single
            # DBAPI connection with plain tuples (2.9x faster than Core inserts, perf-limits 4f).
            self._engine = create_engine(f"sqlite:///{path}", poolclass=StaticPool)
            self._db: sqlite3.Connection = self._engine.raw_connection().driver_connection  # type: ignore[assignment]
            self._db.isolation_level = None  # explicit BEGIN/COMMIT
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
            if check:
                self._quick_check()
            self._migrate()
            self.epoch = self._ensure_epoch()
            self._chain_open()
            # Never below the chain's head: an id deleted at the end (by hand) is not given out again.
            self._next_reading_id = max(self._scalar("SELECT COALESCE(MAX(id), 0) + 1 FROM samples"),
                                        self._chain_head[chain.CHAIN_READINGS][0] + 1)
            self._series: dict[tuple[str, str, str], int] = {
                (i, p, u): sid for sid, i, p, u in self._db.execute("SELECT id, instrument, point, unit FROM series")}
            self._labels: dict[str, int] = {t: lid for lid, t in self._db.execute("SELECT id, text FROM labels")}
            self._series_names: dict[int, tuple[str, str, str]] = {sid: k for k, sid in self._series.items()}
            self._label_texts: dict[int, str] = {lid: t for t, lid in self._labels.items()}
            # The next ids to give out, kept rather than found by a max() over every series per commit (issue 8).
            self._next_series = max(self._series.values(), default=0) + 1
            self._next_label = max(self._labels.values(), default=0) + 1
            self._next_message_id = self._scalar("SELECT COALESCE(MAX(id), 0) + 1 FROM messages")
            self._next_record_id = max(self._scalar("SELECT COALESCE(MAX(id), 0) + 1 FROM records"),
                                       self._chain_head[chain.CHAIN_RECORDS][0] + 1)
            self._seq: dict[str, int] = dict(self._db.execute("SELECT stream, last_seq FROM streams").fetchall())
        except sqlite3.Error as err:
            self.close()
            raise StoreError(f"{path}: cannot open the store: {err}{_corrupt_hint(err, path)}") from None
        except BaseException:
            self.close()
            raise
        self._remember_epoch()
        # -- the outbox cursor (one place): see begin() --
        last = self._next_message_id - 1
        self._out_live_after = last  # ids above this were committed by this process: live traffic
        self._out_backlog: deque[list[int]] = deque([[0, last]] if last else [])  # [after, up_to] id ranges
        self._out_retry: deque[tuple[float, Outgoing]] = deque()  # released: offered again from `due`
        self._out_inflight: dict[int, Outgoing] = {}  # handed out, neither acked nor released
        self._out_recent: OrderedDict[int, Outgoing] = OrderedDict()  # committed, not yet handed out
        self._out_recent_rows = 0
        self._out_acked: list[int] = []  # delivered, applied with the next transaction
        self._out_acked_since = 0.0
        self.recent_rows_max = 50_000  # live messages kept in memory for begin(); older ones are re-read
        self.ack_flush_s = 0.2  # acks wait at most this long for a transaction when nothing is committed

    # -- lifecycle -------------------------------------------------------------------------------

    def _refuse_empty_file(self) -> None:
        """A zero-length store is a truncated or lost store, never silently a new one (its seqs would
        restart at 1 and subscribers would discard the new data as duplicates)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        wal = Path(str(self.path) + "-wal")
        if size == 0 and not (wal.exists() and wal.stat().st_size > 0):
            marker = read_epoch_marker(self.path)
            held = f" (it held epoch {marker})" if marker else ""
            raise StoreError(f"{self.path}: the store file is empty (0 bytes){held}: it was truncated or lost; "
                             f"restore it from a backup, or delete it to start a new store with a new epoch")

    def _quick_check(self) -> None:
        """About 10 ms per MB on the development machine (0.34 s for a 33 MB store): seconds for a store
        near its size alarm, once per start."""
        started = time.monotonic()
        problems = run_check(self._db, "quick_check", 20)
        if not problems:  # a failure is the one line of the StoreError below
            log.info("%s: integrity quick check ok in %.1f s", self.path, time.monotonic() - started)
        if problems:
            more = "+" if len(problems) >= 20 else ""
            raise StoreError(f"{self.path}: the store is corrupt ({len(problems)}{more} problems, first: "
                             f"{problems[0]}); {recover_advice(self.path)}")

    def _scalar(self, sql: str, *args: object) -> int:
        row = self._db.execute(sql, args).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def _migrate(self) -> None:
        has_meta = self._db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        version = 0
        if has_meta:
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema version {version} is newer than this gateway ({SCHEMA_VERSION})")
        if version == 0:
            with self._engine.begin() as conn:
                metadata.create_all(conn)
                for statement in VIEWS:
                    conn.exec_driver_sql(statement)
                conn.exec_driver_sql("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                                     (str(SCHEMA_VERSION),))
            return
        while version < SCHEMA_VERSION:
            # One transaction per step: a crash mid-migration leaves the previous version intact.
            self._db.execute("BEGIN IMMEDIATE")
            guard = MIGRATION_GUARDS.get(version - 1)
            if guard is None or self._db.execute(guard).fetchone() is not None:
                for statement in MIGRATIONS[version - 1]:
                    self._db.execute(statement)
            version += 1
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
            self._db.execute("COMMIT")

    def _ensure_epoch(self) -> str:
        """The store's identity: created with it; a store from before epochs (schema < 3) gets one now."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        if row and row[0]:
            return str(row[0])
        epoch = uuid.uuid4().hex
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('epoch', ?)", (epoch,))
        if not self.created:
            log.info("%s: store had no epoch (made by an older version); its epoch is now %s", self.path, epoch)
        return epoch

    def _chain_open(self) -> None:
        """Load each chain's head; a chain with no anchor yet (a new store, or the first open at schema 7)
        starts after the table's newest row, from its genesis hash (docs/hash-chain.md)."""
        self._chain_head: dict[int, tuple[int, bytes]] = {}
        # (instrument, point, unit, quality, reason, calibration) -> (series, code, chain prefix, its CRC)
        self._coding: dict[tuple[str, str, str, str, str, str], tuple[int, int, bytes, int]] = {}
        self._chain_prefix: dict[tuple[int, int], bytes] = {}  # (series, code) -> a reading's encoding but ts/value
        specs = [(chain.CHAIN_READINGS, "readings", "samples"), (chain.CHAIN_RECORDS, "records", "records"),
                 *((s.code, s.name, s.table) for s in chain.EXTRA_CHAINS.values())]
        for code, name, table in specs:
            if not self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                    (table,)).fetchone():
                continue
            anchor = read_anchor(self._db, name)
            if anchor is None:
                last = self._scalar(f"SELECT COALESCE(MAX(id), 0) FROM {table}")
                anchor = Anchor(last + 1, last, chain.genesis(self.epoch, name))
                write_anchor(self._db, name, anchor)
                if last:
                    log.info("%s: the %s hash chain starts after row %d (rows stored before schema 7 are not "
                             "chained)", self.path, name, last)
            row = self._db.execute("SELECT last_id, hash FROM chain_links WHERE chain = ? ORDER BY first_id DESC "
                                   "LIMIT 1", (code,)).fetchone()
            self._chain_head[code] = (int(row[0]), bytes(row[1])) if row else (anchor.last_id, anchor.hash)

    def chain_heads(self) -> dict[str, dict[str, Any]]:
        """Each chain's head: the last row id it covers and its hash (hex), as the status topic shows them."""
        return {chain.NAMES.get(code) or str(code): {"pos": pos, "hash": h.hex()}
                for code, (pos, h) in self._chain_head.items()}

    @_guarded("appending a chained row")
    def chain_insert(self, name: str, sql: str, params: Sequence[Any]) -> int:
        """Insert one row with `sql` and link it into the chain `name` (registered in chain.EXTRA_CHAINS: its
        table, a SELECT by id range, an encoder) in the same transaction; returns the row id. For tables
        outside the commit path, e.g. the configuration history (issue 11 item 2)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            rid = int(db.execute(sql, params).lastrowid or 0)
            self._chain_link_row(name, rid)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return rid

    def _chain_link_row(self, name: str, rid: int) -> None:
        """Inside a transaction that has just inserted row `rid` of the chain `name`'s table: link it (the head
        moves at once; a rollback after this is followed by no further use of the store's head)."""
        spec = chain.EXTRA_CHAINS[name]
        db = self._db
        if spec.code not in self._chain_head:  # the table came with a migration after this store opened
            self._chain_open()
        row = db.execute(spec.select, (rid, rid)).fetchone()
        enc = spec.encode(*row[1:])
        h = chain.link_hash(self._chain_head[spec.code][1], chain.single_header(name, 1), [enc])
        db.execute("INSERT INTO chain_links (chain, first_id, last_id, hash, tags) VALUES (?,?,?,?,?)",
                   (spec.code, rid, rid, h, chain.tags_blob([chain.tag(enc)])))
        self._chain_head[spec.code] = (rid, h)

    def _seq_total(self) -> int:
        """How many messages this store has ever numbered (the sum of every stream's last seq): it only
        grows, so a smaller number under the same epoch means an older copy of the store came back."""
        return self._scalar("SELECT COALESCE(SUM(last_seq), 0) FROM streams")

    def _remember_epoch(self) -> None:
        """Compare with the epoch last seen at this path (`<store>.epoch`) and warn loudly on a change."""
        previous, seen_total = read_epoch_marker_full(self.path)
        total = self._seq_total()
        if previous == self.epoch and seen_total is not None and total < seen_total:
            # The same store, but older than it was (a file copy restored): its next seqs would repeat
            # numbers already published with other content. It becomes a new epoch.
            old = self.epoch
            self.epoch = uuid.uuid4().hex
            try:
                self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('epoch', ?)", (self.epoch,))
            except sqlite3.Error as err:
                raise StoreError(f"{self.path}: cannot renew the store epoch: {err}") from None
            self.previous_epoch = old
            log.warning("%s: the store went back in time (it has numbered %d messages, %d were numbered before: "
                        "an older copy was restored); it is now epoch %s (was %s), so subscribers that "
                        "deduplicate by (instrument, epoch, seq) keep the new data", self.path, total, seen_total,
                        self.epoch, old)
        elif previous is not None and previous != self.epoch:
            self.previous_epoch = previous
            log.warning("%s: the store was replaced or reset: epoch %s was here before, this store is epoch %s "
                        "(%s); seq numbers start again in this epoch, so subscribers must deduplicate by "
                        "(instrument, epoch, seq)", self.path, previous, self.epoch,
                        "a new empty store" if self.created else "another store file")
        elif self.created:
            log.info("%s: created a new store, epoch %s", self.path, self.epoch)
        try:
            write_epoch_marker(self.path, self.epoch, total)
        except OSError as err:
            raise StoreError(f"{epoch_marker_path(self.path)}: cannot record the store epoch: "
                             f"{err.strerror}") from None

    def close(self) -> None:
        try:
            if getattr(self, "_db", None) is not None:
                if self.epoch:
                    with contextlib.suppress(sqlite3.Error, OSError):
                        write_epoch_marker(self.path, self.epoch, self._seq_total())  # the high-water mark
                self._db.close()
                self._db = None  # type: ignore[assignment]
            if getattr(self, "_engine", None) is not None:
                self._engine.dispose()
                self._engine = None  # type: ignore[assignment]
        finally:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1

    # -- writing ---------------------------------------------------------------------------------

    def commit(self, readings: Sequence[Reading], *, now_ms: int, per_message: int,
               acked: Iterable[int] = (), derived: Sequence[Derived] = (),
               ingested: Sequence[tuple[str, str]] = (),
               rules_state: Mapping[tuple[str, str], str] | None = None) -> int:
        """One transaction: append readings, cut them into per-instrument messages, apply acks.

        `rules_state` maps (instrument, point) to the rules engine's checkpoint of that point, upserted
        in the same transaction with the last reading id committed so far as its high-water mark.

        `ingested` lists (sha256, file name) of the inbox files whose records are in `derived`: kept in
        the same transaction, so an inbox file is stored exactly once (see `is_ingested`).

        Returns the number of messages created. Readings of one instrument get consecutive ids so a
        message is a plain id range.
        """
        acked = [*self._out_acked, *acked]
        if not readings and not acked and not derived and not ingested and not rules_state:
            return 0
        by_instrument: dict[str, list[Reading]] = {}
        for r in readings:
            by_instrument.setdefault(r.instrument, []).append(r)
        rows: list[object] = []  # samples rows, flat: _SAMPLE_COLUMNS values a row (_insert_samples)
        msgs: list[tuple[object, ...]] = []
        outs: list[Outgoing] = []
        rid, mid = self._next_reading_id, self._next_message_id
        seq_updates: dict[str, int] = {}
        cv = self.config_version
        # Integer coding (store_schema.samples): new series and labels go in the same transaction.
        series, labels = self._series, self._labels
        new_series: dict[tuple[str, str, str], int] = {}
        new_labels: dict[str, int] = {}
        next_series, next_label = self._next_series, self._next_label

        def label(text: str) -> int:
            nonlocal next_label
            lid = labels.get(text)
            if lid is None:
                lid = new_labels.get(text)
                if lid is None:
                    lid = new_labels[text] = next_label
                    next_label += 1
            return lid

        cfg = label(cv) if by_instrument else None
        qcodes, ccodes = QUALITY_CODES, CALIBRATION_CODES
        # The hash chain (gateway/chain.py), by column: per reading, its text fields' encoding (cached per
        # (series, code) with its CRC), time and canonical value go into lists and its tag is one tuple hash;
        # per message, one pack of the times, one of the values and one SHA-256.
        links: list[tuple[object, ...]] = []
        heads = self._chain_head
        prev_r = heads[chain.CHAIN_READINGS][1]
        prefixes = self._chain_prefix
        coding = self._coding
        sha256, pack, absent = hashlib.sha256, struct.pack, chain.ABSENT
        cv_text = chain.text(cv)
        for instrument, items in by_instrument.items():
            stream = f"{instrument}/{KIND_READINGS}"
            seq = seq_updates.get(stream, self._seq.get(stream, 0))
            for start in range(0, len(items), per_message):
                chunk = items[start : start + per_message]
                first = rid
                tss = [r.ts_ms for r in chunk]
                lo, hi = min(tss), max(tss)
                base = tss[0]  # ts_base (schema 10): later rows store their offset from the first row's time
                row0 = len(rows)  # where the first row's values start
                pres: list[bytes] = []
                times: list[int] = []
                vals: list[float] = []
                tags: list[int] = []
                for r in chunk:
                    ts = r.ts_ms
                    # Series, code and chain prefix repeat from poll to poll: one lookup per reading (issue 8).
                    tkey = (instrument, r.point, r.unit, r.quality, r.reason, r.calibration)
                    coded = coding.get(tkey)
                    if coded is None:
                        key = (instrument, r.point, r.unit)
                        sid = series.get(key) or new_series.get(key)
                        if sid is None:
                            sid = new_series[key] = next_series
                            next_series += 1
                        reason = labels.get(r.reason) if r.reason else 0
                        if reason is None:
                            reason = label(r.reason)
                        code = qcodes[r.quality] | ccodes[r.calibration] << 2 | reason << 4
                        pc = prefixes.get((sid, code))
                        if pc is None:
                            pre = chain.reading_prefix(instrument, r.point, r.unit, r.quality, r.calibration, r.reason)
                            pc = prefixes[(sid, code)] = (pre, zlib.crc32(pre))
                        coded = (sid, code, pc[0], pc[1])
                        # Kept only once its series and label are committed: a rolled-back transaction takes
                        # back the ids it gave out.
                        if key in series and (not r.reason or r.reason in labels):
                            if len(coding) > 200_000:
                                coding.clear()
                            coding[tkey] = coded
                    sid, code, pre, crc = coded
                    v = r.value
                    rows += (rid, sid, ts - base, v, code)
                    pres.append(pre)
                    times.append(ts)
                    if v is not None and v == v:
                        v = v + 0.0
                        vals.append(v)
                        tags.append(hash((crc, ts, v)) & 0xFFFF)
                    else:
                        vals.append(absent)
                        tags.append(hash((crc, ts)) & 0xFFFF)
                    rid += 1
                rows[row0 + 2] = base  # the first row: its absolute time
                seq += 1
                n = len(chunk)
                h = sha256(b"R" + chain.text(instrument) + _HEADER_PACK(seq, now_ms, n) + cv_text)
                h.update(b"".join(pres))
                h.update(pack(f"<{n}q", *times))
                h.update(pack(f"<{n}d", *vals))
                prev_r = sha256(prev_r + h.digest()).digest()
                links.append((chain.CHAIN_READINGS, first, rid - 1, prev_r, pack(f"<{n}H", *tags)))
                msgs.append((mid, stream, seq, KIND_READINGS, instrument, first, rid - 1, now_ms, cfg, lo, hi, base))
                outs.append(Outgoing(mid, instrument, KIND_READINGS, seq, now_ms, chunk, rid - 1, prev_r))
                mid += 1
            seq_updates[stream] = seq
        rec_rows: list[tuple[object, ...]] = []
        recid = self._next_record_id
        by_stream: dict[tuple[str, str], list[Derived]] = {}
        for d in derived:
            by_stream.setdefault((d.instrument, d.kind), []).append(d)
        prev_d = heads[chain.CHAIN_RECORDS][1]
        for (instrument, kind), items in by_stream.items():
            stream = f"{instrument}/{kind}"
            seq = seq_updates.get(stream, self._seq.get(stream, 0))
            for start in range(0, len(items), per_message):
                chunk = items[start : start + per_message]
                first = recid
                encs = []
                for d in chunk:
                    body = json.dumps(d.body, separators=(",", ":"), allow_nan=False)
                    rec_rows.append((recid, d.kind, d.instrument, d.point, d.ts_ms, body, cv, now_ms))
                    encs.append(chain.record_row(d.kind, d.instrument, d.point, d.ts_ms, body, cv, now_ms))
                    recid += 1
                seq += 1
                prev_d = chain.link_hash(prev_d, chain.records_header(kind, instrument, seq, now_ms, len(chunk)), encs)
                links.append((chain.CHAIN_RECORDS, first, recid - 1, prev_d,
                              chain.tags_blob([chain.tag(e) for e in encs])))
                msgs.append((mid, stream, seq, kind, instrument, first, recid - 1, now_ms, None, None, None, None))
                outs.append(Outgoing(mid, instrument, kind, seq, now_ms, [d.body for d in chunk], recid - 1, prev_d))
                mid += 1
            seq_updates[stream] = seq
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            if rec_rows:
                db.executemany("INSERT INTO records (id, kind, instrument, point, ts_ms, body, config_version, "
                               "stored_ms) VALUES (?,?,?,?,?,?,?,?)", rec_rows)
            if new_series:
                db.executemany("INSERT INTO series (id, instrument, point, unit) VALUES (?,?,?,?)",
                               [(sid, *key) for key, sid in new_series.items()])
            if new_labels:
                db.executemany("INSERT INTO labels (id, text) VALUES (?,?)", [(i, t) for t, i in new_labels.items()])
            if msgs:
                _insert_samples(db, rows)
                db.executemany("INSERT INTO messages (id, stream, seq, kind, instrument, first_id, last_id, "
                               "created_ms, config, min_ts, max_ts, ts_base) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", msgs)
                db.executemany("INSERT INTO pending (message_id) VALUES (?)", [(m[0],) for m in msgs])
                db.executemany("INSERT INTO chain_links (chain, first_id, last_id, hash, tags) VALUES (?,?,?,?,?)",
                               links)
                db.executemany("INSERT INTO streams (stream, last_seq) VALUES (?, ?) "
                               "ON CONFLICT(stream) DO UPDATE SET last_seq = excluded.last_seq",
                               list(seq_updates.items()))
            if acked:
                # PUBACKs come mostly in order: one range delete per run of consecutive ids, not one per id.
                db.executemany("DELETE FROM pending WHERE message_id BETWEEN ? AND ?", id_ranges(acked))
            if ingested:
                db.executemany("INSERT OR IGNORE INTO ingested (sha256, name, stored_ms) VALUES (?,?,?)",
                               [(h, name, now_ms) for h, name in ingested])
            if rules_state:
                db.executemany("INSERT INTO rules_state (instrument, point, hwm, state, stored_ms) VALUES (?,?,?,?,?) "
                               "ON CONFLICT(instrument, point) DO UPDATE SET hwm = excluded.hwm, "
                               "state = excluded.state, stored_ms = excluded.stored_ms",
                               [(i, p, rid - 1, state, now_ms) for (i, p), state in rules_state.items()])
            db.execute("COMMIT")
        except sqlite3.Error as err:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(f"{self.path}: commit failed: {err}{_corrupt_hint(err, self.path)}") from err
        self._next_reading_id, self._next_message_id, self._next_record_id = rid, mid, recid
        if links:
            if by_instrument:
                heads[chain.CHAIN_READINGS] = (rid - 1, prev_r)
            if rec_rows:
                heads[chain.CHAIN_RECORDS] = (recid - 1, prev_d)
        self._seq.update(seq_updates)
        series.update(new_series)
        labels.update(new_labels)
        self._next_series, self._next_label = next_series, next_label
        self._series_names.update({sid: key for key, sid in new_series.items()})
        self._label_texts.update({lid: text for text, lid in new_labels.items()})
        self._out_acked.clear()
        recent = self._out_recent
        for o in outs:
            recent[o.id] = o
            self._out_recent_rows += len(o.rows)
        while self._out_recent_rows > self.recent_rows_max and recent:
            _, old = recent.popitem(last=False)  # begin() reads it back from SQLite when its turn comes
            self._out_recent_rows -= len(old.rows)
        return len(msgs)

    def flush(self) -> None:
        """Apply the acks still waiting for a transaction (the writer's commits normally carry them)."""
        if self._out_acked:
            self.commit([], now_ms=0, per_message=1)

    # -- the outbox --------------------------------------------------------------------------------

    @_guarded("reading the outbox")
    def begin(self, limit: int) -> list[Outgoing]:
        """Hand out up to `limit` undelivered messages, oldest first within backlog and live traffic.

        Released messages come first; then backlog and live traffic share the window, so a long outage
        never starves live data. A message handed out is not offered again until it is released (ack()
        removes it for good). Raises StoreError when the store cannot be read.
        """
        now = time.monotonic()
        if self._out_acked and now - self._out_acked_since >= self.ack_flush_s:
            self.flush()
        out: list[Outgoing] = []
        retry = self._out_retry
        while retry and len(out) < limit and retry[0][0] <= now:
            out.append(retry.popleft()[1])
        free = limit - len(out)
        if free > 0:
            live_share = free // 2 if self._out_backlog else free
            backlog_share = free - live_share
            while self._out_backlog and backlog_share > 0:
                rng = self._out_backlog[0]
                got = self._load(rng[0], rng[1], backlog_share)
                out.extend(got)
                backlog_share -= len(got)
                if got:
                    rng[0] = got[-1].id
                if not got or rng[0] >= rng[1]:
                    self._out_backlog.popleft()
            live_share += backlog_share
            out.extend(self._take_live(live_share))
        inflight = self._out_inflight
        for o in out:
            inflight[o.id] = o
        return out

    def _take_live(self, n: int) -> list[Outgoing]:
        out: list[Outgoing] = []
        last = self._next_message_id - 1
        recent = self._out_recent
        while n > 0 and self._out_live_after < last:
            nxt = self._out_live_after + 1
            o = recent.pop(nxt, None)
            if o is not None:
                self._out_recent_rows -= len(o.rows)
                out.append(o)
                self._out_live_after = nxt
                n -= 1
                continue
            # Evicted from memory (a burst larger than recent_rows_max): read these back.
            hi = next(iter(recent), last + 1) - 1
            got = self._load(self._out_live_after, hi, n)
            out.extend(got)
            n -= len(got)
            self._out_live_after = got[-1].id if got else hi
        return out

    def _load(self, after_id: int, up_to_id: int, limit: int) -> list[Outgoing]:
        return [Outgoing(m.id, m.instrument, m.kind, m.seq, m.created_ms, self.message_rows(m), *self._link_of(m))
                for m in self.pending(after_id=after_id, up_to_id=up_to_id, limit=limit)]

    def _link_of(self, m: Message) -> tuple[int, bytes]:
        """The message's chain link (last row id, hash); (0, b"") for a message from before the chain."""
        code = chain.CHAIN_READINGS if m.kind == KIND_READINGS else chain.CHAIN_RECORDS
        link = self._db.execute("SELECT last_id, hash FROM chain_links WHERE chain = ? AND first_id = ?",
                                (code, m.first_id)).fetchone()
        return (int(link[0]), bytes(link[1])) if link else (0, b"")

    def ack(self, ids: Iterable[int]) -> None:
        """These messages were delivered (PUBACK): never offered again; recorded with the next transaction."""
        if not self._out_acked:
            self._out_acked_since = time.monotonic()
        for i in ids:
            self._out_inflight.pop(i, None)
            self._out_acked.append(i)

    def release(self, ids: Iterable[int], *, delay_s: float = 0.0) -> None:
        """These messages were not delivered (rejected, or lost with a transport): offer them again."""
        due = time.monotonic() + delay_s
        for i in ids:
            o = self._out_inflight.pop(i, None)
            if o is not None:
                self._out_retry.append((due, o))

    def mark_backlog(self) -> None:
        """Everything committed but not yet handed out is backlog from now on (called on reconnect):
        it drains oldest first beside, not before, what is committed from now on."""
        last = self._next_message_id - 1
        if last > self._out_live_after:
            self._out_backlog.append([self._out_live_after, last])
            self._out_live_after = last
            self._out_recent.clear()
            self._out_recent_rows = 0

    @property
    def in_flight(self) -> int:
        return len(self._out_inflight)

    # -- reading ---------------------------------------------------------------------------------

    @_guarded("reading pending messages")
    def pending(self, *, after_id: int = 0, up_to_id: int | None = None, limit: int = 100) -> list[Message]:
        """Pending messages with after_id < id <= up_to_id, oldest first."""
        hi = up_to_id if up_to_id is not None else 2**62
        rows = self._db.execute(
            "SELECT m.id, m.instrument, m.kind, m.seq, m.first_id, m.last_id, m.created_ms, IFNULL(m.ts_base, 0) "
            "FROM pending p "
            "JOIN messages m ON m.id = p.message_id WHERE p.message_id > ? AND p.message_id <= ? "
            "ORDER BY p.message_id LIMIT ?", (after_id, hi, limit)).fetchall()
        return [Message(*r) for r in rows]

    def last_message_id(self) -> int:
        return self._next_message_id - 1

    @_guarded("reading readings")
    def readings_range(self, first_id: int, last_id: int, ts_base: int = 0) -> list[StoredReading]:
        """The readings with first_id <= id <= last_id (one message's: rows after its first store their
        time as an offset from `ts_base`), decoded here from the integer-coded rows (the backlog drain reads
        every row it sends: cheaper than the view's per-row look-ups)."""
        rows = self._db.execute("SELECT id, series, ts_ms, value, code FROM samples WHERE id BETWEEN ? AND ? "
                                "ORDER BY id", (first_id, last_id)).fetchall()
        names = self._series_names
        if any(r[1] not in names for r in rows):  # written by another tool through the view, or recovered
            names.update({sid: key for key, sid in self._series.items()})
            names.update({sid: (i, p, u) for sid, i, p, u in self._db.execute(
                "SELECT id, instrument, point, unit FROM series")})
        texts = self._label_texts
        if len(texts) != len(self._labels) or any((r[4] >> 4) not in texts for r in rows):
            texts.update({lid: t for lid, t in self._db.execute("SELECT id, text FROM labels")})
        quality, calibration = _QUALITY_NAMES, _CALIBRATION_NAMES
        out = []
        for rid, sid, ts, value, code in rows:
            inst, point, unit = names[sid]
            if rid > first_id:
                ts += ts_base
            out.append(StoredReading(rid, inst, point, ts, value, unit, quality[code & 3], texts[code >> 4],
                                     calibration[(code >> 2) & 3]))
        return out

    @_guarded("reading records")
    def records_range(self, first_id: int, last_id: int) -> list[dict[str, object]]:
        rows = self._db.execute("SELECT body FROM records WHERE id BETWEEN ? AND ? ORDER BY id",
                                (first_id, last_id)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def message_rows(self, msg: Message) -> list[StoredReading] | list[dict[str, object]]:
        if msg.kind == KIND_READINGS:
            return self.readings_range(msg.first_id, msg.last_id, msg.ts_base)
        return self.records_range(msg.first_id, msg.last_id)

    # -- replay on request (issue 12): delivered messages are kept until retention prunes them ----------

    @_guarded("reading a stream's bounds")
    def stream_bounds(self, instrument: str, kind: str) -> tuple[int, int] | None:
        """(oldest seq still kept whole, last seq) of one stream (oldest > last: all pruned), or None when
        it never had a message.

        Retention deletes readings by id prefix, so only the oldest kept readings message of an
        instrument can have lost some of its rows: it counts as gone."""
        stream = f"{instrument}/{kind}"
        last = self._seq.get(stream, 0)
        if not last:
            return None
        row = self._db.execute("SELECT seq, first_id FROM messages WHERE stream = ? ORDER BY seq LIMIT 1",
                               (stream,)).fetchone()
        if row is None:
            return last + 1, last  # every message of it was pruned
        oldest, first_id = int(row[0]), int(row[1])
        if kind == KIND_READINGS:
            lowest = self._db.execute("SELECT MIN(id) FROM samples").fetchone()[0]
            if lowest is None or first_id < lowest:
                oldest += 1
        return oldest, last

    @_guarded("reading messages for a replay")
    def stream_messages(self, instrument: str, kind: str, *, after_seq: int, up_to_seq: int,
                        ts_from: int | None = None, ts_to: int | None = None, limit: int = 100) -> list[Outgoing]:
        """The kept messages of one stream with after_seq < seq <= up_to_seq, in seq order, each with the
        records it carried (a resend carries the same rows). With ts_from/ts_to, only readings messages
        whose source times meet [ts_from, ts_to], or other messages committed in it."""
        sql = ("SELECT id, instrument, kind, seq, first_id, last_id, created_ms, IFNULL(ts_base, 0) FROM messages "
               "WHERE stream = ? AND seq > ? AND seq <= ?")
        args: list[object] = [f"{instrument}/{kind}", after_seq, up_to_seq]
        if ts_from is not None and ts_to is not None:
            sql += " AND max_ts >= ? AND min_ts <= ?" if kind == KIND_READINGS else " AND created_ms BETWEEN ? AND ?"
            args += [ts_from, ts_to]
        rows = self._db.execute(sql + " ORDER BY seq LIMIT ?", (*args, limit)).fetchall()
        out = []
        for r in rows:
            m = Message(*r)
            body = self.message_rows(m)
            if len(body) != m.last_id - m.first_id + 1:
                break  # pruned meanwhile: what is left of it is not the message that was sent
            out.append(Outgoing(m.id, m.instrument, m.kind, m.seq, m.created_ms, body, *self._link_of(m)))
        return out

    @_guarded("finding a stream's seqs by time")
    def seq_span(self, instrument: str, kind: str, ts_from: int, ts_to: int) -> tuple[int, int] | None:
        """(first, last) seq of the kept messages of a stream that meet the time range, or None."""
        if kind == KIND_READINGS:
            row = self._db.execute("SELECT MIN(seq), MAX(seq), COUNT(*) FROM messages WHERE kind = 'readings' "
                                   "AND instrument = ? AND max_ts >= ? AND min_ts <= ?",
                                   (instrument, ts_from, ts_to)).fetchone()
        else:
            row = self._db.execute("SELECT MIN(seq), MAX(seq), COUNT(*) FROM messages WHERE stream = ? "
                                   "AND created_ms BETWEEN ? AND ?",
                                   (f"{instrument}/{kind}", ts_from, ts_to)).fetchone()
        return (int(row[0]), int(row[1])) if row and row[2] else None

    @_guarded("reading records")
    def records(self, kind: str, instrument: str, point: str, *, since_ms: int = 0,
                last: int | None = None) -> list[dict[str, Any]]:
        """Stored bodies of one kind for one point, oldest first (the rules engine reloads its history);
        with `last`, only the newest `last` of them."""
        rows = self._db.execute("SELECT body FROM records WHERE kind = ? AND instrument = ? AND point = ? "
                                "AND ts_ms >= ? ORDER BY ts_ms DESC, id DESC LIMIT ?",
                                (kind, instrument, point, since_ms, -1 if last is None else last)).fetchall()
        return [json.loads(r[0]) for r in reversed(rows)]

    @_guarded("reading the last readings")
    def last_readings(self, points: Iterable[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, int | None]]:
        """(instrument, point) -> (newest ts, newest good ts): where each point stood when we last ran.

        Per instrument, its messages newest (by time span) first, each read by rowid range, until every
        point's newest and newest good time is certain: one message or a few per instrument, so start-up
        does not scan months of readings (only a point bad for long makes its instrument's scan go back
        to its last good reading)."""
        return last_readings(self._db, points, self._series)

    @_guarded("reading readings")
    def readings_since(self, instrument: str, point: str, ts_ms: int) -> list[Reading]:
        """The point's readings with ts >= ts_ms, in (ts, id) order."""
        rows = point_rows(self._db, self._point_series(instrument, point), instrument, lo=ts_ms)
        names, texts = self._names([r[1] for r in rows], [r[4] >> 4 for r in rows])
        quality, calibration = _QUALITY_NAMES, _CALIBRATION_NAMES
        return [Reading(instrument, point, ts, value, names[sid][2], Quality(quality[code & 3]), texts[code >> 4],
                        Calibration(calibration[(code >> 2) & 3])) for _rid, sid, ts, value, code in rows]

    @_guarded("looking up a reading")
    def reading_id_at(self, instrument: str, point: str, ts_ms: int) -> int | None:
        """The id of the point's first stored reading at exactly ts_ms, or None."""
        return reading_id_at(self._db, self._point_series(instrument, point), instrument, ts_ms)

    def _point_series(self, instrument: str, point: str) -> list[int]:
        return [sid for (i, p, _u), sid in self._series.items() if i == instrument and p == point]

    def _names(self, sids: Iterable[int], label_ids: Iterable[int]) -> tuple[dict[int, tuple[str, str, str]],
                                                                         dict[int, str]]:
        """The series and label caches, reloaded when rows name one they do not know (rows written by
        another tool through the view, or recovered)."""
        names = self._series_names
        if any(sid not in names for sid in sids):
            names.update({sid: key for key, sid in self._series.items()})
            names.update({sid: (i, p, u) for sid, i, p, u in self._db.execute(
                "SELECT id, instrument, point, unit FROM series")})
        texts = self._label_texts
        if len(texts) != len(self._labels) or any(lid not in texts for lid in label_ids):
            texts.update({lid: t for lid, t in self._db.execute("SELECT id, text FROM labels")})
        return names, texts

    @_guarded("reading the rules checkpoints")
    def rules_state(self) -> dict[tuple[str, str], tuple[int, str]]:
        """(instrument, point) -> (high-water reading id, checkpoint text) of the rules engine."""
        rows = self._db.execute("SELECT instrument, point, hwm, state FROM rules_state").fetchall()
        return {(i, p): (int(h), s) for i, p, h, s in rows}

    @_guarded("reading readings")
    def readings_after(self, after_id: int, *, limit: int = 20_000) -> list[tuple[int, Reading]]:
        """(id, reading) of up to `limit` readings with id > after_id, in id (commit) order."""
        rows = self._db.execute("SELECT id, instrument, point, ts_ms, value, unit, quality, reason, calibration "
                                "FROM readings WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
        return [(rid, Reading(i, p, t, v, u, Quality(q), r, Calibration(c))) for rid, i, p, t, v, u, q, r, c in rows]

    @_guarded("looking up ingested inbox files")
    def is_ingested(self, sha256: str) -> bool:
        return self._db.execute("SELECT 1 FROM ingested WHERE sha256 = ?", (sha256,)).fetchone() is not None

    @_guarded("reading the last reading time")
    def last_reading_ts(self) -> int | None:
        row = self._db.execute("SELECT MAX(max_ts) FROM messages WHERE kind = 'readings'").fetchone()
        return int(row[0]) if row and row[0] is not None else None

    @_guarded("recording the configuration")
    def record_config(self, version: str, manifest: dict[str, Any], *, cause: str,
                      now_ms: int) -> config_history.Entry | None:
        """Append the configuration to `config_history` if it differs from the last one recorded (issue 11)."""
        return config_history.record(self._db, version, manifest, cause=cause, now_ms=now_ms,
                                     link=functools.partial(self._chain_link_row, "config"))

    @_guarded("recording the configuration")
    def insert_config(self, row: config_history.Prepared, *, cause: str, now_ms: int) -> config_history.Entry:
        """Append a prepared `config_history` row (a reload)."""
        return config_history.insert(self._db, row, cause=cause, now_ms=now_ms,
                                     link=functools.partial(self._chain_link_row, "config"))

    @_guarded("reading store statistics")
    def stats(self) -> StoreStats:
        n = self._next_reading_id - 1
        pend = self._scalar("SELECT COUNT(*) FROM pending") - len(self._out_acked)
        oldest = self._db.execute(
            "SELECT m.created_ms FROM pending p JOIN messages m ON m.id = p.message_id "
            "ORDER BY p.message_id LIMIT 1").fetchone()
        size = sum(os.path.getsize(p) for p in (str(self.path), str(self.path) + "-wal") if os.path.exists(p))
        return StoreStats(readings=n, pending_messages=pend, oldest_pending_ms=oldest[0] if oldest else None,
                          size_bytes=size)

    # -- retention -------------------------------------------------------------------------------

    @_guarded("pruning delivered data")
    def prune_delivered(self, *, older_than_ms: int) -> int:
        """Delete delivered data older than the cutoff. Undelivered data is never deleted."""
        db = self._db
        min_pending_first = db.execute(
            "SELECT MIN(m.first_id) FROM pending p JOIN messages m ON m.id = p.message_id "
            "WHERE m.kind = 'readings'").fetchone()[0]
        bound = min_pending_first if min_pending_first is not None else self._next_reading_id
        min_pending_msg = db.execute("SELECT MIN(message_id) FROM pending").fetchone()[0]
        msg_bound = min_pending_msg if min_pending_msg is not None else self._next_message_id
        try:
            db.execute("BEGIN IMMEDIATE")
            # A reading's commit time is its message's (schema 5 keeps it once per message).
            old_last = db.execute("SELECT MAX(last_id) FROM messages WHERE kind = 'readings' AND created_ms < ?",
                                  (older_than_ms,)).fetchone()[0]
            cut = min(bound, (old_last or 0) + 1)  # a message boundary, so a chain link boundary
            cur = db.execute("DELETE FROM samples WHERE id < ?", (cut,))
            self._chain_prune(chain.CHAIN_READINGS, cut)
            db.execute("DELETE FROM messages WHERE id < ? AND created_ms < ?", (msg_bound, older_than_ms))
            min_pending_rec = db.execute(
                "SELECT MIN(m.first_id) FROM pending p JOIN messages m ON m.id = p.message_id "
                "WHERE m.kind != 'readings'").fetchone()[0]
            rec_bound = min_pending_rec if min_pending_rec is not None else self._next_record_id
            # Substitutes and aggregates are the reporting basis: kept as long as the raw readings are.
            # The oldest records only (ids in commit order): the records chain stays a suffix of itself.
            young = db.execute("SELECT MIN(id) FROM records WHERE stored_ms >= ?", (older_than_ms,)).fetchone()[0]
            rec_cut = min(rec_bound, young if young is not None else self._next_record_id)
            db.execute("DELETE FROM records WHERE id < ?", (rec_cut,))
            self._chain_prune(chain.CHAIN_RECORDS, rec_cut)
            db.execute("COMMIT")
        except sqlite3.Error as err:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(f"{self.path}: prune failed: {err}") from err
        return cur.rowcount

    def _chain_prune(self, code: int, cut: int) -> None:
        """Inside a pruning transaction: the chain's links wholly below `cut` go, and the chain's anchor keeps
        the hash of the last of them, so `verify` checks the retained part from there."""
        db = self._db
        row = db.execute("SELECT last_id, hash FROM chain_links WHERE chain = ? AND last_id < ? "
                         "ORDER BY first_id DESC LIMIT 1", (code, cut)).fetchone()
        if row is None:
            return
        name = chain.NAMES[code]
        anchor = read_anchor(db, name)
        db.execute("DELETE FROM chain_links WHERE chain = ? AND last_id < ?", (code, cut))
        write_anchor(db, name, Anchor(anchor.start if anchor else 1, int(row[0]), bytes(row[1])))

    @_guarded("measuring the store")
    def used_bytes(self) -> int:
        """Bytes of the store file in use (free pages, which new rows reuse, not counted)."""
        page_size = self._scalar("PRAGMA page_size")
        return (self._scalar("PRAGMA page_count") - self._scalar("PRAGMA freelist_count")) * page_size

    @_guarded("pruning delivered data by size")
    def prune_to_size(self, max_bytes: int, *, chunk: int = 200_000) -> int:
        """Delete the oldest delivered readings until the store uses at most 90 % of `max_bytes`.

        SQLite reuses the freed pages, so the file stops growing near `max_bytes` (it does not
        shrink). Undelivered data is never deleted: a backlog larger than `max_bytes` stays whole
        (the size alarm says so). Derived records (aggregates, substitutes) are kept: retention by
        age governs them. Returns the number of readings deleted."""
        target = int(max_bytes * 0.9)
        removed = 0
        db = self._db
        while True:
            used = self.used_bytes()
            if used <= max_bytes if removed == 0 else used <= target:
                return removed
            lo = db.execute("SELECT MIN(id) FROM samples").fetchone()[0]
            first_pending = db.execute(
                "SELECT MIN(m.first_id) FROM pending p JOIN messages m ON m.id = p.message_id "
                "WHERE m.kind = 'readings'").fetchone()[0]
            bound = first_pending if first_pending is not None else self._next_reading_id
            if lo is None or lo >= bound:
                return removed  # nothing delivered left to delete
            per_reading = used / max(1, self._next_reading_id - lo)
            n = min(bound - lo, chunk, int((used - target) / per_reading) + 1)
            # Up to the end of the chain link (message) the cut falls in, so no link is left half pruned.
            end = db.execute("SELECT MIN(last_id) FROM chain_links WHERE chain = ? AND last_id >= ?",
                             (chain.CHAIN_READINGS, lo + n - 1)).fetchone()[0]
            cut = min(bound, lo + n if end is None else end + 1)
            db.execute("BEGIN IMMEDIATE")
            cur = db.execute("DELETE FROM samples WHERE id < ?", (cut,))
            self._chain_prune(chain.CHAIN_READINGS, cut)
            db.execute("DELETE FROM messages WHERE kind = 'readings' AND last_id < ? AND id NOT IN "
                       "(SELECT message_id FROM pending)", (cut,))
            db.execute("COMMIT")
            removed += cur.rowcount


# -- time look-ups through the coarse per-message index (schema 6; also used read-only by corrections) ------
# A readings message is one instrument's consecutive readings (ids first_id..last_id, at most `per_message`
# of them) with the time span of their source times (min_ts..max_ts): `messages_by_time` finds the messages
# whose span meets the wanted times, and only their rows are read, by rowid range.

_SPAN_ROWS = (f"SELECT s.id, s.series, {ABS_TS} AS ts, s.value, s.code FROM messages m "
              "JOIN samples s ON s.id BETWEEN m.first_id AND m.last_id WHERE m.kind = 'readings' AND m.instrument = ? "
              "AND m.max_ts >= ? AND m.min_ts <= ? AND s.series IN ({sids}) AND ts BETWEEN ? AND ? ")


def sample_rows(db: sqlite3.Connection, lo: int, hi: int) -> Iterator[tuple[int, int, Any, Any, int]]:
    """(id, series, ts, value, code) of the rows with lo <= id <= hi, in id order, each time absolute (a
    row after the first of a schema-10 readings message stores its offset from the message's ts_base).
    For tools that walk rows by id (verify, export); a time that is not an integer (an edited row or
    ts_base) comes out as None, for the caller to name."""
    msgs = db.execute("SELECT first_id, last_id, IFNULL(ts_base, 0) FROM messages WHERE kind = 'readings' "
                      "AND last_id >= ? ORDER BY last_id", (lo,))
    cur = msgs.fetchone()
    for rid, sid, ts, value, code in db.execute(
            "SELECT id, series, ts_ms, value, code FROM samples WHERE id BETWEEN ? AND ? ORDER BY id", (lo, hi)):
        while cur is not None and cur[1] < rid:
            cur = msgs.fetchone()
        base = cur[2] if cur is not None and cur[0] < rid else 0
        yield rid, sid, (ts + base if type(ts) is int and type(base) is int else None), value, code


def id_ranges(ids: Iterable[int]) -> list[tuple[int, int]]:
    """The runs of consecutive integers in `ids` as (first, last) pairs, ascending: each id of each run is
    in `ids`, and each id of `ids` is in one run."""
    out: list[tuple[int, int]] = []
    it = iter(sorted(set(ids)))
    for lo in it:
        hi = lo
        for i in it:
            if i != hi + 1:
                out.append((lo, hi))
                lo = i
            hi = i
        out.append((lo, hi))
    return out


def series_of(db: sqlite3.Connection, instrument: str, point: str) -> list[int]:
    """The series ids of a point (one per unit it was stored in)."""
    return [int(r[0]) for r in db.execute("SELECT id FROM series WHERE instrument = ? AND point = ?",
                                          (instrument, point))]


def point_rows(db: sqlite3.Connection, sids: Sequence[int], instrument: str, *, lo: int = -2**63,
               hi: int = 2**63 - 1) -> list[tuple[int, int, int, float | None, int]]:
    """(id, series, ts, value, code) of the rows of these series with lo <= ts <= hi, in (ts, id) order."""
    if not sids:
        return []
    sql = _SPAN_ROWS.format(sids=",".join("?" * len(sids))) + "ORDER BY ts, s.id"
    return db.execute(sql, (instrument, lo, hi, *sids, lo, hi)).fetchall()


def reading_id_at(db: sqlite3.Connection, sids: Sequence[int], instrument: str, ts_ms: int) -> int | None:
    """The smallest id of a row of these series at exactly ts_ms, or None."""
    if not sids:
        return None
    sql = _SPAN_ROWS.format(sids=",".join("?" * len(sids))) + "ORDER BY s.id LIMIT 1"
    row = db.execute(sql, (instrument, ts_ms, ts_ms, *sids, ts_ms, ts_ms)).fetchone()
    return int(row[0]) if row else None


def nearest_ts(db: sqlite3.Connection, sids: Sequence[int], instrument: str, ts_ms: int, n: int) -> list[int]:
    """Up to n distinct stored times of these series before ts_ms and up to n after it, ascending."""
    if not sids:
        return []
    marks = ",".join("?" * len(sids))
    # ?1 the message's ts_base (0 before schema 10), ?2/?3 its first and last id (its first row is absolute)
    ts = ABS_TS_OF_MESSAGE
    in_span = f"SELECT DISTINCT {ts} FROM samples WHERE id BETWEEN ?2 AND ?3 AND series IN ({marks}) AND {ts} "
    before: set[int] = set()
    # Newest span first; a message can add nothing once n times found are at or above its newest time.
    for first, last, max_ts, base in db.execute(
            "SELECT first_id, last_id, max_ts, IFNULL(ts_base, 0) FROM messages WHERE kind = 'readings' "
            "AND instrument = ? AND min_ts < ? ORDER BY max_ts DESC", (instrument, ts_ms)):
        if len(before) >= n and sorted(before, reverse=True)[n - 1] >= max_ts:
            break
        before.update(t for (t,) in db.execute(in_span + "< ?", (base, first, last, *sids, ts_ms)))
    after: set[int] = set()
    for first, last, min_ts, base in db.execute(
            "SELECT first_id, last_id, min_ts, IFNULL(ts_base, 0) FROM messages WHERE kind = 'readings' "
            "AND instrument = ? AND max_ts > ? ORDER BY min_ts", (instrument, ts_ms)):
        if len(after) >= n and sorted(after)[n - 1] <= min_ts:
            break
        after.update(t for (t,) in db.execute(in_span + "> ?", (base, first, last, *sids, ts_ms)))
    return sorted([*sorted(before, reverse=True)[:n], *sorted(after)[:n]])


def last_readings(db: sqlite3.Connection, points: Iterable[tuple[str, str]],
                  series: Mapping[tuple[str, str, str], int]) -> dict[tuple[str, str], tuple[int, int | None]]:
    """(instrument, point) -> (newest ts, newest good ts) of the points that have readings (see
    Store.last_readings). `series` maps (instrument, point, unit) to the series id."""
    wanted = set(points)
    by_instrument: dict[str, dict[int, str]] = {}
    for (inst, point, _unit), sid in series.items():
        if (inst, point) in wanted:
            by_instrument.setdefault(inst, {})[sid] = point
    out: dict[tuple[str, str], tuple[int, int | None]] = {}
    for inst, sid_point in by_instrument.items():
        n = len(set(sid_point.values()))
        last: dict[str, int] = {}
        good: dict[str, int] = {}
        floor: int | None = None  # every point's newest and newest good time are at least this
        for first, last_id, max_ts, base in db.execute(
                "SELECT first_id, last_id, max_ts, IFNULL(ts_base, 0) FROM messages WHERE kind = 'readings' "
                "AND instrument = ? ORDER BY max_ts DESC", (inst,)):
            if floor is not None and max_ts is not None and floor >= max_ts:
                break  # this message and every later one are no newer than what was found
            for sid, newest, newest_good in db.execute(
                    f"SELECT series, MAX({ABS_TS_OF_MESSAGE}), MAX(CASE WHEN code & 3 = 0 AND value IS NOT NULL "
                    f"THEN {ABS_TS_OF_MESSAGE} END) FROM samples WHERE id BETWEEN ?2 AND ?3 GROUP BY series",
                    (base, first, last_id)):
                point = sid_point.get(sid)
                if point is None:
                    continue
                if newest > last.get(point, newest - 1):
                    last[point] = newest
                if newest_good is not None and newest_good > good.get(point, newest_good - 1):
                    good[point] = newest_good
            if len(good) == n:
                floor = min(min(last.values()), min(good.values()))
        for point, newest in last.items():
            out[(inst, point)] = (newest, good.get(point))
    return out


# -- the hash chain's anchors (meta `chain:<name>`) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Anchor:
    """Where a chain is checked from: `start` is the first row id the chain ever covered (rows below it were
    stored before schema 7), `last_id` and `hash` the last link before the retained ones (after pruning) or
    start - 1 and the genesis hash."""

    start: int
    last_id: int
    hash: bytes


def read_anchor(db: sqlite3.Connection, name: str) -> Anchor | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (f"chain:{name}",)).fetchone()
    if not row:
        return None
    start, last_id, h = str(row[0]).split()
    return Anchor(int(start), int(last_id), bytes.fromhex(h))


def write_anchor(db: sqlite3.Connection, name: str, anchor: Anchor) -> None:
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
               (f"chain:{name}", f"{anchor.start} {anchor.last_id} {anchor.hash.hex()}"))


# -- identity and integrity helpers (also used by `carbon-gateway store ...`) -----------------------


def epoch_marker_path(store_path: Path) -> Path:
    return Path(str(store_path) + ".epoch")


def read_epoch_marker(store_path: Path) -> str | None:
    """The epoch last seen at this store path, or None if there is no (readable) marker."""
    return read_epoch_marker_full(store_path)[0]


def read_epoch_marker_full(store_path: Path) -> tuple[str | None, int | None]:
    """(epoch, messages numbered when last seen) from the marker `<store>.epoch`; Nones where unreadable."""
    try:
        lines = epoch_marker_path(store_path).read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return None, None
    epoch = lines[0] if lines and len(lines[0]) == 32 and all(c in "0123456789abcdef" for c in lines[0]) else None
    total = int(lines[1]) if epoch and len(lines) > 1 and lines[1].isdigit() else None
    return epoch, total


def write_epoch_marker(store_path: Path, epoch: str, total: int) -> None:
    atomic_write(epoch_marker_path(store_path), f"{epoch}\n{total}\n".encode(), mode=0o644)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write a file so that a reader (or a crash) sees either nothing or all of it: temp, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # not narrowed by the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create(path: Path) -> None:
    """Build a new, empty store beside `path` and rename it into place (never a half-made store file)."""
    tmp = path.with_name(path.name + ".creating")
    for leftover in (tmp, Path(str(tmp) + "-wal"), Path(str(tmp) + "-shm"), Path(str(tmp) + "-journal")):
        leftover.unlink(missing_ok=True)
    engine = create_engine(f"sqlite:///{tmp}", poolclass=StaticPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        with engine.begin() as conn:
            metadata.create_all(conn)
            for statement in VIEWS:
                conn.exec_driver_sql(statement)
            conn.exec_driver_sql("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            conn.exec_driver_sql("INSERT INTO meta VALUES ('epoch', ?)", (uuid.uuid4().hex,))
        with engine.begin() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        engine.dispose()
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def check_lines(rows: Iterable[tuple[Any, ...]]) -> list[str]:
    """The problems reported by PRAGMA quick_check/integrity_check, one per line ([] when it says ok)."""
    lines = [line.strip() for (text,) in rows for line in str(text).splitlines()]
    return [line for line in lines if line and line != "ok" and not line.startswith("*** in database")]


def run_check(db: sqlite3.Connection, pragma: str, limit: int) -> list[str]:
    """PRAGMA quick_check/integrity_check, one problem per line ([] when sound).

    SQLite reports a badly damaged b-tree and then fails the statement itself when fewer than `limit`
    problems were found, which loses the report in Python's cursor; smaller limits get the report."""
    last: sqlite3.DatabaseError | None = None
    for n in (limit, 20, 10, 5, 2, 1):
        if n > limit:
            continue
        try:
            problems = check_lines(db.execute(f"PRAGMA {pragma}({n})").fetchall())
        except sqlite3.DatabaseError as err:
            last = err
            continue
        if last is not None:
            problems.append(f"the check stopped early: {last}")
        return problems
    assert last is not None
    return [str(last)]


def recover_advice(path: Path) -> str:
    return (f"keep this file, run `carbon-gateway store recover --store {path} --to NEW.db` to copy every "
            f"readable row into a new store, then move NEW.db to {path}")


def _corrupt_hint(err: sqlite3.Error, path: Path) -> str:
    text = str(err)
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return f"; {recover_advice(path)}"
    return ""
