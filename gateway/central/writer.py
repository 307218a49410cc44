"""Writes decoded gateway messages into PostgreSQL, idempotently, one transaction per batch.

The message keys go in first (`INSERT ... ON CONFLICT DO NOTHING RETURNING`): only the keys this
transaction inserted get their rows written, so duplicates (DUP resends, replays, a message another
consumer of the group already wrote) cost one index probe and write nothing. Two consumers inserting the
same key wait for each other on the unique index; keys are inserted in sorted order, and a deadlock or
serialisation failure is retried with the whole batch.

Rows go in with COPY (`write="copy"`, default) or batched INSERTs (`write="insert"`, executemany in
psycopg's pipeline mode): bench/consumer.py measures both (docs/architecture.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import errors

from gateway.central.decode import Batch, Response, Status
from gateway.central.pgschema import RECORD_KINDS

log = logging.getLogger("gateway.central")

_READING_COLS = "gateway, epoch, instrument, seq, idx, point, ts_ms, value, unit, quality, reason, calibration"
_RECORD_COLS = "gateway, epoch, instrument, seq, idx, point, body"
# Binary COPY for readings, the bulk: 1.2-1.8 us less consumer CPU per row than text COPY, PostgreSQL's
# share within the noise (bench/consumer_copy.py, docs/architecture.md). Records (a few per hour) stay text.
_READING_TYPES = ["text", "text", "text", "int8", "int4", "text", "int8", "float8", "text", "text", "text", "text"]


@dataclass
class WriteResult:
    new: int = 0  # messages written
    duplicates: int = 0  # messages already there (written by nobody this time)
    rows: int = 0  # readings and records written
    retries: int = 0


class Writer:
    def __init__(self, conn: psycopg.Connection, consumer: str, *, write: str = "copy") -> None:
        if write not in ("copy", "insert"):
            raise ValueError(f"write must be copy or insert, not {write!r}")
        self.conn, self.consumer, self.method = conn, consumer, write
        self._streams: set[tuple[str, str, str, str]] = set()  # known to exist in carbon.streams

    def write(self, batches: Sequence[Batch], statuses: Sequence[Status] = (),
              responses: Sequence[Response] = ()) -> WriteResult:
        """One transaction; retried on deadlock/serialisation failure. Raises psycopg.Error otherwise."""
        unique: dict[tuple[str, str, str, str, int], Batch] = {}
        for b in sorted(batches, key=lambda b: b.key):
            unique.setdefault(b.key, b)
        for attempt in range(5):
            try:
                result = self._write(list(unique.values()), statuses, responses)
                result.duplicates += len(batches) - len(unique)
                result.retries = attempt
                return result
            except (errors.DeadlockDetected, errors.SerializationFailure) as err:
                log.warning("write retried after %s", type(err).__name__)
                time.sleep(0.05 * (attempt + 1))
        return self._write(list(unique.values()), statuses, responses)

    def _write(self, batches: list[Batch], statuses: Sequence[Status], responses: Sequence[Response]) -> WriteResult:
        res = WriteResult()
        now_ms = int(time.time() * 1000)
        with self.conn.transaction(), self.conn.cursor() as cur:
            new: set[tuple[str, str, str, str, int]] = set()
            if batches:
                cols = list(zip(*[(*b.key, len(b.rows), b.replay) for b in batches], strict=True))
                cur.execute(
                    "INSERT INTO carbon.messages (gateway, epoch, instrument, kind, seq, rows, replay, consumer) "
                    "SELECT g, e, i, k, s, n, r, %s FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], "
                    "%s::bigint[], %s::int[], %s::text[]) AS t(g, e, i, k, s, n, r) "
                    "ON CONFLICT DO NOTHING RETURNING gateway, epoch, instrument, kind, seq",
                    (self.consumer, *[list(c) for c in cols]))
                new = {tuple(r) for r in cur.fetchall()}  # type: ignore[misc]
            fresh = [b for b in batches if b.key in new]
            res.new, res.duplicates = len(fresh), len(batches) - len(fresh)
            readings = [(b.gateway, b.epoch, b.instrument, b.seq, i, *row)
                        for b in fresh if b.kind == "readings" for i, row in enumerate(b.rows)]
            res.rows += len(readings)
            self._rows(cur, "readings", _READING_COLS, readings, _READING_TYPES)
            for kind in RECORD_KINDS:
                recs = [(b.gateway, b.epoch, b.instrument, b.seq, i, *row)
                        for b in fresh if b.kind == kind for i, row in enumerate(b.rows)]
                res.rows += len(recs)
                self._rows(cur, kind, _RECORD_COLS, recs)
            streams = sorted({b.key[:4] for b in fresh} - self._streams)
            if streams:
                cur.executemany("INSERT INTO carbon.streams (gateway, epoch, instrument, kind) VALUES (%s,%s,%s,%s) "
                                "ON CONFLICT DO NOTHING", streams)
            newest: dict[str, int] = {}
            for b in fresh:
                if b.kind == "readings" and b.replay is None and b.rows:
                    newest[b.gateway] = max(newest.get(b.gateway, 0), max(r[1] for r in b.rows))
            if newest:
                cur.executemany(
                    "INSERT INTO carbon.lag (gateway, consumer, newest_ts_ms, lag_ms) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (gateway, consumer) DO UPDATE SET newest_ts_ms = GREATEST(carbon.lag.newest_ts_ms, "
                    "excluded.newest_ts_ms), lag_ms = excluded.lag_ms, updated_at = now()",
                    [(g, self.consumer, ts, max(0, now_ms - ts)) for g, ts in sorted(newest.items())])
            latest: dict[str, Status] = {}
            for s in statuses:
                if s.gateway not in latest or s.ts_ms >= latest[s.gateway].ts_ms:
                    latest[s.gateway] = s
            if latest:
                cur.executemany(
                    "INSERT INTO carbon.gateway_status (gateway, epoch, state, ts_ms, pending_messages, body) "
                    "VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (gateway) DO UPDATE SET epoch = excluded.epoch, "
                    "state = excluded.state, ts_ms = excluded.ts_ms, pending_messages = excluded.pending_messages, "
                    "body = excluded.body, received_at = now() WHERE carbon.gateway_status.ts_ms <= excluded.ts_ms",
                    [(s.gateway, s.epoch, s.state, s.ts_ms, s.pending, s.body)
                     for _, s in sorted(latest.items())])
            for r in responses:
                if r.id is None:
                    continue
                cur.execute("UPDATE carbon.replay_requests SET state = %s, reason = %s, "
                            "messages = COALESCE(%s, messages), answered_at = now() WHERE id = %s AND state != 'done'",
                            (r.state, r.reason, r.messages, r.id))
        self._streams.update(b.key[:4] for b in fresh)
        return res

    def _rows(self, cur: psycopg.Cursor, table: str, cols: str, rows: list[tuple[object, ...]],
              binary: list[str] | None = None) -> None:
        if not rows:
            return
        if self.method == "copy":
            with cur.copy(f"COPY carbon.{table} ({cols}) FROM STDIN" + (" (FORMAT BINARY)" if binary else "")) as copy:
                if binary:
                    copy.set_types(binary)
                for row in rows:
                    copy.write_row(row)
        else:
            marks = ",".join(["%s"] * len(rows[0]))
            cur.executemany(f"INSERT INTO carbon.{table} ({cols}) VALUES ({marks})", rows)
