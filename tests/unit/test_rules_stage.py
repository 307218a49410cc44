"""The rules engine in the runtime: readings in, derived records out (no I/O, synthetic time)."""

from __future__ import annotations

import pytest

from gateway.instruments import InstrumentSpec
from gateway.model import Calibration, Derived, Quality, Reading
from gateway.registry import load_config
from gateway.rules_stage import RulesStage
from tests.helpers import write_config

H = 3_600_000
T0 = 490_000 * H  # an hour boundary (2025-11-24T16:00Z)

INSTRUMENT = """\
instruments:
  - id: CEMS-01
    name: stack CEMS
    kind: gas_analyzer
    measuring_range: {min: 0, max: 25, unit: "%vol"}
    profile: cems_generic
    only_points: [co2, co2_total]
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15022, unit_id: 1}
    poll_interval_s: 60
    points:
      - name: co2
        feeds_emissions: true
        direction: high
        missing_data: {selector: part75_tiered, kind: conc, max_potential: 15.0,
                       citation: "40 CFR 75.33(b) via 75.35(d)"}
"""


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> InstrumentSpec:
    return load_config(write_config(tmp_path_factory.mktemp("cfg"), INSTRUMENT)).instruments[0]


def co2(ts: int, value: float | None, quality: Quality = Quality.GOOD, reason: str = "") -> Reading:
    return Reading("CEMS-01", "co2", ts, value, "%vol", quality, reason, Calibration.VALID)


def run_hours(stage: RulesStage, hours: list[str]) -> tuple[list[Reading], list[Derived]]:
    """One reading a minute; 'g' = good hour (value rises by hour), 'x' = communication lost."""
    stored: list[Reading] = []
    derived: list[Derived] = []
    for h, kind in enumerate(hours):
        batch = []
        for m in range(60):
            ts = T0 + h * H + m * 60_000
            if kind == "g":
                batch.append(co2(ts, 10.0 + h + (m % 3) * 0.1))
            else:
                batch.append(co2(ts, None, Quality.BAD, "no_communication"))
        out, d = stage.process(batch)
        stored += out
        derived += d
        derived += stage.tick(T0 + (h + 1) * H)
    out, d = stage.process([co2(T0 + len(hours) * H, 11.0)])  # the next hour's first reading closes the last
    return stored + out, derived + d


def kinds(derived: list[Derived], kind: str) -> list[dict]:
    return [d.body for d in derived if d.kind == kind]


def test_gap_provisional_then_final_substitutes_and_aggregates(spec: InstrumentSpec) -> None:
    stage = RulesStage([spec], now_ms=T0)
    stored, derived = run_hours(stage, ["g", "g", "g", "x", "x", "g", "g"])

    aggs = {a["period_start"]: a for a in kinds(derived, "aggregates") if a["point"] == "co2"}
    assert sorted(aggs) == [T0 + h * H for h in range(7)]
    for h in (0, 1, 2, 5, 6):
        assert aggs[T0 + h * H]["valid"] is True
        assert aggs[T0 + h * H]["availability"] == 1.0
        assert aggs[T0 + h * H]["possible"] == 60
    for h in (3, 4):
        assert aggs[T0 + h * H]["valid"] is False
        assert aggs[T0 + h * H]["availability"] == 0.0
        assert aggs[T0 + h * H]["mean"] is None

    events = [e for e in kinds(derived, "events") if e["point"] == "co2"]
    assert [e["type"] for e in events] == ["gap_open", "gap_close"]
    assert events[0]["cause"] == "communication_loss"
    assert events[1]["end_ms"] == T0 + 5 * H

    subs = [s for s in kinds(derived, "substitutes") if s["point"] == "co2"]
    gap_hours = {(T0 + 3 * H) // H, (T0 + 4 * H) // H}
    assert {s["hour"] for s in subs} == gap_hours
    provisional = [s for s in subs if s["status"] == "provisional"]
    final = [s for s in subs if s["status"] == "final"]
    assert provisional
    assert {s["hour"] for s in final} == gap_hours
    latest_provisional = {s["hour"]: s for s in provisional}  # later versions overwrite earlier ones
    for f in final:
        prior = latest_provisional[f["hour"]]
        assert f["supersedes"] == prior["record_id"]  # the final version supersedes, both stay
        assert f["version"] == prior["version"] + 1
        # PMA >= 95 % would be the norm, but over 5 QA hours of 7 the computed PMA is lower: whatever the
        # tier, a high-direction final substitute is never below the hour-before/hour-after average.
        hb, ha = aggs[T0 + 2 * H]["mean"], aggs[T0 + 5 * H]["mean"]
        assert f["value"] >= (hb + ha) / 2 - 1e-9
        assert f["trace"]["method_code"]
        assert f["hour_start"] == f["hour"] * H
    # Raw readings keep their values; only the judgement is added.
    assert len(stored) == 7 * 60 + 1
    assert all(r.value is None for r in stored if r.reason == "no_communication")


def test_validity_marks_out_of_range_and_keeps_value(spec: InstrumentSpec) -> None:
    stage = RulesStage([spec], now_ms=T0)
    out, _ = stage.process([co2(T0, 12.0), co2(T0 + 60_000, 31.0), co2(T0 + 120_000, -1.0)])
    assert [(r.value, r.quality) for r in out] == [(12.0, Quality.GOOD), (31.0, Quality.UNCERTAIN),
                                                   (-1.0, Quality.BAD)]
    assert out[1].reason == "over_range"  # measuring range 0..25 %vol from the registry
    assert out[2].reason == "physical_limit"  # concentrations cannot be negative


def test_gateway_down_opens_a_gap_at_start_up(spec: InstrumentSpec) -> None:
    last = {("CEMS-01", "co2"): (T0, T0)}
    stage = RulesStage([spec], now_ms=T0 + 2 * H, last_readings=last)
    _, derived = stage.process([])
    opened = [e for e in kinds(derived, "events") if e["point"] == "co2"]
    assert opened
    assert opened[0]["type"] == "gap_open"
    assert opened[0]["cause"] == "gateway_down"
    assert opened[0]["start_ms"] == T0


def test_rerun_is_deterministic(spec: InstrumentSpec) -> None:
    _, a = run_hours(RulesStage([spec], now_ms=T0), ["g", "g", "x", "g"])
    _, b = run_hours(RulesStage([spec], now_ms=T0), ["g", "g", "x", "g"])
    assert [(d.kind, d.body) for d in a] == [(d.kind, d.body) for d in b]


def test_totalizer_gap_is_recovered_from_the_counter(spec: InstrumentSpec) -> None:
    stage = RulesStage([spec], now_ms=T0)
    derived: list[Derived] = []

    def total(ts: int, v: float | None) -> Reading:
        q = Quality.GOOD if v is not None else Quality.BAD
        return Reading("CEMS-01", "co2_total", ts, v, "t", q, "" if v is not None else "timeout", Calibration.VALID)

    # 10 t/h; hours 1 and 2 have no good reading at all; the counter difference recovers them.
    for m in range(0, 4 * 60 + 1):
        ts = T0 + m * 60_000
        v = 1000.0 + 10.0 * m / 60 if not (60 <= m < 180) else None
        _, d = stage.process([total(ts, v)])
        derived += d
    periods = {a["period_start"]: a for a in kinds(derived, "aggregates") if a["point"] == "co2_total"}
    assert sorted(periods) == [T0, T0 + H, T0 + 2 * H, T0 + 3 * H]  # the reading at 4 h settles hour 3
    for start in periods:
        assert periods[start]["consumption"] == pytest.approx(10.0)
        assert periods[start]["totalizer"] is True
    assert periods[T0 + H]["recovered"] is True  # flagged recovered, not substituted
    assert not [s for s in kinds(derived, "substitutes") if s["point"] == "co2_total"]
