"""Manual corrections (standard 10.3.1): a correction is a new record with reason, author and time;
the original reading stays as it was.

`carbon-gateway correct` checks the correction against the configuration and the store (a finite value,
inside the point's measuring range unless forced, a time that matches a stored reading and is not in the
future), then drops a JSON file into the store's inbox directory, atomically and readable by the service
user. The running gateway (the only writer of the store) ingests it on its next commit and publishes it;
if the gateway is not running, the file waits for the next start.

Ingestion never crashes the writer: a file that cannot be read or is not a valid correction is moved to
the quarantine folder next to the inbox with one log line, and a file is stored at most once, by the
SHA-256 of its bytes (recorded in the store in the same transaction as the correction record).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sqlite3
import stat
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError, StoreError
from gateway.instruments import PointSpec
from gateway.model import Derived
from gateway.registry import Config
from gateway.store import Store, atomic_write, fsync_dir, nearest_ts, reading_id_at, series_of

log = logging.getLogger("gateway.corrections")

MAX_FILE_BYTES = 64 * 1024  # a correction is a few hundred bytes; anything larger is not one
MAX_FILES_PER_COLLECT = 100  # bounded work per writer turn; the rest waits for the next turn
NEAREST = 3  # stored timestamps listed either side when --at matches no reading


def inbox_for(store_path: Path) -> Path:
    return store_path.parent / (store_path.name + ".corrections")


def quarantine_for(inbox: Path) -> Path:
    return inbox.with_name(inbox.name + ".quarantine")


def parse_time(text: str) -> int:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"'{text}' is not an ISO 8601 time, e.g. 2026-11-24T08:00:00+08:00", field="--at") from None
    if dt.tzinfo is None:
        raise ConfigError(f"'{text}' has no time zone; add Z or +08:00", field="--at")
    # Exact integer milliseconds (no float rounding: 08:00:00.123 must match the stored 123 ms).
    delta = dt.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


def _zone_of(text: str) -> timezone:
    try:
        off = datetime.fromisoformat(text.replace("Z", "+00:00")).utcoffset()
    except ValueError:
        off = None
    return timezone(off or timedelta(0))


def format_ms(ts_ms: int, zone: timezone = UTC) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, zone).isoformat(timespec="milliseconds")


def measuring_range(point: PointSpec) -> tuple[float | None, float | None]:
    """The point's measuring range in its reporting unit (what its validity rule checks), if it has one."""
    if point.rules is None:
        return None, None
    return point.rules.validity.range_low, point.rules.validity.range_high


def _outside(value: float, lo: float | None, hi: float | None) -> bool:
    return (lo is not None and value < lo) or (hi is not None and value > hi)


def _range_text(lo: float | None, hi: float | None, unit: str) -> str:
    return f"[{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}] {unit}"


def find_reading(store_path: Path, instrument: str, point: str, ts_ms: int) -> tuple[int | None, list[int]]:
    """(id of the stored reading at exactly ts_ms or None, the nearest stored timestamps around ts_ms).

    Read-only and without the store's lock, so it works while the gateway runs (WAL readers never block)."""
    try:
        db = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as err:
        raise StoreError(f"{store_path}: cannot open the store to find the reading: {err}") from None
    try:
        sids = series_of(db, instrument, point)
        rid = reading_id_at(db, sids, instrument, ts_ms)
        if rid is not None:
            return rid, []
        return None, nearest_ts(db, sids, instrument, ts_ms, NEAREST)
    except sqlite3.Error as err:
        raise StoreError(f"{store_path}: cannot read the store to find the reading: {err}") from None
    finally:
        db.close()


def submit(cfg: Config, store_path: Path, *, instrument: str, point: str, at: str, value: float, reason: str,
           author: str, force: bool = False, now_ms: int | None = None) -> Path:
    """Validate and queue one correction; returns the inbox file. Errors are ConfigError (exit 2) naming
    the option at fault, or StoreError (exit 1) when the store cannot be read."""
    try:
        spec = cfg.instrument(instrument)
    except KeyError:
        raise ConfigError(f"unknown instrument '{instrument}'", field="--instrument") from None
    if point not in spec.point_index:
        raise ConfigError(f"instrument {instrument} has no point '{point}'", field="--point")
    pspec = spec.point_index[point]
    if not math.isfinite(value):
        raise ConfigError(f"must be a finite number, not {value}", field="--value")
    lo, hi = measuring_range(pspec)
    if _outside(value, lo, hi) and not force:
        raise ConfigError(f"{value:g} {pspec.unit} is outside the measuring range of {instrument}/{point} "
                          f"{_range_text(lo, hi, pspec.unit)}; add --force to record it anyway (it is recorded "
                          f"as forced)", field="--value")
    if not reason.strip() or not author.strip():
        raise ConfigError("a correction needs a reason and an author (standard 10.3.1)", field="--reason/--author")
    if not (_utf8(reason) and _utf8(author)):
        raise ConfigError("not valid text in the locale's encoding", field="--reason/--author")
    ts = parse_time(at)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    zone = _zone_of(at)
    if ts > now:
        raise ConfigError(f"{at} is in the future (now {format_ms(now, zone)}); a correction names a stored "
                          f"reading", field="--at")
    if not store_path.is_file():
        raise ConfigError(f"no store at {store_path} (store.path of the configuration, relative to the working "
                          f"directory); give the store `run` uses, e.g. --store /var/lib/carbon-gateway/gateway.db",
                          field="--store")
    reading_id, nearest = find_reading(store_path, instrument, point, ts)
    if reading_id is None:
        listed = ", ".join(format_ms(t, zone) for t in nearest)
        hint = f"nearest stored: {listed}" if nearest else "the store holds no reading of this point"
        raise ConfigError(f"no stored reading of {instrument}/{point} at {format_ms(ts, zone)}; {hint}", field="--at")
    body = {"instrument": instrument, "point": point, "ts": ts, "value": value, "unit": pspec.unit,
            "reason": reason.strip(), "author": author.strip(), "created": now, "id": uuid.uuid4().hex,
            "forced": bool(force and _outside(value, lo, hi))}
    inbox = inbox_for(store_path)
    owner = _service_owner(store_path)
    _make_inbox(inbox, owner)
    final = inbox / f"{body['created']}-{body['id']}.json"
    # Atomic (temp + fsync + rename): the gateway never sees half a file. 0644 and, when run as root,
    # owned like the store's directory: the service user can read it and remove it once stored.
    data = json.dumps(body, allow_nan=False).encode()
    atomic_write(final, data, mode=0o644)
    if owner is not None:
        os.chown(final, *owner)
    return final


def _service_owner(store_path: Path) -> tuple[int, int] | None:
    """(uid, gid) of the store's directory when we run as root (the service user owns it); else None."""
    if os.geteuid() != 0:
        return None
    st = store_path.parent.stat()
    return (st.st_uid, st.st_gid) if st.st_uid != 0 else None


def _make_inbox(inbox: Path, owner: tuple[int, int] | None) -> None:
    if not inbox.is_dir():
        inbox.mkdir(mode=0o755, exist_ok=True)
        fsync_dir(inbox.parent)
    if owner is not None:
        st = inbox.stat()
        if (st.st_uid, st.st_gid) != owner:
            os.chown(inbox, *owner)  # e.g. made by root before: the service must be able to remove files


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


class BadCorrection(ValueError):
    """An inbox file that is not a valid correction (the reason goes into the quarantine log line)."""


def _reject_constant(name: str) -> float:
    raise BadCorrection(f"{name} is not a number")


def parse_correction(data: bytes, cfg: Config) -> dict[str, Any]:
    """Parse and check an inbox file's bytes; the clean correction fields or BadCorrection."""
    try:
        body = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise BadCorrection("not UTF-8 text") from None
    except RecursionError:
        raise BadCorrection("nested too deeply") from None
    except json.JSONDecodeError as err:
        raise BadCorrection(f"not JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    if not isinstance(body, dict):
        raise BadCorrection("not a JSON object")
    if body.get("type") == "estimate":  # issue 10 item 9: the estimate channel shares this inbox
        from gateway.estimates import BadEstimate, parse_estimate

        try:
            return parse_estimate(body, cfg)
        except BadEstimate as err:
            raise BadCorrection(f"estimate: {err}") from None

    def text(key: str) -> str:
        v = body.get(key)
        if not isinstance(v, str) or not v.strip():
            raise BadCorrection(f"{key}: missing or not a non-empty string")
        if not _utf8(v):
            raise BadCorrection(f"{key}: not valid Unicode text")  # e.g. a lone surrogate: unpublishable
        return v

    def integer(key: str) -> int:
        v = body.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or not -(2**62) < v < 2**62:
            raise BadCorrection(f"{key}: missing or not an integer")
        return v

    instrument, point = text("instrument"), text("point")
    try:
        spec = cfg.instrument(instrument)
    except KeyError:
        raise BadCorrection(f"unknown instrument '{instrument}'") from None
    if point not in spec.point_index:
        raise BadCorrection(f"instrument {instrument} has no point '{point}'")
    pspec = spec.point_index[point]
    value = body.get("value")
    if not isinstance(value, int | float) or isinstance(value, bool) or not _finite(value):
        raise BadCorrection("value: missing or not a finite number")
    unit = text("unit")
    if unit != pspec.unit:
        raise BadCorrection(f"unit '{unit}' is not the unit of {instrument}/{point} ('{pspec.unit}')")
    forced = body.get("forced", False)
    if not isinstance(forced, bool):
        raise BadCorrection("forced: not true or false")
    lo, hi = measuring_range(pspec)
    if _outside(float(value), lo, hi) and not forced:
        raise BadCorrection(f"value {value:g} is outside the measuring range {_range_text(lo, hi, unit)} and not "
                            f"forced")
    return {"instrument": instrument, "point": point, "ts": integer("ts"), "value": float(value), "unit": unit,
            "reason": text("reason").strip(), "author": text("author").strip(), "created": integer("created"),
            "id": text("id"), "forced": bool(forced and _outside(float(value), lo, hi))}


@dataclass
class Collected:
    """What one look into the inbox found: the records to commit, with the (sha256, file name) of each
    file (committed in the same transaction) and the files to remove once committed."""

    records: list[Derived] = field(default_factory=list)
    hashes: list[tuple[str, str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


@dataclass
class Inbox:
    directory: Path
    config: Config
    # Files we could neither store nor move away (e.g. a directory we may not write): ignored, logged once,
    # until they change. Keyed by path, valued by (mtime_ns, size).
    _stuck: dict[Path, tuple[int, int]] = field(default_factory=dict)

    @property
    def quarantine(self) -> Path:
        return quarantine_for(self.directory)

    def collect(self, store: Store, now_ms: int) -> Collected:
        """Corrections waiting in the inbox, as records. Never raises for a bad file (StoreError only when
        the store itself fails); remove the files with `remove` after the commit."""
        out = Collected()
        try:
            names = sorted(p for p in self.directory.glob("*.json"))
        except OSError as err:
            log.error("%s: cannot list the corrections inbox: %s", self.directory, err.strerror)
            return out
        seen: set[str] = set()
        for path in [p for p in names if not self._is_stuck(p)][:MAX_FILES_PER_COLLECT]:
            try:
                data = _read_regular(path)
            except FileNotFoundError:
                continue
            except OSError as err:
                self._quarantine(path, f"cannot read it: {err.strerror or err}")
                continue
            except BadCorrection as err:
                self._quarantine(path, str(err))
                continue
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen or store.is_ingested(digest):
                if self._remove(path, f"already stored (same content, sha256 {digest[:12]})"):
                    log.info("%s: already stored (same content, sha256 %s); removed", path, digest[:12])
                continue
            try:
                body = parse_correction(data, self.config)
            except BadCorrection as err:
                self._quarantine(path, str(err))
                continue
            seen.add(digest)
            if body.get("type") == "estimate":
                body = {**body, "received": now_ms}
            else:
                body = {"type": "correction", **body, "received": now_ms,
                        "supersedes_reading_id": store.reading_id_at(body["instrument"], body["point"], body["ts"])}
            out.records.append(Derived("corrections", body["instrument"], body["point"], int(body["ts"]), body))
            out.hashes.append((digest, path.name))
            out.files.append(path)
        return out

    def remove(self, files: list[Path]) -> None:
        """After the commit: the files are stored (their hashes with them), so a failure here only means
        the file stays in the inbox; it is never stored again."""
        for path in files:
            self._remove(path, "stored")

    def _remove(self, path: Path, what: str) -> bool:
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            log.warning("%s: %s, but the file cannot be removed (%s); it will not be stored again",
                        path, what, err.strerror or err)
            self._mark_stuck(path)
            return False
        return True

    def _quarantine(self, path: Path, why: str) -> None:
        target = self.quarantine / path.name
        n = 1
        while target.exists() or target.is_symlink():  # never overwrite what an earlier file left there
            target = self.quarantine / f"{path.name}.{n}"
            n += 1
        try:
            self.quarantine.mkdir(mode=0o755, exist_ok=True)
            os.replace(path, target)
        except FileNotFoundError:
            return
        except OSError as err:
            log.error("%s: not a usable correction (%s), and it cannot be moved to %s (%s); ignored until it "
                      "changes", path, why, self.quarantine, err.strerror or err)
            self._mark_stuck(path)
            return
        log.error("%s: not a usable correction (%s); moved to %s", path, why, target)

    def _mark_stuck(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            st = path.lstat()
            self._stuck[path] = (st.st_mtime_ns, st.st_size)

    def _is_stuck(self, path: Path) -> bool:
        if path not in self._stuck:
            return False
        try:
            st = path.lstat()
        except OSError:
            self._stuck.pop(path, None)
            return True
        if self._stuck[path] == (st.st_mtime_ns, st.st_size):
            return True
        del self._stuck[path]
        return False


def _read_regular(path: Path) -> bytes:
    """A regular file's bytes, at most MAX_FILE_BYTES: never follows a symlink or blocks on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadCorrection("not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise BadCorrection(f"{st.st_size} bytes, more than a correction can be ({MAX_FILE_BYTES})")
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, MAX_FILE_BYTES + 1 - total):
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_FILE_BYTES:
                raise BadCorrection(f"more than {MAX_FILE_BYTES} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)
