"""Issue 10 item 9 end to end: `carbon-gateway estimate` against a running gateway (accelerated plant clock,
real pymodbus simulator, private Mosquitto). The flow point's outage is first substituted with its configured
default; the estimate, queued by the command while the gateway runs, is published on the corrections stream
and re-issues those hours as new versions carrying it (method G5, its author, basis and method)."""

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
from tests.helpers import Recorder, write_config

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

H = 3_600_000
ORIGIN = datetime(2026, 11, 24, tzinfo=UTC)  # in the past: an estimate names hours already missing
ORIGIN_MS = int(ORIGIN.timestamp() * 1000)
SCALE = 1200

INSTRUMENT = """\
instruments:
  - id: CEMS-01
    name: stack CEMS
    kind: gas_analyzer
    measuring_range: {{min: 0, max: 25, unit: "%vol"}}
    profile: cems_generic
    only_points: [flue_gas_flow]
    connection: {{protocol: modbus_tcp, host: 127.0.0.1, port: {port}, unit_id: 1, timeout_s: 0.5}}
    poll_interval_s: 60
    points:
      - name: flue_gas_flow
        gap_after_s: 600
        feeds_emissions: true
        direction: high
        missing_data: {{selector: best_available_estimate, default_value: 400000.0,
                       citation: "monitoring plan C.5: energy balance"}}
"""


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


async def wait_until(predicate, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout_s / 0.05)):
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def test_estimate_reissues_the_outage_hours(tmp_path: Path, ports: tuple[int, int, int],
                                                   broker: PrivateBroker, recorder: Recorder) -> None:
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

    def subs() -> list[dict]:
        return [s for b in recorder.by_topic_suffix("/substitutes") for s in b["substitutes"]]

    def aggregates() -> dict[int, dict]:
        return {a["period_start"]: a for b in recorder.by_topic_suffix("/aggregates") for a in b["aggregates"]}

    try:
        assert await wait_until(lambda: ORIGIN_MS + 1 * H in aggregates(), 40), log.read_text()[-3000:]
        await server.set_refuse(True)
        assert await wait_until(lambda: ORIGIN_MS + 3 * H in aggregates(), 30), log.read_text()[-3000:]
        await server.set_refuse(False)
        assert await wait_until(lambda: any(s["status"] == "final" for s in subs()), 30), log.read_text()[-3000:]
        gap = sorted({s["hour"] for s in subs() if s["status"] == "final"})
        first, last = gap[0] * H, (gap[-1] + 1) * H
        est = subprocess.run([sys.executable, "-m", "gateway", "estimate", "--config", str(cfg_dir),
                              "--instrument", "CEMS-01", "--point", "flue_gas_flow", "--from", iso(first),
                              "--to", iso(last), "--value", "310000", "--author", "J. Li",
                              "--basis", "steam flow and heat rate", "--method", "energy balance, plan C.5"],
                             capture_output=True, text=True, timeout=60)
        assert est.returncode == 0, est.stderr
        assert await wait_until(lambda: sum(1 for s in subs() if s["trace"]["method_code"] == "G5") == len(gap),
                                30), log.read_text()[-3000:]
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(20)
        await server.stop()

    estimates = [c for b in recorder.by_topic_suffix("/corrections") for c in b["corrections"]]
    assert [(c["type"], c["ts"], c["hour_end"], c["author"]) for c in estimates] == [("estimate", first, last,
                                                                                       "J. Li")]
    by_hour: dict[int, list[dict]] = {}
    for s in subs():
        by_hour.setdefault(s["hour"], []).append(s)
    for h in gap:
        versions = sorted(by_hour[h], key=lambda s: s["version"])
        default, estimate = versions[-2], versions[-1]
        assert (default["status"], default["value"], default["trace"]["method_code"]) == ("final", 400000.0, "12")
        assert (estimate["status"], estimate["value"]) == ("final", 310000.0)
        assert estimate["supersedes"] == default["record_id"]
        assert estimate["trace"]["statistics"]["basis"] == "steam flow and heat rate"
        assert estimate["trace"]["statistics"]["estimate_id"] == estimates[0]["id"]
    schemas = Path(__file__).resolve().parents[2] / "docs" / "schema"
    for kind in ("corrections", "substitutes"):
        validator = Draft202012Validator(json.loads((schemas / f"{kind}.schema.json").read_text()))
        for body in recorder.by_topic_suffix(f"/{kind}"):
            validator.validate(body)
    assert "Traceback" not in log.read_text()
