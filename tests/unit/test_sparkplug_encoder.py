"""Sparkplug B encoder (pure): births, aliases, seq/bdSeq, historical flag, properties, read back with the
decoder written from the specification (gateway/sparkplug/payload.py)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.encode import EncoderContext, Publish, make_encoder
from gateway.encode_sparkplug import Bundle, SparkplugEncoder, parts
from gateway.model import Calibration, Quality, Reading
from gateway.settings import OutputSettings, SparkplugSettings
from gateway.sparkplug.payload import BDSEQ, BOOLEAN, DOUBLE, INT64, REBIRTH, decode, parse_state, state_payload
from gateway.store import Outgoing

EPOCH = "0123456789abcdef0123456789abcdef"
META = {"CEMS-01": {"instrument": "CEMS-01", "name": "Stack CEMS", "manufacturer": "SICK",
                    "calibration": {"due_date": "2027-01-01", "certificate": "C-1"},
                    "points": [{"point": "co2", "unit": "%vol"}, {"point": "o2", "unit": "%vol"}]}}


class Clock:
    def __init__(self) -> None:
        self.t = 1_795_488_000_000

    def __call__(self) -> int:
        return self.t


def encoder(json_topics: str = "none", clock: Clock | None = None) -> SparkplugEncoder:
    out = OutputSettings(encoder="sparkplug", sparkplug=SparkplugSettings(group_id="plant", json_topics=json_topics))
    ctx = EncoderContext("carbon", "gw-1", EPOCH, "cfg1", output=out)
    enc = make_encoder("sparkplug", ctx)
    assert isinstance(enc, SparkplugEncoder)
    if clock is not None:
        enc._now = clock
    return enc


def reading(point: str, ts: int, value: float | None, quality: Quality = Quality.GOOD, reason: str = "",
            cal: Calibration = Calibration.VALID) -> Reading:
    return Reading("CEMS-01", point, ts, value, "%vol", quality, reason, cal)


class Host:
    """A subscriber's view, from the specification: aliases learnt at birth, resolved in DATA."""

    def __init__(self) -> None:
        self.names: dict[tuple[str, int], str] = {}
        self.types: dict[tuple[str, str], int] = {}

    def feed(self, pub: Publish) -> dict:
        verb_dev = pub.topic.split("/")
        verb, dev = verb_dev[2], (verb_dev[4] if len(verb_dev) > 4 else "")
        body = decode(pub.payload)
        for m in body["metrics"]:
            if verb in ("NBIRTH", "DBIRTH"):
                assert m["datatype"] is not None, m
                if m["alias"] is not None:
                    self.names[(dev, m["alias"])] = m["name"]
                self.types[(dev, m["name"])] = m["datatype"]
            elif verb in ("NDATA", "DDATA"):
                assert (m["name"], m["datatype"]) == (None, None), m  # alias only in DATA
                m["name"] = self.names[(dev, m["alias"])]
        return body


def test_births_name_every_metric_with_type_alias_and_the_bdseq_of_the_will() -> None:
    enc = encoder()
    assert enc.new_connection() == 0
    will = enc.will()
    assert will.topic == "spBv1.0/plant/NDEATH/gw-1"
    assert will.qos == 1
    assert not will.retain
    death = decode(will.payload)
    assert death["seq"] is None
    assert [(m["name"], m["value"]) for m in death["metrics"]] == [(BDSEQ, 0)]
    pubs = enc.birth({"ts": 1}, META)
    assert [p.topic for p in pubs] == ["spBv1.0/plant/NBIRTH/gw-1", "spBv1.0/plant/DBIRTH/gw-1/CEMS-01"]
    assert all(p.qos == 0 and not p.retain for p in pubs)
    host = Host()
    nb, db = (host.feed(p) for p in pubs)
    assert (nb["seq"], db["seq"]) == (0, 1)
    node = {m["name"]: m for m in nb["metrics"]}
    assert node[BDSEQ]["value"] == 0
    assert node[BDSEQ]["datatype"] == INT64
    assert node[REBIRTH]["value"] is False
    assert node[REBIRTH]["datatype"] == BOOLEAN
    assert node["Gateway/Epoch"]["value"] == EPOCH
    dev = {m["name"]: m for m in db["metrics"]}
    assert dev["co2"]["datatype"] == DOUBLE
    assert dev["co2"]["is_null"]
    assert dev["co2"]["properties"]["engUnit"] == "%vol"
    assert dev["Properties/manufacturer"]["value"] == "SICK"
    assert dev["Calibration/due_date"]["value"] == "2027-01-01"
    assert json.loads(dev["Meta"]["value"])["schema"] == "carbon-gateway/meta/1"
    aliases = [m["alias"] for m in nb["metrics"] + db["metrics"] if m["alias"] is not None]
    assert len(aliases) == len(set(aliases))  # unique across the node


def test_ddata_carries_aliases_timestamps_and_quality_calibration_properties() -> None:
    enc = encoder()
    enc.new_connection()
    host = Host()
    for p in enc.birth({}, META):
        host.feed(p)
    pub = enc.message(Outgoing(1, "CEMS-01", "readings", 42, enc.birth_ms, [
        reading("co2", 1000, 12.5), reading("o2", 1000, None, Quality.BAD, "timeout", Calibration.EXPIRED)]))
    assert isinstance(pub, Publish)
    assert pub.topic == "spBv1.0/plant/DDATA/gw-1/CEMS-01"
    assert pub.qos == 0
    body = host.feed(pub)
    assert body["seq"] == 2
    co2, o2, seq = body["metrics"]
    assert (co2["name"], co2["value"], co2["timestamp"], co2["is_historical"]) == ("co2", 12.5, 1000, False)
    assert co2["properties"] == {"Quality": 192, "Reason": "", "Calibration": "valid"}
    assert (o2["name"], o2["is_null"], o2["value"]) == ("o2", True, None)
    assert o2["properties"] == {"Quality": 0, "Reason": "timeout", "Calibration": "expired"}
    assert (seq["name"], seq["value"]) == ("Readings/Seq", 42)
    # the next birth carries the last live value
    db = host.feed(enc.rebirth()[1])
    co2b = next(m for m in db["metrics"] if m["name"] == "co2")
    assert (co2b["value"], co2b["timestamp"], co2b["properties"]["Quality"]) == (12.5, 1000, 192)


def test_messages_committed_before_the_birth_are_historical() -> None:
    clock = Clock()
    enc = encoder(clock=clock)
    enc.new_connection()
    host = Host()
    for p in enc.birth({}, META):
        host.feed(p)
    old = host.feed(enc.message(Outgoing(1, "CEMS-01", "readings", 1, clock.t - 1, [reading("co2", 5, 1.0)])))
    live = host.feed(enc.message(Outgoing(2, "CEMS-01", "readings", 2, clock.t, [reading("co2", 6, 2.0)])))
    assert all(m["is_historical"] for m in old["metrics"])
    assert not any(m["is_historical"] for m in live["metrics"])


def test_an_unknown_point_or_device_is_born_before_its_data() -> None:
    enc = encoder()
    enc.new_connection()
    host = Host()
    for p in enc.birth({}, META):
        host.feed(p)
    pub = enc.message(Outgoing(1, "CEMS-01", "readings", 1, 0, [reading("nox", 5, 3.0)]))
    assert isinstance(pub, Bundle)
    assert [p.topic.split("/")[2] for p in pub.parts] == ["DBIRTH", "DDATA"]
    db, dd = (host.feed(p) for p in pub.parts)
    assert (db["seq"], dd["seq"]) == (2, 3)
    assert dd["metrics"][0]["name"] == "nox"
    other = enc.message(Outgoing(2, "FLOW-9", "readings", 1, 0, [Reading("FLOW-9", "q", 5, 1.0, "m3/h", Quality.GOOD,
                                                                         "", Calibration.UNKNOWN)]))
    assert [p.topic for p in parts(other)] == ["spBv1.0/plant/DBIRTH/gw-1/FLOW-9", "spBv1.0/plant/DDATA/gw-1/FLOW-9"]


def test_records_go_as_string_metrics_holding_the_json_body() -> None:
    enc = encoder()
    enc.new_connection()
    host = Host()
    for p in enc.birth({}, META):
        host.feed(p)
    ev = {"type": "gap_open", "instrument": "CEMS-01", "point": "co2", "start_ms": 1}
    body = host.feed(enc.message(Outgoing(3, "CEMS-01", "events", 7, 0, [ev])))
    (m,) = body["metrics"]
    assert m["name"] == "Records/events"
    rec = json.loads(m["value"])
    assert (rec["schema"], rec["seq"], rec["events"]) == ("carbon-gateway/events/1", 7, [ev])


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 700))
def test_seq_counts_every_message_of_the_session_and_wraps_at_255(n: int) -> None:
    enc = encoder()
    enc.new_connection()
    seqs = [decode(p.payload)["seq"] for p in enc.birth({}, META)]
    for i in range(n):
        seqs.append(decode(enc.message(Outgoing(i, "CEMS-01", "readings", i, 0, [reading("co2", i, 1.0)]))
                           .payload)["seq"])
    seqs.append(decode(enc.status("online", {}).payload)["seq"])
    assert seqs == [k % 256 for k in range(len(seqs))]
    assert decode(enc.birth({}, META)[0].payload)["seq"] == 0  # a rebirth starts again at 0


def test_bdseq_counts_connects_and_wraps_and_death_names_it() -> None:
    enc = encoder()
    got = [enc.new_connection() for _ in range(258)]
    assert got[:2] == [0, 1]
    assert got[255:] == [255, 0, 1]
    enc.birth({}, META)
    death = enc.death()
    assert isinstance(death, Bundle)
    assert [p.topic for p in death.parts] == ["spBv1.0/plant/DDEATH/gw-1/CEMS-01", "spBv1.0/plant/NDEATH/gw-1"]
    assert decode(death.parts[0].payload)["seq"] == 2
    assert decode(death.parts[1].payload)["metrics"][0]["value"] == 1


def test_json_topics_beside_sparkplug() -> None:
    enc = encoder("json_compact")
    enc.new_connection()
    births = enc.birth({"ts": 1}, META)
    assert [p.topic for p in births][-2:] == ["carbon/gw-1/status", "carbon/gw-1/CEMS-01/meta"]
    pub = enc.message(Outgoing(1, "CEMS-01", "readings", 5, 0, [reading("co2", 5, 1.0)]))
    assert [p.topic for p in parts(pub)] == ["spBv1.0/plant/DDATA/gw-1/CEMS-01", "carbon/gw-1/CEMS-01/readings"]
    assert json.loads(parts(pub)[1].payload)["schema"] == "carbon-gateway/readings-compact/2"


def test_state_payloads() -> None:
    assert parse_state(state_payload(True, 17)) == (True, 17)
    for bad in (b"ONLINE", b"{}", b'{"online": "yes", "timestamp": 1}', b'{"online": true, "timestamp": true}',
                b"\xff"):
        assert parse_state(bad) is None


def test_defaults_without_output_settings() -> None:
    enc = SparkplugEncoder(EncoderContext("carbon", "gw-1", EPOCH))
    assert (enc.group, enc.node, enc.primary_host, enc.json) == ("carbon", "gw-1", None, None)


def test_a_replay_is_historical_and_names_its_request() -> None:
    enc = encoder("json")
    enc.new_connection()
    host = Host()
    for p in enc.birth({}, META):
        if p.topic.startswith("spBv1.0/"):
            host.feed(p)
    pub = enc.replay(Outgoing(1, "CEMS-01", "readings", 3, 2**62, [reading("co2", 5, 1.0)]), "req-7")
    dd, js = parts(pub)
    body = host.feed(dd)
    assert all(m["is_historical"] for m in body["metrics"])
    assert {m["name"]: m["value"] for m in body["metrics"]}["Replay"] == "req-7"
    assert json.loads(js.payload)["replay"] == "req-7"
