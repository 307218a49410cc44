"""The SQLite schema, declared once with SQLAlchemy Core and created/migrated by version.

Raw readings (`samples`, integer-coded since schema 5; the view `readings` shows them with every
column spelled out) are append-only: nothing ever UPDATEs them. `messages` records which readings went
into which per-instrument `seq` (also append-only, so a seq can be replayed identically);
`pending` holds the ids of messages not yet PUBACKed and is the only table rows leave on delivery.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, LargeBinary, MetaData, Table, Text, UniqueConstraint

SCHEMA_VERSION = 10

metadata = MetaData()

meta = Table("meta", metadata, Column("key", Text, primary_key=True), Column("value", Text, nullable=False))

# Raw readings, integer-coded (schema 5, about 48 bytes a reading on disk against 117 before; schema 6,
# without the per-reading time index, about 30; see bench/footprint.py): what repeats is stated once in
# `series` (instrument, point, unit) and `labels`
# (reasons, configuration versions); a reading is its series, source time, value and one small `code`:
#   code = quality (0 good, 1 uncertain, 2 bad) | calibration (0 valid, 1 due_soon, 2 expired,
#          3 unknown) << 2 | reason label id << 4.
# The configuration version and the commit time are per message (`messages.config`, `created_ms`).
# The view `readings` shows the rows with every column as before (and takes INSERTs), so readers and
# tools need not know the coding.
series = Table(
    "series",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("instrument", Text, nullable=False),
    Column("point", Text, nullable=False),
    Column("unit", Text, nullable=False),
    UniqueConstraint("instrument", "point", "unit"),
)

labels = Table("labels", metadata, Column("id", Integer, primary_key=True), Column("text", Text, nullable=False,
                                                                                    unique=True))

samples = Table(
    "samples",
    metadata,
    Column("id", Integer, primary_key=True),  # rowid alias: cheapest insert and range delete
    Column("series", Integer, nullable=False),
    Column("ts_ms", Integer, nullable=False),
    Column("value", Float, nullable=True),
    Column("code", Integer, nullable=False),
)
# No per-reading time index (schema 6): it cost about 20 bytes a reading, 40 % of the store. Time look-ups
# go through the coarse per-message index instead (`messages.min_ts/max_ts`, `messages_by_time`): a message
# is one instrument's consecutive readings (a plain id range of at most `per_message` rows), so the
# messages whose time span meets the wanted time are found by that index and only their rows are read,
# by rowid range (Store.readings_since, reading_id_at, last_readings, nearest_ts). Rows inserted through
# the `readings` view belong to no message, so those look-ups do not see them until a message covers them
# (`carbon-gateway store recover` cuts uncovered rows into messages).

QUALITY_CODES = {"good": 0, "uncertain": 1, "bad": 2}
CALIBRATION_CODES = {"valid": 0, "due_soon": 1, "expired": 2, "unknown": 3}

_READINGS_VIEW_V5 = (
    "CREATE VIEW readings AS SELECT r.id AS id, s.instrument AS instrument, s.point AS point, r.ts_ms AS ts_ms, "
    "r.value AS value, s.unit AS unit, "
    "CASE r.code & 3 WHEN 0 THEN 'good' WHEN 1 THEN 'uncertain' ELSE 'bad' END AS quality, "
    "COALESCE((SELECT l.text FROM labels l WHERE l.id = r.code >> 4), '') AS reason, "
    "CASE (r.code >> 2) & 3 WHEN 0 THEN 'valid' WHEN 1 THEN 'due_soon' WHEN 2 THEN 'expired' ELSE 'unknown' END "
    "AS calibration, "
    "(SELECT l.text FROM messages m JOIN labels l ON l.id = m.config WHERE m.kind = 'readings' AND m.last_id >= r.id "
    "ORDER BY m.last_id LIMIT 1) AS config_version, "
    "(SELECT m.created_ms FROM messages m WHERE m.kind = 'readings' AND m.last_id >= r.id "
    "ORDER BY m.last_id LIMIT 1) AS stored_ms, "
    "NULL AS hash "
    "FROM samples r JOIN series s ON s.id = r.series"
)
# Schema 9: `hash` is the SHA-256 (hex) of the hash-chain link covering the row (gateway/chain.py), NULL for a
# row stored before the chain. One seek on the chain's key per row, and only when the column is read.
_READINGS_VIEW_V9 = _READINGS_VIEW_V5.replace(
    "NULL AS hash ",
    "(SELECT CASE WHEN c.last_id >= r.id THEN lower(hex(c.hash)) END FROM chain_links c WHERE c.chain = 1 "
    "AND c.first_id <= r.id ORDER BY c.first_id DESC LIMIT 1) AS hash ")
assert _READINGS_VIEW_V9 != _READINGS_VIEW_V5
# Schema 10 (issue 8, bytes on disk): in a readings message the first row stores its absolute time, which is the
# message's `ts_base`, and every later row its offset from it: a poll's readings store 0 (no bytes) instead of
# 6 bytes each. The first row keeps the rows readable without `messages` (store recover). A row of no such
# message (stored before schema 10, or through this view) keeps its absolute time. `ts_ms` here is absolute.
BASE_OF_ROW = ("(SELECT CASE WHEN m.first_id < {r}.id THEN m.ts_base END FROM messages m WHERE m.kind = 'readings' "
               "AND m.last_id >= {r}.id ORDER BY m.last_id LIMIT 1)")
# The absolute time of row `s` of readings message `m`, where a query has both.
ABS_TS = "s.ts_ms + IIF(s.id > m.first_id, IFNULL(m.ts_base, 0), 0)"
# The same for a query on `samples` alone over one message's rows, given parameter ?1 its ts_base (0 before
# schema 10) and ?2 its first id.
ABS_TS_OF_MESSAGE = "ts_ms + IIF(id > ?2, ?1, 0)"
_READINGS_VIEW = _READINGS_VIEW_V9.replace(
    "r.ts_ms AS ts_ms", f"r.ts_ms + IFNULL({BASE_OF_ROW.format(r='r')}, 0) AS ts_ms")
assert _READINGS_VIEW != _READINGS_VIEW_V9
_READINGS_INSERT = (
    "CREATE TRIGGER readings_insert INSTEAD OF INSERT ON readings BEGIN "
    "INSERT OR IGNORE INTO series (instrument, point, unit) VALUES (NEW.instrument, NEW.point, NEW.unit); "
    "INSERT OR IGNORE INTO labels (text) VALUES (COALESCE(NEW.reason, '')); "
    "INSERT INTO samples (id, series, ts_ms, value, code) VALUES (NEW.id, "
    "(SELECT id FROM series WHERE instrument = NEW.instrument AND point = NEW.point AND unit = NEW.unit), "
    "NEW.ts_ms, NEW.value, "
    "(CASE NEW.quality WHEN 'good' THEN 0 WHEN 'uncertain' THEN 1 ELSE 2 END) "
    "| ((CASE NEW.calibration WHEN 'valid' THEN 0 WHEN 'due_soon' THEN 1 WHEN 'expired' THEN 2 ELSE 3 END) << 2) "
    "| ((SELECT id FROM labels WHERE text = COALESCE(NEW.reason, '')) << 4)); "
    "END"
)
# The coarse time index: readings messages by instrument and time span (partial: records messages have none).
_TIME_INDEX = ("CREATE INDEX IF NOT EXISTS messages_by_time ON messages (instrument, max_ts, min_ts) "
               "WHERE kind = 'readings'")
_VIEWS_V5: list[str] = [
    "INSERT OR IGNORE INTO labels (id, text) VALUES (0, '')",
    "CREATE INDEX IF NOT EXISTS messages_by_last_id ON messages (kind, last_id)",
    _READINGS_VIEW_V5,
    _READINGS_INSERT,
]
# Run after metadata.create_all for a new store (SQLAlchemy Core declares tables, not views).
VIEWS: list[str] = [*_VIEWS_V5[:2], _READINGS_VIEW, _READINGS_INSERT, _TIME_INDEX]

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
    Column("config", Integer, nullable=True),  # readings messages: label id of the configuration version
    # readings messages: the smallest and largest source time of their readings (schema 6, the time index)
    Column("min_ts", Integer, nullable=True),
    Column("max_ts", Integer, nullable=True),
    # readings messages since schema 10: the first row's time; later rows store their offset from it. NULL: absolute
    Column("ts_base", Integer, nullable=True),
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

# Configuration history (issue 11 item 2, schema 7; gateway/config_history.py): one row per distinct configuration
# the gateway ran under, append-only. `version` is the text readings reference (`messages.config` -> labels,
# `records.config_version`); `manifest` (JSON, or `zlib:` and the base64 of the compressed JSON) is what shaped the
# data, `changes` (JSON) the difference to the
# row before; `cause` is "start" or "reload", `user`/`pid`/`host` the process that recorded it.
config_history = Table(
    "config_history",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Text, nullable=False),
    Column("started_ms", Integer, nullable=False),
    Column("cause", Text, nullable=False),
    Column("user", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("host", Text, nullable=False),
    Column("previous", Text, nullable=True),
    Column("changes", Text, nullable=False),
    Column("manifest", Text, nullable=False),
)

# The hash chain (schema 8, issue 11; gateway/chain.py, docs/hash-chain.md): one row per link, a run of consecutive
# row ids of the chain's table (readings: one readings message; records: one derived-records message; config:
# one configuration change), with the link's SHA-256 and a 16-bit tag per row (to name an edited row). Where each
# chain starts (and, after retention, the hash of its last pruned link) is in `meta` under `chain:<name>`.
# WITHOUT ROWID: the (chain, first_id) key is the table; about 80 bytes a link, 4 bytes a reading at 20 a message.
CHAIN_LINKS_DDL = ("CREATE TABLE IF NOT EXISTS chain_links (chain INTEGER NOT NULL, first_id INTEGER NOT NULL, "
                   "last_id INTEGER NOT NULL, hash BLOB NOT NULL, tags BLOB NOT NULL, "
                   "PRIMARY KEY (chain, first_id)) WITHOUT ROWID")
chain_links = Table(
    "chain_links",
    metadata,
    Column("chain", Integer, primary_key=True),
    Column("first_id", Integer, primary_key=True),
    Column("last_id", Integer, nullable=False),
    Column("hash", LargeBinary, nullable=False),
    Column("tags", LargeBinary, nullable=False),
    sqlite_with_rowid=False,
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
    [
        # 4 -> 5: integer-coded readings (see `samples`). Set-based, one transaction; the file keeps its
        # size (freed pages are reused by new readings; `VACUUM` offline gives the space back).
        "ALTER TABLE readings RENAME TO readings_v4",
        "DROP INDEX IF EXISTS readings_by_point_time",
        "CREATE TABLE series (id INTEGER NOT NULL PRIMARY KEY, instrument TEXT NOT NULL, point TEXT NOT NULL, "
        "unit TEXT NOT NULL, UNIQUE (instrument, point, unit))",
        "CREATE TABLE labels (id INTEGER NOT NULL PRIMARY KEY, text TEXT NOT NULL UNIQUE)",
        "CREATE TABLE samples (id INTEGER NOT NULL PRIMARY KEY, series INTEGER NOT NULL, ts_ms INTEGER NOT NULL, "
        "value FLOAT, code INTEGER NOT NULL)",
        "INSERT INTO labels (id, text) VALUES (0, '')",
        "INSERT OR IGNORE INTO labels (text) SELECT DISTINCT reason FROM readings_v4",
        "INSERT OR IGNORE INTO labels (text) SELECT DISTINCT config_version FROM readings_v4",
        "INSERT INTO series (instrument, point, unit) SELECT DISTINCT instrument, point, unit FROM readings_v4",
        "INSERT INTO samples (id, series, ts_ms, value, code) SELECT r.id, s.id, r.ts_ms, r.value, "
        "(CASE r.quality WHEN 'good' THEN 0 WHEN 'uncertain' THEN 1 ELSE 2 END) "
        "| ((CASE r.calibration WHEN 'valid' THEN 0 WHEN 'due_soon' THEN 1 WHEN 'expired' THEN 2 ELSE 3 END) << 2) "
        "| (l.id << 4) FROM readings_v4 r JOIN series s ON s.instrument = r.instrument AND s.point = r.point "
        "AND s.unit = r.unit JOIN labels l ON l.text = r.reason ORDER BY r.id",
        "ALTER TABLE messages ADD COLUMN config INTEGER",
        "UPDATE messages SET config = (SELECT l.id FROM readings_v4 r JOIN labels l ON l.text = r.config_version "
        "WHERE r.id = messages.first_id) WHERE kind = 'readings'",
        "DROP TABLE readings_v4",
        "CREATE INDEX samples_by_series_time ON samples (series, ts_ms)",
        *_VIEWS_V5[1:],
    ],
    [
        # 5 -> 6: the per-reading (series, ts) index gives way to the coarse per-message one. The raw rows
        # stay as they are; each readings message learns its time span from its own rows.
        "ALTER TABLE messages ADD COLUMN min_ts INTEGER",
        "ALTER TABLE messages ADD COLUMN max_ts INTEGER",
        "UPDATE messages SET min_ts = (SELECT MIN(ts_ms) FROM samples WHERE id BETWEEN messages.first_id AND "
        "messages.last_id), max_ts = (SELECT MAX(ts_ms) FROM samples WHERE id BETWEEN messages.first_id AND "
        "messages.last_id) WHERE kind = 'readings'",
        "DROP INDEX IF EXISTS samples_by_series_time",
        _TIME_INDEX,
    ],
    [
        # 6 -> 7: the configuration history (issue 11 item 2); older configurations are not known.
        "CREATE TABLE IF NOT EXISTS config_history (id INTEGER NOT NULL PRIMARY KEY, version TEXT NOT NULL, "
        "started_ms INTEGER NOT NULL, cause TEXT NOT NULL, user TEXT NOT NULL, pid INTEGER NOT NULL, "
        "host TEXT NOT NULL, previous TEXT, changes TEXT NOT NULL, manifest TEXT NOT NULL)",
    ],
    [
        # 7 -> 8: the hash chain. Existing rows are not chained: each chain starts after the newest row the
        # store has when it first opens at schema 8 (`meta` chain:<name>, written by Store on open). A chain
        # made now over old rows would certify rows that were never protected (they may have been edited
        # before), and would make the upgrade read every row at start-up; `verify` counts them as
        # "before the chain".
        CHAIN_LINKS_DDL,
    ],
    [
        # 8 -> 9: the `readings` view's `hash` column shows the hash of the chain link covering the row (it was
        # always NULL). Dropping the view drops its INSERT trigger: both are made again.
        "DROP VIEW IF EXISTS readings",
        _READINGS_VIEW_V9,
        _READINGS_INSERT,
    ],
    [
        # 9 -> 10: readings messages committed from now on store their rows' times from `ts_base` (issue 8:
        # bytes on disk). Older rows keep their absolute times (ts_base NULL): nothing is rewritten.
        "ALTER TABLE messages ADD COLUMN ts_base INTEGER",
        "DROP VIEW IF EXISTS readings",
        _READINGS_VIEW,
        _READINGS_INSERT,
    ],
]

# A step runs only where its guard query finds something: a store that already has the new layout
# (made by this version, then marked older) is left as it is.
MIGRATION_GUARDS: dict[int, str] = {
    3: "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'readings'",
    4: "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM pragma_table_info('messages') WHERE name = 'min_ts')",
    8: "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM pragma_table_info('messages') WHERE name = 'ts_base')",
}
