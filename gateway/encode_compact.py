"""Compact JSON readings (schema carbon-gateway/readings-compact/2), selected by `output.encoder: json_compact`.

What is the same for most readings of a message is stated once: each point's name and unit in a
`points` table, one timestamp base `t0`, the message's calibration status, quality `good` with an
empty reason. Readings are parallel arrays: point index `p`, timestamp offset `t` (ms after `t0`),
value `v`; a reading whose quality, reason or calibration differs from those defaults is listed in
`x` as [index, quality, reason] or [index, quality, reason, calibration].

Version 2 (issue 8: ≤ 40 bytes a reading at the plant's 20 readings a message) leaves out what a
message's shape already says:
- `p` is absent when the readings go round the `points` table in order (a poll, or several polls, of
  every point: reading i is point i mod len(points));
- `t` is absent when every reading is at `t0`, and has one entry per round through `points` when `p`
  is absent and each round shares one time;
- `f32` lists the points (or `true`: all of them) whose values are IEEE 754 binary32, as a meter's float
  register gives them: those values are written with up to 9 significant digits, and a reader rounds the
  number to binary32 to get the exact value the gateway stored (not a rounding of it: the stored value is
  that binary32).
`expand()` turns a payload of either version back into the readings of carbon-gateway/readings/1;
docs/mqtt.md shows an example.

Everything else (status, meta, the rules engine's topics, the Last Will) is as in `JsonEncoder`.
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from typing import Any

from gateway.encode import JsonEncoder, chain_link, dumps
from gateway.store import Outgoing

COMPACT_SCHEMA = "carbon-gateway/readings-compact/2"
COMPACT_SCHEMA_V1 = "carbon-gateway/readings-compact/1"  # still read by expand()
COMPACT_SCHEMAS = (COMPACT_SCHEMA_V1, COMPACT_SCHEMA)
F32_MAX = struct.unpack("<f", b"\xff\xff\x7f\x7f")[0]  # the largest finite binary32


def to_f32(values: list[float]) -> list[float]:
    """Each value rounded to IEEE 754 binary32 (OverflowError beyond its range)."""
    n = len(values)
    return list(struct.unpack(f"<{n}f", struct.pack(f"<{n}f", *values)))


def f32_texts(values: list[float]) -> list[str]:
    """JSON numbers for binary32 values, each of which reads back (rounded to binary32) as that value: 6
    significant digits where they do (a device's rounded 230.1 or 0.98), else 8, else 9 (always enough)."""
    out = [f"{v:.6g}" if v else repr(v) for v in values]  # 0.0 and -0.0 as they are
    for digits in (8, 9):
        back = to_f32([float(s) for s in out])
        wrong = [i for i, (b, v) in enumerate(zip(back, values, strict=True)) if b != v]
        if not wrong:
            break
        for i in wrong:
            out[i] = f"{values[i]:.{digits}g}"
    return out


def _float32_points(keys: list[int], values: list[float | None], n_points: int) -> list[bool]:
    """Per point: has it values in this message, all binary32 (finite), so that the f32 form applies?"""
    state: list[bool | None] = [None] * n_points  # None: no value yet
    present = [(k, v) for k, v in zip(keys, values, strict=True) if v is not None]
    nums = [v for _, v in present]
    try:
        rounded = to_f32(nums)
    except OverflowError:  # a value beyond binary32's range: not binary32; the others each on their own
        rounded = [to_f32([v])[0] if abs(v) <= F32_MAX else math.nan for v in nums]
    for (k, v), r in zip(present, rounded, strict=True):
        if r != v or not math.isfinite(v):
            state[k] = False
        elif state[k] is None:
            state[k] = True
    return [s is True for s in state]


def _number(v: float | None) -> str:
    """A value as json.dumps writes it (its shortest round-trip form); never NaN or infinity."""
    if v is None:
        return "null"
    if not math.isfinite(v):
        raise ValueError(f"{v!r} is not JSON")  # tagging makes these null: this is a bug upstream
    return repr(v)


class CompactJsonEncoder(JsonEncoder):
    name = "json_compact"

    def readings(self, out: Outgoing) -> bytes:
        rows = out.rows
        index: dict[tuple[str, str], int] = {}
        points: list[list[str]] = []
        p: list[int] = []
        x: list[list[Any]] = []
        ts = [r.ts_ms for r in rows]
        values = [r.value for r in rows]
        t0 = min(ts)
        calibration = Counter(r.calibration for r in rows).most_common(1)[0][0]
        for i, r in enumerate(rows):
            key = (r.point, r.unit)
            k = index.get(key)
            if k is None:
                k = index[key] = len(points)
                points.append([r.point, r.unit])
            p.append(k)
            if r.quality != "good" or r.reason or r.calibration != calibration:
                x.append([i, r.quality, r.reason] if r.calibration == calibration
                         else [i, r.quality, r.reason, r.calibration])
        n, width = len(rows), len(points)
        body: dict[str, Any] = {"schema": COMPACT_SCHEMA, "gateway": self.gateway, "instrument": out.instrument,
                                "epoch": self.epoch, "seq": out.seq, "t0": t0, "calibration": calibration,
                                "points": points}
        cyclic = all(k == i % width for i, k in enumerate(p))
        if not cyclic:
            body["p"] = p
        t = [v - t0 for v in ts]
        if any(t):
            rounds = [t[i:i + width] for i in range(0, n, width)]
            if cyclic and all(min(r) == max(r) for r in rounds):
                body["t"] = [r[0] for r in rounds]
            else:
                body["t"] = t
        f32 = _float32_points(p, values, width)
        if any(f32):
            body["f32"] = True if all(f32) else [k for k, ok in enumerate(f32) if ok]
        if x:
            body["x"] = x
        if out.chain_pos:
            body["chain"] = chain_link(out)
        # `v` last, written here: binary32 values in their short form, the rest as JSON writes them.
        texts = ["null"] * n
        f32_at: list[int] = []
        for i, (k, v) in enumerate(zip(p, values, strict=True)):
            if v is not None:
                if f32[k]:
                    f32_at.append(i)
                else:
                    texts[i] = _number(v)
        for i, s in zip(f32_at, f32_texts([values[i] for i in f32_at]), strict=True):
            texts[i] = s
        head = dumps(body)
        return head[:-1] + b',"v":[' + ",".join(texts).encode() + b"]}"


def expand(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The readings of a compact payload (version 1 or 2) in the full form (carbon-gateway/readings/1
    `readings`)."""
    points, t0, cal, v = body["points"], body["t0"], body["calibration"], body["v"]
    n, width = len(v), len(points)
    p = body.get("p") or [i % width for i in range(n)]
    t = body.get("t") or [0] * n
    if len(t) != n:  # one time per round through `points` (version 2, no `p`)
        t = [t[i // width] for i in range(n)]
    f32 = body.get("f32", False)
    f32_points = set(range(width)) if f32 is True else set(f32 or ())
    if f32_points:
        v = list(v)
        at = [i for i in range(n) if v[i] is not None and p[i] in f32_points]
        for i, val in zip(at, to_f32([float(v[i]) for i in at]), strict=True):
            v[i] = val
    out = [{"point": points[k][0], "ts": t0 + dt, "value": val, "unit": points[k][1], "quality": "good",
            "reason": "", "calibration": cal} for k, dt, val in zip(p, t, v, strict=True)]
    for item in body.get("x", ()):
        r = out[item[0]]
        r["quality"], r["reason"] = item[1], item[2]
        if len(item) > 3:
            r["calibration"] = item[3]
    return out
