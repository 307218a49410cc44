"""Time you can trust, and overload (in-process: the clock is injected, the loop can be made busy).

Clock: the wall clock is stepped a day forward, then an hour back, while the gateway polls real
simulators. Each step is one log line and `clock.last_step` on the status topic; readings taken just
after it carry reason `clock_stepped`; no `communication_loss` gap, no `out_of_order` reading, no
substitute comes of it.

Overload: the event loop is kept busy, so polls start late. One line when overload starts, one when it
ends, `overload.active` on the status topic, and no per-point `communication_loss` gap once it is known.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.clock import SteppableClock
from gateway.registry import load_config
from simulators.broker import PrivateBroker
from tests.helpers import Recorder, dedup_by_seq, seqs_without_holes, three_meters, write_config
from tests.system.conftest import (
    assert_delivered_equals_committed,
    assert_integrity_ok,
    assert_status_schema,
    committed,
    gap_events,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("no_leftover_tasks", "in_process_log")

DAY, HOUR = 86_400_000, 3_600_000
INSTRUMENTS = ("PM-01", "FT-01", "CEMS-01")


def statuses(recorder: Recorder) -> list[dict[str, Any]]:
    return [b for b in recorder.by_topic_suffix("/status") if b["state"] != "offline"]


def near(step: dict[str, Any] | None, delta_ms: int) -> bool:
    """A measured step: wall and monotonic clocks are read a few microseconds apart."""
    return step is not None and abs(step["delta_ms"] - delta_ms) < 100


async def stop(run: asyncio.Task[None]) -> None:
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)


async def test_clock_stepped_a_day_forward_and_an_hour_back(
        tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker, recorder: Recorder, meters,
        in_process_log: Path) -> None:
    db = tmp_path / "gw.db"
    cfg = load_config(write_config(tmp_path / "cfg", three_meters(ports, interval=0.2), url=broker.url, store=db,
                                   per_message=5))
    await meters(cfg)
    clock = SteppableClock()
    gw = Gateway(cfg, clock=clock)
    run = asyncio.create_task(gw.run())
    try:
        assert await wait_until(lambda: {b["instrument"] for b in recorder.readings()} >= set(INSTRUMENTS), 20)
        await asyncio.sleep(1.0)
        clock.step(DAY / 1000)
        assert await wait_until(lambda: any(near(b["clock"]["last_step"], DAY) for b in statuses(recorder)), 10)
        await asyncio.sleep(1.5)
        clock.step(-HOUR / 1000)
        assert await wait_until(lambda: any(near(b["clock"]["last_step"], -HOUR) for b in statuses(recorder)), 10)
        await asyncio.sleep(1.5)
        snapshot = committed(db)
        assert await wait_until(lambda: set(snapshot) <= set(dedup_by_seq(recorder.readings())), 20)
    finally:
        await stop(run)
    text = in_process_log.read_text()
    steps = [float(m) for m in re.findall(r"wall clock stepped ([-+][0-9.]+) s", text)]
    assert len(steps) == 2, steps  # one line per step
    assert abs(steps[0] - DAY / 1000) < 0.1
    assert abs(steps[1] + HOUR / 1000) < 0.1
    last = statuses(recorder)[-1]
    assert last["clock"]["steps"] == 2
    assert last["clock"]["synchronised"] in (True, False, "unknown")
    for body in statuses(recorder):
        assert_status_schema(body)
    # Neither step is a gap, a burst or disorder.
    events = gap_events(db)
    assert not [e for e in events if e.get("cause") == "communication_loss"], events
    with sqlite3.connect(db) as conn:
        reasons = dict(conn.execute("SELECT reason, COUNT(*) FROM readings GROUP BY reason").fetchall())
        substitutes = conn.execute("SELECT COUNT(*) FROM records WHERE kind='substitutes'").fetchone()[0]
        stepped = conn.execute("SELECT MIN(ts_ms), MAX(ts_ms) FROM readings WHERE reason='clock_stepped'").fetchone()
    assert "out_of_order" not in reasons
    assert reasons.get("clock_stepped", 0) > 0
    assert substitutes == 0
    now = int(time.time() * 1000)
    assert stepped[1] > now + DAY - 2 * HOUR  # marked readings on the new timeline
    assert {e["instrument"] for e in events if e.get("cause") == "clock_step"} == set(INSTRUMENTS)
    assert_delivered_equals_committed(db, recorder.readings)
    dedup = dedup_by_seq(recorder.readings())
    for inst in INSTRUMENTS:
        assert seqs_without_holes(dedup, inst), inst
    assert_integrity_ok(db)


async def test_overload_is_detected_reported_and_not_blamed_on_meters(
        tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker, recorder: Recorder, meters,
        in_process_log: Path) -> None:
    db = tmp_path / "gw.db"
    cfg = load_config(write_config(tmp_path / "cfg", three_meters(ports, interval=0.2), url=broker.url, store=db,
                                   per_message=5))
    await meters(cfg)
    gw = Gateway(cfg)
    run = asyncio.create_task(gw.run())

    async def hog(seconds: float) -> None:
        """Keep the event loop busy: what a slow commit, a GC storm or too many meters do."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            time.sleep(0.3)  # blocking on purpose
            await asyncio.sleep(0.02)

    try:
        assert await wait_until(lambda: {b["instrument"] for b in recorder.readings()} >= set(INSTRUMENTS), 20)
        await hog(4.0)
        assert gw.overload.active
        since = gw.overload.since_ms
        assert await wait_until(lambda: not gw.overload.active, 10)
        assert await wait_until(lambda: any(b["overload"]["active"] for b in statuses(recorder)), 5)
        assert await wait_until(lambda: not statuses(recorder)[-1]["overload"]["active"], 5)
        snapshot = committed(db)
        assert await wait_until(lambda: set(snapshot) <= set(dedup_by_seq(recorder.readings())), 20)
    finally:
        await stop(run)
    text = in_process_log.read_text()
    assert text.count("cannot keep its polling schedule") == 1
    assert text.count("overload ended") == 1
    assert statuses(recorder)[-1]["overload"]["late_polls"] > 0
    assert since is not None
    events = gap_events(db)
    # Once overload is known, late polls are not a meter's communication failure.
    assert not [e for e in events if e.get("cause") == "communication_loss" and e["kind"] == "open"
                and e["start_ms"] >= since], events
    assert {e["instrument"] for e in events if e.get("cause") == "gateway_overload"} <= set(INSTRUMENTS)
    assert_delivered_equals_committed(db, recorder.readings)
    assert_integrity_ok(db)
