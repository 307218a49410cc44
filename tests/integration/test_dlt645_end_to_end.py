"""DL/T 645 end to end: `carbon-gateway simulate` serves two meters behind one TCP transparent gateway
(one with a fault knob), `carbon-gateway run` polls them through the registry and publishes to a
private Mosquitto; a real subscriber checks the readings, their reasons and the payload schemas."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from simulators.broker import PrivateBroker
from tests.conftest import free_port
from tests.helpers import Recorder, dedup_by_seq, seqs_without_holes, write_config

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schema"


def gateway_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


@pytest.fixture
def config_dir(tmp_path: Path, broker: PrivateBroker) -> Path:
    port = free_port()
    meters = "".join(f"""\
  - id: {iid}
    name: sub-meter {iid}
    kind: power_meter
    source_category: purchased_electricity_heat
    profile: dlt645_three_phase
    connection: {{protocol: dlt645_over_tcp, host: 127.0.0.1, port: {port}, address: "{address}", timeout_s: 0.5}}
    poll_interval_s: 0.3
""" for iid, address in (("EM-01", "000012345678"), ("EM-02", "000012345679")))
    return write_config(tmp_path / "cfg", "instruments:\n" + meters, url=broker.url, store=tmp_path / "gw.db")


@pytest.fixture
def simulators(config_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(gateway_cmd("simulate", "--config", str(config_dir), "--fault", "EM-02=error:0x04"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith(b"simulating EM-01, EM-02 on dlt645_over_tcp://127.0.0.1:"), \
        line + (proc.stderr.read() if proc.stderr and proc.poll() is not None else b"")
    yield proc
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0


def test_readings_of_dlt645_meters_reach_the_broker(config_dir: Path, simulators: subprocess.Popen[bytes],
                                                      recorder: Recorder, tmp_path: Path) -> None:
    log = tmp_path / "gw.log"
    gw = subprocess.Popen(gateway_cmd("run", "--config", str(config_dir)), stdout=subprocess.DEVNULL,
                          stderr=open(log, "ab"))  # noqa: SIM115 - the child owns it
    try:
        def seen() -> set[str]:
            return {b["instrument"] for b in recorder.readings() if len(b["readings"]) >= 12}

        assert recorder.wait_for(lambda: seen() >= {"EM-01", "EM-02"}, 30), log.read_text()[-2000:]
        assert recorder.wait_for(lambda: bool(recorder.by_topic_suffix("/status")), 10)
    finally:
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(15) == 0
    readings = recorder.readings()
    rows = {(b["instrument"], r["point"]): r for b in readings for r in b["readings"]}
    good = [r for (iid, _), r in rows.items() if iid == "EM-01"]
    assert {(r["quality"], r["reason"]) for r in good} == {("good", "")}
    assert rows[("EM-01", "forward_active_energy")]["unit"] == "kWh"
    assert rows[("EM-01", "forward_active_energy")]["value"] > 100_000
    assert 200 < rows[("EM-01", "voltage_a")]["value"] < 260
    assert rows[("EM-01", "frequency")]["unit"] == "Hz"
    bad = [r for (iid, _), r in rows.items() if iid == "EM-02"]
    assert len(bad) == 12
    assert {(r["quality"], r["reason"], r["value"]) for r in bad} == {("bad", "dlt645_unauthorised", None)}
    dedup = dedup_by_seq(readings)
    assert seqs_without_holes(dedup, "EM-01")
    for kind in ("readings", "status", "meta"):
        v = Draft202012Validator(json.loads((SCHEMAS / f"{kind}.schema.json").read_text()))
        for body in recorder.by_topic_suffix(f"/{kind}"):
            v.validate(body)
    status = recorder.by_topic_suffix("/status")[0]
    assert {"EM-01", "EM-02"} <= set(status["instruments"])
