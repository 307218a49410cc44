"""Issue 4 acceptance: a simulated analyzer stops for two simulated hours.

The gateway runs with an accelerated plant clock (1 real second = 20 plant minutes) against the
real pymodbus simulator and a private Mosquitto. The subscriber must receive the gap events,
provisional substitutes, final substitutes superseding them, and hourly aggregates with the
right availability.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from gateway.registry import load_config
from simulators.broker import PrivateBroker
from simulators.runner import build_servers
from tests.helpers import Recorder, dedup_by_seq, seqs_without_holes, write_config

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

H = 3_600_000
ORIGIN = datetime(2026, 11, 24, tzinfo=UTC)
ORIGIN_MS = int(ORIGIN.timestamp() * 1000)
SCALE = 1200  # one plant hour = 3 real seconds

INSTRUMENT = """\
instruments:
  - id: CEMS-01
    name: stack CEMS
    kind: gas_analyzer
    measuring_range: {{min: 0, max: 25, unit: "%vol"}}
    profile: cems_generic
    only_points: [co2, o2, flue_gas_flow]
    connection: {{protocol: modbus_tcp, host: 127.0.0.1, port: {port}, unit_id: 1, timeout_s: 0.5}}
    poll_interval_s: 60
    points:
      - name: co2
        gap_after_s: 600  # ten plant minutes = half a real second: scheduling jitter is not an outage
        feeds_emissions: true
        direction: high
        missing_data: {{selector: part75_tiered, kind: conc, max_potential: 15.0,
                       citation: "40 CFR 75.33(b) via 75.35(d)"}}
"""


def hour(i: int) -> int:
    return ORIGIN_MS + i * H


async def wait_until(predicate, timeout_s: float) -> bool:
    for _ in range(int(timeout_s / 0.05)):
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def test_two_hour_outage_gives_events_substitutes_and_aggregates(
        tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker, recorder: Recorder) -> None:
    cfg_dir = write_config(tmp_path / "cfg", INSTRUMENT.format(port=ports[0]), url=broker.url,
                           store=tmp_path / "gw.db")
    text = (cfg_dir / "gateway.yaml").read_text().replace("backoff_max_s: 0.5", "backoff_max_s: 60")
    (cfg_dir / "gateway.yaml").write_text(text)
    (server, _devices), = build_servers(load_config(cfg_dir)).values()
    await server.start()
    log = tmp_path / "gw.log"
    gw = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(cfg_dir), "--time-scale",
                           str(SCALE), "--time-origin", ORIGIN.isoformat()],
                          stdout=subprocess.DEVNULL, stderr=open(log, "ab"))  # noqa: SIM115

    def aggregates() -> dict[int, dict]:
        return {a["period_start"]: a for b in recorder.by_topic_suffix("/aggregates") for a in b["aggregates"]
                if a["point"] == "co2"}

    try:
        # Hours 0-2 normal; the analyzer's endpoint then refuses connections until hour 4 has closed.
        assert await wait_until(lambda: hour(2) in aggregates(), 40), log.read_text()[-3000:]
        await server.set_refuse(True)
        assert await wait_until(lambda: hour(4) in aggregates(), 30), log.read_text()[-3000:]
        await server.set_refuse(False)
        assert await wait_until(lambda: hour(6) in aggregates(), 40), log.read_text()[-3000:]
        assert await wait_until(lambda: any(s["status"] == "final" for b in recorder.by_topic_suffix("/substitutes")
                                            for s in b["substitutes"]), 10)
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(20)
        await server.stop()

    aggs = aggregates()
    for i in (0, 1, 2):
        assert aggs[hour(i)]["valid"], (i, aggs[hour(i)])
        assert aggs[hour(i)]["availability"] >= 0.8
    for i in (3, 4):
        assert not aggs[hour(i)]["valid"], (i, aggs[hour(i)])
        assert aggs[hour(i)]["availability"] < 0.8
        assert aggs[hour(i)]["possible"] == 60
    invalid = sorted(h for h, a in aggs.items() if not a["valid"])
    gap_hours = {h // H for h in invalid}

    events = [e for b in recorder.by_topic_suffix("/events") for e in b["events"] if e["point"] == "co2"]
    opened = [e for e in events if e["type"] == "gap_open" and hour(3) <= e["start_ms"] < hour(4)]
    closed = [e for e in events if e["type"] == "gap_close" and hour(3) <= e["start_ms"] < hour(4)]
    assert len(opened) == 1, events
    assert opened[0]["cause"] == "communication_loss"
    assert len(closed) == 1, events
    assert hour(4) < closed[0]["end_ms"] < hour(6)

    subs = [s for b in recorder.by_topic_suffix("/substitutes") for s in b["substitutes"] if s["point"] == "co2"]
    provisional = {s["record_id"]: s for s in subs if s["status"] == "provisional"}
    final = [s for s in subs if s["status"] == "final"]
    assert provisional, "no provisional substitute while the gap was open"
    assert {s["hour"] for s in final} == gap_hours
    for f in final:
        assert f["supersedes"] in provisional  # the provisional version it replaces was published too
        assert provisional[f["supersedes"]]["hour"] == f["hour"]
        assert f["value"] >= (aggs[hour(2)]["mean"] + aggs[min(h for h in aggs if h > hour(4) and aggs[h]["valid"])]
                              ["mean"]) / 2 - 1e-9  # high direction: never below the HB/HA average
        assert f["trace"]["citation"]
        assert f["trace"]["method_code"]

    # Every payload matches its published JSON Schema.
    schemas = Path(__file__).resolve().parents[2] / "docs" / "schema"
    for kind in ("aggregates", "substitutes", "events"):
        validator = Draft202012Validator(json.loads((schemas / f"{kind}.schema.json").read_text()))
        for body in recorder.by_topic_suffix(f"/{kind}"):
            validator.validate(body)
    # Every stream of derived records is itself gapless per instrument.
    for suffix in ("/aggregates", "/substitutes", "/events"):
        assert seqs_without_holes(dedup_by_seq(recorder.by_topic_suffix(suffix)), "CEMS-01"), suffix
    assert "Traceback" not in log.read_text()
