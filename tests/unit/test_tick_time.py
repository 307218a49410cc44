"""Readings still queued hold the rules stage's clock back: a slow start is not a communication loss."""

from __future__ import annotations

import pytest

from gateway.app import tick_time
from gateway.instruments import InstrumentSpec
from gateway.model import Calibration, Quality, Reading
from gateway.queue import ReadingQueue
from gateway.registry import load_config
from gateway.rules_stage import RulesStage
from tests.helpers import write_config

T0 = 1_796_000_000_000

INSTRUMENT = """\
instruments:
  - id: PM-01
    name: power meter
    kind: power_meter
    profile: eastron_sdm630
    only_points: [voltage_l1]
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15022, unit_id: 1}
    poll_interval_s: 1
"""


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> InstrumentSpec:
    return load_config(write_config(tmp_path_factory.mktemp("cfg"), INSTRUMENT)).instruments[0]


def reading(ts: int) -> Reading:
    return Reading("PM-01", "voltage_l1", ts, 230.0, "V", Quality.GOOD, "", Calibration.VALID)


def gap_opens(derived: list) -> list:
    return [d for d in derived if d.kind == "events" and d.body["type"] == "gap_open"]


async def test_queued_readings_hold_the_tick_back(spec: InstrumentSpec) -> None:
    queue = ReadingQueue(1_000)
    assert queue.oldest_ts() is None
    await queue.put([reading(T0 + 1_000 * i) for i in range(30)])  # 30 s polled while the stage was built
    assert queue.oldest_ts() == T0
    now = T0 + 30_000

    held_back = RulesStage([spec], now_ms=T0)
    assert not gap_opens(held_back.tick(tick_time(now, queue.oldest_ts())))
    _stored, derived = held_back.process(queue.take(1_000))
    assert not gap_opens(derived + held_back.tick(tick_time(now, queue.oldest_ts())))

    # What the writer did before: ticking to the wall clock first opened a gap for a meter that answered.
    naive = RulesStage([spec], now_ms=T0)
    assert gap_opens(naive.tick(now))


def test_tick_time_never_runs_ahead_of_the_wall_clock() -> None:
    assert tick_time(T0, None) == T0
    assert tick_time(T0, T0 - 5) == T0 - 5
    assert tick_time(T0, T0 + 5) == T0  # a queued reading stamped after a clock step back
