"""The running gateway applies HJ 75 per quarter and re-issues at the quarter close (issue 10 items 1 and 8).

Hourly readings through a rules stage (no I/O, synthetic time) over Q3 2026 (China Standard Time): the same
figures as the pure test tests/unit/rules/test_rules_quarter_close.py, scaled to the analyzer's range.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.model import Calibration, Derived, Quality, Reading
from gateway.registry import load_config
from gateway.rules.quarters import quarter_of
from gateway.rules_stage import RulesStage
from tests.helpers import write_config

H = 3_600_000
Q3 = int((datetime(2026, 7, 1, tzinfo=UTC) - timedelta(hours=8)).timestamp()) // 3600  # 2026-07-01 00:00 CST
Q3_END = quarter_of(Q3, 8)[1]
GAP = range(Q3 + 100, Q3 + 105)  # N = 5
SPECIAL = {Q3 + 93: 7.0, Q3 + 97: 4.1, Q3 + 98: 4.2, Q3 + 99: 4.0}

CONFIG = """\
instruments:
  - id: CEMS-01
    name: stack CEMS
    kind: gas_analyzer
    measuring_range: {min: 0, max: 25, unit: "%vol"}
    profile: cems_generic
    only_points: [co2]
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15022, unit_id: 1}
    poll_interval_s: 3600
    points:
      - name: co2
        feeds_emissions: true
        direction: high
        missing_data: {selector: hj75_tiered, default_value: 12.0, window_short: 3, window_long: 5,
                       window_low_alpha: 7}
"""


def test_the_quarter_close_reissues_the_gap_with_the_closed_quarters_alpha(tmp_path: Path) -> None:
    """At the gap's close (Q3+105) alpha so far = 101/106 = 95.28 % -> max of 3 valid hours before = 4.2.
    Later, every fifth hour of Q3+200..2199 is invalid (400 hours): the closed quarter's alpha is
    (2208 - 405)/2208 = 81.66 % -> max of 7 valid hours before the outage (Q3+93..99, holding 7.0) = 7.0, a new
    version superseding the 4.2 one, published when the quarter's hours are complete."""
    spec = load_config(write_config(tmp_path, CONFIG)).instruments[0]
    stage = RulesStage([spec], now_ms=Q3 * H)
    derived: list[Derived] = []
    for h in range(Q3, Q3_END + 10):
        i = h - Q3
        bad = h in GAP or (200 <= i < 2200 and i % 5 == 0)
        value = None if bad else SPECIAL.get(h, 3.0 + (i % 7) / 100)  # varied: a constant reads as frozen
        reading = Reading("CEMS-01", "co2", h * H + 60_000, value, "%vol", Quality.BAD if bad else Quality.GOOD,
                          "no_communication" if bad else "", Calibration.VALID)
        _, d = stage.process([reading])
        derived += d
    subs = [d.body for d in derived if d.kind == "substitutes" and d.body["hour"] in GAP]
    newest = {}
    for body in subs:
        if body["hour"] not in newest or body["version"] > newest[body["hour"]]["version"]:
            newest[body["hour"]] = body
    assert sorted(newest) == list(GAP)
    assert {b["value"] for b in newest.values()} == {7.0}
    assert {b["status"] for b in newest.values()} == {"final"}
    assert all(b["trace"]["alpha"]["quarter_closed"] for b in newest.values())
    by_id = {b["record_id"]: b for b in subs}
    assert {by_id[b["supersedes"]]["value"] for b in newest.values()} == {4.2}
