"""Replay on request (issue 12 item 2) against a private Mosquitto: the store, the forwarder and the replayer
of a gateway in-process, a central system as a real paho client.

A request for a seq range or a time range is accepted, its messages come again on their usual topics
with the same rows and a `replay` mark, and `done` follows; malformed, oversized, unknown, wrong-epoch
and out-of-retention requests are rejected with their reason while the gateway goes on delivering.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from gateway.encode import EncoderContext, JsonEncoder
from gateway.forwarder import Forwarder
from gateway.replay import Replayer, attach, replay_topic
from gateway.settings import ReplaySettings, Settings
from gateway.store import Store
from simulators.broker import PrivateBroker
from tests.helpers import Recorder
from tests.integration.test_forwarder_states import readings, settings, until

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schema"
RESPONSE = Draft202012Validator(json.loads((SCHEMAS / "cmd-response.schema.json").read_text()))
READINGS = Draft202012Validator(json.loads((SCHEMAS / "readings.schema.json").read_text()))
GW = "gw-st"


@pytest.fixture
def central(broker: PrivateBroker) -> Iterator[Recorder]:
    # Not the request topic itself: the Recorder decodes everything as JSON, and some requests are not.
    topics = [("carbon/+/+/readings", 1), ("carbon/+/cmd/response", 1)]
    rec = Recorder("127.0.0.1", broker.port, topic=topics).start()  # type: ignore[arg-type]
    yield rec
    rec.stop()


def ask(rec: Recorder, body: dict[str, Any] | bytes) -> None:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    rec.client.publish(replay_topic("carbon", GW), payload, qos=1).wait_for_publish(5)


def responses(rec: Recorder, rid: str | None) -> list[dict[str, Any]]:
    out = [b for b in rec.by_topic_suffix("/cmd/response") if b["id"] == rid]
    for b in out:
        RESPONSE.validate(b)
    return out


def replayed(rec: Recorder, rid: str) -> list[dict[str, Any]]:
    return [b for b in rec.readings() if b.get("replay") == rid]


async def test_replay_by_seq_and_by_time_and_rejections(tmp_path: Path, broker: PrivateBroker,
                                                        central: Recorder) -> None:
    store = Store(tmp_path / "s.db")
    store.commit(readings(400), now_ms=1_795_000_000_000, per_message=10)  # 40 messages of M-1
    s = settings(broker.port)
    fwd = Forwarder(s, GW, store, meta=lambda: {}, status_extra=lambda: {}, config_version="v1")
    encoder = JsonEncoder(EncoderContext("carbon", GW, store.epoch, "v1"))
    rp = Replayer(ReplaySettings(rate_msgs_s=200, max_messages=30, max_request_bytes=512), store, encoder,
                  prefix="carbon", gateway=GW, send=fwd.send_extra, window_free=lambda: fwd.window_free,
                  max_inflight=s.max_inflight, retention_ms=lambda: 10**15)
    fwd.commands[rp.topic] = rp.request
    tasks = [asyncio.create_task(fwd.run()), asyncio.create_task(rp.run())]
    try:
        await until(lambda: len({b["seq"] for b in central.readings()}) == 40)
        live = {b["seq"]: b for b in central.readings()}

        ask(central, {"id": "r-seq", "instrument": "M-1", "epoch": store.epoch, "from_seq": 5, "to_seq": 12})
        await until(lambda: any(b["state"] == "done" for b in responses(central, "r-seq")))
        states = [b["state"] for b in responses(central, "r-seq")]
        assert states == ["accepted", "done"]
        assert responses(central, "r-seq")[1]["messages"] == 8
        again = replayed(central, "r-seq")
        assert sorted(b["seq"] for b in again) == list(range(5, 13))
        for b in again:  # the same message as the live one, plus the mark
            READINGS.validate(b)
            assert {k: v for k, v in b.items() if k != "replay"} == live[b["seq"]]

        # By time: readings of M-1 are 1 ms apart, 10 per message: ts offsets 100..129 are messages 11..13.
        t0 = 1_795_000_000_000
        ask(central, {"id": "r-time", "instrument": "M-1", "from_ts": t0 + 100, "to_ts": t0 + 129})
        await until(lambda: any(b["state"] == "done" for b in responses(central, "r-time")))
        assert sorted(b["seq"] for b in replayed(central, "r-time")) == [11, 12, 13]

        ask(central, b"\xff not json")
        ask(central, b'{"id": "big", "pad": "' + b"x" * 600 + b'"}')
        ask(central, {"id": "r-many", "instrument": "M-1", "from_seq": 1, "to_seq": 40})
        ask(central, {"id": "r-unknown", "instrument": "NOPE", "from_seq": 1, "to_seq": 2})
        ask(central, {"id": "r-epoch", "instrument": "M-1", "epoch": "0" * 32, "from_seq": 1, "to_seq": 2})
        ask(central, {"id": "r-future", "instrument": "M-1", "from_seq": 39, "to_seq": 41})
        await until(lambda: len(responses(central, "r-future")) == 1)
        assert await _reason(central, None) == "malformed"  # no id could be read from it
        assert await _reason(central, "r-many") == "too_many_messages"
        assert await _reason(central, "r-unknown") == "unknown_stream"
        assert await _reason(central, "r-epoch") == "epoch_mismatch"
        assert await _reason(central, "r-future") == "beyond_last_seq"
        assert len([b for b in responses(central, None) if b["reason"].startswith("too_large")]) == 1

        # Retention prunes delivered data: what is gone is rejected as out of retention.
        await until(lambda: store.stats().pending_messages == 0)
        store.flush()  # the acks go to SQLite with the next transaction
        assert store.prune_delivered(older_than_ms=t0 + 1) == 400
        ask(central, {"id": "r-pruned", "instrument": "M-1", "from_seq": 1, "to_seq": 3})
        assert await _reason(central, "r-pruned") == "out_of_retention"

        st = rp.status()  # the status topic's `replay`
        assert (st["accepted"], st["done"], st["rejected"], st["queued"]) == (2, 2, 7, 0)
        assert st["last_rejection"].startswith("r-pruned: out_of_retention")

        # Live data still flows after all of that.
        store.commit(readings(10, start=400), now_ms=t0 + 10**6, per_message=10)
        fwd.notify()
        await until(lambda: any(b["seq"] == 41 and "replay" not in b for b in central.readings()))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        fwd.shutdown()
        store.close()


async def _reason(rec: Recorder, rid: str | None) -> str:
    await until(lambda: any(b["state"] == "rejected" for b in responses(rec, rid)))
    return str(next(b for b in responses(rec, rid) if b["state"] == "rejected")["reason"].split(":")[0])


def test_only_configured_command_topics_are_subscribed(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    try:
        off = Settings(gateway={"id": GW})  # type: ignore[arg-type]
        fwd = Forwarder(off.mqtt, GW, store, meta=lambda: {}, status_extra=lambda: {}, config_version="v1")
        enc = JsonEncoder(EncoderContext("carbon", GW, store.epoch))
        assert attach(fwd, off, store, enc, lambda: 0) is None
        assert fwd.commands == {}  # nothing is subscribed on connect
        on = Settings(gateway={"id": GW}, commands={"subscribe": ["replay"]})  # type: ignore[arg-type]
        assert attach(fwd, on, store, enc, lambda: 0) is not None
        assert list(fwd.commands) == ["carbon/gw-st/cmd/replay"]
    finally:
        store.close()


async def test_live_data_keeps_flowing_during_a_replay(tmp_path: Path, broker: PrivateBroker,
                                                       central: Recorder) -> None:
    """A replay is rate-limited and uses at most its share of the in-flight window: live messages of another
    instrument are delivered between its `accepted` and its `done`."""
    store = Store(tmp_path / "s.db")
    store.commit(readings(600), now_ms=1_795_000_000_000, per_message=10)  # 60 messages of M-1
    s = settings(broker.port, max_inflight=10)
    fwd = Forwarder(s, GW, store, meta=lambda: {}, status_extra=lambda: {}, config_version="v1")
    rp = Replayer(ReplaySettings(rate_msgs_s=20, window_share=0.5), store,
                  JsonEncoder(EncoderContext("carbon", GW, store.epoch, "v1")), prefix="carbon", gateway=GW,
                  send=fwd.send_extra, window_free=lambda: fwd.window_free, max_inflight=s.max_inflight,
                  retention_ms=lambda: 10**15)
    fwd.commands[rp.topic] = rp.request
    tasks = [asyncio.create_task(fwd.run()), asyncio.create_task(rp.run())]
    try:
        await until(lambda: len({b["seq"] for b in central.readings() if b["instrument"] == "M-1"}) == 60)
        ask(central, {"id": "r-long", "instrument": "M-1", "from_seq": 1, "to_seq": 60})
        await until(lambda: responses(central, "r-long") != [])
        n = 0
        while not any(b["state"] == "done" for b in responses(central, "r-long")):
            n += 1
            store.commit([r._replace(instrument="L-1") for r in readings(5, start=1000 + 5 * n)],
                         now_ms=1_795_000_100_000, per_message=10)
            fwd.notify()
            await asyncio.sleep(0.05)
        with central._lock:
            order = [(t, json.loads(json.dumps(b))) for t, b, _ in central.messages]
        accepted = next(i for i, (t, b) in enumerate(order) if t.endswith("/cmd/response") and b["state"] == "accepted")
        done = next(i for i, (t, b) in enumerate(order) if t.endswith("/cmd/response") and b["state"] == "done")
        live_between = [b for t, b in order[accepted:done] if t.endswith("L-1/readings")]
        replays_between = [b for t, b in order[accepted:done] if b.get("replay") == "r-long"]
        assert len(replays_between) == 60
        assert len(live_between) >= 2, "no live data while the replay ran"
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        fwd.shutdown()
        store.close()
