"""MQTT topics and JSON payloads (pure). Versioned schemas are documented in docs/mqtt.md.

The forwarder takes an Encoder, so another wire format (Sparkplug B) can be added beside JSON
without touching the store or the delivery logic.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol, cast

from gateway.model import Message, StoredReading

READINGS_SCHEMA = "carbon-gateway/readings/1"
STATUS_SCHEMA = "carbon-gateway/status/1"
META_SCHEMA = "carbon-gateway/meta/1"


def readings_topic(prefix: str, gateway: str, instrument: str) -> str:
    return f"{prefix}/{gateway}/{instrument}/readings"


def status_topic(prefix: str, gateway: str) -> str:
    return f"{prefix}/{gateway}/status"


def meta_topic(prefix: str, gateway: str, instrument: str) -> str:
    return f"{prefix}/{gateway}/{instrument}/meta"


def derived_topic(prefix: str, gateway: str, instrument: str, kind: str) -> str:
    return f"{prefix}/{gateway}/{instrument}/{kind}"


class Encoder(Protocol):
    def message(self, msg: Message, rows: Sequence[Any]) -> tuple[str, bytes]: ...


class JsonEncoder:
    def __init__(self, prefix: str, gateway: str) -> None:
        self.prefix, self.gateway = prefix, gateway

    def message(self, msg: Message, rows: Sequence[Any]) -> tuple[str, bytes]:
        if msg.kind != "readings":
            # events / aggregates / substitutes / corrections: the stored record bodies, in order.
            body: dict[str, Any] = {"schema": f"carbon-gateway/{msg.kind}/1", "gateway": self.gateway,
                                    "instrument": msg.instrument, "seq": msg.seq, msg.kind: list(rows)}
            return derived_topic(self.prefix, self.gateway, msg.instrument, msg.kind), _dumps(body)
        body = {
            "schema": READINGS_SCHEMA,
            "gateway": self.gateway,
            "instrument": msg.instrument,
            "seq": msg.seq,
            "readings": [
                {"point": r.point, "ts": r.ts_ms, "value": r.value, "unit": r.unit, "quality": r.quality,
                 "reason": r.reason, "calibration": r.calibration}
                for r in cast(Sequence[StoredReading], rows)
            ],
        }
        return readings_topic(self.prefix, self.gateway, msg.instrument), _dumps(body)


def status_payload(state: str, gateway: str, **fields: Any) -> bytes:
    return _dumps({"schema": STATUS_SCHEMA, "state": state, "gateway": gateway, **fields})


def meta_payload(gateway: str, meta: dict[str, Any], config_version: str) -> bytes:
    return _dumps({"schema": META_SCHEMA, "gateway": gateway, "config_version": config_version, **meta})


def _dumps(obj: Any) -> bytes:
    # allow_nan=False: a NaN must never reach a subscriber as invalid JSON; tagging turns it into null.
    return json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()
