"""`carbon-gateway correct`: a manual correction is a new published record; the raw reading stays."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from gateway.app import Gateway
from gateway.cli import main
from gateway.corrections import inbox_for, quarantine_for
from gateway.registry import load_config
from gateway.store import Store
from simulators.broker import PrivateBroker
from simulators.runner import build_servers
from tests.helpers import Recorder, three_meters, write_config

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")
SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "schema" / "corrections.schema.json"


async def test_correction_is_stored_and_published_and_the_original_kept(
        tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker, recorder: Recorder,
        capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "gw.db"
    cfg_dir = write_config(tmp_path / "cfg", three_meters(ports), url=broker.url, store=db)
    cfg = load_config(cfg_dir)
    servers = build_servers(cfg)
    for srv, _ in servers.values():
        await srv.start()
    run = asyncio.create_task(Gateway(cfg).run())
    try:
        for _ in range(200):
            await asyncio.sleep(0.05)
            flows = [r for b in recorder.readings() if b["instrument"] == "FT-01" for r in b["readings"]
                     if r["point"] == "volume_flow" and r["quality"] == "good"]
            if flows:
                break
        original = flows[0]
        at = datetime.fromtimestamp(original["ts"] / 1000, UTC).isoformat()
        rc = main(["correct", "--config", str(cfg_dir), "--instrument", "FT-01", "--point", "volume_flow",
                   "--at", at, "--value", "123.4", "--reason", "meter display read during audit", "--author",
                   "Li Wei (instrument technician)"])
        assert rc == 0
        assert "correction queued" in capsys.readouterr().out
        for _ in range(100):
            await asyncio.sleep(0.05)
            if recorder.by_topic_suffix("/corrections"):
                break
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        for srv, _ in servers.values():
            await srv.stop()
    (message,) = recorder.by_topic_suffix("/corrections")
    Draft202012Validator(json.loads(SCHEMA.read_text())).validate(message)
    (c,) = message["corrections"]
    assert (c["instrument"], c["point"], c["ts"], c["value"]) == ("FT-01", "volume_flow", original["ts"], 123.4)
    assert c["author"] == "Li Wei (instrument technician)"
    assert c["reason"] == "meter display read during audit"
    assert c["unit"] == "m3/h"
    with sqlite3.connect(db) as conn:
        raw = conn.execute("SELECT value FROM readings WHERE id = ?", (c["supersedes_reading_id"],)).fetchone()
    assert raw is not None
    assert raw[0] == pytest.approx(original["value"])  # the original reading is untouched
    assert not list((tmp_path / "gw.db.corrections").glob("*.json"))  # ingested exactly once


def test_correction_of_unknown_point_is_refused(tmp_path: Path, ports: tuple[int, int, int],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg_dir = write_config(tmp_path, three_meters(ports))
    rc = main(["correct", "--config", str(cfg_dir), "--instrument", "FT-01", "--point", "nope", "--at",
               "2026-11-24T08:00:00+08:00", "--value", "1", "--reason", "x", "--author", "y"])
    assert rc == 2
    assert "--point: instrument FT-01 has no point 'nope'" in capsys.readouterr().err
    rc = main(["correct", "--config", str(cfg_dir), "--instrument", "FT-01", "--point", "volume_flow", "--at",
               "2026-11-24T08:00:00", "--value", "1", "--reason", "x", "--author", "y"])
    assert rc == 2
    assert "has no time zone" in capsys.readouterr().err


async def test_a_nan_or_broken_inbox_file_never_stops_the_running_gateway(
        tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker, recorder: Recorder) -> None:
    """Observation 1, run side: an inbox file with NaN (as the old `correct` wrote it) killed the gateway on
    every start. Now it is quarantined with one line and the gateway goes on storing and publishing."""
    db = tmp_path / "gw.db"
    cfg_dir = write_config(tmp_path / "cfg", three_meters(ports), url=broker.url, store=db)
    Store(db).close()
    inbox = inbox_for(db)
    inbox.mkdir()
    body = {"instrument": "FT-01", "point": "volume_flow", "ts": 1, "value": float("nan"), "unit": "m3/h",
            "reason": "r", "author": "a", "created": 1, "id": "nan"}
    (inbox / "1-nan.json").write_text(json.dumps(body))  # json.dumps writes NaN
    (inbox / "2-garbage.json").write_bytes(bytes(range(256)))
    cfg = load_config(cfg_dir)
    servers = build_servers(cfg)
    for srv, _ in servers.values():
        await srv.start()
    run = asyncio.create_task(Gateway(cfg).run())
    quarantine = quarantine_for(inbox)
    try:
        for _ in range(300):
            await asyncio.sleep(0.05)
            if quarantine.is_dir() and len(list(quarantine.iterdir())) == 2 and len(recorder.readings()) > 6:
                break
        n = len(recorder.readings())
        for _ in range(100):  # still polling, storing and publishing afterwards
            await asyncio.sleep(0.05)
            if len(recorder.readings()) > n + 3:
                break
        assert not run.done()
        statuses = [s for s in recorder.by_topic_suffix("/status") if "components" in s]
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        for srv, _ in servers.values():
            await srv.stop()
    assert sorted(p.name for p in quarantine.iterdir()) == ["1-nan.json", "2-garbage.json"]
    assert len(recorder.readings()) > n + 3
    assert statuses
    assert all(s["components"].get("inbox", {}).get("state") != "failed" for s in statuses)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM records WHERE kind = 'corrections'").fetchone()[0] == 0
