"""The consumer's pure parts: decoding payloads, finding gaps in seq streams."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.central.decode import BadMessage, Batch, Status, decode
from gateway.central.holes import gaps


def test_gaps_move_contiguous_to_and_name_each_hole() -> None:
    assert gaps(0, [1, 2, 3], [9, 9, 9]) == (3, [])
    assert gaps(0, [1, 2, 5, 6, 9], [9, 9, 4, 3, 1]) == (2, [(3, 4, 4), (7, 8, 1)])
    assert gaps(10, [13], [7]) == (10, [(11, 12, 7)])
    assert gaps(5, [], []) == (5, [])


@settings(deadline=None)  # a busy machine: no per-example time limit
@given(st.sets(st.integers(1, 60)), st.integers(0, 5))
def test_gaps_cover_exactly_the_missing_seqs(present: set[int], start: int) -> None:
    seqs = sorted(s for s in present if s > start)
    c, holes = gaps(start, seqs, [0.0] * len(seqs))
    missing = {s for lo, hi, _ in holes for s in range(lo, hi + 1)}
    top = max(seqs, default=start)
    assert missing == set(range(start + 1, top + 1)) - set(seqs)
    assert all(s in seqs for s in range(start + 1, c + 1))
    assert c + 1 not in seqs


def test_a_readings_payload_and_its_compact_form_decode_to_the_same_rows() -> None:
    full = {"schema": "carbon-gateway/readings/1", "gateway": "g", "instrument": "I", "epoch": "e", "seq": 3,
            "readings": [{"point": "p", "ts": 5, "value": 1.5, "unit": "kW", "quality": "good", "reason": "",
                          "calibration": "valid"},
                         {"point": "q", "ts": 6, "value": None, "unit": "%", "quality": "bad", "reason": "timeout",
                          "calibration": "valid"}]}
    compact = {"schema": "carbon-gateway/readings-compact/1", "gateway": "g", "instrument": "I", "epoch": "e",
               "seq": 3, "t0": 5, "calibration": "valid", "points": [["p", "kW"], ["q", "%"]], "p": [0, 1],
               "t": [0, 1], "v": [1.5, None], "x": [[1, "bad", "timeout"]], "replay": "r1"}
    # version 2: p and t left out where the shape says them, binary32 values in their short form
    compact2 = {**compact, "schema": "carbon-gateway/readings-compact/2", "t": [0, 1], "f32": [0]}
    del compact2["p"]
    a = decode("carbon/g/I/readings", json.dumps(full).encode())
    b = decode("carbon/g/I/readings", json.dumps(compact).encode())
    c = decode("carbon/g/I/readings", json.dumps(compact2).encode())
    assert isinstance(a, Batch)
    assert isinstance(b, Batch)
    assert isinstance(c, Batch)
    assert a.rows == b.rows == c.rows
    assert (a.key, a.replay, b.replay) == (("g", "e", "I", "readings", 3), None, "r1")


def test_status_and_bad_payloads() -> None:
    s = decode("carbon/g/status", b'{"gateway": "g", "epoch": "e", "state": "online", "ts": 7, '
                                  b'"store": {"pending_messages": 4}}')
    assert isinstance(s, Status)
    assert s.pending == 4
    for topic, payload in [("carbon/g/I/readings", b"\xff"), ("carbon/g/I/readings", b"[]"),
                           ("carbon/g/I/readings", b'{"gateway": "g", "epoch": "e", "instrument": "I", "seq": 0}'),
                           ("carbon/g/I/events", b'{"gateway": "g", "epoch": "e", "instrument": "I", "seq": 1}'),
                           ("carbon/g/I/meta", b"{}")]:
        with pytest.raises(BadMessage):
            decode(topic, payload)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() |
                           st.text(max_size=5), lambda c: st.lists(c, max_size=3) |
                           st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=12)


@settings(deadline=None)
@given(st.sampled_from(["readings", "events", "status", "response", "aggregates"]),
       st.dictionaries(st.sampled_from(["schema", "gateway", "epoch", "instrument", "seq", "readings", "events",
                                        "state", "ts", "store", "id", "points", "t0", "p", "t", "v"]), json_values))
def test_any_payload_decodes_or_is_a_bad_message(last: str, body: dict[str, object]) -> None:
    if last == "readings" and "schema" in body and body["schema"] is None:
        body["schema"] = "carbon-gateway/readings/1"
    try:
        decode(f"carbon/g/I/{last}", json.dumps(body).encode())
    except BadMessage:
        pass
