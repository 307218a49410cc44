"""Holes per stream, found in the database, and the replay requests that heal them.

With a shared subscription each consumer sees only part of every stream, so holes are found where all
of it ends up: `carbon.messages`. One consumer at a time does the check (a try-lock: the others skip it).
Per stream, `carbon.streams.contiguous_to` is the seq up to which every message is there; the check reads
only the messages above it, moves it on, and for every gap whose next message arrived more than `grace_s`
ago (messages of a draining backlog can arrive out of order) sends a replay request to the gateway,
unless one for it is still open. A gateway's permanent refusal (out of retention, another epoch) is
recorded in `carbon.lost` and the stream moves on: a loss is written down, never waited for forever.
A hole at the end of a stream shows only when a later message arrives.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from gateway.central.pgschema import LOCK_HOLES

log = logging.getLogger("gateway.central")

PERMANENT = ("out_of_retention", "epoch_mismatch", "unknown_stream", "beyond_last_seq")


@dataclass(frozen=True, slots=True)
class Hole:
    gateway: str
    epoch: str
    instrument: str
    kind: str
    lo: int
    hi: int
    age_s: float  # since the message after the hole arrived


def gaps(contiguous_to: int, seqs: list[int], ages: list[float]) -> tuple[int, list[tuple[int, int, float]]]:
    """(new contiguous_to, [(lo, hi, age of the message after it)]) of sorted seqs above contiguous_to (pure)."""
    c = contiguous_to
    out: list[tuple[int, int, float]] = []
    prev = contiguous_to
    hole_seen = False
    for seq, age in zip(seqs, ages, strict=True):
        if seq > prev + 1:
            out.append((prev + 1, seq - 1, age))
            hole_seen = True
        if not hole_seen:
            c = seq
        prev = max(prev, seq)
    return c, out


class HoleHealer:
    def __init__(self, conn: psycopg.Connection, consumer: str, publish: Callable[[str, str, dict[str, object]], bool],
                 *, grace_s: float = 5.0, timeout_s: float = 30.0, chunk: int = 1000) -> None:
        self.conn, self.consumer, self._publish = conn, consumer, publish
        self.grace_s, self.timeout_s, self.chunk = grace_s, timeout_s, chunk
        self._ids = itertools.count(1)
        self._run = uuid.uuid4().hex[:6]  # request ids stay unique across restarts of this consumer
        self.requests_sent = 0

    def check(self) -> list[Hole]:
        """One pass (if this consumer gets the lock): returns the holes seen; sends the requests due."""
        holes: list[Hole] = []
        self._outbox: list[tuple[str, str, dict[str, object]]] = []
        with self.conn.transaction(), self.conn.cursor() as cur:
            got = cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (LOCK_HOLES,)).fetchone()
            if not got or not got[0]:
                return []
            self._settle(cur)
            rows = cur.execute(
                "SELECT s.gateway, s.epoch, s.instrument, s.kind, s.contiguous_to, array_agg(m.seq ORDER BY m.seq), "
                "array_agg(extract(epoch FROM now() - m.received_at)::float8 ORDER BY m.seq) "
                "FROM carbon.streams s JOIN carbon.messages m ON m.gateway = s.gateway AND m.epoch = s.epoch "
                "AND m.instrument = s.instrument AND m.kind = s.kind AND m.seq > s.contiguous_to "
                "GROUP BY 1, 2, 3, 4, 5").fetchall()
            moved = []
            for g, e, i, k, c, seqs, ages in rows:
                new_c, found = gaps(int(c), list(seqs), list(ages))
                if new_c != c:
                    moved.append((new_c, g, e, i, k))
                holes.extend(Hole(g, e, i, k, lo, hi, age) for lo, hi, age in found)
            if moved:
                cur.executemany("UPDATE carbon.streams SET contiguous_to = %s WHERE gateway = %s AND epoch = %s "
                                "AND instrument = %s AND kind = %s", sorted(moved, key=lambda m: m[1:]))
            for h in holes:
                if h.age_s >= self.grace_s:
                    self._request(cur, h)
        # Published once the request rows are committed: the response may reach another consumer first.
        for gateway, rid, body in self._outbox:
            if self._publish(gateway, rid, body):
                self.requests_sent += 1
                log.info("hole %s %s/%s seq %s..%s: replay requested (%s)", gateway, body["instrument"],
                         body["kind"], body["from_seq"], body["to_seq"], rid)
        return holes

    def _settle(self, cur: psycopg.Cursor) -> None:
        """Permanent refusals: record the loss and move the stream past it (once per request)."""
        for rid, g, e, i, k, lo, hi, reason in cur.execute(
                "UPDATE carbon.replay_requests SET state = 'lost' WHERE state = 'rejected' "
                "AND split_part(reason, ':', 1) = ANY(%s) "
                "RETURNING id, gateway, epoch, instrument, kind, from_seq, to_seq, reason",
                (list(PERMANENT),)).fetchall():
            present = {int(s) for (s,) in cur.execute(
                "SELECT seq FROM carbon.messages WHERE gateway = %s AND epoch = %s AND instrument = %s AND kind = %s "
                "AND seq BETWEEN %s AND %s", (g, e, i, k, lo, hi)).fetchall()}
            missing = [s for s in range(lo, hi + 1) if s not in present]
            if not missing:
                continue
            log.error("%s %s/%s seq %d..%d cannot be replayed (%s, request %s): recorded in carbon.lost",
                      g, i, k, missing[0], missing[-1], reason, rid)
            cur.execute("INSERT INTO carbon.lost (gateway, epoch, instrument, kind, from_seq, to_seq, reason) "
                        "VALUES (%s,%s,%s,%s,%s,%s,%s)", (g, e, i, k, missing[0], missing[-1], reason))
            cur.execute("UPDATE carbon.streams SET contiguous_to = GREATEST(contiguous_to, %s) WHERE gateway = %s "
                        "AND epoch = %s AND instrument = %s AND kind = %s AND contiguous_to >= %s",
                        (hi, g, e, i, k, lo - 1))

    def _request(self, cur: psycopg.Cursor, h: Hole) -> None:
        """At most one request per hole at a time, for its first `chunk` seqs: a long hole (a consumer
        database that joins late) is asked for piece by piece, never as a flood the gateway turns away."""
        lo = h.lo
        if lo <= h.hi:
            hi = min(h.hi, lo + self.chunk - 1)
            # Still open (sent/accepted recently), or done so recently that its messages may still be coming.
            open_ = cur.execute(
                "SELECT 1 FROM carbon.replay_requests WHERE gateway = %s AND epoch = %s AND instrument = %s "
                "AND kind = %s AND from_seq <= %s AND to_seq >= %s AND ((state IN ('sent', 'accepted') AND "
                "requested_at > now() - make_interval(secs => %s)) OR (state IN ('done', 'rejected') AND "
                "answered_at > now() - make_interval(secs => %s))) LIMIT 1",
                (h.gateway, h.epoch, h.instrument, h.kind, lo, hi, self.timeout_s, self.grace_s)).fetchone()
            if open_ is None:
                rid = f"{self.consumer}-{self._run}-{next(self._ids)}"[-64:]
                body: dict[str, object] = {"schema": "carbon-gateway/replay-request/1", "id": rid,
                                           "instrument": h.instrument, "kind": h.kind, "epoch": h.epoch,
                                           "from_seq": lo, "to_seq": hi}
                cur.execute("INSERT INTO carbon.replay_requests (id, gateway, epoch, instrument, kind, from_seq, "
                            "to_seq, consumer) VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
                            (rid, h.gateway, h.epoch, h.instrument, h.kind, lo, hi, self.consumer))
                self._outbox.append((h.gateway, rid, body))
