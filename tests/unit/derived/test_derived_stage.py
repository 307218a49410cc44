"""The live derived-point stage: time alignment, quality and calibration propagation, never a silent gap."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.derived.stage import REASON_INPUT_BAD, REASON_INPUT_MISSING, REASON_INPUT_STALE, DerivedStage
from gateway.model import Calibration, Quality, Reading
from gateway.registry import load_config
from tests.helpers import write_config
from tests.unit.derived.test_derived_config import CEMS


@pytest.fixture
def stage(tmp_path: Path) -> DerivedStage:
    formula = "if(good(h2o), co2_mass_rate(co2, dry_flow(q, h2o)), co2_mass_rate(co2, q))"
    cfg = load_config(write_config(tmp_path / "cfg", CEMS % formula))
    return DerivedStage(cfg.derived)


def r(point: str, ts: int, value: float | None, q: Quality = Quality.GOOD, cal: Calibration = Calibration.VALID,
      inst: str = "CEMS-01", unit: str = "%vol") -> Reading:
    return Reading(inst, point, ts, value, unit, q, "" if value is not None else "timeout", cal)


def poll(ts: int, co2: float | None = 12.0, flow: float = 100_000.0, h2o: float | None = 10.0,
         **kw: object) -> list[Reading]:
    # The flow meter's poll, then the CEMS poll with co2 (the trigger) first, as the driver delivers it.
    return [r("volume_flow", ts, 1.0, inst="FT-01"), r("co2", ts, co2, **kw),  # type: ignore[arg-type]
            r("flue_gas_flow", ts, flow), r("moisture", ts, h2o, Quality.GOOD if h2o is not None else Quality.BAD)]


def test_computed_from_aligned_inputs(stage: DerivedStage) -> None:
    (out,) = stage.process(poll(1_000))
    # 12 % x 100 000 Nm3/h x (1 - 0.10) x 1.963463 kg/Nm3 = 21 205.4 kg/h
    assert out.value == pytest.approx(21_205.4, abs=0.1)
    assert (out.instrument, out.point, out.unit, out.quality, out.ts_ms) == ("CEMS-01", "co2_rate", "kg/h",
                                                                            Quality.GOOD, 1_000)


def test_a_fallback_branch_for_a_bad_input_is_uncertain(stage: DerivedStage) -> None:
    (out,) = stage.process(poll(1_000, h2o=None))
    assert out.value == pytest.approx(23_561.5, abs=0.1)  # no moisture correction
    assert out.quality is Quality.UNCERTAIN


def test_worst_quality_and_calibration_of_the_inputs(stage: DerivedStage) -> None:
    (out,) = stage.process(poll(1_000, q=Quality.UNCERTAIN, cal=Calibration.EXPIRED))
    assert out.quality is Quality.UNCERTAIN
    assert out.calibration is Calibration.EXPIRED


def test_a_missing_input_gives_a_bad_reading_that_says_so(stage: DerivedStage) -> None:
    (out,) = stage.process([r("co2", 1_000, 12.0)])
    assert (out.value, out.quality, out.reason) == (None, Quality.BAD, REASON_INPUT_MISSING)


def test_inputs_outside_the_window_are_stale(stage: DerivedStage) -> None:
    stage.process(poll(1_000))
    (out,) = stage.process([r("co2", 1_000 + 3_001, 12.0)])  # window_s: 3 in the test config
    assert out.reason == REASON_INPUT_STALE
    assert out.value is None
    (inside,) = stage.process([r("co2", 1_000 + 3_000, 12.0)])
    assert inside.value is not None


def test_a_bad_input_the_formula_needs_gives_no_value(stage: DerivedStage) -> None:
    (out,) = stage.process(poll(1_000, co2=None, q=Quality.BAD))
    assert (out.value, out.quality, out.reason) == (None, Quality.BAD, REASON_INPUT_BAD)
    assert stage.failed == 1
    assert stage.computed == 0


def test_a_poll_uses_its_own_points_not_the_previous_polls(stage: DerivedStage) -> None:
    first, second = stage.process(poll(1_000, flow=100_000.0) + poll(2_000, flow=50_000.0))
    assert second.value == pytest.approx(first.value / 2)


def test_readings_of_other_points_are_ignored(stage: DerivedStage) -> None:
    assert stage.process([r("o2", 1, 3.0), r("volume_flow", 1, 2.0, inst="FT-01")]) == []


def test_a_derived_point_that_cannot_be_computed_is_loud_once_at_start_and_once_at_end(
        stage: DerivedStage, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="gateway.derived")
    stage.process([r("co2", 1_000, 12.0)])  # the flow has never been read
    stage.process([r("co2", 2_000, 12.0)])  # still failing: no second line
    assert stage.status()["failing"] == {"CEMS-01.co2_rate": REASON_INPUT_MISSING}
    starts = [m for m in caplog.messages if "cannot be computed" in m]
    assert len(starts) == 1
    assert "CEMS-01.co2_rate" in starts[0]
    assert REASON_INPUT_MISSING in starts[0]
    stage.process(poll(3_000))
    assert stage.status()["failing"] == {}
    assert [m for m in caplog.messages if "computed again" in m] == ["derived point CEMS-01.co2_rate is computed again"]
