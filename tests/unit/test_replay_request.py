"""Replay requests (issue 12 item 2): whatever the bytes, a request parses or is rejected with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from gateway.replay import Rejected, parse_request

SCHEMA = Draft202012Validator(json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "schema" / "replay-request.schema.json").read_text()))
LIMITS = {"max_bytes": 4096, "max_messages": 1000}


def parse(body: object) -> object:
    return parse_request(json.dumps(body).encode(), **LIMITS)


def test_a_seq_request_and_a_time_request_parse() -> None:
    body = {"schema": "carbon-gateway/replay-request/1", "id": "r-1", "instrument": "CEMS-01", "from_seq": 3,
            "to_seq": 9, "epoch": "ab"}
    SCHEMA.validate(body)
    r = parse(body)
    assert (r.kind, r.from_seq, r.to_seq, r.epoch) == ("readings", 3, 9, "ab")  # type: ignore[attr-defined]
    t = parse({"id": "r-2", "instrument": "CEMS-01", "kind": "events", "from_ts": 5, "to_ts": 6})
    assert (t.kind, t.from_ts, t.to_ts) == ("events", 5, 6)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("body", "code"), [
    ({"id": "r", "instrument": "X", "from_seq": 1, "to_seq": 1001}, "too_many_messages"),
    ({"id": "r", "instrument": "X", "from_seq": 5, "to_seq": 4}, "malformed"),
    ({"id": "r", "instrument": "X", "from_seq": 0, "to_seq": 4}, "malformed"),
    ({"id": "r", "instrument": "X", "from_seq": 1}, "malformed"),
    ({"id": "r", "instrument": "X", "from_seq": 1, "to_seq": 2, "from_ts": 1, "to_ts": 2}, "malformed"),
    ({"id": "r", "instrument": "X", "from_seq": True, "to_seq": 2}, "malformed"),
    ({"id": "r", "instrument": "X", "from_seq": 1.5, "to_seq": 2}, "malformed"),
    ({"id": "r", "instrument": "X", "kind": "status", "from_seq": 1, "to_seq": 2}, "malformed"),
    ({"id": "r", "instrument": "", "from_seq": 1, "to_seq": 2}, "malformed"),
    ({"id": "r", "instrument": "X", "from_seq": 1, "to_seq": 2, "extra": 1}, "malformed"),
    ({"id": "bad id!", "instrument": "X", "from_seq": 1, "to_seq": 2}, "malformed"),
    ({"id": "r", "instrument": "X", "from_seq": 1, "to_seq": 2, "schema": "other/1"}, "malformed"),
    ([1, 2], "malformed"),
])
def test_bad_requests_are_rejected_with_a_reason(body: object, code: str) -> None:
    with pytest.raises(Rejected) as err:
        parse(body)
    assert err.value.code == code
    if isinstance(body, dict) and body.get("id") == "r":
        assert err.value.request_id == "r"  # the response can name the request


def test_an_oversized_request_is_rejected_unread() -> None:
    with pytest.raises(Rejected) as err:
        parse_request(b"{" + b" " * 5000 + b"}", **LIMITS)
    assert err.value.code == "too_large"


@settings(deadline=None)  # a busy machine: no per-example time limit
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_are_rejected(payload: bytes) -> None:
    try:
        parse_request(payload, **LIMITS)
    except Rejected:
        pass


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                           max_leaves=10)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["id", "instrument", "kind", "epoch", "from_seq", "to_seq", "from_ts",
                                        "to_ts", "schema", "x"]), json_values))
def test_any_json_object_parses_or_is_rejected(body: dict[str, object]) -> None:
    try:
        parse_request(json.dumps(body).encode(), **LIMITS)
    except Rejected:
        pass
    except ValueError:
        pytest.fail("a ValueError escaped")
