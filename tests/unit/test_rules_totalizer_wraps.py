"""The runtime publishes a totalizer increment with ambiguous wraps as substituted, with its reason (issue 10
item 2): the meter's maximum flow comes from the point's max_flow_per_h."""

from __future__ import annotations

from pathlib import Path

from gateway.model import Calibration, Quality, Reading
from gateway.registry import load_config
from gateway.rules_stage import RulesStage
from tests.helpers import write_config

H = 3_600_000
T0 = 490_000 * H

CONFIG = """\
instruments:
  - id: CEMS-01
    name: stack CEMS
    kind: gas_analyzer
    measuring_range: {min: 0, max: 25, unit: "%vol"}
    profile: cems_generic
    only_points: [co2_total]
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15022, unit_id: 1}
    poll_interval_s: 60
    points:
      - name: co2_total
        rollover_at: 10000
        max_flow_per_h: 1500
"""


def test_a_12_hour_gap_with_two_possible_wrap_counts_is_published_substituted(tmp_path: Path) -> None:
    """Counter 1,000 -> 3,000 across 12 h, wrapping at 10,000: 2,000 or 12,000 (22,000 > 1,500 x 12 = 18,000).
    The point is high direction by default: 12,000, i.e. 1,000 in each of the 12 hours, flagged substituted."""
    spec = load_config(write_config(tmp_path, CONFIG)).instruments[0]
    stage = RulesStage([spec], now_ms=T0)

    def total(ts: int, v: float) -> Reading:
        return Reading("CEMS-01", "co2_total", ts, v, "t", Quality.GOOD, "", Calibration.VALID)

    _, first = stage.process([total(T0, 1_000.0)])
    _, derived = stage.process([total(T0 + 12 * H, 3_000.0)])
    periods = [d.body for d in first + derived if d.kind == "aggregates"]
    assert len(periods) == 12
    assert sum(p["consumption"] for p in periods) == 12_000
    assert all(p["substituted"] and not p["recovered"] for p in periods)
    assert all("ambiguous rollovers" in p["note"] for p in periods)
