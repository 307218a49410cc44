"""`carbon-gateway rules explain RECORD` (issue 10 item 10): a substitute's derivation, read back from a real
store the rules stage wrote, names its rule, clause, inputs with record ids, intermediate figures and result."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.instruments import InstrumentSpec
from gateway.model import Calibration, Quality, Reading
from gateway.registry import load_config
from gateway.rules_stage import RulesStage
from gateway.store import Store
from tests.helpers import write_config

H = 3_600_000
T0 = 490_000 * H

INSTRUMENT = """\
instruments:
  - id: CEMS-01
    name: stack CEMS
    kind: gas_analyzer
    measuring_range: {min: 0, max: 25, unit: "%vol"}
    profile: cems_generic
    only_points: [co2]
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15022, unit_id: 1}
    poll_interval_s: 60
    points:
      - name: co2
        feeds_emissions: true
        direction: high
        missing_data: {selector: part75_tiered, kind: conc, max_potential: 15.0, lookback_hours: 4,
                       citation: "monitoring plan 4.2"}
"""


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """Hours 0-29 good (10 + h % 5 + wobble), hours 30-55 lost (N = 26 > 24), hour 56 good: PMA 100 %,
    so §75.33(b)(1)(ii): the greater of P90 of the last 4 QA hours and HB/HA."""
    spec: InstrumentSpec = load_config(write_config(tmp_path / "cfg", INSTRUMENT)).instruments[0]
    stage = RulesStage([spec], now_ms=T0)
    path = tmp_path / "gw.db"
    with contextlib.closing(Store(path)) as store:
        for h in range(57):
            batch = []
            for m in range(60):
                ts = T0 + h * H + m * 60_000
                if 30 <= h <= 55:
                    batch.append(Reading("CEMS-01", "co2", ts, None, "%vol", Quality.BAD, "no_communication",
                                         Calibration.VALID))
                else:
                    batch.append(Reading("CEMS-01", "co2", ts, 10.0 + h % 5 + (m % 3 - 1) * 0.25, "%vol",
                                         Quality.GOOD, "", Calibration.VALID))
            readings, derived = stage.process(batch)
            derived += stage.tick(T0 + (h + 1) * H)
            store.commit(readings, now_ms=T0 + (h + 1) * H, per_message=500, derived=derived)
        _, derived = stage.process([Reading("CEMS-01", "co2", T0 + 57 * H, 11.0, "%vol", Quality.GOOD, "",
                                            Calibration.VALID)])
        store.commit([], now_ms=T0 + 58 * H, per_message=500, derived=derived)
    return path


def explain(path: Path, ref: str, capsys: pytest.CaptureFixture[str], fmt: str = "json") -> tuple[int, str]:
    code = main(["rules", "explain", ref, "--store", str(path), "--format", fmt])
    return code, capsys.readouterr().out


def final_substitute(path: Path) -> dict:
    import sqlite3

    db = sqlite3.connect(path)
    rows = [json.loads(b) for (b,) in db.execute("SELECT body FROM records WHERE kind = 'substitutes' ORDER BY id")]
    db.close()
    return next(r for r in rows if r["status"] == "final" and r["hour"] == T0 // H + 30)


def test_explain_a_final_percentile_substitute(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sub = final_substitute(store_path)
    code, out = explain(store_path, sub["record_id"], capsys)
    assert code == 0
    e = json.loads(out)
    # Rule and clause.
    assert e["rule"]["selector"] == "part75_tiered"
    assert e["rule"]["routine"] == "max(percentile_lookback(90), hour_before_after)"
    assert e["rule"]["citation"].startswith("40 CFR 75.33(b)(1)(ii)")
    # Inputs with record ids: HB is hour 29 (mean 10 + 29 % 5 = 14.0), HA hour 56 (10 + 56 % 5 = 11.0).
    assert e["inputs"]["hb"]["hour"] == T0 // H + 29
    assert e["inputs"]["hb"]["value"] == 14.0
    assert isinstance(e["inputs"]["hb"]["aggregate_record"], int)
    assert e["inputs"]["ha"]["value"] == 11.0
    lb = e["inputs"]["lookback"]
    # W = 4: the last four QA hours 26-29, values 11, 12, 13, 14; their four aggregate records.
    assert (lb["w"], lb["n"], lb["first_hour"], lb["last_hour"]) == (4, 4, T0 // H + 26, T0 // H + 29)
    assert lb["aggregates"] == 4
    assert lb["last_record"] == e["inputs"]["hb"]["aggregate_record"]
    # Figures: N = 26, PMA 100 %, P90 rank k = ceil(0.9 x 4) = 4 of n = 4 -> 14.0; HB/HA = (14 + 11) / 2
    # = 12.5; the greater is 14.0 (MODC 08).
    assert e["figures"]["gap"]["n"] == 26
    assert e["figures"]["pma"]["exact"] == "100/1"
    assert e["figures"]["statistics"]["k"] == 4
    assert e["figures"]["statistics"]["p90"] == 14.0
    assert e["figures"]["hbha"] == 12.5
    assert e["result"]["value"] == 14.0
    assert e["rule"]["method_code"] == "08"
    # It supersedes the provisional version (last good value, 14.0), which is found in the store too.
    assert e["supersedes"]["status"] == "provisional"
    assert isinstance(e["supersedes"]["record"], int)


def test_explain_text_and_an_aggregate(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sub = final_substitute(store_path)
    code, text = explain(store_path, sub["record_id"], capsys, "text")
    assert code == 0
    assert "citation: 40 CFR 75.33(b)(1)(ii)" in text
    assert "statistics.p90: 14.0" in text
    hb_record = json.loads(explain(store_path, sub["record_id"], capsys)[1])["inputs"]["hb"]["aggregate_record"]
    code, out = explain(store_path, str(hb_record), capsys)
    agg = json.loads(out)
    assert agg["kind"] == "aggregate"
    assert agg["inputs"]["readings"] == 60
    assert agg["inputs"]["good_readings"] == 60
    assert agg["result"]["mean"] == 14.0
    assert agg["rule"]["citation"].startswith("Reg. (EU) 2018/2066 Art. 44(2)")


def test_unknown_record_is_a_usage_error(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "explain", "sub-nope", "--store", str(store_path)]) == 2
