"""Acceptance: simulators -> `carbon-gateway run` -> private Mosquitto -> subscriber, with kill -9.

The gateway runs as a real subprocess so that kill -9 is a real crash. The subscriber must see
every instrument, every documented field, per-instrument seq without holes, and after
deduplication by (instrument, seq) exactly the readings the store committed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from simulators.broker import PrivateBroker
from tests.helpers import Recorder, dedup_by_seq, seqs_without_holes, three_meters, write_config

READING_FIELDS = {"point", "ts", "value", "unit", "quality", "reason", "calibration"}
INSTRUMENTS = {"PM-01", "FT-01", "CEMS-01"}
SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schema"


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((SCHEMAS / f"{name}.schema.json").read_text()))


def gateway_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


@pytest.fixture
def config_dir(tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker) -> Path:
    return write_config(tmp_path / "cfg", three_meters(ports), url=broker.url, store=tmp_path / "gw.db",
                        per_message=5)


@pytest.fixture
def simulators(config_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(gateway_cmd("simulate", "--config", str(config_dir)), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    for _ in range(3):  # one "simulating ..." line per endpoint once all are listening
        assert proc.stdout.readline().startswith(b"simulating"), "simulator did not start"
    yield proc
    proc.send_signal(signal.SIGINT)
    proc.wait(10)


def start_gateway(config_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(gateway_cmd("run", "--config", str(config_dir)), stdout=subprocess.DEVNULL,
                            stderr=open(log, "ab"))


def committed_messages(db: Path) -> dict[tuple[str, int], list[tuple[object, ...]]]:
    """(instrument, seq) -> the readings rows that message covers, read while the gateway runs (WAL)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        msgs = conn.execute("SELECT instrument, seq, first_id, last_id FROM messages WHERE kind='readings'").fetchall()
        out = {}
        for inst, seq, first, last in msgs:
            out[(inst, seq)] = conn.execute(
                "SELECT point, ts_ms, value, unit, quality, reason, calibration FROM readings "
                "WHERE id BETWEEN ? AND ? ORDER BY id", (first, last)).fetchall()
        return out


def as_rows(body: dict[str, object]) -> list[tuple[object, ...]]:
    return [(r["point"], r["ts"], r["value"], r["unit"], r["quality"], r["reason"], r["calibration"])
            for r in body["readings"]]  # type: ignore[union-attr]


def test_readings_arrive_with_every_field(config_dir: Path, simulators: subprocess.Popen[bytes],
                                          recorder: Recorder, tmp_path: Path) -> None:
    gw = start_gateway(config_dir, tmp_path / "gw.log")
    try:
        assert recorder.wait_for(lambda: {b["instrument"] for b in recorder.readings()} >= INSTRUMENTS, 20), \
            (tmp_path / "gw.log").read_text()[-2000:]
        assert recorder.wait_for(lambda: len(recorder.by_topic_suffix("/meta")) >= 3, 10)
    finally:
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(15) == 0
    readings = recorder.readings()
    for body in readings:
        assert body["schema"] == "carbon-gateway/readings/1"
        assert body["gateway"] == "gw-test"
        assert isinstance(body["seq"], int)
        for r in body["readings"]:
            assert set(r) == READING_FIELDS
            assert r["quality"] in ("good", "uncertain", "bad")
            assert r["calibration"] in ("valid", "due_soon", "expired", "unknown")
            assert isinstance(r["ts"], int)
            assert abs(r["ts"] / 1000 - time.time()) < 120
    dedup = dedup_by_seq(readings)
    for inst in INSTRUMENTS:
        assert seqs_without_holes(dedup, inst), inst
    good = [r for b in readings for r in b["readings"] if r["quality"] == "good"]
    assert good
    units = {(b["instrument"], r["point"]): r["unit"] for b in readings for r in b["readings"]}
    assert units[("PM-01", "total_active_power")] == "kW"
    assert units[("FT-01", "volume_flow")] == "m3/h"
    assert units[("CEMS-01", "co2")] == "%vol"
    # Status: retained online while running, then the clean offline on shutdown.
    states = [b["state"] for b in recorder.by_topic_suffix("/status")]
    assert states[0] == "online"
    assert recorder.wait_for(lambda: recorder.by_topic_suffix("/status")[-1]["state"] == "offline", 5)
    # Every payload matches its published JSON Schema (docs/schema), the contract with subscribers.
    for kind, suffix in (("readings", "/readings"), ("status", "/status"), ("meta", "/meta")):
        v = validator(kind)
        for body in recorder.by_topic_suffix(suffix):
            v.validate(body)
    meta = {b["instrument"]: b for b in recorder.by_topic_suffix("/meta")}
    assert set(meta) == INSTRUMENTS
    assert meta["PM-01"]["calibration"]["certificate"] == "C-1"
    assert meta["PM-01"]["schema"] == "carbon-gateway/meta/1"


def test_kill9_and_restart_loses_nothing_and_keeps_seq_gapless(config_dir: Path,
                                                               simulators: subprocess.Popen[bytes],
                                                               recorder: Recorder, tmp_path: Path) -> None:
    db = tmp_path / "gw.db"
    rng = random.Random(7)
    log = tmp_path / "gw.log"
    for _cycle in range(3):
        gw = start_gateway(config_dir, log)
        assert recorder.wait_for(lambda: len(recorder.readings()) > 0, 20), log.read_text()[-2000:]
        time.sleep(rng.uniform(0.3, 1.5))  # crash at an arbitrary moment: mid-poll, mid-commit, mid-publish
        os.kill(gw.pid, signal.SIGKILL)
        gw.wait(10)
    # The broker publishes the Last Will when the connection dies without DISCONNECT.
    assert recorder.wait_for(lambda: any(b["state"] == "offline" and b.get("reason") == "connection_lost"
                                         for b in recorder.by_topic_suffix("/status")), 10)
    onlines = len([b for b in recorder.by_topic_suffix("/status") if b["state"] == "online"])
    gw = start_gateway(config_dir, log)
    try:
        # Wait for the restarted gateway to be up (its "online" status), then take what was committed.
        assert recorder.wait_for(lambda: len([b for b in recorder.by_topic_suffix("/status")
                                              if b["state"] == "online"]) > onlines, 20)
        time.sleep(0.5)
        snapshot = committed_messages(db)
        assert len(snapshot) > 10
        assert recorder.wait_for(lambda: set(snapshot) <= set(dedup_by_seq(recorder.readings())), 30), \
            sorted(set(snapshot) - set(dedup_by_seq(recorder.readings())))[:10]
    finally:
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(15) == 0
    dedup = dedup_by_seq(recorder.readings())
    for key, rows in snapshot.items():
        assert as_rows(dedup[key]) == rows, key  # same content under the same seq, whatever was resent
    for inst in INSTRUMENTS:
        assert seqs_without_holes(dedup, inst), inst
    assert "Traceback" not in log.read_text()
