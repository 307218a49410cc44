"""Live reload on SIGHUP (issue 11 item 3), with a real `carbon-gateway run` subprocess, a private Mosquitto
and pymodbus meter simulators.

Acceptance: a SIGHUP with a broken configuration leaves the gateway running on the old one with one error line;
with a good one, a new instrument publishes within one poll interval, with no seq hole on any other instrument.
Then an instrument removed and one changed: the removed one stops, the changed one's poller restarts, no hole.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from simulators.broker import PrivateBroker, free_port
from tests.helpers import Recorder, dedup_by_seq, seqs_without_holes, three_meters, write_config
from tests.system.conftest import (
    assert_delivered_equals_committed,
    assert_integrity_ok,
    assert_status_schema,
    start_gateway,
    stop_gateway,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
INTERVAL = 0.5  # the three meters' poll interval
NEW_INTERVAL = 1.0  # the added meter's

EXTRA = """\
instruments:
  - id: PM-02
    name: second power meter
    kind: power_meter
    profile: eastron_sdm630
    connection: {{protocol: modbus_tcp, host: 127.0.0.1, port: {port}, unit_id: 1, timeout_s: 0.5}}
    poll_interval_s: {interval}
    only_points: [voltage_l1, total_active_power]
"""


def log_since(log: Path, mark: int) -> list[str]:
    return log.read_bytes()[mark:].decode(errors="replace").splitlines()


def statuses(recorder: Recorder, result: str) -> list[dict]:
    return [b["reload"] for b in recorder.by_topic_suffix("/status") if b.get("reload", {}).get("result") == result]


async def test_sighup_rejects_a_broken_configuration_and_applies_a_good_one(
        tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker, recorder: Recorder, meters,
        gateway_log: Path) -> None:
    from gateway.registry import load_config

    db = tmp_path / "gw.db"
    cfg_dir = write_config(tmp_path / "cfg", three_meters(ports, interval=INTERVAL), url=broker.url, store=db)
    plant = cfg_dir / "instruments" / "plant.yaml"
    good = plant.read_text()
    old_version = load_config(cfg_dir).version
    await meters(load_config(cfg_dir))
    port4 = free_port()
    extra_dir = write_config(tmp_path / "extra", EXTRA.format(port=port4, interval=NEW_INTERVAL), url=broker.url,
                             store=tmp_path / "unused.db")
    await meters(load_config(extra_dir))  # the fourth meter, already answering before it is configured
    gw = start_gateway(cfg_dir, gateway_log)
    try:
        assert await wait_until(lambda: {b["instrument"] for b in recorder.readings()} >= {"PM-01", "FT-01",
                                                                                           "CEMS-01"}, 30)
        # 1. A broken configuration: rejected with one error line naming file:line; the old one keeps running.
        plant.write_text(good.replace("    name: gas flow meter\n", "    name: gas flow meter\n    colour: red\n"))
        mark = gateway_log.stat().st_size
        os.kill(gw.pid, signal.SIGHUP)
        assert await wait_until(lambda: any("reload rejected" in ln for ln in log_since(gateway_log, mark)), 20)
        errors = [ln for ln in log_since(gateway_log, mark) if " ERROR " in ln]
        assert len(errors) == 1, errors
        assert f"{plant}:" in errors[0]
        assert "colour" in errors[0]
        assert await wait_until(lambda: bool(statuses(recorder, "rejected")), 10)
        assert statuses(recorder, "rejected")[-1]["config_version"] == old_version
        n = len(recorder.readings())
        assert await wait_until(lambda: len(recorder.readings()) > n + 6, 10)  # still polling, all of them
        assert gw.poll() is None

        # 2. A good one: a fourth meter in a new file. It publishes within one poll interval of the reload.
        plant.write_text(good)
        (cfg_dir / "instruments" / "extra.yaml").write_text(EXTRA.format(port=port4, interval=NEW_INTERVAL))
        new_version = load_config(cfg_dir).version
        mark = gateway_log.stat().st_size
        os.kill(gw.pid, signal.SIGHUP)
        assert await wait_until(lambda: bool(statuses(recorder, "applied")), 20), gateway_log.read_text()[-3000:]
        (applied, *_) = statuses(recorder, "applied")
        assert applied["config_version"] == new_version
        assert await wait_until(lambda: any(b["instrument"] == "PM-02" for b in recorder.readings()), 10)
        first = min(r["ts"] for b in recorder.readings() if b["instrument"] == "PM-02" for r in b["readings"])
        assert first <= applied["at"] + NEW_INTERVAL * 1000
        lines = log_since(gateway_log, mark)
        assert any("reload: reading the configuration" in ln for ln in lines)
        (done,) = [ln for ln in lines if "reload applied" in ln]
        assert "+PM-02" in done
        assert "pollers: 1 started, 0 restarted, 0 stopped, 3 kept" in done
        assert not [ln for ln in lines if " ERROR " in ln]
        for inst in ("PM-02", "PM-01"):  # a new birth: every instrument's retained meta has the new version
            assert await wait_until(lambda i=inst: any(b["config_version"] == new_version
                                                       for b in recorder.by_topic_suffix(f"{i}/meta")), 10)

        # 3. FT-01 removed, CEMS-01 changed (its poll interval): FT-01 stops, CEMS-01's poller restarts.
        plant.write_text(_without_ft01(good).replace("poll_interval_s: 0.5\n", "poll_interval_s: 0.7\n"))
        third_version = load_config(cfg_dir).version
        mark = gateway_log.stat().st_size
        os.kill(gw.pid, signal.SIGHUP)
        assert await wait_until(lambda: any(s["config_version"] == third_version
                                            for s in statuses(recorder, "applied")), 20), \
            gateway_log.read_text()[-3000:]
        (third, *_) = [s for s in statuses(recorder, "applied") if s["config_version"] == third_version]
        (done,) = [ln for ln in log_since(gateway_log, mark) if "reload applied" in ln]
        assert "-FT-01" in done
        assert "pollers: 0 started, 2 restarted, 1 stopped, 1 kept" in done  # PM-01, CEMS-01 changed; PM-02 kept
        n = {i: sum(1 for b in recorder.readings() if b["instrument"] == i) for i in ("CEMS-01", "PM-02")}
        assert await wait_until(lambda: all(sum(1 for b in recorder.readings() if b["instrument"] == i) > n[i] + 2
                                            for i in n), 10)
    finally:
        assert stop_gateway(gw) == 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        last_ft = conn.execute("SELECT MAX(created_ms) FROM messages WHERE instrument = 'FT-01' "
                               "AND kind = 'readings'").fetchone()[0]
    assert last_ft <= third["at"]  # nothing of FT-01 after its removal was applied
    dedup = dedup_by_seq(recorder.readings())
    for inst in ("PM-01", "FT-01", "CEMS-01", "PM-02"):
        assert seqs_without_holes(dedup, inst), inst
    assert_delivered_equals_committed(db, recorder.readings)
    assert_integrity_ok(db)
    history = subprocess.run([sys.executable, "-m", "gateway", "config", "history", "--store", str(db), "--format",
                              "json"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    rows = json.loads(history.stdout)["configurations"]
    assert [r["cause"] for r in rows] == ["start", "reload", "reload"]
    assert rows[1]["changes"]["added"] == ["PM-02"]
    assert rows[2]["changes"]["removed"] == ["FT-01"]
    verify = subprocess.run([sys.executable, "-m", "gateway", "verify", "--store", str(db)], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    assert verify.returncode == 0, verify.stdout + verify.stderr  # reload rows are chained like the start's
    assert "Traceback" not in gateway_log.read_text()
    for body in recorder.by_topic_suffix("/status"):
        if "reload" in body:
            assert_status_schema(body)  # the `reload` field is part of the published contract


def _without_ft01(text: str) -> str:
    start = text.index("  - id: FT-01")
    end = text.index("  - id: CEMS-01")
    return text[:start] + text[end:]
