"""The hash chain over the store's records (issue 11 item 1; standard 9.3.2 c, 10.2.1 a, 10.3.1): pure encoding.

Every raw reading and every derived record is covered by a SHA-256 chain, so an edit, a deletion or an
insertion made behind the gateway's back (with the `sqlite3` shell, say) is found by `carbon-gateway verify`,
and the heads published on MQTT let the central side prove it later. docs/hash-chain.md is the reference
a third party recomputes it from; this module is its only implementation in the gateway.

Three chains per store, one per retention class, so deleting the oldest delivered data keeps every chain
a suffix of itself (retention deletes readings by size, derived records only by age):
  readings: the `samples` rows, one link per readings message (per-instrument, <= readings_per_message rows);
  records:  the `records` rows (events, aggregates, substitutes, corrections), one link per message;
  config:   configuration changes (`Store.chain_insert`, one link per row; the config-history table).
A link is a run of consecutive row ids of its table: h = SHA-256(h_prev || SHA-256(header || rows)). A readings link
encodes its rows by column (every reading's text fields, then every time, then every value), so the commit
packs times and values once per message, not once per reading. The link also stores a 16-bit tag per row,
a cheap digest that only lets `verify` name which row of a broken link was edited (the SHA-256 chain is the
protection; a third party recomputing the chain ignores the tags).
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

VERSION = 1
GENESIS_LABEL = b"carbon-gateway/chain/1"

CHAIN_READINGS = 1
CHAIN_RECORDS = 2
CHAIN_CONFIG = 3

QUALITY = {"good": 0, "uncertain": 1, "bad": 2}
CALIBRATION = {"valid": 0, "due_soon": 1, "expired": 2, "unknown": 3}

_U8 = struct.Struct("<B")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
# An absent value (null, or NaN, which SQLite stores as NULL) is this quiet NaN in the values column.
ABSENT = struct.unpack("<d", bytes.fromhex("000000000000f87f"))[0]
HEADER_NUM = struct.Struct("<qqI")  # seq, created_ms, row count


def text(s: str) -> bytes:
    """A string: u32 little-endian byte length, then its UTF-8 bytes."""
    b = s.encode()
    return _U32.pack(len(b)) + b


def genesis(epoch: str, chain: str) -> bytes:
    """The hash before a chain's first link: binds the chain to its store and its name."""
    return hashlib.sha256(GENESIS_LABEL + b"\x00" + epoch.encode() + b"\x00" + chain.encode()).digest()


def canonical_value(value: float | None) -> float:
    """The value as the chain encodes it: ABSENT for null or NaN, -0.0 as 0.0 (SQLite may store it so)."""
    if value is None or value != value:
        return ABSENT
    return value + 0.0


def reading_tag(prefix_crc: int, ts_ms: int, value: float) -> int:
    """A reading's 16-bit tag from the CRC-32 of its prefix, its time and canonical value (Python's hash of
    ints and floats is not randomised; NaN's is, hence the absent case without it)."""
    if value != value:
        return hash((prefix_crc, ts_ms)) & 0xFFFF
    return hash((prefix_crc, ts_ms, value)) & 0xFFFF


def reading_prefix(instrument: str, point: str, unit: str, quality: str, calibration: str, reason: str) -> bytes:
    """Everything of a reading but its time and value (the store caches it per series and code)."""
    return (text(instrument) + text(point) + text(unit) + _U8.pack(QUALITY[quality])
            + _U8.pack(CALIBRATION[calibration]) + text(reason))


def readings_rows(prefixes: Sequence[bytes], times: Sequence[int], values: Sequence[float]) -> bytes:
    """A readings link's rows by column: every prefix, then every ts_ms (i64), then every canonical value (f64)."""
    n = len(times)
    return b"".join(prefixes) + struct.pack(f"<{n}q", *times) + struct.pack(f"<{n}d", *values)


def readings_header(instrument: str, seq: int, created_ms: int, config_version: str, n: int) -> bytes:
    """A readings link's header: its message (instrument, seq, commit time, configuration version), row count."""
    return b"R" + text(instrument) + HEADER_NUM.pack(seq, created_ms, n) + text(config_version)


def records_header(kind: str, instrument: str, seq: int, created_ms: int, n: int) -> bytes:
    return b"D" + text(kind) + text(instrument) + HEADER_NUM.pack(seq, created_ms, n)


def record_row(kind: str, instrument: str, point: str, ts_ms: int, body: str, config_version: str,
               stored_ms: int) -> bytes:
    """A derived record: every column of its `records` row (the body as the stored JSON text)."""
    return (text(kind) + text(instrument) + text(point) + _I64.pack(ts_ms) + text(config_version)
            + _I64.pack(stored_ms) + text(body))


def single_header(chain: str, n: int) -> bytes:
    """The header of a link that is not a message (configuration changes): the chain's name and row count."""
    return b"C" + text(chain) + _U32.pack(n)


def tag(row: bytes) -> int:
    """A record's (or configuration change's) 16-bit tag: the low bits of its encoding's CRC-32."""
    return zlib.crc32(row) & 0xFFFF


def tags_blob(tags: Sequence[int]) -> bytes:
    return struct.pack(f"<{len(tags)}H", *tags)


def tags_of(blob: bytes) -> tuple[int, ...]:
    return struct.unpack(f"<{len(blob) // 2}H", blob)


def content_digest(header: bytes, rows: Sequence[bytes]) -> bytes:
    """SHA-256(header || rows...): `rows` are the row encodings of a records or config link, or the one
    `readings_rows` block of a readings link."""
    h = hashlib.sha256(header)
    h.update(b"".join(rows))
    return h.digest()


def chain_hash(prev: bytes, digest: bytes) -> bytes:
    """A link's hash: SHA-256(previous link's hash || its content digest). Through the content digest a proof
    can carry a link without its rows (an export of one instrument passes other instruments' links)."""
    return hashlib.sha256(prev + digest).digest()


def link_hash(prev: bytes, header: bytes, rows: Sequence[bytes]) -> bytes:
    return chain_hash(prev, content_digest(header, rows))


@dataclass(frozen=True, slots=True)
class ChainSpec:
    """How `verify` reads a chain's rows back: `select` takes (first_id, last_id) and yields rows whose first
    column is the id; `encode` turns the other columns into the row encoding."""

    code: int
    name: str
    table: str
    select: str
    encode: Callable[..., bytes]


def _encode_record(kind: str, instrument: str, point: str, ts_ms: int, body: str, config_version: str,
                   stored_ms: int) -> bytes:
    return record_row(kind, instrument, point, ts_ms, body, config_version, stored_ms)


def config_row(version: str, started_ms: int, cause: str, user: str, pid: int, host: str, previous: str | None,
               changes: str, manifest: str) -> bytes:
    """A configuration-history row (issue 11 item 2): every column; `previous` null is a 0 flag."""
    return (text(version) + _I64.pack(started_ms) + text(cause) + text(user) + _I64.pack(pid) + text(host)
            + (b"\x00" + text("") if previous is None else b"\x01" + text(previous)) + text(changes)
            + text(manifest))


# Chains whose rows are not messages (one link per row, `Store.chain_insert`): name -> spec, with a SELECT of
# the table's columns by id range and an encoder of them (documented in docs/hash-chain.md).
EXTRA_CHAINS: dict[str, ChainSpec] = {
    "config": ChainSpec(CHAIN_CONFIG, "config", "config_history",
                        "SELECT id, version, started_ms, cause, user, pid, host, previous, changes, manifest "
                        "FROM config_history WHERE id >= ? AND id <= ? ORDER BY id", config_row),
}

NAMES = {CHAIN_READINGS: "readings", CHAIN_RECORDS: "records", CHAIN_CONFIG: "config"}
CODES = {name: code for code, name in NAMES.items()}
TABLES = {CHAIN_READINGS: "samples", CHAIN_RECORDS: "records"}
