"""Manual corrections (standard 10.3.1): a correction is a new record with reason, author and time;
the original reading stays as it was.

`carbon-gateway correct` drops a JSON file into the store's inbox directory; the running gateway (the
only writer of the store) ingests it on its next commit and publishes it. If the gateway is not
running, the file waits for the next start.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.model import Derived
from gateway.registry import Config
from gateway.store import Store

log = logging.getLogger("gateway.corrections")


def inbox_for(store_path: Path) -> Path:
    return store_path.parent / (store_path.name + ".corrections")


def parse_time(text: str) -> int:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"'{text}' is not an ISO 8601 time, e.g. 2026-11-24T08:00:00+08:00", field="--at") from None
    if dt.tzinfo is None:
        raise ConfigError(f"'{text}' has no time zone; add Z or +08:00", field="--at")
    return int(dt.astimezone(UTC).timestamp() * 1000)


def submit(cfg: Config, store_path: Path, *, instrument: str, point: str, at: str, value: float, reason: str,
           author: str) -> Path:
    """Validate and queue one correction; returns the inbox file."""
    try:
        spec = cfg.instrument(instrument)
    except KeyError:
        raise ConfigError(f"unknown instrument '{instrument}'", field="--instrument") from None
    if point not in spec.point_index:
        raise ConfigError(f"instrument {instrument} has no point '{point}'", field="--point")
    if not reason.strip() or not author.strip():
        raise ConfigError("a correction needs a reason and an author (standard 10.3.1)", field="--reason/--author")
    body = {"instrument": instrument, "point": point, "ts": parse_time(at), "value": value,
            "unit": spec.point_index[point].unit, "reason": reason.strip(), "author": author.strip(),
            "created": int(time.time() * 1000), "id": uuid.uuid4().hex}
    inbox = inbox_for(store_path)
    inbox.mkdir(parents=True, exist_ok=True)
    final = inbox / f"{body['created']}-{body['id']}.json"
    tmp = final.with_suffix(".tmp")
    tmp.write_text(json.dumps(body))
    os.replace(tmp, final)  # atomic: the gateway never sees half a file
    return final


@dataclass
class Inbox:
    directory: Path
    config: Config

    def collect(self, store: Store, now_ms: int) -> tuple[list[Derived], list[Path]]:
        """Corrections waiting in the inbox, as records; the caller deletes the files after the commit."""
        if not self.directory.is_dir():
            return [], []
        out: list[Derived] = []
        done: list[Path] = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                body: dict[str, Any] = json.loads(path.read_text())
                spec = self.config.instrument(body["instrument"])
                if body["point"] not in spec.point_index:
                    raise KeyError(body["point"])
            except (ValueError, KeyError, OSError) as err:
                log.error("%s: rejected correction (%s); moved to rejected/", path, err)
                rejected = self.directory / "rejected"
                rejected.mkdir(exist_ok=True)
                os.replace(path, rejected / path.name)
                continue
            body = {"type": "correction", **body, "received": now_ms,
                    "supersedes_reading_id": store.reading_id_at(body["instrument"], body["point"], body["ts"])}
            out.append(Derived("corrections", body["instrument"], body["point"], int(body["ts"]), body))
            done.append(path)
        return out, done
