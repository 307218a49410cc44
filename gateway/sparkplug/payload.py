"""Sparkplug B topics, datatypes and payloads (pure): build and decode, nothing else.

Everything here follows the Eclipse Sparkplug 3.0.0 specification: topic namespace `spBv1.0`, the
DataType enumeration, the Payload/Metric/PropertySet protobuf (chapter 6). `decode()` turns a payload
back into plain dicts; the tests and `carbon-gateway watch --sparkplug` read messages with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.sparkplug.sparkplug_b_pb2 import Payload

NAMESPACE = "spBv1.0"

# DataType (specification 6.4.16): the ones the gateway uses.
INT32, INT64, UINT64, DOUBLE, BOOLEAN, STRING, DATETIME = 3, 4, 8, 10, 11, 12, 13
TYPE_NAMES = {1: "Int8", 2: "Int16", 3: "Int32", 4: "Int64", 5: "UInt8", 6: "UInt16", 7: "UInt32", 8: "UInt64",
              9: "Float", 10: "Double", 11: "Boolean", 12: "String", 13: "DateTime", 14: "Text"}

# Metric names the specification fixes.
BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"


def node_topic(group: str, verb: str, node: str) -> str:
    return f"{NAMESPACE}/{group}/{verb}/{node}"


def device_topic(group: str, verb: str, node: str, device: str) -> str:
    return f"{NAMESPACE}/{group}/{verb}/{node}/{device}"


def state_topic(host_id: str) -> str:
    """Sparkplug 3.0 host STATE topic (2.2 had STATE/{host_id} with plain ONLINE/OFFLINE)."""
    return f"{NAMESPACE}/STATE/{host_id}"


def valid_id(token: str) -> bool:
    """A group, edge node or device id: one non-empty topic level, no wildcards (specification 4.1.1)."""
    return bool(token) and not any(c in token for c in "/+#")


@dataclass(slots=True)
class Metric:
    """One metric as it goes on the wire. `value` None means is_null."""

    name: str | None
    alias: int | None
    datatype: int | None  # BIRTH messages only
    value: Any
    timestamp: int | None = None
    historical: bool = False
    properties: Mapping[str, tuple[int, Any]] = field(default_factory=dict)  # key -> (datatype, value)


def _set_value(target: Any, datatype: int, value: Any) -> None:
    if datatype in (BOOLEAN,):
        target.boolean_value = bool(value)
    elif datatype in (STRING, 14):
        target.string_value = str(value)
    elif datatype in (9,):
        target.float_value = float(value)
    elif datatype == DOUBLE:
        target.double_value = float(value)
    elif datatype in (4, 8, DATETIME):
        target.long_value = int(value) & 0xFFFF_FFFF_FFFF_FFFF  # Int64 travels as its two's complement
    else:
        target.int_value = int(value) & 0xFFFF_FFFF


def encode(metrics: Iterable[Metric], *, timestamp: int, seq: int | None, types: bool = False) -> bytes:
    """A Payload; `seq` None for NDEATH (the specification forbids a seq there). `types`: write each
    metric's datatype (BIRTH and NDEATH; DATA messages SHOULD NOT carry it, the value field follows it)."""
    p = Payload(timestamp=timestamp)
    if seq is not None:
        p.seq = seq
    for m in metrics:
        pm = p.metrics.add()
        if m.name is not None:
            pm.name = m.name
        if m.alias is not None:
            pm.alias = m.alias
        if types and m.datatype is not None:
            pm.datatype = m.datatype
        if m.timestamp is not None:
            pm.timestamp = m.timestamp
        if m.historical:
            pm.is_historical = True
        if m.value is None:
            pm.is_null = True
        else:
            _set_value(pm, m.datatype if m.datatype is not None else _infer(m.value), m.value)
        if m.properties:
            pm.properties.CopyFrom(property_set(m.properties))
    return p.SerializeToString()


def property_set(props: Mapping[str, tuple[int, Any]]) -> Any:
    """A PropertySet message (key -> (datatype, value)): built once, copied into many metrics."""
    ps = Payload.PropertySet()
    for key, (ptype, pval) in props.items():
        ps.keys.append(key)
        pv = ps.values.add()
        pv.type = ptype
        if pval is None:
            pv.is_null = True
        else:
            _set_value(pv, ptype, pval)
    return ps


def _infer(value: Any) -> int:
    """DATA messages carry no datatype: the value field follows the type declared at birth."""
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        return INT64
    if isinstance(value, float):
        return DOUBLE
    return STRING


# -- decoding (written from the specification, for subscribers and tests) --------------------------

def _value(msg: Any) -> Any:
    which = msg.WhichOneof("value")
    if which is None:
        return None
    v = getattr(msg, which)
    if which == "propertyset_value":
        return _properties(v)
    return v


def _properties(ps: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, pv in zip(ps.keys, ps.values, strict=True):
        out[key] = None if pv.is_null else _signed(pv.type, _value(pv))
    return out


def _signed(datatype: int, v: Any) -> Any:
    if v is None:
        return None
    if datatype in (1, 2, 3) and v >= 1 << 31:
        return v - (1 << 32)
    if datatype == 4 and v >= 1 << 63:
        return v - (1 << 64)
    return v


def decode(data: bytes) -> dict[str, Any]:
    """{timestamp, seq (None if absent), metrics: [{name, alias, datatype, timestamp, value, is_null,
    is_historical, properties}]}. Signed integers are returned signed when the metric says its type."""
    p = Payload()
    p.ParseFromString(data)
    metrics = []
    for m in p.metrics:
        metrics.append({
            "name": m.name if m.HasField("name") else None,
            "alias": m.alias if m.HasField("alias") else None,
            "datatype": m.datatype if m.HasField("datatype") else None,
            "timestamp": m.timestamp if m.HasField("timestamp") else None,
            "is_null": m.is_null,
            "is_historical": m.is_historical,
            "value": None if m.is_null else _signed(m.datatype, _value(m)),
            "properties": _properties(m.properties) if m.HasField("properties") else {},
        })
    return {"timestamp": p.timestamp if p.HasField("timestamp") else None,
            "seq": p.seq if p.HasField("seq") else None, "metrics": metrics}


def state_payload(online: bool, timestamp: int) -> bytes:
    """A primary host's STATE (3.0): UTF-8 JSON, published QoS 1 retained by the host."""
    return json.dumps({"online": online, "timestamp": timestamp}, separators=(",", ":")).encode()


def parse_state(data: bytes) -> tuple[bool, int] | None:
    """(online, timestamp) of a STATE payload, or None if it is not one (logged by the caller)."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict) or not isinstance(body.get("online"), bool):
        return None
    ts = body.get("timestamp")
    if not isinstance(ts, int) or isinstance(ts, bool):
        return None
    return body["online"], ts
