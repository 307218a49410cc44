"""Walk a store's hash chains and name the first broken link (`carbon-gateway verify`; docs/hash-chain.md).

Reads through a read-only connection in one read transaction (a consistent snapshot while the gateway
writes). For each chain, from its anchor (or, with a time range, from the stored hash of the link before the
range), every link's rows are read back, encoded as the gateway encoded them, and hashed with the previous
hash; the first difference is reported as one `Problem`: which table and row, and what differs
(edited: the row's content is not what was chained; deleted: a row id of a link is missing, or a whole link
is gone; inserted: a row no link covers; or a link's hash / header changed).
"""

from __future__ import annotations

import sqlite3
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway import chain
from gateway.store import DERIVED_KINDS, Anchor, read_anchor, sample_rows

_QUALITY = {0: "good", 1: "uncertain", 2: "bad", 3: "bad"}
_CALIBRATION = {0: "valid", 1: "due_soon", 2: "expired", 3: "unknown"}
_BAD = b"\xff(unreadable)"  # the encoding of a row whose columns cannot be encoded: never matches


@dataclass(frozen=True, slots=True)
class Problem:
    chain: str
    table: str
    row_id: int | None
    kind: str  # edited | deleted | inserted | link
    what: str

    def line(self) -> str:
        where = f"{self.table} id {self.row_id}" if self.row_id is not None else self.table
        return f"{self.chain} chain: {where}: {self.kind}: {self.what}"


@dataclass
class ChainReport:
    name: str
    table: str
    links: int = 0
    rows: int = 0
    before: int = 0  # rows stored before the chain started (a store migrated from schema 6)
    anchor: Anchor | None = None
    head_pos: int = 0
    head_hash: bytes = b""
    ranged: bool = False
    checked_from: int = 0  # the walk recomputed the links after this row id, up to head_pos

    def line(self) -> str:
        if self.anchor is None:
            return f"{self.name} chain: none (no {self.table} table)"
        text = (f"{self.name} chain: {self.links} links, {self.rows} rows ok, head {self.head_pos} "
                f"{self.head_hash.hex()}")
        if not self.ranged and self.anchor.last_id >= self.anchor.start:
            text += f" (checked from the retained part: anchor {self.anchor.last_id} {self.anchor.hash.hex()[:16]}…)"
        if self.before:
            text += f"; {self.before} rows stored before the chain started are not covered"
        return text


@dataclass
class Result:
    reports: list[ChainReport] = field(default_factory=list)
    problem: Problem | None = None


@dataclass(frozen=True, slots=True)
class _Row:
    id: int
    enc: bytes  # a reading's prefix (text fields), or a record's whole encoding
    info: tuple[Any, ...]  # (what, ts[, value]): formatted only when the row is named in a problem
    tag: int
    ts: int = 0  # readings: the time and canonical value (the link encodes them by column)
    value: float = 0.0

    @property
    def desc(self) -> str:
        text = f"{self.info[0]} at {_ms(self.info[1])}"
        return text + (f", value {self.info[2]}" if len(self.info) > 2 else "")


def _ms(ts: object) -> str:
    try:
        return datetime.fromtimestamp(int(ts) / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError, OSError):
        return repr(ts)


class _Readings:
    name, table, code = "readings", "samples", chain.CHAIN_READINGS

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.series = {sid: (i, p, u) for sid, i, p, u in db.execute("SELECT id, instrument, point, unit FROM series")}
        self.labels = {lid: t for lid, t in db.execute("SELECT id, text FROM labels")}
        self.prefixes: dict[tuple[int, int], tuple[bytes, int]] = {}  # (series, code) -> (encoding, its CRC-32)

    def _prefix(self, sid: int, code: int) -> tuple[bytes, int]:
        names = self.series[sid]
        enc = chain.reading_prefix(*names, _QUALITY[code & 3], _CALIBRATION[(code >> 2) & 3], self.labels[code >> 4])
        out = self.prefixes[(sid, code)] = (enc, zlib.crc32(enc))
        return out

    def rows(self, lo: int, hi: int) -> Iterator[_Row]:
        series, prefixes, tag, canonical = self.series, self.prefixes, chain.reading_tag, chain.canonical_value
        for rid, sid, ts, value, code in sample_rows(self.db, lo, hi):
            names = series.get(sid)
            info = (f"{names[0]} {names[1]}" if names else f"series {sid}", ts, value)
            try:
                pc = prefixes.get((sid, code)) or self._prefix(sid, code)
                if type(ts) is not int or not -2**63 <= ts < 2**63:
                    raise TypeError(ts)
                v = canonical(float(value) if value is not None else None)
            except (KeyError, TypeError, ValueError, OverflowError):
                yield _Row(rid, _BAD, info, -1)
                continue
            yield _Row(rid, pc[0], info, tag(pc[1], ts, v), ts, v)

    def block(self, rows: list[_Row]) -> bytes:
        if any(r.enc is _BAD for r in rows):
            return _BAD
        return chain.readings_rows([r.enc for r in rows], [r.ts for r in rows], [r.value for r in rows])

    def header(self, first: int, last: int, n: int) -> tuple[bytes, str] | None:
        row = self.db.execute(
            "SELECT m.instrument, m.seq, m.created_ms, l.text FROM messages m LEFT JOIN labels l ON l.id = m.config "
            "WHERE m.kind = 'readings' AND m.last_id = ? AND m.first_id = ?", (last, first)).fetchone()
        if row is None:
            return None
        inst, seq, created, cv = row
        return (chain.readings_header(inst, seq, created, cv or "", n),
                f"message {inst}/readings seq {seq}, rows {first}..{last}")

    def ids_between(self, lo_ms: int, hi_ms: int) -> tuple[int, int] | None:
        row = self.db.execute("SELECT MIN(first_id), MAX(last_id) FROM messages WHERE kind = 'readings' "
                              "AND max_ts >= ? AND min_ts <= ?", (lo_ms, hi_ms)).fetchone()
        return (int(row[0]), int(row[1])) if row and row[0] is not None else None


class _Records(_Readings):
    name, table, code = "records", "records", chain.CHAIN_RECORDS

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def rows(self, lo: int, hi: int) -> Iterator[_Row]:
        for rid, kind, inst, point, ts, body, cv, stored in self.db.execute(
                "SELECT id, kind, instrument, point, ts_ms, body, config_version, stored_ms FROM records "
                "WHERE id >= ? AND id <= ? ORDER BY id", (lo, hi)):
            try:
                enc = chain.record_row(kind, inst, point, ts, body, cv, stored)
            except (TypeError, ValueError, AttributeError, struct.error):
                enc = _BAD
            yield _Row(rid, enc, (f"{kind} of {inst} {point}", ts), chain.tag(enc) if enc is not _BAD else -1)

    def block(self, rows: list[_Row]) -> bytes:
        return b"".join(r.enc for r in rows)

    def header(self, first: int, last: int, n: int) -> tuple[bytes, str] | None:
        marks = ",".join("?" * len(DERIVED_KINDS))
        row = self.db.execute(f"SELECT kind, instrument, seq, created_ms FROM messages WHERE kind IN ({marks}) "
                              "AND last_id = ? AND first_id = ?", (*DERIVED_KINDS, last, first)).fetchone()
        if row is None:
            return None
        kind, inst, seq, created = row
        return (chain.records_header(kind, inst, seq, created, n),
                f"message {inst}/{kind} seq {seq}, rows {first}..{last}")

    def ids_between(self, lo_ms: int, hi_ms: int) -> tuple[int, int] | None:
        row = self.db.execute("SELECT MIN(id), MAX(id) FROM records WHERE ts_ms >= ? AND ts_ms <= ?",
                              (lo_ms, hi_ms)).fetchone()
        return (int(row[0]), int(row[1])) if row and row[0] is not None else None


class _Extra(_Readings):
    """A chain registered in chain.EXTRA_CHAINS (one link per row, e.g. the configuration history)."""

    def __init__(self, db: sqlite3.Connection, spec: chain.ChainSpec) -> None:
        self.db, self.spec = db, spec
        self.name, self.table, self.code = spec.name, spec.table, spec.code

    def rows(self, lo: int, hi: int) -> Iterator[_Row]:
        for row in self.db.execute(self.spec.select, (lo, hi)):
            try:
                enc = self.spec.encode(*row[1:])
            except (TypeError, ValueError, AttributeError, struct.error):
                enc = _BAD
            yield _Row(int(row[0]), enc, (f"{self.table} row", None), chain.tag(enc) if enc is not _BAD else -1)

    def block(self, rows: list[_Row]) -> bytes:
        return b"".join(r.enc for r in rows)

    def header(self, first: int, last: int, n: int) -> tuple[bytes, str] | None:
        return chain.single_header(self.name, n), f"rows {first}..{last}"

    def ids_between(self, lo_ms: int, hi_ms: int) -> tuple[int, int] | None:
        return None  # configuration changes are few: always checked whole


def verify(db: sqlite3.Connection, *, lo_ms: int | None = None, hi_ms: int | None = None) -> Result:
    """Walk every chain of the store (all of its retained part, or the segment covering [lo_ms, hi_ms]);
    stop at the first problem."""
    result = Result()
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "chain_links" not in tables:
        raise ValueError("the store has no hash chain (schema older than 7): open it once with this gateway "
                         "version (it migrates), the chain starts then")
    walkers: list[_Readings] = [_Readings(db), _Records(db)]
    walkers += [_Extra(db, spec) for spec in chain.EXTRA_CHAINS.values() if spec.table in tables]
    for w in walkers:
        report = ChainReport(w.name, w.table, ranged=lo_ms is not None or hi_ms is not None)
        result.reports.append(report)
        report.anchor = read_anchor(db, w.name)
        if report.anchor is None:
            n = db.execute(f"SELECT COUNT(*) FROM {w.table}").fetchone()[0]
            if n:
                result.problem = Problem(w.name, w.table, None, "link",
                                         f"the chain's anchor (meta chain:{w.name}) is missing but the table has "
                                         f"{n} rows: the chain was removed")
                return result
            report.anchor = Anchor(1, 0, b"")
            continue
        result.problem = _walk(db, w, report, lo_ms, hi_ms)
        if result.problem is not None:
            return result
    return result


def expectation(db: sqlite3.Connection, result: Result, chain_name: str, pos: int, hash_hex: str) -> str | None:
    """Compare a hash published by the gateway (a message's `chain`, a status head) with the store's chain after
    a clean walk: None when it matches, else the one-line reason. A match proves the store still holds what
    was published at that position; a mismatch, that it was changed and re-chained since."""
    report = next((r for r in result.reports if r.name == chain_name), None)
    if report is None or report.anchor is None:
        return f"{chain_name} chain: no such chain in this store"
    if pos <= report.anchor.last_id:
        if pos == report.anchor.last_id and report.anchor.hash.hex() == hash_hex:
            return None
        return f"{chain_name} chain: position {pos} was pruned by retention (the chain is kept from " \
               f"{report.anchor.last_id}); it cannot be checked here"
    if not report.checked_from < pos <= report.head_pos:
        return f"{chain_name} chain: position {pos} is outside the links checked ({report.checked_from + 1}.." \
               f"{report.head_pos}); check without --from/--to"
    row = db.execute("SELECT hash FROM chain_links WHERE chain = ? AND last_id = ?",
                     (chain.CODES.get(chain_name, -1), pos)).fetchone()
    if row is None:
        return f"{chain_name} chain: no link ends at {pos}: the store's rows were renumbered or replaced"
    if bytes(row[0]).hex() != hash_hex.lower():
        return (f"{chain_name} chain: at {pos} the store's chain has {bytes(row[0]).hex()}, the published hash is "
                f"{hash_hex}: the data was changed and re-chained after it was published")
    return None


def _walk(db: sqlite3.Connection, w: _Readings, report: ChainReport, lo_ms: int | None,
          hi_ms: int | None) -> Problem | None:
    anchor = report.anchor
    assert anchor is not None
    name, table = w.name, w.table
    prev_last, prev_hash = anchor.last_id, anchor.hash
    lo_id, hi_id = anchor.start, 2**62
    if report.ranged:
        span = w.ids_between(-2**62 if lo_ms is None else lo_ms, 2**62 if hi_ms is None else hi_ms)
        if span is not None:
            before = db.execute("SELECT last_id, hash FROM chain_links WHERE chain = ? AND last_id < ? "
                                "ORDER BY first_id DESC LIMIT 1", (w.code, span[0])).fetchone()
            if before is not None and int(before[0]) > prev_last:
                prev_last, prev_hash = int(before[0]), bytes(before[1])
            end = db.execute("SELECT MIN(last_id) FROM chain_links WHERE chain = ? AND last_id >= ?",
                             (w.code, span[1])).fetchone()[0]
            lo_id, hi_id = max(lo_id, prev_last + 1), end if end is not None else span[1]
        elif w.code != chain.CHAIN_CONFIG and not isinstance(w, _Extra):
            return None  # nothing of this chain in the range
    report.before = 0 if report.ranged else int(db.execute(
        f"SELECT COUNT(*) FROM {table} WHERE id < ?", (anchor.start,)).fetchone()[0])
    links = db.execute("SELECT first_id, last_id, hash, tags FROM chain_links WHERE chain = ? AND first_id > ? "
                       "AND first_id <= ? ORDER BY first_id", (w.code, prev_last, hi_id))
    rows = w.rows(lo_id, hi_id)
    pending = next(rows, None)
    report.head_pos, report.head_hash, report.checked_from = prev_last, prev_hash, prev_last

    def inserted(row: _Row, where: str) -> Problem:
        return Problem(name, table, row.id, "inserted", f"{row.desc}: no chain link covers it ({where})")

    for first, last, stored, tags_blob in links:
        stored = bytes(stored)
        while pending is not None and pending.id < first:
            if pending.id > prev_last:
                return inserted(pending, f"it lies between the link ending at {prev_last} and the one starting "
                                         f"at {first}")
            if pending.id >= anchor.start:  # inside the pruned part: retention deleted everything there
                return inserted(pending, f"it lies in the part retention pruned (up to {anchor.last_id})")
            pending = next(rows, None)
        if first <= prev_last:
            return Problem(name, "chain_links", first, "link",
                           f"link {first}..{last} overlaps the link before it (ending at {prev_last})")
        if first > prev_last + 1:
            return Problem(name, table, prev_last + 1, "deleted",
                           f"rows {prev_last + 1}..{first - 1} are gone together with their chain link (the chain "
                           f"jumps from row {prev_last} to row {first})")
        got: list[_Row] = []
        while pending is not None and pending.id <= last:
            got.append(pending)
            pending = next(rows, None)
        head = w.header(first, last, last - first + 1)
        where = head[1] if head else f"rows {first}..{last}"
        if len(got) != last - first + 1:
            ids = {r.id for r in got}
            gone = next(i for i in range(first, last + 1) if i not in ids)
            return Problem(name, table, gone, "deleted",
                           f"the row is missing from its chain link ({where}: {last - first + 1} rows chained, "
                           f"{len(got)} left)")
        if head is None:
            return Problem(name, "messages", None, "deleted",
                           f"the message of chain link {first}..{last} is missing or its row range was changed")
        h = chain.link_hash(prev_hash, head[0], [w.block(got)])
        if h != stored:
            tags = chain.tags_of(stored_tags := bytes(tags_blob))
            for r, t in zip(got, tags, strict=False):
                if r.tag != t:
                    return Problem(name, table, r.id, "edited",
                                   f"{r.desc}: its content is not what was chained ({where})")
            hint = ("the link's tags were changed as well" if len(stored_tags) != 2 * len(got)
                    else "every row's tag matches, so the message (seq, commit time, configuration version) "
                         "or the link itself was changed, or a link before it is missing")
            return Problem(name, "chain_links", first, "link",
                           f"link {first}..{last} ({where}): hash differs (stored {stored.hex()[:16]}…, recomputed "
                           f"{h.hex()[:16]}…): {hint}")
        prev_last, prev_hash = last, stored
        report.links += 1
        report.rows += len(got)
        report.head_pos, report.head_hash = prev_last, prev_hash
    while pending is not None:
        if pending.id > prev_last:
            return inserted(pending, f"it comes after the chain's head (row {prev_last})")
        if pending.id >= anchor.start:
            return inserted(pending, f"it lies in the part retention pruned (up to {anchor.last_id})")
        pending = next(rows, None)
    return None

