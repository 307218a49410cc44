"""Restart mid-period with a real store: the rules checkpoint plus the readings stored after it give the
same aggregates and substitutes as an uninterrupted run (issue 8: no reread of the open period)."""

from __future__ import annotations

import asyncio
import contextlib
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import rules_stage
from gateway.instruments import InstrumentSpec
from gateway.model import Calibration, Quality, Reading
from gateway.registry import load_config
from gateway.rules_stage import RulesStage, load_rules, load_rules_async
from gateway.store import Store
from tests.helpers import write_config
from tests.unit.test_rules_stage import INSTRUMENT

H = 3_600_000
MIN = 60_000
T0 = 490_000 * H
BATCH = 7  # minutes per commit: batches do not line up with hours


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> list[InstrumentSpec]:
    return load_config(write_config(tmp_path_factory.mktemp("cfg"), INSTRUMENT)).instruments


def plant(minutes: int) -> list[list[Reading]]:
    """co2 once a minute (hour 2 lost: a gap with substitutes) and its totalizer, in commit batches."""
    out: list[Reading] = []
    for m in range(minutes):
        ts = T0 + m * MIN
        if 120 <= m < 180:
            out.append(Reading("CEMS-01", "co2", ts, None, "%vol", Quality.BAD, "no_communication", Calibration.VALID))
        else:
            out.append(Reading("CEMS-01", "co2", ts, 10.0 + math.sin(m / 7), "%vol", Quality.GOOD, "",
                               Calibration.VALID))
        if m % 3:
            out.append(Reading("CEMS-01", "co2_total", ts, 5000.0 + 0.37 * m, "t", Quality.GOOD, "",
                               Calibration.VALID))
    return [[r for r in out if T0 + b * MIN <= r.ts_ms < T0 + (b + BATCH) * MIN]
            for b in range(0, minutes, BATCH)]


def run(stage: RulesStage, store: Store, batches: list[list[Reading]], first: int, *,
        checkpoint_every: int | None) -> None:
    for i in range(first, len(batches)):
        readings, derived = stage.process(batches[i])
        derived += stage.tick(T0 + (i + 1) * BATCH * MIN)
        cp = stage.checkpoint() if checkpoint_every and i % checkpoint_every == 0 else None
        store.commit(readings, now_ms=T0 + (i + 1) * BATCH * MIN, per_message=50, derived=derived, rules_state=cp)


def records(store: Store, kind: str) -> list[tuple[str, dict]]:
    out = []
    for point in ("co2", "co2_total"):
        out += [(point, b) for b in store.records(kind, "CEMS-01", point)]
    return out


@pytest.mark.parametrize("loader", ["sync", "async"])
@pytest.mark.parametrize(("checkpoint_every", "crash_after", "raw_tail"),
                         [(1, 20, False), (5, 23, False), (4, 26, True), (None, 22, False), (3, 17, True)])
def test_restart_mid_period_gives_identical_aggregates(specs: list[InstrumentSpec], tmp_path: Path,
                                                       checkpoint_every: int | None, crash_after: int,
                                                       raw_tail: bool, loader: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway resumes with load_rules_async (yielding to the loop at every step here): same result."""
    monkeypatch.setattr(rules_stage, "LOAD_YIELD_POINTS", 1)
    batches = plant(5 * 60 + 1)
    with contextlib.closing(Store(tmp_path / "straight.db")) as straight:
        run(load_rules(specs, straight, T0), straight, batches, 0, checkpoint_every=checkpoint_every)
        expected = {k: records(straight, k) for k in ("aggregates", "substitutes")}

    path = tmp_path / "crashed.db"
    with contextlib.closing(Store(path)) as store:
        run(load_rules(specs, store, T0), store, batches[:crash_after], 0, checkpoint_every=checkpoint_every)
        if raw_tail:  # a clean stop commits what was queued without the rules seeing it
            store.commit(batches[crash_after], now_ms=T0 + (crash_after + 1) * BATCH * MIN, per_message=50)
    # kill: the stage's memory is gone; only the store remains
    resume_at = crash_after + 1 if raw_tail else crash_after
    with contextlib.closing(Store(path)) as store:
        if checkpoint_every:
            assert store.rules_state()  # the restart below really starts from checkpoints
        now = T0 + resume_at * BATCH * MIN
        stage = load_rules(specs, store, now) if loader == "sync" else asyncio.run(load_rules_async(specs, store, now))
        run(stage, store, batches, resume_at, checkpoint_every=checkpoint_every)
        got = {k: records(store, k) for k in ("aggregates", "substitutes")}
    assert [p for p, _ in expected["aggregates"]].count("co2") == 5
    assert [p for p, _ in expected["aggregates"]].count("co2_total") == 4
    assert expected["substitutes"]
    assert got == expected


def test_checkpoint_is_committed_with_the_readings_and_refeeds_only_later_ones(specs: list[InstrumentSpec],
                                                                               tmp_path: Path) -> None:
    batches = plant(60)
    with contextlib.closing(Store(tmp_path / "s.db")) as store:
        stage = load_rules(specs, store, T0)
        run(stage, store, batches[:3], 0, checkpoint_every=1)
        state = store.rules_state()
        hwm = state[("CEMS-01", "co2")][0]
        assert hwm == store.stats().readings  # the last reading id of that very transaction
        run(stage, store, batches[3:4], 0, checkpoint_every=None)  # a commit without a checkpoint
        later = [r for _rid, r in store.readings_after(hwm)]
        assert later
        assert {r.ts_ms for r in later} == {r.ts_ms for r in batches[3]}


def test_checkpoints_go_round_robin_over_every_point_changed_or_not(specs: list[InstrumentSpec]) -> None:
    stage = RulesStage(specs, now_ms=T0)
    points = stage.points()
    assert len(points) == 2
    seen = [next(iter(stage.checkpoint(1))) for _ in range(4)]  # nothing was fed: silent points too
    assert seen == [*points, *points]
    assert set(stage.checkpoint()) == set(points)


def test_an_unusable_checkpoint_is_one_warning_and_the_store_is_the_fallback(
        specs: list[InstrumentSpec], caplog: pytest.LogCaptureFixture) -> None:
    stage = RulesStage(specs, now_ms=T0)
    stage.restore("CEMS-01", "co2", [{"period_start": T0 - H, "period_end": T0, "valid": True, "mean": 1.0}], [],
                  checkpoint='{"v": 1, "period_ms": 3600000, "validity": "garbage"}')
    stage.restore("CEMS-01", "co2_total", [], [], checkpoint="{not json")
    assert len([r for r in caplog.records if "checkpoint not usable" in r.getMessage()]) == 2
    _, derived = stage.process([Reading("CEMS-01", "co2", T0 + MIN, 10.0, "%vol", Quality.GOOD, "",
                                        Calibration.VALID)])
    assert not [d for d in derived if d.kind == "aggregates"]  # the stored hour is not closed again


def test_a_checkpoint_of_another_period_length_keeps_only_the_validity_state(specs: list[InstrumentSpec]) -> None:
    stage = RulesStage(specs, now_ms=T0)
    stage.process([Reading("CEMS-01", "co2", T0 + i * MIN, 10.0, "%vol", Quality.GOOD, "", Calibration.VALID)
                   for i in range(5)])
    text = stage.checkpoint()[("CEMS-01", "co2")].replace('"period_ms":3600000', '"period_ms":900000')
    fresh = RulesStage(specs, now_ms=T0)
    fresh.restore("CEMS-01", "co2", [], [], checkpoint=text)
    out, _ = fresh.process([Reading("CEMS-01", "co2", T0 + 2 * MIN, 10.0, "%vol", Quality.GOOD, "",
                                    Calibration.VALID)])
    assert out[0].reason == "out_of_order"  # validity state restored: 4 min was the last timestamp
    _, derived = fresh.process([Reading("CEMS-01", "co2", T0 + H + MIN, 10.0, "%vol", Quality.GOOD, "",
                                        Calibration.VALID)])
    # The old summary (5 readings) was dropped: the hour holds only the one reading fed after the restore.
    assert [(d.body["count"], d.body["valid_count"]) for d in derived if d.kind == "aggregates"] == [(1, 0)]


@given(st.integers(0, 50_000), st.lists(st.integers(0, 5_000), max_size=300))
def test_checkpoints_are_paced_by_time_whatever_the_commit_rate(n_points: int, gaps_ms: list[int]) -> None:
    """Every point once per CHECKPOINT_EVERY_MS: over any commits, the quotas add up to the points the
    elapsed time is worth (less than one point lost to rounding), never negative."""
    from gateway.rules_stage import CHECKPOINT_EVERY_MS, checkpoint_quota

    carry, total = 0.0, 0
    for gap in gaps_ms:
        n, carry = checkpoint_quota(n_points, gap, carry)
        assert n >= 0
        assert 0 <= carry < 1
        total += n
    due = n_points * sum(gaps_ms) / CHECKPOINT_EVERY_MS
    assert due - 1 - 1e-6 <= total <= due + 1e-6
