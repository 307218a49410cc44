"""Configuration history (issue 11 item 2): each distinct configuration the gateway ran under, in the store.

A configuration is summed up by its *manifest* (`manifest(cfg)`): per instrument what shapes its data
(protocol, endpoint, poll interval, status, calibration record, and per point the reporting and device unit,
scale and offset) plus one digest of everything else, and a digest per section of gateway.yaml. The
manifest is stored with the configuration version (the hash readings carry: `messages.config` and
`records.config_version` hold the same text), so the change against the previous configuration
(`changes(old, new)`, pure) can be computed and shown without the old files.

`config_history` is append-only, like raw readings: a row is added when the gateway starts or reloads
under a configuration version that differs from the last row's; nothing is ever updated or deleted.
"""

from __future__ import annotations

import base64
import dataclasses
import getpass
import hashlib
import json
import logging
import os
import socket
import sqlite3
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.registry import Config

log = logging.getLogger("gateway.config")

CAUSES = ("start", "reload")


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=repr, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _short(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _fields(obj: Any) -> str:
    """A stable text of a (dataclass) value: its field values as a tuple, ~3x cheaper than the dataclass
    repr (50,000 points at plant scale)."""
    names = getattr(obj, "__dataclass_fields__", None)
    if names is None:
        return repr(obj)
    return f"{type(obj).__name__}{tuple(getattr(obj, n) for n in names)!r}"


def _num(x: Any) -> Any:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else x


def instrument_manifest(spec: Any, shared: dict[int, str] | None = None) -> dict[str, Any]:
    """What shapes one instrument's data, as plain JSON (spec: a gateway.instruments.InstrumentSpec).
    `shared` caches the text of objects many points share (their rules: one per profile point)."""
    model = spec.model
    cal = model.calibration
    points: dict[str, Any] = {}
    shared = {} if shared is None else shared
    for p in spec.points:
        wire = p.wire
        rules = shared.get(id(p.rules))
        if rules is None:
            rules = shared[id(p.rules)] = repr(p.rules)
        points[p.name] = {
            "unit": p.unit,
            "device_unit": p.device_unit,
            # The protocol's scale/offset (raw -> device unit) where it has them, then the unit conversion.
            "scale": _num(getattr(wire, "scale", None)),
            "offset": _num(getattr(wire, "offset", None)),
            "conversion": [p.conversion.factor, p.conversion.offset],
            "totalizer": p.totalizer,
            "digest": _short(f"{_fields(wire)}|{rules}|{p.expect!r}|{p.description}"),
        }
    return {
        "protocol": spec.protocol,
        "endpoint": str(getattr(spec.connection, "endpoint", "")),
        "poll_interval_s": spec.poll_interval_s,
        "status": model.status.value,
        "calibration": None if cal is None else cal.model_dump(mode="json"),
        "points": points,
        # Everything else of the instrument (name, location, health bits ...): changed or not.
        "digest": _short(f"{model.model_dump_json()}|{spec.health!r}"),
    }


def manifest(cfg: Config) -> dict[str, Any]:
    """The configuration's manifest: stored with its version, compared by `changes`."""
    settings = cfg.settings.model_dump(mode="json")
    shared: dict[int, str] = {}  # the rules objects are shared per profile point; kept alive by cfg meanwhile
    out: dict[str, Any] = {
        "settings": {section: _digest(value) for section, value in sorted(settings.items())},
        "instruments": {spec.id: instrument_manifest(spec, shared) for spec in cfg.instruments},
    }
    # Constants and carbon methods of derived points (issue 13: carbon.yaml); formulas are in the instruments.
    files = getattr(getattr(cfg, "derived", None), "files", ())
    if files:
        out["derived_files"] = {f.name: hashlib.sha256(f.read_bytes()).hexdigest()[:16] for f in files if f.is_file()}
    return out


def changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """What changed from `old` to `new` (manifests); {} when nothing did, {"first": n} without an old one.

    Keys (each only when non-empty): `settings` (changed gateway.yaml sections), `added`/`removed`
    (instrument ids), `changed` (id -> {points_added, points_removed, units, scales, calibration,
    poll_interval_s, connection, status, points_other, other})."""
    if old is None:
        return {"first": len(new.get("instruments", {}))}
    out: dict[str, Any] = {}
    o_set, n_set = old.get("settings", {}), new.get("settings", {})
    sections = sorted(k for k in set(o_set) | set(n_set) if o_set.get(k) != n_set.get(k))
    if sections:
        out["settings"] = sections
    if old.get("derived_files") != new.get("derived_files"):
        out["derived_files"] = sorted(set(old.get("derived_files") or {}) | set(new.get("derived_files") or {}))
    o_inst, n_inst = old.get("instruments", {}), new.get("instruments", {})
    added = sorted(set(n_inst) - set(o_inst))
    removed = sorted(set(o_inst) - set(n_inst))
    if added:
        out["added"] = added
    if removed:
        out["removed"] = removed
    changed: dict[str, Any] = {}
    for iid in sorted(set(o_inst) & set(n_inst)):
        c = instrument_changes(o_inst[iid], n_inst[iid])
        if c:
            changed[iid] = c
    if changed:
        out["changed"] = changed
    return out


def instrument_changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pa, pb = a.get("points", {}), b.get("points", {})
    if added := sorted(set(pb) - set(pa)):
        out["points_added"] = added
    if removed := sorted(set(pa) - set(pb)):
        out["points_removed"] = removed
    units: dict[str, Any] = {}
    scales: dict[str, Any] = {}
    other: list[str] = []
    for name in sorted(set(pa) & set(pb)):
        x, y = pa[name], pb[name]
        if (x.get("unit"), x.get("device_unit")) != (y.get("unit"), y.get("device_unit")):
            units[name] = [x.get("unit"), y.get("unit")] if x.get("unit") != y.get("unit") \
                else [f"device {x.get('device_unit')}", f"device {y.get('device_unit')}"]
        sx = [x.get("scale"), x.get("offset"), x.get("conversion")]
        sy = [y.get("scale"), y.get("offset"), y.get("conversion")]
        if sx != sy and x.get("unit") == y.get("unit") and x.get("device_unit") == y.get("device_unit"):
            scales[name] = [[x.get("scale"), x.get("offset")], [y.get("scale"), y.get("offset")]]
        if x.get("digest") != y.get("digest") or x.get("totalizer") != y.get("totalizer"):
            other.append(name)
    if units:
        out["units"] = units
    if scales:
        out["scales"] = scales
    if other:
        out["points_other"] = other
    if a.get("calibration") != b.get("calibration"):
        out["calibration"] = [a.get("calibration"), b.get("calibration")]
    for key in ("poll_interval_s", "status", "protocol"):
        if a.get(key) != b.get(key):
            out[key] = [a.get(key), b.get(key)]
    if a.get("endpoint") != b.get("endpoint"):
        out["connection"] = [a.get("endpoint"), b.get("endpoint")]
    if a.get("digest") != b.get("digest") and not out:
        out["other"] = True  # e.g. name, location, health bits: nothing above
    return out


def summary(c: Mapping[str, Any]) -> str:
    """One line for a log or a table cell: `+FT-02 -PM-03 ~CEMS-01(unit so2 mg/m3->ppm; calibration)`."""
    if not c:
        return "unchanged"
    if "first" in c:
        return f"first recorded configuration ({c['first']} instruments)"
    parts: list[str] = []
    if c.get("settings"):
        parts.append("gateway.yaml " + ",".join(c["settings"]))
    if c.get("derived_files"):
        parts.append("derived " + ",".join(c["derived_files"]))
    parts += [f"+{i}" for i in c.get("added", [])]
    parts += [f"-{i}" for i in c.get("removed", [])]
    for iid, ch in c.get("changed", {}).items():
        what: list[str] = []
        if ch.get("points_added"):
            what.append("points +" + ",".join(ch["points_added"]))
        if ch.get("points_removed"):
            what.append("points -" + ",".join(ch["points_removed"]))
        for p, (x, y) in ch.get("units", {}).items():
            what.append(f"unit {p} {x}->{y}")
        for p, (x, y) in ch.get("scales", {}).items():
            what.append(f"scale {p} {_scale_text(x)}->{_scale_text(y)}")
        others = [p for p in ch.get("points_other", []) if p not in ch.get("units", {})
                  and p not in ch.get("scales", {})]
        if others:  # addressing or rules (a poll interval change changes every point's cadence)
            what.append(f"point {others[0]}" if len(others) == 1 else f"{len(others)} points' rules or addressing")
        for key in ("calibration", "poll_interval_s", "status", "protocol", "connection"):
            if key in ch:
                what.append(key if key == "calibration" else f"{key} {ch[key][0]}->{ch[key][1]}")
        if ch.get("other"):
            what.append("details")
        parts.append(f"~{iid}({'; '.join(what)})")
    return " ".join(parts)


def _scale_text(so: Any) -> str:
    scale, offset = so
    if scale is None and offset is None:
        return "conversion"
    text = f"x{scale:g}" if scale is not None else "x1"
    return text + (f"{offset:+g}" if offset else "")


# -- the store side --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    version: str
    started_ms: int
    cause: str
    user: str
    pid: int
    host: str
    previous: str | None
    changes: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "started_ms": self.started_ms, "cause": self.cause,
                "user": self.user, "pid": self.pid, "host": self.host, "previous": self.previous,
                "changes": self.changes, "summary": summary(self.changes)}


def who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container, DynamicUser=): the uid says it
        return f"uid {os.getuid()}"


ZLIB_PREFIX = "zlib:"


def encode_manifest(m: Mapping[str, Any]) -> str:
    """How a manifest is stored: `zlib:` and the base64 of its zlib-compressed canonical JSON (2,500 meters:
    7.3 MB of JSON, about 110 KB stored). Text, so the hash chain encodes the column as it does any text."""
    raw = zlib.compress(json.dumps(m, sort_keys=True, separators=(",", ":")).encode(), 6)
    return ZLIB_PREFIX + base64.b64encode(raw).decode("ascii")


def decode_manifest(value: str) -> dict[str, Any]:
    """A stored manifest: `zlib:`+base64, or plain JSON (rows written before compression)."""
    if value.startswith(ZLIB_PREFIX):
        value = zlib.decompress(base64.b64decode(value[len(ZLIB_PREFIX):])).decode()
    return json.loads(value)  # type: ignore[no-any-return]


def last_entry(db: sqlite3.Connection) -> tuple[str, dict[str, Any]] | None:
    row = db.execute("SELECT version, manifest FROM config_history ORDER BY id DESC LIMIT 1").fetchone()
    return None if row is None else (str(row[0]), decode_manifest(row[1]))


@dataclass(frozen=True, slots=True)
class Prepared:
    """A row ready to insert: made off the event loop (a plant-size manifest takes about a second)."""

    version: str
    previous: str | None
    changes: dict[str, Any]
    blob: str  # encode_manifest


def prepare(version: str, new: Mapping[str, Any], last: tuple[str, Mapping[str, Any]] | None) -> Prepared:
    return Prepared(version, last[0] if last else None, changes(last[1] if last else None, new), encode_manifest(new))


def record(db: sqlite3.Connection, version: str, new: dict[str, Any], *, cause: str, now_ms: int,
           link: Callable[[int], None] | None = None) -> Entry | None:
    """Append a row if `version` differs from the last recorded one (its own transaction); the new Entry,
    or None when the configuration is the one already recorded last. `link(row id)` runs in the same
    transaction (the store links the row into its hash chain)."""
    last = last_entry(db)
    if last is not None and last[0] == version:
        return None
    return insert(db, prepare(version, new, last), cause=cause, now_ms=now_ms, link=link)


def insert(db: sqlite3.Connection, row: Prepared, *, cause: str, now_ms: int,
           link: Callable[[int], None] | None = None) -> Entry:
    """Append a prepared row (its own transaction, with `link(row id)` as in `record`)."""
    assert cause in CAUSES, cause
    entry = Entry(0, row.version, now_ms, cause, who(), os.getpid(), socket.gethostname(), row.previous, row.changes)
    db.execute("BEGIN IMMEDIATE")
    try:
        cur = db.execute("INSERT INTO config_history (version, started_ms, cause, user, pid, host, previous, "
                         "changes, manifest) VALUES (?,?,?,?,?,?,?,?,?)",
                         (row.version, now_ms, cause, entry.user, entry.pid, entry.host, row.previous,
                          json.dumps(row.changes, sort_keys=True, separators=(",", ":")), row.blob))
        if link is not None:
            link(int(cur.lastrowid or 0))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return dataclasses.replace(entry, id=int(cur.lastrowid or 0))


def entries(db: sqlite3.Connection) -> list[Entry]:
    """Every recorded configuration, oldest first (empty for a store from before schema 7)."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'config_history'").fetchone() is None:
        return []
    return [Entry(int(i), str(v), int(t), str(c), str(u), int(p), str(h), prev, json.loads(ch))
            for i, v, t, c, u, p, h, prev, ch in db.execute(
                "SELECT id, version, started_ms, cause, user, pid, host, previous, changes FROM config_history "
                "ORDER BY id")]


def usage(db: sqlite3.Connection) -> dict[str, dict[str, int]]:
    """Per configuration version, the readings stored under it (from the readings messages that reference
    it: `messages.config`), with the time they were committed: {version: {messages, readings, first_ms,
    last_ms}}. Pruned messages are no longer counted."""
    out: dict[str, dict[str, int]] = {}
    for text, n, rows, first, last in db.execute(
            "SELECT l.text, COUNT(*), SUM(m.last_id - m.first_id + 1), MIN(m.created_ms), MAX(m.created_ms) "
            "FROM messages m JOIN labels l ON l.id = m.config WHERE m.kind = 'readings' GROUP BY m.config"):
        out[str(text)] = {"messages": int(n), "readings": int(rows or 0), "first_ms": int(first), "last_ms": int(last)}
    return out


def record_running(store: Any, cfg: Config, *, cause: str, now_ms: int,
                   prepared: Prepared | None = None) -> Entry | None:
    """Record the configuration the gateway now runs under (store: gateway.store.Store), one log line if new.
    With `prepared` (a reload: made in a worker thread against the running configuration) only the insert."""
    if prepared is not None:
        entry: Entry | None = store.insert_config(prepared, cause=cause, now_ms=now_ms)
    else:
        entry = store.record_config(cfg.version, manifest(cfg), cause=cause, now_ms=now_ms)
    if entry is not None:
        log.info("configuration %s recorded (%s by %s, pid %d): %s", entry.version, cause, entry.user, entry.pid,
                 summary(entry.changes))
    return entry
