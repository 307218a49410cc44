"""Acceptance (issue 11 item 1): `carbon-gateway verify` on a store made by a real gateway run (pymodbus
simulators -> `carbon-gateway run` -> private Mosquitto) is ok, and after tampering with the `sqlite3` shell it
names the edited, the deleted and the inserted row, each case on its own copy of the store. The heads the
gateway published (each message's link, the status topic's heads) are the store's."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.broker import PrivateBroker
from tests.helpers import Recorder, three_meters, write_config

SQLITE3 = shutil.which("sqlite3")
pytestmark = pytest.mark.skipif(SQLITE3 is None, reason="the sqlite3 shell is installed by `make system-tools`")


def gateway(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


@pytest.fixture
def config_dir(tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker) -> Path:
    return write_config(tmp_path / "cfg", three_meters(ports), url=broker.url, store=tmp_path / "gw.db",
                        per_message=5)


@pytest.fixture
def simulators(config_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(gateway("simulate", "--config", str(config_dir)), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    for _ in range(3):
        assert proc.stdout.readline().startswith(b"simulating"), "simulator did not start"
    yield proc
    proc.send_signal(signal.SIGINT)
    proc.wait(10)


@pytest.fixture
def store(config_dir: Path, simulators: subprocess.Popen[bytes], recorder: Recorder, tmp_path: Path) -> Path:
    return run_gateway(config_dir, recorder, tmp_path)


def run_gateway(config_dir: Path, recorder: Recorder, tmp_path: Path) -> Path:
    """A store the gateway wrote for a few seconds, then stopped cleanly (checkpointed into one file)."""
    log = tmp_path / "gw.log"
    with log.open("ab") as err:
        gw = subprocess.Popen(gateway("run", "--config", str(config_dir)), stdout=subprocess.DEVNULL, stderr=err)
        try:
            assert recorder.wait_for(lambda: len(recorder.readings()) >= 12, 30), log.read_text()[-2000:]
        finally:
            gw.send_signal(signal.SIGTERM)
            assert gw.wait(15) == 0, log.read_text()[-2000:]
    db = tmp_path / "gw.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db


def verify(path: Path) -> tuple[int, str]:
    done = subprocess.run(gateway("verify", "--store", str(path)), capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


def tampered(store: Path, name: str, sql: str) -> Path:
    copy = store.with_name(f"{name}.db")
    shutil.copy(store, copy)
    assert SQLITE3 is not None
    subprocess.run([SQLITE3, str(copy), sql], check=True, capture_output=True, timeout=30)
    return copy


def test_verify_is_ok_on_a_gateway_store_and_names_each_tampered_row(store: Path) -> None:
    code, out = verify(store)
    assert code == 0, out
    assert "readings chain:" in out
    assert out.rstrip().endswith(": ok")
    with sqlite3.connect(store) as db:
        n = db.execute("SELECT MAX(id) FROM samples").fetchone()[0]
        links = db.execute("SELECT COUNT(*) FROM chain_links WHERE chain = 1").fetchone()[0]
    assert n >= 12
    assert links >= 3
    mid = n // 2

    code, out = verify(tampered(store, "edited", f"UPDATE samples SET value = value + 1 WHERE id = {mid}"))
    assert code == 1
    assert f"readings chain: samples id {mid}: edited:" in out, out

    code, out = verify(tampered(store, "deleted", f"DELETE FROM samples WHERE id = {mid}"))
    assert code == 1
    assert f"readings chain: samples id {mid}: deleted:" in out, out

    code, out = verify(tampered(store, "inserted", (
        "INSERT INTO readings (instrument, point, ts_ms, value, unit, quality, reason, calibration) "
        "SELECT instrument, point, ts_ms + 1, value, unit, quality, reason, calibration FROM readings "
        f"WHERE id = {mid}")))
    assert code == 1
    assert f"readings chain: samples id {n + 1}: inserted:" in out, out


def test_published_links_and_heads_are_the_stores(config_dir: Path, simulators: subprocess.Popen[bytes],
                                                  recorder: Recorder, tmp_path: Path) -> None:
    """Every readings message carries its link as stored (so the central side holds the proof), and the status
    topic carries the chain heads."""
    store = run_gateway(config_dir, recorder, tmp_path)
    with sqlite3.connect(store) as db:
        links = {int(last): bytes(h).hex() for last, h in db.execute(
            "SELECT last_id, hash FROM chain_links WHERE chain = 1")}
    published = {b["chain"]["pos"]: b["chain"]["hash"] for b in recorder.readings()}
    assert len(published) >= 12
    assert all(links.get(pos) == h for pos, h in published.items()), (published, links)
    heads = [b["chain"] for b in recorder.by_topic_suffix("/status") if "chain" in b]
    assert heads
    assert all(links.get(h["readings"]["pos"]) == h["readings"]["hash"] for h in heads if h["readings"]["pos"])
    code, out = verify(store)
    assert code == 0
    assert f"head {max(links)} {links[max(links)]}" in out
    # An auditor's export of the whole run (issue 12 item 5), checked by the shipped script alone; its link
    # hashes are the ones the central side received.
    out_dir = tmp_path / "audit"
    done = subprocess.run(gateway("export", "--config", str(config_dir), "--from", "2000-01-01T00:00:00Z",
                                  "--to", "2100-01-01T00:00:00Z", "--format", "jsonl", "--out", str(out_dir)),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    checked = subprocess.run([sys.executable, "-I", "verify_export.py"], cwd=out_dir, capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout
    proof = json.loads((out_dir / "proof.json").read_text())
    exported = {link["last"]: link["hash"] for link in proof["chains"]["readings"]["links"]}
    assert all(exported[pos] == h for pos, h in published.items())
