"""`carbon-gateway status` while the gateway runs (issue 11 item 6): a WAL reader of the live store, plus the
live status topic; an instrument whose meter stops shows an open gap and no new good reading."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from simulators.broker import PrivateBroker
from tests.helpers import Recorder, three_meters, write_config
from tests.system.conftest import start_gateway, stop_gateway, wait_until

ROOT = Path(__file__).resolve().parents[2]


async def status(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "gateway", "status", *args],
                                   capture_output=True, text=True, timeout=60, cwd=ROOT)


async def test_status_reads_the_running_gateways_store_and_live_topic(tmp_path: Path, ports: tuple[int, int, int],
                                                                      broker: PrivateBroker, recorder: Recorder,
                                                                      meters, gateway_log: Path) -> None:
    from gateway.registry import load_config

    db = tmp_path / "gw.db"
    cfg_dir = write_config(tmp_path / "cfg", three_meters(ports), url=broker.url, store=db)
    servers = await meters(load_config(cfg_dir))
    gw = start_gateway(cfg_dir, gateway_log)
    try:
        assert await wait_until(lambda: {b["instrument"] for b in recorder.readings()} >= {"PM-01", "FT-01",
                                                                                           "CEMS-01"}, 30)
        await servers["FT-01"][0].stop()  # FT-01's meter goes away: a gap opens after 1.5 poll intervals
        assert await wait_until(lambda: any(b.get("type") == "gap_open" for body in
                                            recorder.by_topic_suffix("FT-01/events") for b in body["events"]), 20)
        out = await status("--config", str(cfg_dir), "--mqtt-url", broker.url, "--format", "json")
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        inst = report["instruments"]
        assert set(inst) == {"PM-01", "FT-01", "CEMS-01"}
        pm = inst["PM-01"]
        assert set(pm["last_good"]) == {"voltage_l1", "total_active_power", "total_import_active_energy"}
        assert pm["last_reading"]["quality"] == "good"
        assert pm["calibration"] == {"now": "valid", "due_date": "2028-01-10"}
        assert pm["open_gaps"] == []
        assert inst["CEMS-01"]["calibration"]["due_date"] == "2026-12-05"
        ft = inst["FT-01"]
        assert ft["last_reading"]["quality"] == "bad"  # the meter does not answer
        assert {g["point"] for g in ft["open_gaps"]} == {"volume_flow", "totalizer_1"}
        assert report["store"]["size_bytes"] > 0
        assert report["store"]["config_version"] == report["configured_version"]
        assert report["live"]["state"] == "online"
        table = await status("--config", str(cfg_dir))
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].startswith(f"store {db}:")
        assert lines[1].split()[:2] == ["instrument", "last"]
        (ft_line,) = [ln for ln in lines if ln.startswith("FT-01")]
        assert "bad/" in ft_line
        assert "volume_flow since" in ft_line
        by_store = await status("--store", str(db))  # without a configuration: the store's own instruments
        assert by_store.returncode == 0, by_store.stderr
        assert sum(ln.split()[0] in ("PM-01", "FT-01", "CEMS-01") for ln in by_store.stdout.splitlines()) == 3
    finally:
        assert stop_gateway(gw) == 0
