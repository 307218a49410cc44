"""count_sub.py --parser for carbon-gateway's readings payload (docs/mqtt.md of the gateway).

Topic {prefix}/{gateway}/{instrument}/readings, JSON
  {"schema": "carbon-gateway/readings/1", "gateway", "instrument", "seq",
   "readings": [{"point", "ts", "value", "unit", "quality", "reason", "calibration"}, ...]}
One message holds one instrument's readings of one store commit (up to readings_per_message), so it
can hold several polls; the readings of one poll share one `ts` (the meter's answer time, ms).

parse(topic, payload) -> (points, [(meter, second), ...], [ts_ms, ...])
  points   readings with a value (a failed poll is published as readings with value null and
           quality bad: those are not delivered data points)
  samples  one (meter, production second) per poll in the message: second = value of point v0
           (the farm's unix second % 1e6), meter = value of point v2 (the farm's meter index;
           falls back to the number in the instrument id m0007)
  ts_ms    one source timestamp per poll, for count_sub's delivery lag (receive time - ts)
Other topics (status, meta, events, aggregates, ...) count 0 points.

Adapted from the shared harness's cg/cg_parser.py (issue 8): also reads the compact form
(`output.encoder: json_compact`, schemas carbon-gateway/readings-compact/1 and /2: a `points` table of
[name, unit], parallel arrays p/t/v, timestamps as offsets from t0; /2 leaves out p and t where the
message's shape says them).
"""
import json

SEC_POINT = "v0"  # register pair 0: unix second % 1e6
METER_POINT = "v2"  # register pair 1: meter index


def parse(topic, payload):
    if not topic.endswith("/readings"):
        return 0, [], []
    obj = json.loads(payload)
    if "readings" in obj:
        readings = obj["readings"] or []
    else:  # compact, version 1 or 2 (2: p absent = round the points table in order; t absent = all at t0,
        # or one offset per round; binary32 values in short form, which round() reads as well)
        names = [pt[0] for pt in obj.get("points") or []]
        t0 = obj.get("t0") or 0
        vals = obj.get("v") or []
        n, width = len(vals), max(len(names), 1)
        p = obj.get("p") or [i % width for i in range(n)]
        t = obj.get("t") or [0] * n
        if len(t) != n:
            t = [t[i // width] for i in range(n)]
        readings = [{"point": names[k], "ts": t0 + dt, "value": v} for k, dt, v in zip(p, t, vals, strict=False)]
    points = 0
    polls = {}  # ts -> [second, meter]
    for r in readings:
        v = r.get("value")
        if v is None:
            continue
        points += 1
        name = r.get("point")
        if name == SEC_POINT:
            polls.setdefault(r.get("ts"), [None, None])[0] = v
        elif name == METER_POINT:
            polls.setdefault(r.get("ts"), [None, None])[1] = v
    samples = []
    ts_list = []
    for ts, (sec, meter) in polls.items():
        if isinstance(ts, (int, float)):
            ts_list.append(ts)
        if sec is None:
            continue
        if meter is None:
            digits = "".join(ch for ch in str(obj.get("instrument", "")) if ch.isdigit())
            if not digits:
                continue
            meter = int(digits)
        samples.append((str(round(float(meter))), round(float(sec))))
    return points, samples, ts_list
