"""Hourly carbon records: both methods, substitution followed and re-issued, never a silent gap."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.derived.carbon import CarbonStage
from gateway.model import Derived
from gateway.registry import load_config
from tests.helpers import write_config
from tests.unit.derived.test_derived_config import CEMS

CARBON = """\
constants:
  ncv_gas: {unit: GJ/m3, values: [{value: 0.0389, source: "lab report L-1"}]}
  cc_gas: {unit: t/GJ, values: [{value: 0.01532, source: "CN guideline default"}]}
  of_gas: {unit: "1", values: [{value: 0.99, source: "CN guideline default"}]}
sources:
  - id: boiler1
    methods:
      - name: cems
        kind: measurement
        inputs: {co2: CEMS-01.co2, q: CEMS-01.flue_gas_flow}
        formula: co2_mass_rate(co2, q)
      - name: fuel
        kind: calculation
        unit: t
        inputs: {gas: FT-01.totalizer_1}
        formula: fuel_co2(gas, ncv_gas, cc_gas, of_gas)
"""
H = 1_790_000_000_000 - 1_790_000_000_000 % 3_600_000  # an hour start
HOUR = 3_600_000


@pytest.fixture
def stage(tmp_path: Path) -> CarbonStage:
    d = write_config(tmp_path / "cfg", CEMS % "co2_mass_rate(co2, q)")
    (d / "carbon.yaml").write_text(textwrap.dedent(CARBON))
    return CarbonStage(load_config(d).derived)


def agg(inst: str, point: str, start: int, mean: float | None, unit: str) -> Derived:
    return Derived("aggregates", inst, point, start, {"point": point, "unit": unit, "period_start": start,
                                                       "period_end": start + HOUR, "valid": mean is not None,
                                                       "mean": mean, "totalizer": False, "valid_count": 3600,
                                                       "possible": 3600})


def total(start: int, consumption: float) -> Derived:
    return Derived("aggregates", "FT-01", "totalizer_1", start, {"point": "totalizer_1", "unit": "m3",
                                                                  "period_start": start, "totalizer": True,
                                                                  "consumption": consumption, "valid": True})


def sub(start: int, value: float, status: str, version: int, rid: str) -> Derived:
    return Derived("substitutes", "CEMS-01", "co2", start, {
        "record_id": rid, "instrument": "CEMS-01", "point": "co2", "value": value, "status": status,
        "version": version, "unit": "%vol", "hour_start": start, "trace": {"method_code": "part75_tier"}})


def test_both_methods_and_their_difference(stage: CarbonStage) -> None:
    out = stage.feed([agg("CEMS-01", "co2", H, 10.0, "%vol"), agg("CEMS-01", "flue_gas_flow", H, 200_000.0, "Nm3/h"),
                      total(H, 1_000.0)], now_ms=H + HOUR + 5_000)
    (rec,) = out
    b = rec.body
    assert (rec.kind, rec.instrument, rec.ts_ms) == ("carbon", "boiler1", H)
    # measurement: 10 % / 100 x 200 000 Nm3/h x 1.963463 kg/Nm3 = 39 269.26 kg/h, x 1 h = 39 269.26 kg
    assert b["methods"]["cems"]["co2_kg"] == pytest.approx(39_269.26, abs=0.01)
    # calculation: 1 000 m3 x 0.0389 GJ/m3 = 38.9 GJ; x 0.01532 tC/GJ = 0.595948 tC; x 0.99 = 0.58998852 tC;
    # x 44/12 = 2.163291 t = 2 163.291 kg
    assert b["methods"]["fuel"]["co2_kg"] == pytest.approx(2_163.291, abs=1e-3)
    assert b["difference"]["measurement_minus_calculation_kg"] == pytest.approx(39_269.26 - 2_163.291, abs=0.01)
    assert (b["version"], b["supersedes"], b["status"], b["quality"]) == (1, None, "final", "measured")
    # the trace: formula, inputs with their records, constants with their sources
    fuel = b["methods"]["fuel"]
    assert fuel["formula"] == "fuel_co2(gas, ncv_gas, cc_gas, of_gas)"
    assert fuel["inputs"][0]["basis"] == "consumption"
    assert {c["name"]: c["source"] for c in fuel["constants"]}["ncv_gas"] == "lab report L-1"


def test_nothing_is_issued_until_every_method_can_be_computed(stage: CarbonStage) -> None:
    assert stage.feed([agg("CEMS-01", "co2", H, 10.0, "%vol")], now_ms=H + HOUR) == []
    assert stage.feed([agg("CEMS-01", "flue_gas_flow", H, 1.0, "Nm3/h")], now_ms=H + HOUR) == []
    (rec,) = stage.feed([total(H, 1.0)], now_ms=H + HOUR)
    assert rec.body["quality"] == "measured"


def test_an_input_that_never_comes_is_reported_as_missing_after_the_settle_time(
        stage: CarbonStage, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="gateway.derived")
    stage.feed([agg("CEMS-01", "co2", H, 10.0, "%vol"), agg("CEMS-01", "flue_gas_flow", H, 1.0, "Nm3/h")],
               now_ms=H + HOUR)
    (rec,) = stage.feed([], now_ms=H + 3 * HOUR)
    assert rec.body["quality"] == "incomplete"
    assert rec.body["status"] == "provisional"
    assert rec.body["methods"]["fuel"]["co2_kg"] is None
    assert rec.body["methods"]["fuel"]["missing"] == ["FT-01.totalizer_1"]
    assert rec.body["methods"]["cems"]["co2_kg"] is not None
    # loud: one WARNING when issued incomplete, counted for the status topic, one INFO when completed
    (warning,) = [m for m in caplog.messages if "incomplete" in m]
    assert "FT-01.totalizer_1" in warning
    assert stage.incomplete == {("boiler1", H)}
    (late,) = stage.feed([total(H, 1.0)], now_ms=H + 3 * HOUR)
    assert late.body["quality"] == "measured"
    assert late.body["version"] == 2
    assert stage.incomplete == set()
    assert [m for m in caplog.messages if "complete (version 2)" in m]


def test_a_substituted_input_makes_the_result_substituted_and_is_reissued_when_final(stage: CarbonStage) -> None:
    base = [agg("CEMS-01", "flue_gas_flow", H, 200_000.0, "Nm3/h"), total(H, 1_000.0)]
    # the CEMS co2 hour is invalid: its aggregate alone issues nothing; the provisional substitute does
    assert stage.feed([*base, agg("CEMS-01", "co2", H, None, "%vol")], now_ms=H + HOUR) == []
    (v1,) = stage.feed([sub(H, 12.0, "provisional", 1, "sub-a")], now_ms=H + HOUR)
    m = v1.body["methods"]["cems"]
    assert m["quality"] == "substituted"
    assert m["inputs"][0]["record"]["record_id"] == "sub-a"
    assert (v1.body["status"], v1.body["quality"]) == ("provisional", "substituted")
    # 12 % x 200 000 x 1.963463 / 100 = 47 123.11 kg
    assert m["co2_kg"] == pytest.approx(47_123.11, abs=0.01)
    # the gap closes: the final substitute (15 %, higher) supersedes the provisional one -> version 2
    (v2,) = stage.feed([sub(H, 15.0, "final", 2, "sub-b")], now_ms=H + 2 * HOUR)
    assert v2.body["version"] == 2
    assert v2.body["supersedes"] == v1.body["record_id"]
    assert v2.body["status"] == "final"
    assert v2.body["methods"]["cems"]["co2_kg"] == pytest.approx(47_123.11 * 15 / 12, abs=0.01)
    assert v2.body["methods"]["cems"]["inputs"][0]["record"]["record_id"] == "sub-b"
    # the same values again: no new version
    assert stage.feed([sub(H, 15.0, "final", 2, "sub-b")], now_ms=H + 2 * HOUR) == []


def test_a_constant_not_valid_at_the_hour_is_named(tmp_path: Path) -> None:
    d = write_config(tmp_path / "cfg", CEMS % "co2_mass_rate(co2, q)")
    (d / "carbon.yaml").write_text(textwrap.dedent(CARBON).replace(
        'values: [{value: 0.0389, source: "lab report L-1"}]',
        'values: [{value: 0.0389, source: "lab report L-1", valid_to: 2020-01-31}]'))
    stage = CarbonStage(load_config(d).derived)
    stage.feed([agg("CEMS-01", "co2", H, 10.0, "%vol"), agg("CEMS-01", "flue_gas_flow", H, 1.0, "Nm3/h"),
                total(H, 5.0)], now_ms=H + HOUR)
    (rec,) = stage.feed([], now_ms=H + 3 * HOUR)
    assert rec.body["methods"]["fuel"]["missing"] == ["constant ncv_gas (no value valid at this hour)"]


def test_a_correction_recomputes_the_hour_as_a_new_version(tmp_path: Path) -> None:
    from gateway.derived.carbon import restore_carbon
    from gateway.derived.corrected import corrected_hours
    from gateway.model import Calibration, Quality, Reading
    from gateway.store import Store

    d = write_config(tmp_path / "cfg", (CEMS % "co2_mass_rate(co2, q)").replace("poll_interval_s: 1",
                                                                                 "poll_interval_s: 60"))
    (d / "carbon.yaml").write_text(textwrap.dedent(CARBON))
    cfg = load_config(d)
    stage = CarbonStage(cfg.derived)
    store = Store(tmp_path / "gw.db", synchronous="normal", config_version=cfg.version)
    try:
        # 60 CO2 readings of 10 %vol in the hour (one a minute), stored as the gateway stores them
        readings = [Reading("CEMS-01", "co2", H + i * 60_000, 10.0, "%vol", Quality.GOOD, "", Calibration.VALID)
                    for i in range(60)]
        store.commit(readings, now_ms=H + HOUR, per_message=100)
        hourly = [agg("CEMS-01", "co2", H, 10.0, "%vol"), agg("CEMS-01", "flue_gas_flow", H, 200_000.0, "Nm3/h"),
                  total(H, 1_000.0)]
        (v1,) = stage.feed(hourly, now_ms=H + HOUR)
        store.commit([], now_ms=H + HOUR, per_message=100, derived=[*hourly, v1])
        # a technician corrects the reading at minute 7 from 10 to 70 %vol (a mis-scaled value, say):
        # the hour's mean becomes (59 x 10 + 70) / 60 = 660 / 60 = 11 %vol
        corr = Derived("corrections", "CEMS-01", "co2", H + 7 * 60_000, {
            "type": "correction", "instrument": "CEMS-01", "point": "co2", "ts": H + 7 * 60_000, "value": 70.0,
            "reason": "mis-scaled", "author": "tech-7", "received": H + 2 * HOUR, "supersedes_reading_id": 8})
        hours = corrected_hours([corr], cfg.instruments, store, stage.watch)
        (hour,) = hours
        assert hour.body["mean"] == pytest.approx(11.0)
        (v2,) = stage.feed(hours, now_ms=H + 2 * HOUR)
        cems = v2.body["methods"]["cems"]
        assert v2.body["version"] == 2
        assert v2.body["supersedes"] == v1.body["record_id"]
        assert cems["inputs"][0]["basis"] == "corrected_mean"
        assert cems["inputs"][0]["record"]["corrections"][0]["author"] == "tech-7"
        # CO2: 11 % x 200 000 Nm3/h x 1.963463 / 100 = 43 196.19 kg (was 39 269.26 at 10 %)
        assert cems["co2_kg"] == pytest.approx(43_196.19, abs=0.01)
        store.commit([], now_ms=H + 2 * HOUR, per_message=100, derived=[corr, v2])
        # after a restart the stage is rebuilt with the correction: the same inputs give no new version
        again = restore_carbon(cfg.derived, store, H + 2 * HOUR, cfg.instruments)
        assert again.feed([total(H, 1_000.0)], now_ms=H + 2 * HOUR) == []
    finally:
        store.close()
