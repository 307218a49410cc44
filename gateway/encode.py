"""Wire formats: topic layout and payloads (pure). Versioned schemas are documented in docs/mqtt.md.

An encoder owns everything a subscriber sees: the topic of each message, the Last Will, what is
published when a connection comes up (birth: status and the retained `meta` of each instrument),
the clean-shutdown death message and the periodic `status`. The forwarder and the transport only
move (topic, payload, qos, retain) tuples, so a second output (another JSON layout, Sparkplug B) is
one module that subclasses or replaces `JsonEncoder`, plus its name in `ENCODERS` and in the
`output.encoder` setting.

Every payload carries the store's `epoch`: a store that is replaced or reset starts a new epoch,
so subscribers deduplicate by (instrument, epoch, seq).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from gateway.store import KIND_READINGS, Outgoing

READINGS_SCHEMA = "carbon-gateway/readings/1"
STATUS_SCHEMA = "carbon-gateway/status/1"
META_SCHEMA = "carbon-gateway/meta/1"


class Publish(NamedTuple):
    """One MQTT message as the transport sends it."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True, slots=True)
class EncoderContext:
    prefix: str  # mqtt.topic_prefix
    gateway: str  # gateway.id
    epoch: str  # Store.epoch: the identity of the store the seqs count in
    config_version: str = ""
    output: Any = None  # settings.OutputSettings: an encoder's own options (e.g. output.sparkplug)


def readings_topic(prefix: str, gateway: str, instrument: str) -> str:
    return f"{prefix}/{gateway}/{instrument}/readings"


def status_topic(prefix: str, gateway: str) -> str:
    return f"{prefix}/{gateway}/status"


def meta_topic(prefix: str, gateway: str, instrument: str) -> str:
    return f"{prefix}/{gateway}/{instrument}/meta"


def derived_topic(prefix: str, gateway: str, instrument: str, kind: str) -> str:
    return f"{prefix}/{gateway}/{instrument}/{kind}"


class Encoder(Protocol):
    name: str

    def message(self, out: Outgoing) -> Publish: ...

    def will(self) -> Publish: ...

    def birth(self, status: Mapping[str, Any], meta: Mapping[str, Mapping[str, Any]]) -> list[Publish]: ...

    def status(self, state: str, body: Mapping[str, Any]) -> Publish: ...

    def death(self) -> Publish: ...


class JsonEncoder:
    """JSON, one object per message, every reading complete (schema carbon-gateway/readings/1)."""

    name = "json"

    def __init__(self, ctx: EncoderContext) -> None:
        self.ctx = ctx
        self.prefix, self.gateway, self.epoch = ctx.prefix, ctx.gateway, ctx.epoch
        self._head_start = f'{{"schema":{_text(READINGS_SCHEMA)},"gateway":{_text(self.gateway)},"instrument":'
        self._epoch_text = _text(self.epoch)

    def message(self, out: Outgoing) -> Publish:
        if out.kind != KIND_READINGS:
            # events / aggregates / substitutes / corrections: the stored record bodies, in order.
            body: dict[str, Any] = {"schema": f"carbon-gateway/{out.kind}/1", "gateway": self.gateway,
                                    "instrument": out.instrument, "epoch": self.epoch, "seq": out.seq,
                                    out.kind: list(out.rows)}
            if out.chain_pos:
                body["chain"] = chain_link(out)
            return Publish(derived_topic(self.prefix, self.gateway, out.instrument, out.kind), dumps(body))
        return Publish(readings_topic(self.prefix, self.gateway, out.instrument), self.readings(out))

    def readings(self, out: Outgoing) -> bytes:
        """The bytes of ``dumps(readings_body(...))``, each reading written from JSON texts kept per
        (point, unit, quality, reason, calibration), which repeat from poll to poll: one lookup per reading
        instead of a dict per reading through json.dumps (issue 8). tests/unit/test_encoders.py checks it
        byte for byte against the dict form."""
        # dumps of the head dict, written from kept texts: one json.dumps per message was ~10 % of encoding.
        seq = out.seq
        head = (f'{self._head_start}{_text(out.instrument)},"epoch":{self._epoch_text},'
                f'"seq":{seq if type(seq) is int else json.dumps(seq)},"readings":').encode()
        pieces = _PIECES
        parts = []
        append = parts.append
        for r in out.rows:
            key = (r.point, r.unit, r.quality, r.reason, r.calibration)
            pp = pieces.get(key)
            if pp is None:
                pp = _pieces(key)
            v = r.value
            if v is None:
                value = "null"
            elif type(v) is float and v - v == 0.0:  # finite (NaN and inf raise in dumps, as they did)
                value = _float_repr(v)
            else:
                value = json.dumps(v, allow_nan=False)
            ts = r.ts_ms
            append(f'{pp[0]}{ts if type(ts) is int else json.dumps(ts)},"value":{value}{pp[1]}')
        # The chain link written directly (an int and a hex string): json.dumps of its dict was ~1 % of the loop.
        tail = (b"]}" if not out.chain_pos
                else f'],"chain":{{"pos":{int(out.chain_pos)},"hash":"{out.chain_hash.hex()}"}}}}'.encode())
        return head + b"[" + ",".join(parts).encode() + tail

    def will(self) -> Publish:
        return self._status_publish("offline", {"reason": "connection_lost"})

    def death(self) -> Publish:
        return self._status_publish("offline", {"reason": "shutdown"})

    def status(self, state: str, body: Mapping[str, Any]) -> Publish:
        return self._status_publish(state, body)

    def birth(self, status: Mapping[str, Any], meta: Mapping[str, Mapping[str, Any]]) -> list[Publish]:
        out = [self._status_publish("online", status)]
        for instrument, m in meta.items():
            out.append(Publish(meta_topic(self.prefix, self.gateway, instrument),
                               meta_payload(self.gateway, m, self.ctx.config_version, epoch=self.epoch),
                               qos=1, retain=True))
        return out

    def _status_publish(self, state: str, body: Mapping[str, Any]) -> Publish:
        return Publish(status_topic(self.prefix, self.gateway),
                       status_payload(state, self.gateway, epoch=self.epoch, **body), qos=1, retain=True)


# name -> "module:Class". A new output: one module, one line here, one value of `output.encoder`.
ENCODERS: dict[str, str] = {
    "json": "gateway.encode:JsonEncoder",
    "json_compact": "gateway.encode_compact:CompactJsonEncoder",
    "sparkplug": "gateway.encode_sparkplug:SparkplugEncoder",
}


def make_encoder(name: str, ctx: EncoderContext) -> Encoder:
    module, _, cls = ENCODERS[name].partition(":")
    factory = getattr(importlib.import_module(module), cls)
    encoder: Encoder = factory(ctx)
    return encoder


def status_payload(state: str, gateway: str, **fields: Any) -> bytes:
    return dumps({"schema": STATUS_SCHEMA, "state": state, "gateway": gateway, **fields})


def meta_payload(gateway: str, meta: Mapping[str, Any], config_version: str, *, epoch: str = "") -> bytes:
    return dumps({"schema": META_SCHEMA, "gateway": gateway, "epoch": epoch, "config_version": config_version,
                  **meta})


_float_repr = float.__repr__  # what json.dumps writes for a finite float
_TEXTS: dict[str, str] = {}


_PIECES: dict[tuple[str, str, str, str, str], tuple[str, str]] = {}


def _pieces(key: tuple[str, str, str, str, str]) -> tuple[str, str]:
    """A reading's JSON around its time and value: ``{"point":…,"ts":`` and ``,"unit":…}``, kept per key."""
    point, unit, quality, reason, calibration = key
    if len(_PIECES) > 100_000:
        _PIECES.clear()
    pp = _PIECES[key] = (f'{{"point":{_text(point)},"ts":',
                         f',"unit":{_text(unit)},"quality":{_text(quality)},"reason":{_text(reason)},'
                         f'"calibration":{_text(calibration)}}}')
    return pp


def _text(s: str) -> str:
    """The JSON text of a string (as dumps writes it), kept: point names, units and codes repeat."""
    t = _TEXTS.get(s)
    if t is None:
        if len(_TEXTS) > 100_000:
            _TEXTS.clear()
        t = _TEXTS[s] = json.dumps(s, ensure_ascii=False)
    return t


def readings_body(gateway: str, instrument: str, epoch: str, seq: int, rows: Any,
                  chain: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `json` encoder's readings message as a dict (the reference for JsonEncoder.readings)."""
    body: dict[str, Any] = {
        "schema": READINGS_SCHEMA,
        "gateway": gateway,
        "instrument": instrument,
        "epoch": epoch,
        "seq": seq,
        "readings": [
            {"point": r.point, "ts": r.ts_ms, "value": r.value, "unit": r.unit, "quality": r.quality,
             "reason": r.reason, "calibration": r.calibration}
            for r in rows
        ],
    }
    if chain:
        body["chain"] = chain
    return body


def chain_link(out: Outgoing) -> dict[str, Any]:
    """The message's link in the store's hash chain (docs/hash-chain.md): the last row id it covers and the
    link's SHA-256, so the central side keeps proof of what the gateway stored (issue 11 item 1)."""
    return {"pos": out.chain_pos, "hash": out.chain_hash.hex()}


def dumps(obj: Any) -> bytes:
    # allow_nan=False: a NaN must never reach a subscriber as invalid JSON; tagging turns it into null.
    return json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()
