"""The consumer's PostgreSQL schema, created and migrated by `carbon-gateway consume` itself.

Everything lives in the schema `carbon`. `messages` is the idempotency key: one row per gateway message,
unique on (gateway, epoch, instrument, kind, seq); rows of a message are written only by the transaction
that inserted its key, so a message delivered twice (a DUP resend, a replay, two consumers) is written
once. Migrations are sequential steps, each in its own transaction under an advisory lock, so several
consumers starting together migrate once.
"""

from __future__ import annotations

import logging

import psycopg

log = logging.getLogger("gateway.central")

SCHEMA_VERSION = 2
LOCK_MIGRATE = 0x6361_7262_6D69_67  # pg advisory lock keys (bigint): "carbmig"
LOCK_HOLES = 0x6361_7262_686F_6C  # "carbhol"

_RECORD_TABLE = """CREATE TABLE IF NOT EXISTS carbon.{name} (
    gateway text NOT NULL, epoch text NOT NULL, instrument text NOT NULL, seq bigint NOT NULL, idx int NOT NULL,
    point text NOT NULL, body jsonb NOT NULL,
    PRIMARY KEY (gateway, epoch, instrument, seq, idx))"""

# The tables of record kinds, one per kind (`carbon`: hourly carbon records of issue 13, from version 2).
RECORD_KINDS = ("events", "aggregates", "substitutes", "corrections", "carbon")

# MIGRATIONS[n] takes the schema from version n to n + 1.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE carbon.messages (
            gateway text NOT NULL, epoch text NOT NULL, instrument text NOT NULL, kind text NOT NULL,
            seq bigint NOT NULL, rows int NOT NULL, replay text, consumer text NOT NULL,
            received_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (gateway, epoch, instrument, kind, seq))""",
        """CREATE TABLE carbon.readings (
            gateway text NOT NULL, epoch text NOT NULL, instrument text NOT NULL, seq bigint NOT NULL,
            idx int NOT NULL, point text NOT NULL, ts_ms bigint NOT NULL,
            ts timestamptz GENERATED ALWAYS AS (to_timestamp(ts_ms / 1000.0)) STORED,
            value double precision, unit text NOT NULL, quality text NOT NULL, reason text NOT NULL,
            calibration text NOT NULL,
            PRIMARY KEY (gateway, epoch, instrument, seq, idx))""",
        "CREATE INDEX readings_by_point_time ON carbon.readings (gateway, instrument, point, ts_ms)",
        *(_RECORD_TABLE.format(name=k) for k in ("events", "aggregates", "substitutes", "corrections")),
        # Hole detection: per stream, every seq up to contiguous_to is here.
        """CREATE TABLE carbon.streams (
            gateway text NOT NULL, epoch text NOT NULL, instrument text NOT NULL, kind text NOT NULL,
            contiguous_to bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (gateway, epoch, instrument, kind))""",
        """CREATE TABLE carbon.replay_requests (
            id text PRIMARY KEY, gateway text NOT NULL, epoch text NOT NULL, instrument text NOT NULL,
            kind text NOT NULL, from_seq bigint NOT NULL, to_seq bigint NOT NULL, consumer text NOT NULL,
            requested_at timestamptz NOT NULL DEFAULT now(), state text NOT NULL DEFAULT 'sent',
            reason text NOT NULL DEFAULT '', messages int, answered_at timestamptz)""",
        "CREATE INDEX replay_requests_by_stream ON carbon.replay_requests (gateway, epoch, instrument, kind, from_seq)",
        # Seq ranges a gateway can no longer send (pruned by its retention, another epoch): recorded, not hidden.
        """CREATE TABLE carbon.lost (
            gateway text NOT NULL, epoch text NOT NULL, instrument text NOT NULL, kind text NOT NULL,
            from_seq bigint NOT NULL, to_seq bigint NOT NULL, reason text NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now())""",
        """CREATE TABLE carbon.gateway_status (
            gateway text PRIMARY KEY, epoch text NOT NULL, state text NOT NULL, ts_ms bigint NOT NULL,
            pending_messages int, body jsonb NOT NULL, received_at timestamptz NOT NULL DEFAULT now())""",
        # Per gateway and consumer: the newest reading time written and how far behind it was.
        """CREATE TABLE carbon.lag (
            gateway text NOT NULL, consumer text NOT NULL, newest_ts_ms bigint NOT NULL, lag_ms bigint NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (gateway, consumer))""",
        """CREATE VIEW carbon.gateway_lag AS
            SELECT g.gateway, max(l.newest_ts_ms) AS newest_ts_ms,
                   (extract(epoch FROM now()) * 1000)::bigint - max(l.newest_ts_ms) AS lag_ms,
                   s.pending_messages AS gateway_backlog, s.state AS gateway_state
            FROM (SELECT gateway FROM carbon.lag UNION SELECT gateway FROM carbon.gateway_status) g
            LEFT JOIN carbon.lag l ON l.gateway = g.gateway
            LEFT JOIN carbon.gateway_status s ON s.gateway = g.gateway
            GROUP BY g.gateway, s.pending_messages, s.state""",
    ],
    [
        # Hourly carbon records (topic {prefix}/{gateway}/{source}/carbon): instrument is the emission source.
        _RECORD_TABLE.format(name="carbon"),
    ],
]
assert len(MIGRATIONS) == SCHEMA_VERSION


def migrate(conn: psycopg.Connection) -> int:
    """Create or migrate the schema to SCHEMA_VERSION; returns the version found before."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_MIGRATE,))
        conn.execute("CREATE SCHEMA IF NOT EXISTS carbon")
        conn.execute("CREATE TABLE IF NOT EXISTS carbon.meta (key text PRIMARY KEY, value text NOT NULL)")
        row = conn.execute("SELECT value FROM carbon.meta WHERE key = 'schema_version'").fetchone()
        found = int(row[0]) if row else 0
        if found > SCHEMA_VERSION:
            raise RuntimeError(f"database schema carbon is version {found}, newer than this consumer "
                               f"({SCHEMA_VERSION})")
    version = found
    while version < SCHEMA_VERSION:
        with conn.transaction():  # one step per transaction: a failure leaves the previous version intact
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_MIGRATE,))
            row = conn.execute("SELECT value FROM carbon.meta WHERE key = 'schema_version'").fetchone()
            current = int(row[0]) if row else 0
            if current == version:  # another consumer may have done this step meanwhile
                for statement in MIGRATIONS[version]:
                    conn.execute(statement)  # type: ignore[arg-type]
                conn.execute("INSERT INTO carbon.meta VALUES ('schema_version', %s) ON CONFLICT (key) "
                             "DO UPDATE SET value = excluded.value", (str(version + 1),))
                log.info("database schema carbon migrated to version %d", version + 1)
            version = max(current, version + 1) if current != version else version + 1
    return found
