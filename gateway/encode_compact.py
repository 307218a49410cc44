"""Compact JSON readings (schema carbon-gateway/readings-compact/1), selected by `output.encoder: json_compact`.

What is the same for most readings of a message is stated once: each point's name and unit in a
`points` table, one timestamp base `t0`, the message's calibration status, quality `good` with an
empty reason. Readings are parallel arrays: point index `p`, timestamp offset `t` (ms after `t0`),
value `v`; a reading whose quality, reason or calibration differs from those defaults is listed in
`x` as [index, quality, reason] or [index, quality, reason, calibration]. `expand()` turns a payload
back into the readings of carbon-gateway/readings/1; docs/mqtt.md shows an example.

Everything else (status, meta, the rules engine's topics, the Last Will) is as in `JsonEncoder`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from gateway.encode import JsonEncoder, chain_link, dumps
from gateway.store import Outgoing

COMPACT_SCHEMA = "carbon-gateway/readings-compact/1"


class CompactJsonEncoder(JsonEncoder):
    name = "json_compact"

    def readings(self, out: Outgoing) -> bytes:
        rows = out.rows
        index: dict[tuple[str, str], int] = {}
        points: list[list[str]] = []
        p: list[int] = []
        t: list[int] = []
        v: list[float | None] = []
        x: list[list[Any]] = []
        t0 = min(r.ts_ms for r in rows)
        calibration = Counter(r.calibration for r in rows).most_common(1)[0][0]
        for i, r in enumerate(rows):
            key = (r.point, r.unit)
            k = index.get(key)
            if k is None:
                k = index[key] = len(points)
                points.append([r.point, r.unit])
            p.append(k)
            t.append(r.ts_ms - t0)
            v.append(r.value)
            if r.quality != "good" or r.reason or r.calibration != calibration:
                x.append([i, r.quality, r.reason] if r.calibration == calibration
                         else [i, r.quality, r.reason, r.calibration])
        body: dict[str, Any] = {"schema": COMPACT_SCHEMA, "gateway": self.gateway, "instrument": out.instrument,
                                "epoch": self.epoch, "seq": out.seq, "t0": t0, "calibration": calibration,
                                "points": points, "p": p, "t": t, "v": v}
        if x:
            body["x"] = x
        if out.chain_pos:
            body["chain"] = chain_link(out)
        return dumps(body)


def expand(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The readings of a compact payload in the full form (carbon-gateway/readings/1 `readings`)."""
    points, t0, cal = body["points"], body["t0"], body["calibration"]
    out = [{"point": points[k][0], "ts": t0 + dt, "value": val, "unit": points[k][1], "quality": "good",
            "reason": "", "calibration": cal} for k, dt, val in zip(body["p"], body["t"], body["v"], strict=True)]
    for item in body.get("x", ()):
        r = out[item[0]]
        r["quality"], r["reason"] = item[1], item[2]
        if len(item) > 3:
            r["calibration"] = item[3]
    return out
