"""Issue 13 acceptance: hourly CO2 by measurement (CEMS) and calculation (fuel), on an accelerated clock.

Real pymodbus simulators (their signals advance on the same accelerated clock, so the gas meter's totalizer
counts plant hours) and a real `carbon-gateway run` subprocess with a private Mosquitto. The simulated flows
are steady (+-1 % noise: on this clock a daily shape would change within an hour, and an hour the CEMS
covered only partly would then differ from the gas meter's whole-hour total), with a ratio chosen so that
both methods give the same CO2:
    CEMS:  12 %vol / 100 x Q Nm3/h x 1.963463 kg/Nm3 = 0.2356156 x Q kg/h
    fuel:  F m3/h x 0.0389 GJ/m3 x 0.01532 tC/GJ x 0.99 x 44/12 = F x 2.163291 kg
    so F = 0.2356156 / 2.163291 x Q = 0.10891523 x Q m3/h, i.e. for Q = 300 000 Nm3/h:
    F = 32 674.57 m3/h = 9.076269 m3/s.
The CO2 noise (12 +- 0.8 %vol, uniform) makes an hour's mean differ by about 0.5 % (sd): the configured
consistency, checked here, is 5 %. The CEMS then refuses connections for two plant hours: the measurement
method follows the rules engine's substitutes (provisional, then final), says so, and is re-issued.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from gateway.registry import load_config
from simulators.broker import PrivateBroker
from simulators.runner import build_servers
from tests.helpers import Recorder, dedup_by_seq, seqs_without_holes, write_config
from tests.integration.test_rules_end_to_end import ORIGIN, SCALE, hour, wait_until
from tests.unit.derived.test_carbon_records import CARBON

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

CONSISTENCY = 0.05

INSTRUMENTS = """\
instruments:
  - id: CEMS-01
    name: stack CEMS
    kind: gas_analyzer
    measuring_range: {{min: 0, max: 25, unit: "%vol"}}
    profile: cems_generic
    only_points: [co2, flue_gas_flow]
    connection: {{protocol: modbus_tcp, host: 127.0.0.1, port: {cems}, unit_id: 1, timeout_s: 0.5}}
    poll_interval_s: 60
    points:
      - name: co2
        gap_after_s: 600
        feeds_emissions: true
        direction: high
        missing_data: {{selector: part75_tiered, kind: conc, max_potential: 15.0,
                       citation: "40 CFR 75.33(b) via 75.35(d)"}}
      - name: flue_gas_flow
        simulate: {{signal: noise, mean: 300000.0, amplitude: 3000.0}}
        gap_after_s: 600
        feeds_emissions: true
        direction: high
        missing_data: {{selector: hj75_tiered, default_value: 420000.0, citation: "HJ 75-2017 table 8"}}
  - id: FT-01
    name: natural gas meter
    kind: flow_meter
    # As the shipped config/: the range bounds the counter's consumption between two readings (issue 10 item 2)
    measuring_range: {{min: 0, max: 50000, unit: m3/h}}
    profile: siemens_mag6000
    only_points: [volume_flow, totalizer_1]
    connection: {{protocol: modbus_tcp, host: 127.0.0.1, port: {gas}, unit_id: 2, timeout_s: 0.5}}
    poll_interval_s: 60
    points:
      - name: volume_flow
        simulate: {{signal: noise, mean: 9.076269, amplitude: 0.090763}}
      - name: totalizer_1
        gap_after_s: 600
"""



async def test_hourly_co2_by_both_methods_follows_substitution(
        tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker, recorder: Recorder) -> None:
    cfg_dir = write_config(tmp_path / "cfg", INSTRUMENTS.format(cems=ports[0], gas=ports[1]), url=broker.url,
                           store=tmp_path / "gw.db")
    (cfg_dir / "carbon.yaml").write_text(textwrap.dedent(CARBON))
    text = (cfg_dir / "gateway.yaml").read_text().replace("backoff_max_s: 0.5", "backoff_max_s: 60")
    (cfg_dir / "gateway.yaml").write_text(text)
    servers = build_servers(load_config(cfg_dir), time_scale=SCALE)
    cems = next(srv for srv, devs in servers.values() if "CEMS-01" in devs)
    for srv, _ in servers.values():
        await srv.start()
    log = tmp_path / "gw.log"
    gw = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(cfg_dir), "--time-scale",
                           str(SCALE), "--time-origin", ORIGIN.isoformat()],
                          stdout=subprocess.DEVNULL, stderr=open(log, "ab"))  # noqa: SIM115

    def carbon() -> list[dict]:
        return [c for b in recorder.by_topic_suffix("/carbon") for c in b["carbon"]]

    def latest() -> dict[int, dict]:
        out: dict[int, dict] = {}
        for c in carbon():
            if c["hour_start"] not in out or c["version"] > out[c["hour_start"]]["version"]:
                out[c["hour_start"]] = c
        return out

    try:
        assert await wait_until(lambda: hour(2) in latest(), 60), log.read_text()[-3000:]
        await cems.set_refuse(True)
        assert await wait_until(lambda: hour(4) in latest(), 40), log.read_text()[-3000:]
        await cems.set_refuse(False)
        assert await wait_until(lambda: any(c["status"] == "final" and c["quality"] == "substituted"
                                            for c in latest().values()), 40), log.read_text()[-3000:]
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(20)
        for srv, _ in servers.values():
            await srv.stop()

    records = latest()
    measured = [c for c in records.values() if c["quality"] == "measured"]
    assert len(measured) >= 2
    for c in measured:
        # both methods, and they agree within the simulators' consistency
        assert c["methods"]["cems"]["co2_kg"] > 0
        assert c["methods"]["fuel"]["co2_kg"] > 0
        assert abs(c["difference"]["relative"]) < CONSISTENCY, c
        assert c["status"] == "final"
        fuel = c["methods"]["fuel"]
        # recomputable from the trace: consumption x constants x 44/12, in kg
        (gas,) = fuel["inputs"]
        k = {x["name"]: x["value"] for x in fuel["constants"]}
        assert fuel["co2_kg"] == pytest.approx(gas["value"] * k["ncv_gas"] * k["cc_gas"] * k["of_gas"] * 44 / 12 * 1000)

    substituted = [c for c in carbon() if c["quality"] == "substituted"]
    published_subs = {s["record_id"]: s for b in recorder.by_topic_suffix("/substitutes") for s in b["substitutes"]}
    assert substituted, "no carbon record followed the substitution"
    for c in substituted:
        cems_m = c["methods"]["cems"]
        assert cems_m["quality"] == "substituted"  # it says so
        refs = [i["record"] for i in cems_m["inputs"] if i["basis"] == "substitute"]
        assert refs
        for ref in refs:  # ... and names the substitute records it used, which were published
            assert ref["record_id"] in published_subs
            assert published_subs[ref["record_id"]]["value"] == next(
                i["value"] for i in cems_m["inputs"] if i["record"] is ref)
    # re-issued: a provisional version superseded by a final one for the same hour
    by_id = {c["record_id"]: c for c in carbon()}
    finals = [c for c in substituted if c["status"] == "final" and c["supersedes"]]
    assert finals
    for f in finals:
        before = by_id[f["supersedes"]]
        assert before["hour_start"] == f["hour_start"]
        assert before["version"] == f["version"] - 1
        assert before["status"] == "provisional"
    schema = json.loads((Path(__file__).resolve().parents[2] / "docs" / "schema" / "carbon.schema.json").read_text())
    v = Draft202012Validator(schema)
    for body in recorder.by_topic_suffix("/carbon"):
        v.validate(body)
    assert seqs_without_holes(dedup_by_seq(recorder.by_topic_suffix("/carbon")), "boiler1")
    assert "Traceback" not in log.read_text()

    # `carbon-gateway explain` gives each record's derivation down to the raw readings, from the store.
    def explain(record_id: str) -> dict:
        out = subprocess.run([sys.executable, "-m", "gateway", "explain", record_id, "--store",
                              str(tmp_path / "gw.db"), "--format", "json"], capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    final = finals[-1]
    tree = explain(final["record_id"])
    assert (tree["record_id"], tree["version"], tree["supersedes"]) == (final["record_id"], final["version"],
                                                                          final["supersedes"])
    cems_t = next(m for m in tree["methods"] if m["method"] == "cems")
    for inp in cems_t["inputs"]:
        assert inp["from"]["kind"] == "substitute"
        assert inp["from"]["record_id"] in published_subs
        assert inp["from"]["citation"]  # the clause the substitute cites
        assert inp["raw_readings"]["count"] >= 1  # the CEMS was down: its readings of that hour are bad
        assert inp["raw_readings"]["quality"].get("bad", 0) >= 1
    fuel_t = next(m for m in tree["methods"] if m["method"] == "fuel")
    assert {c["name"] for c in fuel_t["constants"]} == {"ncv_gas", "cc_gas", "of_gas"}
    (gas_t,) = fuel_t["inputs"]
    assert gas_t["from"]["kind"] == "aggregate"
    assert gas_t["from"]["consumption"] == pytest.approx(gas_t["value"])
    assert gas_t["raw_readings"]["count"] > 0
    assert set(gas_t["raw_readings"]["calibration"]) <= {"valid", "due_soon", "expired", "unknown"}
    good = explain(measured[0]["record_id"])
    co2_t = next(i for m in good["methods"] if m["method"] == "cems" for i in m["inputs"] if i["name"] == "co2")
    assert co2_t["from"]["valid"] is True
    raw = co2_t["raw_readings"]
    assert raw["quality"]["good"] >= co2_t["from"]["valid_count"]  # the aggregate's valid readings, counted again
    assert raw["min"] <= co2_t["value"] <= raw["max"]
    text = subprocess.run([sys.executable, "-m", "gateway", "explain", measured[0]["record_id"], "--store",
                           str(tmp_path / "gw.db")], capture_output=True, text=True, check=True).stdout
    assert "formula co2_mass_rate(co2, q)" in text
    assert "raw readings:" in text
