"""Pure: an MQTT message of a gateway -> what the consumer writes (docs/mqtt.md is the contract)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway.encode_compact import COMPACT_SCHEMAS, expand

KINDS = ("readings", "events", "aggregates", "substitutes", "corrections", "carbon")
READINGS = ("carbon-gateway/readings/1", *COMPACT_SCHEMAS)

# (point, ts_ms, value, unit, quality, reason, calibration)
ReadingRow = tuple[str, int, float | None, str, str, str, str]
# (point, body as JSON text)
RecordRow = tuple[str, str]


class BadMessage(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Batch:
    """One gateway message: a seq of one stream and its rows."""

    gateway: str
    epoch: str
    instrument: str
    kind: str
    seq: int
    replay: str | None
    rows: list[Any]  # ReadingRow for readings, else RecordRow

    @property
    def key(self) -> tuple[str, str, str, str, int]:
        return (self.gateway, self.epoch, self.instrument, self.kind, self.seq)


@dataclass(frozen=True, slots=True)
class Status:
    gateway: str
    epoch: str
    state: str
    ts_ms: int
    pending: int | None
    body: str


@dataclass(frozen=True, slots=True)
class Response:
    gateway: str
    id: str | None
    state: str
    reason: str
    messages: int | None


def _str(body: dict[str, Any], key: str) -> str:
    v = body.get(key)
    if not isinstance(v, str) or not v:
        raise BadMessage(f"{key} missing or not a string")
    return v


def decode(topic: str, payload: bytes) -> Batch | Status | Response:
    """Raises BadMessage for anything that is not one of the gateway's documented payloads."""
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        raise BadMessage("not JSON") from None
    if not isinstance(body, dict):
        raise BadMessage("not a JSON object")
    last = topic.rsplit("/", 1)[-1]
    try:
        if last == "status":
            pending = body.get("store", {}).get("pending_messages") if isinstance(body.get("store"), dict) else None
            return Status(_str(body, "gateway"), str(body.get("epoch") or ""), _str(body, "state"),
                          int(body.get("ts") or 0), pending if isinstance(pending, int) else None, payload.decode())
        if last == "response":
            rid = body.get("id")
            return Response(_str(body, "gateway"), rid if isinstance(rid, str) else None, _str(body, "state"),
                            str(body.get("reason") or ""), body.get("messages") if isinstance(body.get("messages"),
                                                                                              int) else None)
        if last not in KINDS:
            raise BadMessage(f"not a data topic: {topic}")
        seq = body.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise BadMessage("seq missing or not a positive integer")
        replay = body.get("replay")
        head = (_str(body, "gateway"), _str(body, "epoch"), _str(body, "instrument"), last, seq,
                replay if isinstance(replay, str) else None)
        if last == "readings":
            if body.get("schema") not in READINGS:
                raise BadMessage(f"unknown readings schema {body.get('schema')!r}")
            items = expand(body) if body["schema"] in COMPACT_SCHEMAS else body["readings"]
            rows = [(r["point"], int(r["ts"]), None if r["value"] is None else float(r["value"]), r["unit"],
                     r["quality"], r["reason"], r["calibration"]) for r in items]
            return Batch(*head, rows)
        items = body.get(last)
        if not isinstance(items, list):
            raise BadMessage(f"{last} missing")
        return Batch(*head, [(str(d.get("point") or ""), json.dumps(d, separators=(",", ":"), allow_nan=False))
                             for d in items])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as err:
        if isinstance(err, BadMessage):
            raise
        raise BadMessage(f"malformed {last} payload: {type(err).__name__}: {err}") from None
