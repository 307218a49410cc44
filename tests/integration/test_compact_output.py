"""The second output end to end: `output: {encoder: json_compact}` in gateway.yaml, nothing else.

The real gateway (subprocess) against simulators and a private Mosquitto: every readings payload
matches docs/schema/readings-compact.schema.json, and expanded it is exactly what the store
committed under that (instrument, seq); status and meta are the documented JSON with the epoch.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from gateway.encode_compact import expand
from simulators.broker import PrivateBroker
from tests.helpers import Recorder, dedup_by_seq, seqs_without_holes, three_meters, write_config

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schema"
INSTRUMENTS = {"PM-01", "FT-01", "CEMS-01"}


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((SCHEMAS / f"{name}.schema.json").read_text()))


@pytest.fixture
def config_dir(tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker) -> Path:
    cfg = write_config(tmp_path / "cfg", three_meters(ports), url=broker.url, store=tmp_path / "gw.db",
                       per_message=5)
    with (cfg / "gateway.yaml").open("a") as f:
        f.write("output: {encoder: json_compact}\n")
    return cfg


@pytest.fixture
def simulators(config_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "simulate", "--config", str(config_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    for _ in range(3):
        assert proc.stdout.readline().startswith(b"simulating"), "simulator did not start"
    yield proc
    proc.send_signal(signal.SIGINT)
    proc.wait(10)


def test_compact_output_carries_exactly_the_committed_readings(config_dir: Path, simulators: subprocess.Popen[bytes],
                                                                recorder: Recorder, tmp_path: Path) -> None:
    log = tmp_path / "gw.log"
    gw = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(config_dir)],
                          stdout=subprocess.DEVNULL, stderr=open(log, "ab"))  # noqa: SIM115
    try:
        assert recorder.wait_for(lambda: {b["instrument"] for b in recorder.readings()} >= INSTRUMENTS, 20), \
            log.read_text()[-2000:]
        assert recorder.wait_for(lambda: len(recorder.readings()) >= 20, 20)
    finally:
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(15) == 0
    compact = validator("readings-compact")
    bodies = recorder.readings()
    epochs = set()
    for body in bodies:
        compact.validate(body)
        epochs.add(body["epoch"])
    with sqlite3.connect(tmp_path / "gw.db") as db:
        epoch = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
        committed = {}
        for inst, seq, first, last in db.execute(
                "SELECT instrument, seq, first_id, last_id FROM messages WHERE kind = 'readings'").fetchall():
            committed[(inst, seq)] = [
                {"point": p, "ts": t, "value": v, "unit": u, "quality": q, "reason": r, "calibration": c}
                for p, t, v, u, q, r, c in db.execute(
                    "SELECT point, ts_ms, value, unit, quality, reason, calibration FROM readings "
                    "WHERE id BETWEEN ? AND ? ORDER BY id", (first, last))]
    assert epochs == {epoch}
    dedup = dedup_by_seq(bodies)
    for key, body in dedup.items():
        assert expand(body) == committed[key], key
    for inst in INSTRUMENTS:
        assert seqs_without_holes(dedup, inst), inst
    for kind, suffix in (("status", "/status"), ("meta", "/meta")):
        v = validator(kind)
        for body in recorder.by_topic_suffix(suffix):
            v.validate(body)
            assert body["epoch"] == epoch
    assert "Traceback" not in log.read_text()
