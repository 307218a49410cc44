"""Issue 10 acceptance: the running gateway's substitutes equal the pure engine's and the auditor tool's.

A simulated CEMS (real pymodbus server) with a load point: the unit runs, stops for two plant hours (load 0,
the analyzer reads nothing: non-operating hours), runs again, then the analyzer is lost for four operating
hours across the HJ 75 quarter boundary (2027-01-01 00:00 CST). The gateway runs on an accelerated plant
clock (1 real second = 20 plant minutes) against a private Mosquitto. Its published substitutes for co2
(hj75_tiered: each quarter part by its own quarter's alpha) and flue-gas flow (part75_tiered binned, load
ranges from the load point) must match, value, method and citation, what `substitute_gap` and `carbon-gateway
rules evaluate` give for the same history (the published hourly aggregates, cut where the gateway was when it
finalised the gap). No wall-clock asserts: the script follows the plant clock read from the readings.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from gateway.audit import main as audit_main
from gateway.registry import load_config
from gateway.rules.context import GapInputs
from gateway.rules.hours import HourValue, find_gaps
from gateway.rules.substitution import substitute_gap
from simulators.broker import PrivateBroker
from simulators.runner import build_servers
from tests.helpers import Recorder, write_config

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

H = 3_600_000
ORIGIN = datetime(2026, 12, 31, 6, tzinfo=UTC)  # hour 10 = 2026-12-31T16:00Z = 2027-01-01 00:00 CST (Q1 starts)
ORIGIN_MS = int(ORIGIN.timestamp() * 1000)
SCALE = 1200  # one plant hour = 3 real seconds
# Load ranges of [0, 600] MW in tenths: 330 MW is range 6, 270 MW range 5 (mid-range, so a few minutes of the
# neighbouring hour's load never move an hour's average across a boundary).
LOADS = [330.0, 270.0, 330.0, 270.0, 0.0, 0.0, 330.0, 270.0, 330.0, 330.0, 270.0, 270.0, 330.0, 270.0, 330.0]
LAST_HOUR = 13

INSTRUMENT = """\
instruments:
  - id: CEMS-01
    name: stack CEMS
    kind: gas_analyzer
    measuring_range: {{min: 0, max: 25, unit: "%vol"}}
    profile: cems_generic
    only_points: [co2, flue_gas_flow]
    connection: {{protocol: modbus_tcp, host: 127.0.0.1, port: {port}, unit_id: 1, timeout_s: 0.5}}
    poll_interval_s: 60
    points:
      - name: unit_load
        table: holding
        address: 30
        type: float32
        order: ABCD
        device_unit: MW
        unit: MW
      - name: co2
        gap_after_s: 600
        feeds_emissions: true
        direction: high
        operating: {{point: unit_load, above: 0}}
        missing_data: {{selector: hj75_tiered, default_value: 20.0, citation: "monitoring plan 5.1"}}
      - name: flue_gas_flow
        gap_after_s: 600
        feeds_emissions: true
        direction: high
        operating: {{point: unit_load, above: 0}}
        load: {{point: unit_load, range: [0, 600]}}
        missing_data: {{selector: part75_tiered, kind: binned, max_potential: 900000.0,
                       citation: "monitoring plan 5.2"}}
"""
POLICIES = {
    "co2": ("hj75_tiered", {"default_value": 20.0, "citation": "monitoring plan 5.1"}),
    "flue_gas_flow": ("part75_tiered", {"kind": "binned", "max_potential": 900000.0,
                                        "citation": "monitoring plan 5.2"}),
}


class PlantScript:
    """What the simulated CEMS reads at each plant time. The plant clock is the gateway's (scaled, started by
    the gateway process): it is learnt from the newest reading timestamps the gateway publishes (the
    largest ts - scale x monotonic seen is the closest to the truth, delivery only makes it late)."""

    def __init__(self) -> None:
        self.offset_ms: float | None = None
        self.n = 0

    def learn(self, ts_ms: int) -> None:
        candidate = ts_ms - time.monotonic() * 1000 * SCALE
        if self.offset_ms is None or candidate > self.offset_ms:
            self.offset_ms = candidate

    def hour(self) -> float | None:
        if self.offset_ms is None:
            return None
        return (self.offset_ms + time.monotonic() * 1000 * SCALE - ORIGIN_MS) / H

    def values(self, _dt: float) -> dict[str, float]:
        self.n += 1
        wobble = (self.n % 5 - 2) * 0.05
        h = self.hour()
        if h is None or h < 0:
            return {"unit_load": LOADS[0], "co2": 12.0 + wobble, "flue_gas_flow": LOADS[0] * 1000 + wobble * 100}
        i = min(int(h), len(LOADS) - 1)
        # Stopped over [3.75, 6.25): every load reading of hours 4 and 5 is 0 (non-operating), hours 3 and 6
        # keep load readings above 0 (operating), whatever the small error of the learnt clock.
        load = 0.0 if 3.75 <= h < 6.25 else LOADS[i]
        lost = 4.0 <= h < 6.0 or 8.0 <= h < 12.0  # the analyzer reads NaN: no value, stopped or lost
        co2 = math.nan if lost else 11.0 + 0.25 * i + wobble
        flow = math.nan if lost else load * 1000 + 500 * (i % 3) + wobble * 100
        return {"unit_load": load, "co2": co2, "flue_gas_flow": flow}


def latest_versions(recorder: Recorder, point: str) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for body in recorder.by_topic_suffix("/substitutes"):
        for s in body["substitutes"]:
            if s["point"] == point and (s["hour"] not in out or s["version"] > out[s["hour"]]["version"]):
                out[s["hour"]] = s
    return out


def aggregates(recorder: Recorder, point: str) -> dict[int, dict[str, Any]]:
    return {a["period_start"] // H: a for b in recorder.by_topic_suffix("/aggregates") for a in b["aggregates"]
            if a["point"] == point}


def history_of(aggs: dict[int, dict[str, Any]]) -> list[HourValue]:
    """The point's operating hours as published: non-operating hours are absent (40 CFR 75.30(a))."""
    return [HourValue(h, a["mean"] if a["valid"] else None, a.get("load_bin"))
            for h, a in sorted(aggs.items()) if a.get("operating") is not False]


def auditor(point: str, history: list[HourValue], gap: tuple[int, ...], tmp: Path) -> dict[str, Any]:
    selector, params = POLICIES[point]
    scenario: dict[str, Any] = {
        "name": point, "policy": selector,
        "params": {**params, "direction": "high", "parameter": point},
        "history": [[hv.hour, hv.value] for hv in history], "gap": list(gap)}
    if any(hv.load_bin is not None for hv in history):
        scenario["params"]["load_bin_by_hour"] = {str(hv.hour): hv.load_bin for hv in history
                                                  if hv.load_bin is not None}
    path = tmp / f"{point}-{gap[0]}.json"
    path.write_text(json.dumps(scenario))
    out = io.StringIO()
    assert audit_main(str(path), out, io.StringIO()) == 0
    return json.loads(out.getvalue())


def per_hour(answer: dict[str, Any], key: str, n: int) -> list[Any]:
    v = answer[key]
    return v if isinstance(v, list) else [v] * n


async def test_runtime_substitutes_equal_the_engine_and_the_auditor(
        tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker, recorder: Recorder) -> None:
    cfg_dir = write_config(tmp_path / "cfg", INSTRUMENT.format(port=ports[0]), url=broker.url,
                           store=tmp_path / "gw.db")
    text = (cfg_dir / "gateway.yaml").read_text().replace("backoff_max_s: 0.5", "backoff_max_s: 60")
    (cfg_dir / "gateway.yaml").write_text(text)
    cfg = load_config(cfg_dir)
    (server, devices), = build_servers(cfg).values()
    script = PlantScript()
    devices["CEMS-01"].source = script.values
    server.update_interval_s = 0.02  # about 0.4 plant minutes between value updates
    await server.start()
    log = tmp_path / "gw.log"
    gw = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(cfg_dir), "--time-scale",
                           str(SCALE), "--time-origin", ORIGIN.isoformat()],
                          stdout=subprocess.DEVNULL, stderr=open(log, "ab"))  # noqa: SIM115
    seen = 0

    def follow() -> None:
        nonlocal seen
        bodies = recorder.readings()
        for body in bodies[seen:]:
            script.learn(max(r["ts"] for r in body["readings"]))
        seen = len(bodies)

    def done() -> bool:
        follow()
        last = ORIGIN_MS // H + LAST_HOUR
        return last in aggregates(recorder, "co2") and last in aggregates(recorder, "flue_gas_flow")

    try:
        for _ in range(int(120 / 0.02)):
            if done():
                break
            await asyncio.sleep(0.02)
        assert done(), log.read_text()[-3000:]
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(20)
        await server.stop()

    base = ORIGIN_MS // H
    for point in ("co2", "flue_gas_flow"):
        aggs = aggregates(recorder, point)
        # Hours 4 and 5 do not operate: flagged, never substituted.
        assert [aggs[base + h].get("operating") for h in (3, 4, 5, 6)] == [True, False, False, True], point
        history = history_of(aggs)
        subs = latest_versions(recorder, point)
        assert base + 4 not in subs
        assert base + 5 not in subs
        compared = 0
        for gap in find_gaps(history):
            ha = next((hv.hour for hv in history if hv.hour > gap.end and hv.value is not None), None)
            if ha is None:
                continue  # still open at the end of the run
            # The gateway finalised the gap when the hour after it (HA) closed: the same history.
            cut = [hv for hv in history if hv.hour <= ha]
            policy = cfg.instrument("CEMS-01").point_index[point].rules.substitution
            engine = substitute_gap(cut, gap.hours, policy, point=point, instrument="CEMS-01",
                                    inputs=GapInputs(gap_open=False))
            audit = auditor(point, cut, gap.hours, tmp_path)
            n = len(gap.hours)
            assert audit["status"] == "final"
            audit_codes = per_hour(audit, "method_code", n)
            audit_citations = [h["citation"] for h in audit["trace"]["hours"] if h["status"] == "final"]
            for i, rec in enumerate(engine.records):
                pub = subs[rec.hour]
                detail = rec.detail.to_json()
                assert pub["status"] == "final", (point, rec.hour, pub)
                assert pub["value"] == rec.value == audit["values"][i], (point, rec.hour)
                assert pub["trace"]["method_code"] == detail["method_code"] == audit_codes[i], (point, rec.hour)
                assert pub["trace"]["citation"] == detail["citation"] == audit_citations[i], (point, rec.hour)
                compared += 1
        assert compared >= 4, (point, sorted(subs))

    # The scenario is the one intended: co2's outage (hours 8-11) spans the quarter boundary, so its two
    # parts are judged by different quarters' alpha; the flow outage takes each hour's own load range.
    co2 = latest_versions(recorder, "co2")
    quarters = {co2[base + h]["trace"]["alpha"]["quarter_start"] for h in (8, 9, 10, 11)}
    assert len(quarters) == 2, [co2[base + h]["trace"]["alpha"] for h in (8, 9, 10, 11)]
    flow = latest_versions(recorder, "flue_gas_flow")
    assert [flow[base + h]["trace"]["load_bin"] for h in (8, 9, 10, 11)] == [6, 6, 5, 5]
    assert all(flow[base + h]["trace"]["citation"].startswith("40 CFR 75.33(c)") for h in (8, 9, 10, 11))

    schemas = Path(__file__).resolve().parents[2] / "docs" / "schema"
    for kind in ("aggregates", "substitutes"):
        validator = Draft202012Validator(json.loads((schemas / f"{kind}.schema.json").read_text()))
        for body in recorder.by_topic_suffix(f"/{kind}"):
            validator.validate(body)
    assert "Traceback" not in log.read_text()
