"""The SQLite schema, declared once with SQLAlchemy Core and created/migrated by version.

Raw `readings` are append-only: nothing ever UPDATEs them. `messages` records which readings went
into which per-instrument `seq` (also append-only, so a seq can be replayed identically);
`pending` holds the ids of messages not yet PUBACKed and is the only table rows leave on delivery.
"""

from __future__ import annotations

from sqlalchemy import BLOB, Column, Float, Index, Integer, MetaData, Table, Text, UniqueConstraint

SCHEMA_VERSION = 4

metadata = MetaData()

meta = Table("meta", metadata, Column("key", Text, primary_key=True), Column("value", Text, nullable=False))

readings = Table(
    "readings",
    metadata,
    Column("id", Integer, primary_key=True),  # rowid alias: cheapest insert and range delete
    Column("instrument", Text, nullable=False),
    Column("point", Text, nullable=False),
    Column("ts_ms", Integer, nullable=False),
    Column("value", Float, nullable=True),
    Column("unit", Text, nullable=False),
    Column("quality", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("calibration", Text, nullable=False),
    Column("config_version", Text, nullable=False),
    Column("stored_ms", Integer, nullable=False),
    Column("hash", BLOB, nullable=True),  # reserved for the hash chain (roadmap item 2)
)
Index("readings_by_point_time", readings.c.instrument, readings.c.point, readings.c.ts_ms)

messages = Table(
    "messages",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("stream", Text, nullable=False),  # "<instrument>/<kind>"
    Column("seq", Integer, nullable=False),
    Column("kind", Text, nullable=False),
    Column("instrument", Text, nullable=False),
    Column("first_id", Integer, nullable=False),  # row range in the kind's table
    Column("last_id", Integer, nullable=False),
    Column("created_ms", Integer, nullable=False),
    UniqueConstraint("stream", "seq"),
)

pending = Table("pending", metadata, Column("message_id", Integer, primary_key=True))

streams = Table(
    "streams", metadata, Column("stream", Text, primary_key=True), Column("last_seq", Integer, nullable=False)
)

# Derived records (rules engine output, manual corrections): append-only like readings. A substitute
# or a correction supersedes an earlier record by adding a new one; nothing is updated in place.
records = Table(
    "records",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", Text, nullable=False),  # events | aggregates | substitutes | corrections
    Column("instrument", Text, nullable=False),
    Column("point", Text, nullable=False),
    Column("ts_ms", Integer, nullable=False),  # event time, period start, substituted hour start
    Column("body", Text, nullable=False),  # the published JSON object
    Column("config_version", Text, nullable=False),
    Column("stored_ms", Integer, nullable=False),
)
Index("records_by_point", records.c.kind, records.c.instrument, records.c.point, records.c.ts_ms)

# Inbox files (manual corrections) already stored, by the SHA-256 of their bytes: written in the same
# transaction as the record they produced, so a file is never stored twice whatever happens to it after.
ingested = Table(
    "ingested",
    metadata,
    Column("sha256", Text, primary_key=True),
    Column("name", Text, nullable=False),  # the inbox file name, for the audit trail
    Column("stored_ms", Integer, nullable=False),
)

# The rules engine's checkpoint per point (its open period's running summary, totalizer and validity state,
# JSON): upserted in the same transaction as the readings it covers. `hwm` is the last reading id committed
# with it; at start-up only the point's readings after it are fed again (issue 8: no reread of the period).
rules_state = Table(
    "rules_state",
    metadata,
    Column("instrument", Text, primary_key=True),
    Column("point", Text, primary_key=True),
    Column("hwm", Integer, nullable=False),
    Column("state", Text, nullable=False),
    Column("stored_ms", Integer, nullable=False),
)

# The store's identity lives in `meta` under key `epoch` (a uuid4 hex made with the store; schema 3 gives
# one to older stores on open): subscribers deduplicate by (instrument, epoch, seq).

# Ordered migrations: MIGRATIONS[v] upgrades a store at version v+1 to v+2 (version 1 = the first release).
MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE records (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, instrument TEXT NOT NULL, "
        "point TEXT NOT NULL, ts_ms INTEGER NOT NULL, body TEXT NOT NULL, config_version TEXT NOT NULL, "
        "stored_ms INTEGER NOT NULL)",
        "CREATE INDEX records_by_point ON records (kind, instrument, point, ts_ms)",
    ],
    [
        "CREATE TABLE IF NOT EXISTS ingested (sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, stored_ms INTEGER NOT NULL)",
    ],
    [
        "CREATE TABLE IF NOT EXISTS rules_state (instrument TEXT NOT NULL, point TEXT NOT NULL, "
        "hwm INTEGER NOT NULL, state TEXT NOT NULL, stored_ms INTEGER NOT NULL, PRIMARY KEY (instrument, point))",
    ],
]
