"""Sparkplug B 3.0 conformance, end to end: the real gateway (subprocess, `output.encoder: sparkplug`)
polling pymodbus simulators, a private Mosquitto, and a host application written from the
specification (tests/sparkplug_host.py) that checks every message: births precede data, aliases
resolve, seq counts 0-255 and wraps, bdSeq pairs NBIRTH with NDEATH (clean stop and kill -9 through
the Will), NCMD rebirth, and primary host STATE: data kept while the host is offline arrive afterwards
flagged historical. No wall-clock asserts: every wait is for a condition.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from simulators.broker import PrivateBroker
from tests.helpers import three_meters, write_config
from tests.sparkplug_host import Msg, SparkplugHost

INSTRUMENTS = {"PM-01", "FT-01", "CEMS-01"}
GROUP, NODE = "plant", "gw-test"


def sparkplug_config(tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker, *, per_message: int = 5,
                     primary_host: str | None = None) -> Path:
    cfg = write_config(tmp_path / "cfg", three_meters(ports), url=broker.url, store=tmp_path / "gw.db",
                       per_message=per_message)
    host = f", primary_host_id: {primary_host}" if primary_host else ""
    with (cfg / "gateway.yaml").open("a") as f:
        f.write(f"output: {{encoder: sparkplug, sparkplug: {{group_id: {GROUP}{host}}}}}\n")
    return cfg


@pytest.fixture
def host(broker: PrivateBroker) -> Iterator[SparkplugHost]:
    u = urlparse(broker.url)
    h = SparkplugHost(u.hostname or "127.0.0.1", u.port or 1883, host_id="scada").start()
    yield h
    h.stop()


@pytest.fixture
def simulators(tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker) -> Iterator[None]:
    cfg = write_config(tmp_path / "sim", three_meters(ports), url=broker.url)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "simulate", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    for _ in range(3):
        assert proc.stdout.readline().startswith(b"simulating"), "simulator did not start"
    yield
    proc.send_signal(signal.SIGINT)
    proc.wait(10)


class Gateway:
    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Gateway:
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))  # noqa: SIM115
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(20)

    def tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""


def committed(db: Path) -> dict[tuple[str, int], list[tuple[str, int, float | None]]]:
    """The store's readings messages: (instrument, seq) -> [(point, ts, value)]."""
    with sqlite3.connect(db) as conn:
        out = {}
        for inst, seq, first, last in conn.execute(
                "SELECT instrument, seq, first_id, last_id FROM messages WHERE kind = 'readings'").fetchall():
            out[(inst, seq)] = [tuple(r) for r in conn.execute(
                "SELECT point, ts_ms, value FROM readings WHERE id BETWEEN ? AND ? ORDER BY id", (first, last))]
    return out


def received(host: SparkplugHost) -> dict[tuple[str, int], tuple[list[tuple[str, int, float | None]], bool]]:
    """DDATA by (device, Readings/Seq) -> ([(point, ts, value)], every metric historical)."""
    out = {}
    for m in host.of("DDATA"):
        metrics = m.body["metrics"]
        seq = next((x["value"] for x in metrics if x["name"] == "Readings/Seq"), None)
        if seq is None:
            continue
        rows = [(x["name"], x["timestamp"], x["value"]) for x in metrics if x["name"] != "Readings/Seq"]
        out.setdefault((m.device, seq), (rows, all(x["is_historical"] for x in metrics)))
    return out


def bdseq(msg: object) -> int:
    return next(x["value"] for x in msg.body["metrics"] if x["name"] == "bdSeq")  # type: ignore[attr-defined]


def test_births_data_seq_wrap_properties_and_clean_death(tmp_path: Path, ports: tuple[int, int, int],
                                                         broker: PrivateBroker, host: SparkplugHost,
                                                         simulators: None) -> None:
    # One reading per message: enough messages for seq to wrap at 255 within one session.
    gw = Gateway(sparkplug_config(tmp_path, ports, broker, per_message=1), tmp_path / "gw.log").start()
    try:
        assert host.wait_for(lambda: {m.device for m in host.of("DBIRTH")} >= INSTRUMENTS), gw.tail()
        assert host.wait_for(lambda: len(host.of("DDATA")) + len(host.of("NDATA")) >= 300, 90), gw.tail()
    finally:
        assert gw.stop() == 0
    assert host.wait_for(lambda: len(host.of("NDEATH")) >= 1)
    msgs = host.snapshot()
    assert host.violations == [], host.violations[:10]
    verbs = [m.verb for m in msgs]
    assert verbs[0] == "NBIRTH"
    assert verbs.count("NBIRTH") == 1
    assert verbs[-1] == "NDEATH"
    assert {m.device for m in msgs if m.verb == "DDEATH"} == INSTRUMENTS  # each instrument's death, then the node's
    births = host.of("NBIRTH")
    assert bdseq(births[0]) == bdseq(host.of("NDEATH")[0])
    seqs = [m.body["seq"] for m in msgs if m.verb != "NDEATH"]
    assert seqs == [k % 256 for k in range(len(seqs))]  # NBIRTH 0, then one more each, 255 -> 0
    assert seqs.count(255) >= 1
    # quality and calibration travel as typed metric properties; values are the store's
    got = received(host)
    store = committed(tmp_path / "gw.db")
    assert got
    for key, (rows, _hist) in got.items():
        assert rows == store[key], key
    sample = next(m for m in host.of("DDATA") if m.device == "CEMS-01")
    props = sample.body["metrics"][0]["properties"]
    assert props["Quality"] in (0, 64, 192)
    assert props["Calibration"] in ("valid", "due_soon", "expired", "unknown")
    assert "Reason" in props
    dbirth = next(m for m in host.of("DBIRTH") if m.device == "CEMS-01")
    assert any(x["properties"].get("engUnit") for x in dbirth.body["metrics"])


def test_kill_9_yields_ndeath_through_the_will_and_the_backlog_comes_historical(
        tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker, host: SparkplugHost,
        simulators: None) -> None:
    cfg = sparkplug_config(tmp_path, ports, broker)
    gw = Gateway(cfg, tmp_path / "gw.log").start()
    assert host.wait_for(lambda: len(host.of("DDATA")) >= 10), gw.tail()
    assert gw.stop(signal.SIGKILL) == -signal.SIGKILL
    assert host.wait_for(lambda: len(host.of("NDEATH")) >= 1), "no NDEATH from the Will"
    (death,) = host.of("NDEATH")
    assert bdseq(death) == bdseq(host.of("NBIRTH")[-1])
    assert death.index > max(m.index for m in host.of("DDATA"))
    # Restart: a new session whose births come first; what the store held goes out, the old part historical.
    n_before = len(host.snapshot())
    gw2 = Gateway(cfg, tmp_path / "gw.log").start()
    try:
        assert host.wait_for(lambda: len(host.of("NBIRTH")) >= 2), gw2.tail()
        store = committed(tmp_path / "gw.db")
        assert host.wait_for(lambda: set(store) <= set(received(host)), 60), gw2.tail()
    finally:
        assert gw2.stop() == 0
    assert host.violations == [], host.violations[:10]
    after = [m for m in host.snapshot() if m.index >= n_before]
    assert after[0].verb == "NBIRTH"
    got = received(host)
    for key in store:
        assert got[key][0] == store[key], key
    # messages committed by the killed process and not acknowledged are sent again after the new births,
    # flagged historical (the store's rule: delivered only after a PUBACK, here the fence's)
    second_birth = host.of("NBIRTH")[-1]
    replayed = [m for m in host.of("DDATA") if m.index > second_birth.index
                and all(x["is_historical"] for x in m.body["metrics"])]
    assert replayed, "nothing was sent as historical after the restart"


def test_no_birth_before_the_primary_host_says_online(tmp_path: Path, ports: tuple[int, int, int],
                                                      broker: PrivateBroker, host: SparkplugHost,
                                                      simulators: None) -> None:
    cfg = sparkplug_config(tmp_path, ports, broker, primary_host="scada")
    log = tmp_path / "gw.log"
    gw = Gateway(cfg, log).start()
    try:
        assert host.wait_for(lambda: "waiting for primary host scada" in log.read_text(), 60), gw.tail()
        assert host.wait_for(lambda: len(committed(tmp_path / "gw.db")) >= 10, 60)
        assert host.snapshot() == []  # connected, polling, storing: and not one Sparkplug message
        host.publish_state(True, host.connect_ts)
        store = committed(tmp_path / "gw.db")
        assert host.wait_for(lambda: set(store) <= set(received(host)), 60), gw.tail()
    finally:
        assert gw.stop() == 0
    assert host.violations == [], host.violations[:10]
    assert host.snapshot()[0].verb == "NBIRTH"
    got = received(host)
    assert all(got[k][1] for k in store)  # kept before the host was there: all historical
    assert "no CONNACK" not in log.read_text()


def test_primary_host_offline_keeps_data_then_historical_and_ncmd_rebirth(
        tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker, host: SparkplugHost,
        simulators: None) -> None:
    ts = host.connect_ts
    host.publish_state(True, ts)
    cfg = sparkplug_config(tmp_path, ports, broker, primary_host="scada")
    gw = Gateway(cfg, tmp_path / "gw.log").start()
    try:
        assert host.wait_for(lambda: len(host.of("DDATA")) >= 10), gw.tail()
        # NCMD rebirth: a new NBIRTH (seq 0, same bdSeq) and every DBIRTH again, then data resolve
        first = host.of("NBIRTH")[0]
        host.request_rebirth(GROUP, NODE)
        assert host.wait_for(lambda: len(host.of("NBIRTH")) >= 2), gw.tail()
        reborn = host.of("NBIRTH")[1]
        assert bdseq(reborn) == bdseq(first)
        assert host.wait_for(lambda: {m.device for m in host.of("DBIRTH") if m.index > reborn.index} >= INSTRUMENTS)
        assert host.wait_for(lambda: any(m.index > reborn.index for m in host.of("DDATA")))

        # The host goes offline: NDEATH, a new connection that waits; the store keeps what is polled.
        host.publish_state(False, ts + 1)
        assert host.wait_for(lambda: len(host.of("NDEATH")) >= 1), gw.tail()
        death = host.of("NDEATH")[0]
        assert bdseq(death) == bdseq(first)
        at_death = committed(tmp_path / "gw.db")
        assert host.wait_for(lambda: len(committed(tmp_path / "gw.db")) >= len(at_death) + 15, 60)
        n_offline = len(host.snapshot())
        kept = set(committed(tmp_path / "gw.db")) - set(at_death)  # committed after the NDEATH was seen
        # Back online: births (new bdSeq), then the kept data with is_historical.
        host.publish_state(True, ts + 2)
        assert host.wait_for(lambda: len(host.of("NBIRTH")) >= 3), gw.tail()
        store = committed(tmp_path / "gw.db")
        assert host.wait_for(lambda: set(store) <= set(received(host)), 60), gw.tail()
    finally:
        assert gw.stop() == 0
    assert host.violations == [], host.violations[:10]
    msgs = host.snapshot()
    # nothing while the host was offline (a second NDEATH of the same bdSeq, a late Will, is harmless: 3.0
    # hosts ignore a NDEATH whose bdSeq is not the current session's)
    between = [(m.verb, bdseq(m) if m.verb == "NDEATH" else None) for m in msgs
               if death.index < m.index < n_offline and m.verb != "NCMD"]
    assert set(between) <= {("NDEATH", bdseq(death))}, between
    third = host.of("NBIRTH")[2]
    assert third.index >= n_offline
    assert bdseq(third) != bdseq(death)
    got = received(host)
    assert kept
    for key in kept:  # every message kept while the host was away arrived, after the births, historical
        rows, historical = got[key]
        assert historical, key
        assert rows == store[key], key


def test_watch_sparkplug_decodes_what_the_gateway_sends(tmp_path: Path, ports: tuple[int, int, int],
                                                        broker: PrivateBroker, simulators: None) -> None:
    """The demo's view (`make demo OUTPUT=sparkplug` runs `carbon-gateway watch --sparkplug`)."""
    gw = Gateway(sparkplug_config(tmp_path, ports, broker), tmp_path / "gw.log").start()
    try:
        out = subprocess.run([sys.executable, "-m", "gateway", "watch", "--sparkplug", "--mqtt-url", broker.url,
                              "--until-instruments", "3", "--duration", "60"], capture_output=True, text=True,
                             timeout=90)
    finally:
        assert gw.stop() == 0
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:] + gw.tail()
    last = out.stdout.strip().split("t=")[-1]
    assert "seq errors 0" in last
    assert "rejected 0" in last
    for inst in INSTRUMENTS:
        assert inst in last


def test_broker_restart_loses_nothing_and_the_backlog_comes_historical(
        tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker, host: SparkplugHost,
        simulators: None) -> None:
    """QoS 0 data, yet delivered only after a PUBACK (the fence's): a broker that goes away mid-stream loses
    no message the store marked delivered. With a primary host the gateway waits for the host's STATE
    after the restart, so the host is listening before the backlog goes out."""
    ts = host.connect_ts
    host.publish_state(True, ts)
    cfg = sparkplug_config(tmp_path, ports, broker, primary_host="scada")
    gw = Gateway(cfg, tmp_path / "gw.log").start()
    try:
        assert host.wait_for(lambda: len(host.of("DDATA")) >= 20), gw.tail()
        broker.stop()  # no persistence: the retained STATE is gone with it
        at_stop = committed(tmp_path / "gw.db")
        assert host.wait_for(lambda: len(committed(tmp_path / "gw.db")) >= len(at_stop) + 10, 60)
        broker.start()
        assert host.wait_for(lambda: host.client.is_connected(), 60)
        host.publish_state(True, ts + 1)
        assert host.wait_for(lambda: len(host.of("NBIRTH")) >= 2, 60), gw.tail()
        store = committed(tmp_path / "gw.db")
        assert host.wait_for(lambda: set(store) <= set(received(host)), 60), gw.tail()
    finally:
        assert gw.stop() == 0
    assert host.violations == [], host.violations[:10]
    got = received(host)
    for key, rows in store.items():
        assert got[key][0] == rows, key
    second = host.of("NBIRTH")[1]
    assert any(all(x["is_historical"] for x in m.body["metrics"]) for m in host.of("DDATA")
               if m.index > second.index)


def test_replay_request_comes_as_historical_ddata_naming_the_request(
        tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker, host: SparkplugHost,
        simulators: None) -> None:
    """Replay on request (issue 12.2) with the Sparkplug output: the request and its answers stay on the JSON
    command topics; the messages come again as DDATA, every metric historical, `Replay` = the request id."""
    cfg = sparkplug_config(tmp_path, ports, broker)
    with (cfg / "gateway.yaml").open("a") as f:
        f.write("commands: {subscribe: [replay]}\n")
    gw = Gateway(cfg, tmp_path / "gw.log").start()
    try:
        first3 = {("CEMS-01", s) for s in (1, 2, 3)}
        assert host.wait_for(lambda: set(received(host)) >= first3), gw.tail()
        n = len(host.snapshot())
        host.client.publish("carbon/gw-test/cmd/replay", json.dumps(
            {"id": "r-1", "instrument": "CEMS-01", "kind": "readings", "from_seq": 1, "to_seq": 3}), qos=1)

        def replayed() -> dict[int, Msg]:
            out = {}
            for m in host.of("DDATA", "CEMS-01"):
                named = {x["name"]: x for x in m.body["metrics"]}
                if m.index >= n and named.get("Replay", {}).get("value") == "r-1":
                    out[named["Readings/Seq"]["value"]] = m
            return out

        assert host.wait_for(lambda: set(replayed()) == {1, 2, 3}), gw.tail()
    finally:
        assert gw.stop() == 0
    assert host.violations == [], host.violations[:10]
    store = committed(tmp_path / "gw.db")
    for seq, m in replayed().items():
        assert all(x["is_historical"] for x in m.body["metrics"])
        rows = [(x["name"], x["timestamp"], x["value"]) for x in m.body["metrics"]
                if x["name"] not in ("Readings/Seq", "Replay")]
        assert rows == store[("CEMS-01", seq)]
