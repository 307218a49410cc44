"""Tagging: reporting unit, NaN handling, NE 107 health bits and calibration status per reading."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.instruments import InstrumentSpec
from gateway.model import Calibration, Quality, RawSample
from gateway.registry import load_config
from gateway.tagging import tag
from tests.helpers import three_meters, write_config

TS = int(datetime(2026, 11, 20, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, InstrumentSpec]:
    d = write_config(tmp_path_factory.mktemp("cfg"), three_meters((15020, 15021, 15022)))
    return {s.id: s for s in load_config(d).instruments}


def test_values_are_converted_to_reporting_units(specs: dict[str, InstrumentSpec]) -> None:
    pm = specs["PM-01"]
    out = tag(pm, [RawSample("total_active_power", TS, 12_500.0), RawSample("total_import_active_energy", TS, 1500.0)])
    assert [(r.point, r.value, r.unit) for r in out] == [("total_active_power", 12.5, "kW"),
                                                           ("total_import_active_energy", 1.5, "MWh")]
    assert all(r.instrument == "PM-01" and r.quality is Quality.GOOD and r.ts_ms == TS for r in out)


def test_nan_and_inf_become_bad_with_null_value(specs: dict[str, InstrumentSpec]) -> None:
    out = tag(specs["PM-01"], [RawSample("voltage_l1", TS, math.nan), RawSample("total_active_power", TS, math.inf)])
    assert [(r.value, r.quality, r.reason) for r in out] == [(None, Quality.BAD, "nan")] * 2


def test_failed_samples_keep_their_reason(specs: dict[str, InstrumentSpec]) -> None:
    out = tag(specs["FT-01"], [RawSample("volume_flow", TS, None, Quality.BAD, "timeout")])
    assert (out[0].value, out[0].quality, out[0].reason) == (None, Quality.BAD, "timeout")


def cems_poll(status: int) -> list[RawSample]:
    return [RawSample("co2", TS, 12.0), RawSample("o2", TS, 6.0), RawSample("status_word", TS, float(status))]


@pytest.mark.parametrize(
    ("status", "quality", "reason"),
    [
        (0b00000, Quality.GOOD, ""),
        (0b00001, Quality.BAD, "fault"),
        (0b00010, Quality.BAD, "calibration"),
        (0b00100, Quality.BAD, "maintenance"),
        (0b01000, Quality.UNCERTAIN, "out_of_spec"),
        (0b10000, Quality.GOOD, "maintenance_required"),
        (0b01010, Quality.BAD, "calibration"),  # check function outranks out of specification
        (0b10011, Quality.BAD, "fault"),  # failure outranks everything
    ],
)
def test_health_bits_set_quality_but_keep_values(specs: dict[str, InstrumentSpec], status: int,
                                                  quality: Quality, reason: str) -> None:
    cems = specs["CEMS-01"]
    assert {r.point for r in cems.health} == {"status_word"}
    out = {r.point: r for r in tag(cems, cems_poll(status))}
    for point in ("co2", "o2"):
        assert out[point].value == pytest.approx(12.0 if point == "co2" else 6.0)  # kept, never dropped
        assert (out[point].quality, out[point].reason) == (quality, reason)
    assert out["status_word"].quality is Quality.GOOD  # the status word itself is a good reading


def test_calibration_status_is_computed_at_the_readings_own_time(specs: dict[str, InstrumentSpec]) -> None:
    cems = specs["CEMS-01"]  # last 2026-10-30, due 2026-12-05, window 30 days, UTC
    at = {d: int(datetime(*d, tzinfo=UTC).timestamp() * 1000) for d in [(2026, 10, 29), (2026, 11, 1),
                                                                         (2026, 11, 20), (2026, 12, 6)]}
    got = [tag(cems, [RawSample("co2", ts, 12.0)])[0].calibration for ts in at.values()]
    assert got == [Calibration.UNKNOWN, Calibration.VALID, Calibration.DUE_SOON, Calibration.EXPIRED]
    assert tag(specs["FT-01"], [RawSample("volume_flow", TS, 0.1)])[0].calibration is Calibration.UNKNOWN


def test_unknown_points_are_ignored(specs: dict[str, InstrumentSpec], tmp_path: Path) -> None:
    assert tag(specs["PM-01"], [RawSample("not_configured", TS, 1.0)]) == []


def reference_tag(spec: InstrumentSpec, samples: list[RawSample]) -> list[tuple[object, ...]]:
    """Tagging as written before the per-poll shortcuts: one calibration lookup per reading."""
    from gateway.tagging import _NE107_QUALITY, active_health

    health = active_health(spec.health, samples)
    health_points = {r.point for r in spec.health}
    out = []
    for s in samples:
        p = spec.point_index.get(s.point)
        if p is None:
            continue
        value, quality, reason = s.value, s.quality, s.reason
        if value is not None:
            if math.isnan(value) or math.isinf(value):
                value, quality, reason = None, Quality.BAD, "nan"
            else:
                value = value * p.conversion.factor + p.conversion.offset
        if health is not None and quality is not Quality.BAD and s.point not in health_points:
            hq = _NE107_QUALITY[health.category]
            if hq is Quality.BAD or (hq is Quality.UNCERTAIN and quality is Quality.GOOD):
                quality, reason = hq, health.reason
            elif not reason:
                reason = health.reason
        out.append((spec.id, s.point, s.ts_ms, value, p.unit, quality, reason, spec.calibration.status_at(s.ts_ms)))
    return out


DAY = 86_400_000


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_tag_matches_the_reading_by_reading_reference(specs: dict[str, InstrumentSpec], data: st.DataObject) -> None:
    spec = specs[data.draw(st.sampled_from(sorted(specs)))]
    names = [p.name for p in spec.points] + ["not_a_point"]
    ts0 = data.draw(st.sampled_from([TS, TS - 400 * DAY, TS + 700 * DAY, TS + 2000 * DAY]))
    samples = data.draw(st.lists(st.builds(
        RawSample, st.sampled_from(names), st.sampled_from([ts0, ts0, ts0 + 1, ts0 + 200 * DAY]),
        st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 1.0, 31.0, 8.0]),
        st.sampled_from(list(Quality)), st.sampled_from(["", "timeout"])), max_size=30))
    got = tag(spec, samples)
    assert [tuple(r) for r in got] == reference_tag(spec, samples) or \
        [str(tuple(r)) for r in got] == [str(r) for r in reference_tag(spec, samples)]  # NaN != NaN
    assert all(type(r).__name__ == "Reading" for r in got)


def test_a_non_finite_status_word_is_no_health_signal() -> None:
    """A status word read as NaN/Inf must not crash the poll: it is tagged bad/nan and signals nothing."""
    from gateway.instruments import HealthRule
    from gateway.registry_schema import NE107
    from gateway.tagging import active_health

    rule = HealthRule(point="status", bit=1, category=NE107.CHECK_FUNCTION, reason="calibration")
    for bad in (float("nan"), float("inf"), float("-inf")):
        assert active_health((rule,), [RawSample("status", 0, bad)]) is None
    assert active_health((rule,), [RawSample("status", 0, 2.0)]) is rule
