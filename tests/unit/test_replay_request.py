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


def test_the_schema_lists_every_kind_the_gateway_replays() -> None:
    from gateway.replay import KINDS

    assert tuple(SCHEMA.schema["properties"]["kind"]["enum"]) == KINDS
    body = {"id": "r-c", "instrument": "boiler1", "kind": "carbon", "from_seq": 1, "to_seq": 2}
    SCHEMA.validate(body)
    assert parse(body).kind == "carbon"  # type: ignore[attr-defined]


async def test_an_emission_sources_carbon_records_are_replayed(tmp_path: Path) -> None:
    """Carbon records are stored as the stream '<source>/carbon' (gateway/derived/carbon.py): a request
    naming the source as its instrument gets them again on their topic, original seq, marked."""
    import asyncio

    from gateway.encode import EncoderContext, JsonEncoder, Publish
    from gateway.model import Derived
    from gateway.replay import Replayer
    from gateway.settings import ReplaySettings
    from gateway.store import Store

    store = Store(tmp_path / "s.db")
    hour = 1_795_000_000_000 // 3_600_000 * 3_600_000
    for k in range(3):
        body = {"record_id": f"co2-{k}", "source": "boiler1", "hour_start": hour + k * 3_600_000, "version": 1}
        store.commit([], now_ms=hour + (k + 1) * 3_600_000, per_message=10,
                     derived=[Derived("carbon", "boiler1", "", body["hour_start"], body)])
    sent: list[Publish] = []

    def send(pub: Publish) -> bool:
        sent.append(pub)
        return True  # always connected

    rp = Replayer(ReplaySettings(rate_msgs_s=1000), store, JsonEncoder(EncoderContext("carbon", "gw", store.epoch)),
                  prefix="carbon", gateway="gw", send=send, window_free=lambda: 100,
                  max_inflight=100, retention_ms=lambda: 10**15)
    task = asyncio.create_task(rp.run())
    try:
        rp.request(json.dumps({"id": "r-c", "instrument": "boiler1", "kind": "carbon", "from_seq": 2,
                               "to_seq": 3}).encode())
        for _ in range(200):
            if rp.stats["done"]:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        store.close()
    states = [json.loads(p.payload)["state"] for p in sent if p.topic == "carbon/gw/cmd/response"]
    assert states == ["accepted", "done"]
    replayed = [json.loads(p.payload) for p in sent if p.topic == "carbon/gw/boiler1/carbon"]
    assert [(b["seq"], b["replay"], b["carbon"][0]["record_id"]) for b in replayed] == [(2, "r-c", "co2-1"),
                                                                                       (3, "r-c", "co2-2")]
