"""Overload and wall-clock steps in the rules stage: late polls and stepped clocks are not meter gaps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from gateway.clock import FakeClock
from gateway.instruments import InstrumentSpec
from gateway.model import Calibration, Quality, Reading
from gateway.registry import load_config
from gateway.rules_stage import RulesStage
from gateway.store import Derived
from tests.helpers import write_config

H = 3_600_000
MIN = 60_000
DAY = 24 * H
T0 = 490_000 * H

PLANT = """\
instruments:
  - id: CEMS-01
    name: stack CEMS
    kind: gas_analyzer
    measuring_range: {min: 0, max: 25, unit: "%vol"}
    profile: cems_generic
    only_points: [co2, o2, moisture, co2_total]
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15022, unit_id: 1}
    poll_interval_s: 60
    points:
      - name: co2
        feeds_emissions: true
        direction: high
        missing_data: {selector: part75_tiered, kind: conc, max_potential: 15.0,
                       citation: "40 CFR 75.33(b) via 75.35(d)"}
  - id: CEMS-02
    name: second stack
    kind: gas_analyzer
    measuring_range: {min: 0, max: 25, unit: "%vol"}
    profile: cems_generic
    only_points: [co2, o2, moisture]
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15023, unit_id: 1}
    poll_interval_s: 60
"""
EVENT_SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "schema" / "events.schema.json").read_text())
EVENT = Draft202012Validator(EVENT_SCHEMA["properties"]["events"]["items"])
POINTS = {"CEMS-01": ("co2", "o2", "moisture"), "CEMS-02": ("co2", "o2", "moisture")}


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> list[InstrumentSpec]:
    return load_config(write_config(tmp_path_factory.mktemp("cfg"), PLANT)).instruments


def poll(instrument: str, ts: int, minute: int) -> list[Reading]:
    out = [Reading(instrument, p, ts, 5.0 + (minute % 5) * 0.1 + i, "%vol", Quality.GOOD, "", Calibration.VALID)
           for i, p in enumerate(POINTS[instrument])]
    if instrument == "CEMS-01":
        out.append(Reading(instrument, "co2_total", ts, 1000.0 + minute, "t", Quality.GOOD, "", Calibration.VALID))
    return out


def events(derived: list[Derived], **match: object) -> list[dict]:
    for d in derived:
        if d.kind == "events":
            EVENT.validate(d.body)  # every event as published matches the documented schema
    return [d.body for d in derived if d.kind == "events" and all(d.body.get(k) == v for k, v in match.items())]


def aggregates(derived: list[Derived], instrument: str, point: str) -> dict[int, dict]:
    return {d.body["period_start"]: d.body for d in derived
            if d.kind == "aggregates" and d.instrument == instrument and d.point == point}


class Plant:
    """A writer loop in miniature: polls queued with their timestamps, processed, then a tick."""

    def __init__(self, specs: list[InstrumentSpec], clock: FakeClock) -> None:
        self.clock = clock
        self.stage = RulesStage(specs, now_ms=clock.wall_ms())
        self.derived: list[Derived] = []
        self.stored: list[Reading] = []

    def step(self, batch: list[Reading]) -> None:
        out, d = self.stage.process(batch)
        self.stored += out
        self.derived += d + self.stage.tick(self.clock.wall_ms())

    def minutes(self, n: int, *, late: dict[str, int] | None = None, silent: tuple[str, ...] = ()) -> None:
        """n minutes of polls once a minute; `late` delays an instrument's polls by that many minutes."""
        for _ in range(n):
            self.clock.advance(60)
            now = self.clock.wall_ms()
            m = (now - T0) // MIN
            batch = []
            for inst in POINTS:
                delay = (late or {}).get(inst, 0)
                if inst in silent or (delay and m % (delay + 1)):
                    continue  # a late poller: one poll every delay+1 minutes instead of every minute
                batch += poll(inst, now, m)
            self.step(batch)


def test_late_polls_under_overload_are_one_gap_per_instrument_not_per_point(specs: list[InstrumentSpec]) -> None:
    plant = Plant(specs, FakeClock(T0))
    plant.minutes(10)
    plant.derived += plant.stage.set_overloaded(True, plant.clock.wall_ms())
    plant.minutes(40, late={"CEMS-01": 4, "CEMS-02": 4})  # polls five minutes apart: every one past its grace
    plant.derived += plant.stage.set_overloaded(False, plant.clock.wall_ms())
    plant.minutes(70)

    assert not events(plant.derived, cause="communication_loss")
    overload = events(plant.derived, cause="gateway_overload")
    assert [(e["instrument"], e["type"]) for e in overload] == [
        ("CEMS-01", "gap_open"), ("CEMS-02", "gap_open"), ("CEMS-01", "gap_close"), ("CEMS-02", "gap_close")]
    assert all(e["point"] == "" for e in overload)  # the instrument as a whole
    # Hourly validity stays honest: the polls that never came lower the hour's availability.
    hour0 = aggregates(plant.derived, "CEMS-02", "o2")[T0]
    assert hour0["count"] == 10 + 8 + 9  # 10 on time, 8 late ones, the 9 after the overload
    assert hour0["valid"] is False
    assert hour0["availability"] == pytest.approx(27 / 60)
    assert aggregates(plant.derived, "CEMS-02", "o2")[T0 + H]["valid"] is True


def test_without_overload_the_same_late_polls_are_per_point_gaps(specs: list[InstrumentSpec]) -> None:
    plant = Plant(specs, FakeClock(T0))
    plant.minutes(10)
    plant.minutes(40, late={"CEMS-01": 4, "CEMS-02": 4})
    opened = events(plant.derived, cause="communication_loss", type="gap_open")
    assert len(opened) > 50  # 7 points x 8 late polls: the churn issue 8 measured


def test_a_meter_silent_through_the_overload_opens_its_own_gap_after_it(specs: list[InstrumentSpec]) -> None:
    plant = Plant(specs, FakeClock(T0))
    plant.minutes(10)
    plant.derived += plant.stage.set_overloaded(True, plant.clock.wall_ms())
    plant.minutes(20, silent=("CEMS-02",))
    end = plant.clock.wall_ms()
    plant.derived += plant.stage.set_overloaded(False, end)
    plant.minutes(10, silent=("CEMS-02",))
    assert len(events(plant.derived, cause="gateway_overload")) == 2  # CEMS-02 open and close only
    lost = events(plant.derived, cause="communication_loss", type="gap_open")
    assert {(e["instrument"], e["point"]) for e in lost} == {("CEMS-02", p) for p in POINTS["CEMS-02"]}
    assert all(e["start_ms"] == end for e in lost)  # silence counted from the end of the overload
    assert not events(plant.derived, instrument="CEMS-01", type="gap_open")


def test_overload_flapping_is_bounded_by_instruments_per_episode(specs: list[InstrumentSpec]) -> None:
    plant = Plant(specs, FakeClock(T0))
    for _ in range(5):
        plant.derived += plant.stage.set_overloaded(True, plant.clock.wall_ms())
        plant.derived += plant.stage.set_overloaded(True, plant.clock.wall_ms())  # repeated: no effect
        plant.minutes(12, late={"CEMS-01": 3, "CEMS-02": 3})
        plant.derived += plant.stage.set_overloaded(False, plant.clock.wall_ms())
        plant.minutes(3)
    assert len(events(plant.derived, cause="gateway_overload")) == 5 * 2 * 2
    assert not events(plant.derived, cause="communication_loss")


# -- clock steps ----------------------------------------------------------------------------------


def test_clock_stepped_forward_one_day_is_not_a_gap_nor_a_day_of_substitutes(specs: list[InstrumentSpec]) -> None:
    clock = FakeClock(T0)
    plant = Plant(specs, clock)
    plant.minutes(90)
    before = clock.wall_ms()
    queued = poll("CEMS-01", before + 30_000, 90)  # taken before the step, still queued after it
    clock._wall_ms += DAY  # the step: wall time only
    plant.derived += plant.stage.on_clock_step(DAY, clock.wall_ms())
    plant.step(queued)
    plant.minutes(150)

    assert not events(plant.derived, type="gap_open")
    steps = events(plant.derived, type="clock_step")
    assert [(e["instrument"], e["delta_ms"]) for e in steps] == [("CEMS-01", DAY), ("CEMS-02", DAY)]
    assert not [r for r in plant.stored if r.reason == "out_of_order" or r.quality is not Quality.GOOD]
    co2 = aggregates(plant.derived, "CEMS-01", "co2")
    # Hour 0 and the half hour 1 before the step, then the new timeline from the hour the step landed in
    # (half read too); nothing for the 23 skipped hours.
    new_hour = (before + DAY) // H * H
    assert sorted(co2) == [T0, T0 + H, new_hour, new_hour + H, new_hour + 2 * H]
    assert co2[T0 + H]["count"] == 31 + 1  # minutes 60..90 and the poll queued across the step
    subs = [d.body for d in plant.derived if d.kind == "substitutes" and d.point == "co2"]
    assert {s["hour"] for s in subs} <= {(T0 + H) // H, new_hour // H}  # the two half-read hours at most
    assert len(subs) <= 4  # provisional and final for those two hours, never the skipped day
    total = aggregates(plant.derived, "CEMS-01", "co2_total")
    assert not set(total) & {T0 + h * H for h in range(2, 24)}
    # The counter difference across the step is kept, in the new timeline: nothing lost, nothing doubled.
    settled_to = max(t["period_end"] for t in total.values())
    at_end = next(r.value for r in plant.stored if r.point == "co2_total" and r.ts_ms == settled_to)
    assert at_end is not None
    assert sum(t["consumption"] for t in total.values()) == pytest.approx(at_end - 1001.0)


def test_clock_stepped_back_one_hour_keeps_readings_good_and_hours_single(specs: list[InstrumentSpec]) -> None:
    clock = FakeClock(T0)
    plant = Plant(specs, clock)
    plant.minutes(80)
    clock._wall_ms -= H
    plant.derived += plant.stage.on_clock_step(-H, clock.wall_ms())
    plant.minutes(160)

    assert not events(plant.derived, type="gap_open")
    assert [e["delta_ms"] for e in events(plant.derived, type="clock_step")] == [-H, -H]
    assert not [r for r in plant.stored if r.quality is not Quality.GOOD]
    for inst, points in POINTS.items():
        for p in points:
            starts = [d.body["period_start"] for d in plant.derived
                      if d.kind == "aggregates" and d.instrument == inst and d.point == p]
            assert len(starts) == len(set(starts))  # no hour published twice
    co2 = aggregates(plant.derived, "CEMS-01", "co2")
    assert co2[T0 + H]["count"] == 60  # 20 minutes before the step, 40 after the repeated hour
    assert co2[T0 + H]["valid"] is True
    assert not [d for d in plant.derived if d.kind == "substitutes"]


def test_a_small_step_inside_the_hour_changes_nothing_but_the_record(specs: list[InstrumentSpec]) -> None:
    clock = FakeClock(T0)
    plant = Plant(specs, clock)
    plant.minutes(20)
    clock._wall_ms += 5_000
    plant.derived += plant.stage.on_clock_step(5_000, clock.wall_ms())
    plant.minutes(60)
    assert not events(plant.derived, type="gap_open")
    assert aggregates(plant.derived, "CEMS-01", "co2")[T0]["count"] == 59  # minutes 1..59
