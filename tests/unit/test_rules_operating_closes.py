"""Issue 10 items 6, 7, 8: operating hours from a process signal, Part 75 load ranges from a load point, and
the MRR / Part 98 period closes, in the runtime rules stage (no I/O, synthetic time).

Expected values are worked out by hand in each test from the regulation's rule.
"""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import ConfigErrors
from gateway.instruments import InstrumentSpec
from gateway.model import Calibration, Derived, Quality, Reading
from gateway.periods import closes_between, period_of
from gateway.registry import load_config
from gateway.rules.operating import HourSignal, LoadBins, OperatingCondition, operating
from gateway.rules_stage import RulesStage
from tests.helpers import write_config

H = 3_600_000
T0 = int(datetime(2026, 12, 31, 18, tzinfo=UTC).timestamp() * 1000)  # hour 6 of the runs below is 2027-01-01

INSTRUMENT = """\
instruments:
  - id: CEMS-01
    name: stack CEMS
    kind: gas_analyzer
    measuring_range: {{min: 0, max: 25, unit: "%vol"}}
    profile: cems_generic
    only_points: [co2, o2, flue_gas_flow]
    connection: {{protocol: modbus_tcp, host: 127.0.0.1, port: 15022, unit_id: 1}}
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
        feeds_emissions: true
        direction: high
        operating: {{point: unit_load, above: 0}}
        missing_data: {{selector: mean_plus_2sigma, default_value: 15.0,
                       citation: "Reg. (EU) 2018/2066 Art. 45(3); monitoring plan C.4"}}
      - name: o2
        direction: high
        report_due_days: 0
        missing_data: {{selector: hour_before_after, default_value: 21.0}}
      - name: flue_gas_flow
        feeds_emissions: true
        direction: high
        operating: {{point: unit_load, above: 0}}
        load: {{point: unit_load, range: [0, 600]}}
        missing_data: {{selector: part75_tiered, kind: binned, max_potential: 900000.0,
                       citation: "40 CFR 75.33(c)"}}
{extra}"""


def load(tmp: object, extra: str = "") -> InstrumentSpec:
    return load_config(write_config(tmp, INSTRUMENT.format(extra=extra))).instruments[0]  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> InstrumentSpec:
    return load(tmp_path_factory.mktemp("cfg"))


Hour = dict[str, float | None]


def run(stage: RulesStage, hours: list[Hour], t0: int = T0) -> list[Derived]:
    """One reading a minute per point named in the hour; None is a bad reading (communication lost). Values
    wobble by -0.25, 0, +0.25 (exact in binary, so each hour's mean is exactly the value given) so that the
    frozen-value rule does not fire; the load stays as given (a signal, judged as read)."""
    derived: list[Derived] = []
    for h, points in enumerate(hours):
        batch = []
        for m in range(60):
            ts = t0 + h * H + m * 60_000
            for name, v in points.items():
                unit = {"unit_load": "MW", "flue_gas_flow": "Nm3/h"}.get(name, "%vol")
                if v is None:
                    batch.append(Reading("CEMS-01", name, ts, None, unit, Quality.BAD, "no_communication",
                                         Calibration.VALID))
                else:
                    wobble = 0.0 if name == "unit_load" else (m % 3 - 1) * 0.25
                    batch.append(Reading("CEMS-01", name, ts, v + wobble, unit, Quality.GOOD, "", Calibration.VALID))
        _, d = stage.process(batch)
        derived += d
        derived += stage.tick(t0 + (h + 1) * H)
    derived += stage.tick(t0 + len(hours) * H + 120_000)  # past the last period's end + one cadence
    return derived


def bodies(derived: list[Derived], kind: str, point: str) -> list[dict]:
    return [d.body for d in derived if d.kind == kind and d.point == point]


def latest(derived: list[Derived], point: str) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for s in bodies(derived, "substitutes", point):
        if s["hour"] not in out or s["version"] > out[s["hour"]]["version"]:
            out[s["hour"]] = s
    return out


# -- item 6: operating hours ------------------------------------------------------------------------------

def test_non_operating_hours_are_neither_gaps_nor_substituted(spec: InstrumentSpec) -> None:
    """Hours 3-4: the unit is off (load 0) and the CEMS reads nothing. 40 CFR 75.30(a): no substitution.
    Hours 2 and 5: the unit runs, the CEMS is lost: one gap of N = 2 operating hours (hours 3-4 neither
    break it nor count toward N), so PMA 100 % and N <= 24 give the load-range average (§75.33(c))."""
    stage = RulesStage([spec], now_ms=T0)
    flow = {0: 300_000.0, 1: 310_000.0, 6: 320_000.0}
    hours: list[Hour] = []
    for h in range(7):
        on = h not in (3, 4)
        f = flow.get(h)
        hours.append({"unit_load": 300.0 if on else 0.0, "flue_gas_flow": f if on else None})
    derived = run(stage, hours)
    aggs = {a["period_start"]: a for a in bodies(derived, "aggregates", "flue_gas_flow")}
    assert [aggs[T0 + h * H]["operating"] for h in range(7)] == [True, True, True, False, False, True, True]
    subs = latest(derived, "flue_gas_flow")
    base = T0 // H
    assert sorted(subs) == [base + 2, base + 5]  # never hours 3, 4
    final = subs[base + 2]
    assert final["status"] == "final"
    assert final["trace"]["n"] == 2
    assert final["trace"]["gap_start"] == base + 2
    assert final["trace"]["gap_end"] == base + 5
    # Load 300 MW of [0, 600] in ten equal ranges of 60 MW: 300 / 60 = 5 exactly, so range 6 (a boundary
    # goes to the higher range). Every hour is in range 6: the range average (MODC 11) of the lookback,
    # (300,000 + 310,000) / 2 = 305,000 Nm3/h.
    assert final["value"] == 305_000.0
    assert final["trace"]["method_code"] == "11"
    assert final["trace"]["load_bin"] == 6


def test_an_hour_without_a_good_signal_reading_counts_as_operating(spec: InstrumentSpec) -> None:
    """No good load reading in hour 2: operating unknown, taken as operating (the conservative side)."""
    stage = RulesStage([spec], now_ms=T0)
    hours: list[Hour] = [{"unit_load": 300.0, "flue_gas_flow": 300_000.0}, {"unit_load": 300.0,
                                                                          "flue_gas_flow": 300_000.0},
                         {"unit_load": None, "flue_gas_flow": None},
                         {"unit_load": 300.0, "flue_gas_flow": 300_000.0}]
    derived = run(stage, hours)
    subs = latest(derived, "flue_gas_flow")
    assert sorted(subs) == [T0 // H + 2]
    # Load unknown in a gap hour: the top range (10) is assumed; it has no data, and no higher range
    # exists, so the maximum potential flow applies (MODC 12): never understated.
    assert subs[T0 // H + 2]["trace"]["load_bin"] == 10
    assert subs[T0 // H + 2]["value"] == 900_000.0


# -- item 7: load ranges ------------------------------------------------------------------------------------

def test_load_point_puts_each_hour_in_its_part75_range(spec: InstrumentSpec) -> None:
    """Loads 150, 250, 270, 130 MW: ranges 3, 5, 5, 3 (60 MW each: 150/60 = 2.5 -> 3; 250/60 = 4.17 -> 5;
    270/60 = 4.5 -> 5; 130/60 = 2.17 -> 3). The gap hour runs at 260 MW (range 5): its substitute is the
    average of the range-5 hours only, (250,000 + 270,000) / 2 = 260,000; ignoring ranges would give
    (150,000 + 250,000 + 270,000 + 130,000) / 4 = 200,000 (too low)."""
    stage = RulesStage([spec], now_ms=T0)
    loads = [150.0, 250.0, 270.0, 130.0, 260.0, 200.0]
    flows: list[float | None] = [150_000.0, 250_000.0, 270_000.0, 130_000.0, None, 200_000.0]
    derived = run(stage, [{"unit_load": ld, "flue_gas_flow": f} for ld, f in zip(loads, flows, strict=True)])
    aggs = [a for a in bodies(derived, "aggregates", "flue_gas_flow")]
    assert [a["load_bin"] for a in aggs] == [3, 5, 5, 3, 5, 4]
    sub = latest(derived, "flue_gas_flow")[T0 // H + 4]
    assert sub["status"] == "final"
    assert sub["value"] == 260_000.0
    assert sub["trace"]["method_code"] == "11"
    assert sub["trace"]["load_bin"] == 5


@pytest.mark.parametrize(("load", "expected"), [(0, 1), (-5, 1), (59.999, 1), (60, 2), (299.9, 5), (300, 6),
                                                (599.99, 10), (600, 10), (900, 10)])
def test_load_bins_ten_equal_ranges(load: float, expected: int) -> None:
    """App. C §2: zero load is range 1, at or above the maximum range 10; a boundary goes up."""
    assert LoadBins(0, 600).bin_of(load) == expected


def test_load_bins_explicit_edges() -> None:
    bins = LoadBins(0, 600, bins=3, edges=(100.0, 400.0))
    assert [bins.bin_of(x) for x in (0, 99.9, 100, 399, 400, 700)] == [1, 1, 2, 2, 3, 3]


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), st.integers(min_value=2, max_value=20))
def test_load_bins_are_monotonic_and_in_range(x: float, n: int) -> None:
    bins = LoadBins(10.0, 610.0, bins=n)
    b = bins.bin_of(x)
    assert 1 <= b <= n
    assert bins.bin_of(math.nextafter(x, math.inf)) >= b


def test_operating_condition_bit_and_threshold() -> None:
    run_bit = OperatingCondition(bit=2)
    assert run_bit.met(4)
    assert not run_bit.met(3)
    assert OperatingCondition(bit=2, invert=True).met(3)
    assert OperatingCondition(above=0.5).met(0.6)
    assert not OperatingCondition(above=0.5).met(0.5)
    off = HourSignal()
    off.add(0.0, OperatingCondition(above=0))
    assert operating(None)
    assert operating(HourSignal())
    assert not operating(off)
    off.add(1.0, OperatingCondition(above=0))
    assert operating(off)  # any part of the hour (40 CFR 72.2 operating hour)


@pytest.mark.parametrize(("extra", "message"), [
    ("operating: {point: nope, above: 0}", "operating.point: unknown point 'nope'"),
    ("operating: {point: unit_load, above: 0, bit: 1}", "give exactly one of above"),
    ("load: {point: unit_load, range: [600, 0]}", "lowest < maximum"),
])
def test_signal_configuration_errors_name_file_and_line(tmp_path: object, extra: str, message: str) -> None:
    with pytest.raises(ConfigErrors) as err:
        load(tmp_path, f"      - name: moisture\n        {extra}\n")
    lines = [str(e) for e in err.value.errors]
    assert any(message in line and ".yaml:" in line for line in lines), lines


def test_binned_without_a_load_point_is_a_configuration_error(tmp_path: object) -> None:
    text = INSTRUMENT.format(extra="").replace("        load: {point: unit_load, range: [0, 600]}\n", "")
    with pytest.raises(ConfigErrors) as err:
        load_config(write_config(tmp_path, text))  # type: ignore[arg-type]
    assert any("kind binned needs the hour's load range" in str(e) for e in err.value.errors)


# -- item 8: period closes ----------------------------------------------------------------------------------

def test_periods_close_once_each_in_order() -> None:
    tz = ZoneInfo("Asia/Shanghai")
    q = period_of(int(datetime(2026, 12, 31, 23, tzinfo=tz).timestamp()) // 3600, "quarter", tz)
    assert q.label(tz) == "2026-Q4"
    assert q.end == int(datetime(2027, 1, 1, tzinfo=tz).timestamp()) // 3600
    hours = list(range(q.start + 5, q.end + 5))
    closed = [p for a, b in itertools.pairwise(hours) for p in closes_between(a, b, "quarter", tz)]
    assert closed == [q]
    # Due 24 hours after the month end: closed when hour end + 24 is reached, not before.
    m = period_of(q.end - 1, "month", tz)
    assert list(closes_between(m.end + 22, m.end + 23, "month", tz, due_hours=24)) == []
    assert list(closes_between(m.end + 23, m.end + 24, "month", tz, due_hours=24)) == [m]


def test_mrr_mean_plus_2sigma_is_provisional_until_the_reporting_year_closes(spec: InstrumentSpec) -> None:
    """Reg. (EU) 2018/2066 Art. 45(3), Annex VIII Eq. 4: C* = mean + 2 s over the reporting period.

    Hours 0-5 are 2026-12-31 18:00-23:00 UTC; hour 2 is missing. Hourly means 10.1, 11.1, 13.1, 14.1, 15.1
    (readings 10 + h + (m mod 3) x 0.1 average 10 + h + 0.1). Mean 63.5 / 5 = 12.7; squared deviations
    6.76 + 2.56 + 0.16 + 1.96 + 5.76 = 17.2; s^2 = 17.2 / 4 = 4.3; s = 2.07364414; C* = 12.7 + 2 s
    = 16.84728827. Before the year closes the value is provisional; the close of 2026 (when hour 6, the
    first hour of 2027, is done) issues it as final, a new version superseding the provisional one."""
    stage = RulesStage([spec], now_ms=T0)
    derived: list[Derived] = []
    for h in range(8):
        value = None if h == 2 else 10.0 + h
        batch = []
        for m in range(60):
            ts = T0 + h * H + m * 60_000
            batch.append(Reading("CEMS-01", "unit_load", ts, 300.0, "MW", Quality.GOOD, "", Calibration.VALID))
            if value is None:
                batch.append(Reading("CEMS-01", "co2", ts, None, "%vol", Quality.BAD, "no_communication",
                                     Calibration.VALID))
            else:
                batch.append(Reading("CEMS-01", "co2", ts, value + (m % 3) * 0.1, "%vol", Quality.GOOD, "",
                                     Calibration.VALID))
        derived += stage.process(batch)[1]
        derived += stage.tick(T0 + (h + 1) * H)
        if h == 5:
            before_close = list(derived)
    subs = bodies(before_close, "substitutes", "co2")
    assert subs
    assert all(s["status"] == "provisional" for s in subs)
    final = [s for s in bodies(derived, "substitutes", "co2") if s["status"] == "final"]
    assert len(final) == 1
    f = final[0]
    assert f["hour"] == T0 // H + 2
    assert f["value"] == pytest.approx(12.7 + 2 * math.sqrt(4.3), rel=1e-12)
    assert f["supersedes"] == subs[-1]["record_id"]
    assert f["trace"]["citation"].startswith("Reg. (EU) 2018/2066 Art. 45(3)")


def test_part98_open_gap_takes_the_before_value_when_the_report_is_due(spec: InstrumentSpec) -> None:
    """40 CFR 98.35(b)(1): no "after" value by the time the report is due: the "before" value.

    o2 reads 5.0 until hour 3 (2026-12-31 21:00); hours 4-7 are missing, across the month end (hour 6 is
    2027-01-01 00:00); hour 8 reads 7.0. report_due_days 0: December's report is due at its end, so hours
    4 and 5 get final versions with the "before" value 5.0 (method G3). When the gap closes in January,
    hours 6 and 7 get (5.0 + 7.0) / 2 = 6.0; hours 4 and 5 keep the reported 5.0 (not re-issued)."""
    stage = RulesStage([spec], now_ms=T0)
    hours: list[Hour] = [{"o2": 5.0} for _ in range(4)] + [{"o2": None} for _ in range(4)] + [{"o2": 7.0}]
    derived = run(stage, hours)
    subs = bodies(derived, "substitutes", "o2")
    base = T0 // H
    final = {s["hour"]: s for s in subs if s["status"] == "final"}
    assert sorted(final) == [base + 4, base + 5, base + 6, base + 7]
    assert [final[base + h]["value"] for h in (4, 5, 6, 7)] == [5.0, 5.0, 6.0, 6.0]
    assert final[base + 4]["trace"]["method_code"] == "G3"
    assert "98.35(b)(1)" in final[base + 4]["trace"]["citation"]
    assert sum(1 for s in subs if s["hour"] == base + 4 and s["status"] == "final") == 1



def test_a_close_is_neither_repeated_nor_skipped_across_restarts(spec: InstrumentSpec, tmp_path: Path) -> None:
    """The MRR close runs in the transaction of the hour that ends the year. Restarting from the store before
    that hour runs it once (after the restart); restarting after it never runs it again."""
    import contextlib

    from gateway.rules_stage import load_rules
    from gateway.store import Store

    def hour_batch(h: int) -> list[Reading]:
        out = []
        for m in range(60):
            ts = T0 + h * H + m * 60_000
            out.append(Reading("CEMS-01", "unit_load", ts, 300.0, "MW", Quality.GOOD, "", Calibration.VALID))
            if h == 2:
                out.append(Reading("CEMS-01", "co2", ts, None, "%vol", Quality.BAD, "no_communication",
                                   Calibration.VALID))
            else:
                out.append(Reading("CEMS-01", "co2", ts, 10.0 + h + (m % 3) * 0.1, "%vol", Quality.GOOD, "",
                                   Calibration.VALID))
        return out

    def run_hours(store: Store, stage: RulesStage, hours: range) -> None:
        for h in hours:
            readings, derived = stage.process(hour_batch(h))
            derived += stage.tick(T0 + (h + 1) * H)
            store.commit(readings, now_ms=T0 + (h + 1) * H, per_message=500, derived=derived,
                         rules_state=stage.checkpoint())

    def finals(store: Store) -> list[dict]:
        return [b for b in store.records("substitutes", "CEMS-01", "co2") if b["status"] == "final"]

    path = tmp_path / "gw.db"
    with contextlib.closing(Store(path)) as store:
        run_hours(store, RulesStage([spec], now_ms=T0), range(5))  # up to 2026-12-31 23:00, year still open
        assert finals(store) == []
    with contextlib.closing(Store(path)) as store:
        run_hours(store, load_rules([spec], store, T0 + 5 * H), range(5, 8))  # the year closes after restart
        assert len(finals(store)) == 1
    with contextlib.closing(Store(path)) as store:
        run_hours(store, load_rules([spec], store, T0 + 8 * H), range(8, 10))
        assert len(finals(store)) == 1  # not again


def test_a_signal_on_another_instrument_through_a_derived_point(tmp_path: Path) -> None:
    """The unit's load is read by the DCS, not the CEMS: a derived point of the CEMS (docs/derived.md) carries
    it, and is the operating signal. Hour 2: load 0, CEMS lost: not operating, not substituted."""
    text = """\
instruments:
  - id: DCS-01
    name: unit DCS
    kind: power_meter
    profile: eastron_sdm630
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15023, unit_id: 1}
    poll_interval_s: 60
    only_points: [total_active_power]
  - id: CEMS-01
    name: stack CEMS
    kind: gas_analyzer
    measuring_range: {min: 0, max: 25, unit: "%vol"}
    profile: cems_generic
    only_points: [co2]
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15022, unit_id: 1}
    poll_interval_s: 60
    points:
      - name: unit_load
        unit: kW
        formula: p
        inputs: {p: DCS-01.total_active_power}
      - name: co2
        feeds_emissions: true
        direction: high
        operating: {point: unit_load, above: 0}
        missing_data: {selector: part75_tiered, max_potential: 15.0}
"""
    cfg = load_config(write_config(tmp_path, text))
    stage = RulesStage(cfg.instruments, now_ms=T0)
    derived: list[Derived] = []
    for h in range(4):
        batch = []
        for m in range(60):
            ts = T0 + h * H + m * 60_000
            batch.append(Reading("CEMS-01", "unit_load", ts, 0.0 if h == 2 else 300_000.0 + m, "kW", Quality.GOOD,
                                 "", Calibration.VALID))
            batch.append(Reading("CEMS-01", "co2", ts, None if h == 2 else 11.0 + (m % 3) * 0.25, "%vol",
                                 Quality.BAD if h == 2 else Quality.GOOD, "no_communication" if h == 2 else "",
                                 Calibration.VALID))
        derived += stage.process(batch)[1]
        derived += stage.tick(T0 + (h + 1) * H)
    aggs = {a["period_start"]: a for a in bodies(derived, "aggregates", "co2")}
    assert aggs[T0 + 2 * H]["operating"] is False
    assert bodies(derived, "substitutes", "co2") == []
