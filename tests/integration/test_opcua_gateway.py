"""An OPC UA analyzer registered in YAML, read by the running gateway and delivered over MQTT."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.cli import main
from gateway.registry import load_config
from simulators.broker import PrivateBroker, free_port
from simulators.opcua_server import CemsOpcUaSimulator
from tests.helpers import Recorder, dedup_by_seq, seqs_without_holes, write_config

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")


def opcua_instrument(port: int, extra_security: str = "") -> str:
    return f"""\
instruments:
  - id: CEMS-UA
    name: OPC UA analyzer
    kind: gas_analyzer
    connection:
      protocol: opcua
      endpoint: opc.tcp://127.0.0.1:{port}/
      publishing_interval_ms: 100
      poll_interval_s: 0.2
      health_node_id: "ns=2;s=CEMS.DeviceHealth"
      calibration_node_id: "ns=2;s=CEMS.CalibrationInProgress"
      reconnect_initial_s: 0.1
      reconnect_max_s: 0.5
{extra_security}
    points:
      - {{name: co2, node_id: "ns=2;s=CEMS.CO2", unit: "%vol", mode: subscribe, sampling_interval_ms: 100}}
      - {{name: flue_gas_flow, node_id: "ns=2;s=CEMS.FlueGasFlow", device_unit: "Nm3/h", unit: "Nm3/s"}}
      - {{name: flue_gas_pressure, node_id: "ns=2;s=CEMS.Pressure", unit: kPa, mode: poll}}
"""


async def test_opcua_readings_reach_the_subscriber(tmp_path: Path, broker: PrivateBroker,
                                                   recorder: Recorder) -> None:
    port = free_port()
    cfg = load_config(write_config(tmp_path, opcua_instrument(port), url=broker.url, store=tmp_path / "gw.db"))
    async with CemsOpcUaSimulator("127.0.0.1", port, update_interval_s=0.05, seed=3) as sim:
        run = asyncio.create_task(Gateway(cfg).run())
        for _ in range(200):
            await asyncio.sleep(0.05)
            points = {r["point"] for b in recorder.readings() for r in b["readings"] if r["quality"] == "good"}
            if points >= {"co2", "flue_gas_flow", "flue_gas_pressure"}:
                break
        await sim.set_calibration(True)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if any(r["reason"] == "calibration" for b in recorder.readings() for r in b["readings"]):
                break
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    readings = [r for b in recorder.readings() for r in b["readings"]]
    good = {r["point"]: r for r in readings if r["quality"] == "good"}
    assert set(good) == {"co2", "flue_gas_flow", "flue_gas_pressure"}
    assert 8 <= good["co2"]["value"] <= 16
    assert good["flue_gas_flow"]["unit"] == "Nm3/s"
    assert 40 < good["flue_gas_flow"]["value"] < 100  # ~250,000 Nm3/h converted to Nm3/s
    cal = [r for r in readings if r["reason"] == "calibration"]
    assert cal, "calibration mode never reached the subscriber"
    assert all(r["quality"] == "bad" for r in cal)
    assert seqs_without_holes(dedup_by_seq(recorder.readings()), "CEMS-UA")


def test_opcua_config_errors_are_located(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    security = "      security: {policy: Basic256Sha256, mode: SignAndEncrypt}"
    write_config(tmp_path, opcua_instrument(4840, security))
    assert main(["validate", "--config", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "instruments/plant.yaml:" in err
    assert "connection.security" in err
    assert "client_cert" in err or "client_key" in err


async def test_simulate_command_applies_opcua_fault_knobs(tmp_path: Path) -> None:
    from simulators.runner import parse_faults, run_simulators

    port = free_port()
    cfg = load_config(write_config(tmp_path, opcua_instrument(port)))
    task = asyncio.create_task(run_simulators(cfg, faults=parse_faults(["CEMS-UA=calibration"]), duration_s=30))
    from asyncua import Client

    client = Client(f"opc.tcp://127.0.0.1:{port}/")
    for _ in range(100):
        try:
            await client.connect()
            break
        except OSError:
            await asyncio.sleep(0.1)
    try:
        flag = await client.get_node("ns=2;s=CEMS.CalibrationInProgress").read_value()
        health = await client.get_node("ns=2;s=CEMS.DeviceHealth").read_value()
    finally:
        await client.disconnect()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert flag is True
    assert health == 2  # CHECK_FUNCTION


def test_unknown_knob_for_opcua_is_a_clear_error(tmp_path: Path) -> None:
    from gateway.errors import ConfigErrors
    from simulators.runner import parse_faults

    with pytest.raises(ConfigErrors, match="expected ID=KNOB"):
        parse_faults(["CEMS-UA=explode"])


async def test_a_reload_restarts_a_changed_opcua_subscriber_and_stops_a_retired_one(
        tmp_path: Path, broker: PrivateBroker, recorder: Recorder) -> None:
    """Issue 11 item 3 for subscribing drivers (one per instrument): SIGHUP to this process, in-process gateway."""
    import os
    import signal

    port = free_port()
    cfg_dir = write_config(tmp_path, opcua_instrument(port), url=broker.url, store=tmp_path / "gw.db")
    plant = cfg_dir / "instruments" / "plant.yaml"
    gw = Gateway(load_config(cfg_dir), loader=lambda: load_config(cfg_dir))

    async def until(predicate, timeout_s: float = 10.0) -> bool:
        for _ in range(int(timeout_s / 0.05)):
            if predicate():
                return True
            await asyncio.sleep(0.05)
        return predicate()

    def count() -> int:
        return sum(1 for b in recorder.readings() if b["instrument"] == "CEMS-UA")

    async with CemsOpcUaSimulator("127.0.0.1", port, update_interval_s=0.05, seed=3) as sim:
        del sim
        run = asyncio.create_task(gw.run())
        try:
            assert await until(lambda: count() > 3)
            plant.write_text(plant.read_text().replace("publishing_interval_ms: 100", "publishing_interval_ms: 150"))
            os.kill(os.getpid(), signal.SIGHUP)
            assert await until(lambda: (gw.reload_status or {}).get("result") == "applied")
            n = count()
            assert await until(lambda: count() > n + 3)  # the restarted subscriber delivers
            assert gw.supervisor.snapshot()["subscribe CEMS-UA"]["restarts"] == 0
            text = plant.read_text().replace("    kind: gas_analyzer\n",
                                             "    kind: gas_analyzer\n    status: retired\n")
            plant.write_text(text.replace("      poll_interval_s: 0.2\n", ""))
            os.kill(os.getpid(), signal.SIGHUP)
            assert await until(lambda: "status in_service->retired" in (gw.reload_status or {}).get("changes", ""))
            assert "subscribe CEMS-UA" not in gw.supervisor.snapshot()
            assert gw.subscribers == []
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
    assert seqs_without_holes(dedup_by_seq(recorder.readings()), "CEMS-UA")
