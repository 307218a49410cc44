"""Encoders: the compact JSON form carries exactly the readings of the full form, and both match their schemas."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from gateway.encode import ENCODERS, EncoderContext, JsonEncoder, make_encoder
from gateway.encode_compact import CompactJsonEncoder, expand
from gateway.model import Calibration, Quality, Reading
from gateway.store import Outgoing

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schema"
CTX = EncoderContext("carbon", "gw-1", "0123456789abcdef0123456789abcdef", "cfg1")


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((SCHEMAS / f"{name}.schema.json").read_text()))


def poll_readings(n_polls: int, points: int = 10) -> list[Reading]:
    """What a CEMS gives: `points` float32-derived values per poll, one poll a second."""
    import struct

    out = []
    for k in range(n_polls):
        for p in range(points):
            raw = 10 + k * 0.37 + p * 1.13
            v = struct.unpack("<f", struct.pack("<f", raw))[0]  # float32 precision, as read from registers
            out.append(Reading("CEMS-01", f"point_{p}", 1_795_488_593_123 + 1000 * k, v, "mg/m3", Quality.GOOD, "",
                               Calibration.VALID))
    return out


readings_st = st.lists(
    st.builds(Reading, st.just("I"), st.sampled_from(["co2", "o2", "flow"]), st.integers(1_700_000_000_000,
                                                                                          1_700_000_100_000),
              st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)), st.sampled_from(["%vol", "kW"]),
              st.sampled_from(list(Quality)), st.sampled_from(["", "timeout", "over_range", "code:BadX"]),
              st.sampled_from(list(Calibration))),
    min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(readings_st)
def test_compact_expands_to_exactly_the_full_form(rows: list[Reading]) -> None:
    out = Outgoing(7, "I", "readings", 3, 0, rows)
    full = json.loads(JsonEncoder(CTX).message(out).payload)
    compact = json.loads(CompactJsonEncoder(CTX).message(out).payload)
    validator("readings").validate(full)
    validator("readings-compact").validate(compact)
    assert expand(compact) == full["readings"]
    assert {k: compact[k] for k in ("gateway", "instrument", "epoch", "seq")} == \
           {k: full[k] for k in ("gateway", "instrument", "epoch", "seq")}


f32_st = st.floats(width=32, allow_nan=False, allow_infinity=False)


@st.composite
def polls_st(draw: st.DrawFn) -> list[Reading]:
    """Messages shaped like a gateway's: polls of the same points in order (one time a poll, or a few late
    readings), binary32 register values beside other numbers and nulls, now and then a point out of order."""
    names = draw(st.lists(st.sampled_from(["co2", "o2", "flow", "v0", "active_energy_import_t1"]), min_size=1,
                          max_size=5, unique=True))
    units = {n: draw(st.sampled_from(["%vol", "kW", "1", "Wh"])) for n in names}
    f32_point = {n: draw(st.booleans()) for n in names}
    polls = draw(st.integers(1, 4))
    t0 = draw(st.integers(1_700_000_000_000, 1_800_000_000_000))
    rows = []
    for k in range(polls):
        t = t0 + 1000 * k
        for n in names:
            dt = draw(st.sampled_from([0, 0, 0, 0, 7]))
            value = draw(st.one_of(st.none(), f32_st if f32_point[n] else st.floats(allow_nan=False,
                                                                                    allow_infinity=False)))
            quality = draw(st.sampled_from([Quality.GOOD, Quality.GOOD, Quality.BAD]))
            rows.append(Reading("I", n, t + dt, value, units[n], quality, "" if quality == Quality.GOOD else "timeout",
                                Calibration.VALID))
    if draw(st.booleans()) and len(rows) > 1:
        i = draw(st.integers(0, len(rows) - 2))
        rows[i], rows[i + 1] = rows[i + 1], rows[i]
    return rows


@settings(max_examples=300, deadline=None)
@given(polls_st())
def test_compact_v2_leaves_out_only_what_the_shape_says_and_expands_exactly(rows: list[Reading]) -> None:
    out = Outgoing(7, "I", "readings", 3, 0, rows)
    full = json.loads(JsonEncoder(CTX).message(out).payload)
    payload = CompactJsonEncoder(CTX).message(out).payload
    compact = json.loads(payload)
    validator("readings-compact").validate(compact)
    expanded = expand(compact)
    assert expanded == full["readings"]
    # exact, bit for bit (== would take -0.0 for 0.0)
    assert [struct.pack("<d", r["value"]) if r["value"] is not None else None for r in expanded] == \
           [struct.pack("<d", r.value) if r.value is not None else None for r in rows]
    width = len(compact["points"])
    assert ("p" in compact) == any(compact["points"][i % width] != [r.point, r.unit] for i, r in enumerate(rows))
    assert ("t" in compact) == (len({r.ts_ms for r in rows}) > 1)
    p = compact.get("p") or [i % width for i in range(len(rows))]
    f32 = compact.get("f32", [])
    listed = set(range(width)) if f32 is True else set(f32)
    for k in range(width):  # a point is listed exactly when all its values are binary32
        values = [r.value for i, r in enumerate(rows) if p[i] == k and r.value is not None]
        assert (k in listed) == (bool(values) and all(is_f32(v) for v in values))
    texts = payload[payload.rindex(b'"v":[') + 5:-2].decode().split(",")
    for i, text in enumerate(texts):  # a binary32 value takes at most 9 significant digits
        if p[i] in listed and text != "null":
            assert len(text.lstrip("-").split("e")[0].replace(".", "").lstrip("0")) <= 9, text


def is_f32(v: float) -> bool:
    try:
        return bool(struct.unpack("<f", struct.pack("<f", v))[0] == v)
    except OverflowError:
        return False


def test_compact_v1_payloads_still_expand() -> None:
    v1 = {"schema": "carbon-gateway/readings-compact/1", "gateway": "g", "instrument": "I", "epoch": "e", "seq": 1,
          "t0": 100, "calibration": "valid", "points": [["co2", "%vol"], ["o2", "%vol"]], "p": [0, 1, 0],
          "t": [0, 0, 1000], "v": [10.896906852722168, None, 12.5], "x": [[1, "bad", "timeout"]]}
    validator("readings-compact-1").validate(v1)
    assert [(r["point"], r["ts"], r["value"], r["quality"]) for r in expand(v1)] == [
        ("co2", 100, 10.896906852722168, "good"), ("o2", 100, None, "bad"), ("co2", 1100, 12.5, "good")]


def test_compact_is_at_most_40_bytes_a_reading_at_the_plants_20_a_message() -> None:
    """Issue 8: 20 readings a message (a 20-point meter's poll, or two polls of a 10-point CEMS)."""
    for rows in (poll_readings(1, points=20), poll_readings(2)):
        out = Outgoing(1, "CEMS-01", "readings", 4711, 0, rows)
        payload = CompactJsonEncoder(CTX).message(out).payload
        assert len(payload) / 20 <= 40, payload
        assert expand(json.loads(payload)) == json.loads(JsonEncoder(CTX).message(out).payload)["readings"]


def test_compact_is_at_most_40_bytes_a_reading_for_a_typical_message() -> None:
    out = Outgoing(1, "CEMS-01", "readings", 4711, 0, poll_readings(10))  # 100 readings per message
    compact = CompactJsonEncoder(CTX).message(out)
    full = JsonEncoder(CTX).message(out)
    assert len(compact.payload) / 100 <= 40, len(compact.payload)
    assert len(compact.payload) < len(full.payload) / 3
    assert compact.topic == full.topic == "carbon/gw-1/CEMS-01/readings"


# The JSON encoders; Sparkplug B speaks protobuf on its own topics (tests/unit/test_sparkplug_encoder.py).
@pytest.mark.parametrize("name", sorted(n for n in ENCODERS if n.startswith("json")))
def test_every_encoder_speaks_the_documented_status_meta_and_derived_payloads(name: str) -> None:
    enc = make_encoder(name, CTX)
    will, death = enc.will(), enc.death()
    assert (will.topic, will.retain, will.qos) == ("carbon/gw-1/status", True, 1)
    for pub, reason in ((will, "connection_lost"), (death, "shutdown")):
        body = json.loads(pub.payload)
        validator("status").validate(body)
        assert (body["state"], body["reason"], body["epoch"]) == ("offline", reason, CTX.epoch)
    stalled = json.loads(enc.status("stalled", {"ts": 1}).payload)
    validator("status").validate(stalled)
    assert stalled["state"] == "stalled"
    ev = enc.message(Outgoing(9, "I", "events", 2, 0, [{"type": "gap_open", "kind": "open", "instrument": "I",
                                                         "point": "co2", "start_ms": 1, "end_ms": None,
                                                         "cause": "communication_loss"}]))
    assert ev.topic == "carbon/gw-1/I/events"
    body = json.loads(ev.payload)
    validator("events").validate(body)
    assert body["epoch"] == CTX.epoch


any_readings_st = st.lists(
    st.builds(Reading, st.just("CEMS-01"), st.text(min_size=1, max_size=8),
              st.integers(0, 2**53), st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False),
                                               st.integers(-2**40, 2**40)),
              st.text(max_size=6), st.sampled_from(list(Quality)), st.text(max_size=10),
              st.sampled_from(list(Calibration))),
    min_size=0, max_size=30)


@settings(max_examples=300, deadline=None)
@given(rows=any_readings_st, seq=st.integers(1, 2**40))
def test_json_readings_are_the_bytes_of_the_dict_form(rows: list[Reading], seq: int) -> None:
    """JsonEncoder.readings writes each reading from its fields' JSON texts: byte for byte what json.dumps of
    the dict form gives (any point names, units, reasons, values, including -0.0, huge and integer values)."""
    from gateway.encode import dumps, readings_body

    out = Outgoing(7, "CEMS-01", "readings", seq, 0, rows)
    got = JsonEncoder(CTX).readings(out)
    assert got == dumps(readings_body(CTX.gateway, "CEMS-01", CTX.epoch, seq, rows))
    linked = Outgoing(7, "CEMS-01", "readings", seq, 0, rows, seq + 1, bytes(32))  # with its chain link
    assert JsonEncoder(CTX).readings(linked) == dumps(readings_body(
        CTX.gateway, "CEMS-01", CTX.epoch, seq, rows, {"pos": seq + 1, "hash": "00" * 32}))


def test_json_readings_refuse_nan_as_before() -> None:
    out = Outgoing(7, "CEMS-01", "readings", 1, 0, [Reading("CEMS-01", "p", 1, float("nan"), "", Quality.GOOD, "",
                                                             Calibration.VALID)])
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        JsonEncoder(CTX).readings(out)


@pytest.mark.parametrize("name", sorted(n for n in ENCODERS if n.startswith("json")))
def test_messages_carry_their_chain_link_and_match_the_schemas(name: str) -> None:
    """Issue 11: each message carries its link in the store's hash chain (docs/hash-chain.md); a message
    stored before the chain has none. Both forms validate against the published schemas."""
    enc = make_encoder(name, CTX)
    h = bytes(range(32))
    out = Outgoing(7, "CEMS-01", "readings", 3, 0, poll_readings(2), 4711, h)
    body = json.loads(enc.message(out).payload)
    validator("readings-compact" if name == "json_compact" else "readings").validate(body)
    assert body["chain"] == {"pos": 4711, "hash": h.hex()}
    older = json.loads(enc.message(Outgoing(7, "CEMS-01", "readings", 3, 0, poll_readings(2))).payload)
    assert "chain" not in older
    ev = json.loads(enc.message(Outgoing(9, "I", "aggregates", 2, 0, [{"point": "co2"}], 12, h)).payload)
    assert ev["chain"] == {"pos": 12, "hash": h.hex()}
    status = json.loads(enc.status("online", {"ts": 1, "chain": {"readings": {"pos": 4711, "hash": h.hex()},
                                                                    "config": {"pos": 0, "hash": h.hex()}}}).payload)
    validator("status").validate(status)
