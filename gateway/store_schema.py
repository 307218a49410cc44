"""The SQLite schema, declared once with SQLAlchemy Core and created/migrated by version.

Raw `readings` are append-only: nothing ever UPDATEs them. `messages` records which readings went
into which per-instrument `seq` (also append-only, so a seq can be replayed identically);
`pending` holds the ids of messages not yet PUBACKed and is the only table rows leave on delivery.
"""

from __future__ import annotations

from sqlalchemy import BLOB, Column, Float, Index, Integer, MetaData, Table, Text, UniqueConstraint

SCHEMA_VERSION = 1

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

# Ordered migrations: index i upgrades version i to i+1 (version 0 = empty file).
MIGRATIONS: list[list[str]] = []
