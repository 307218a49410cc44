"""Issue 7.1 / observation 7: a polling task that dies is supervised, shown `failed`, and restarted.

The gateway runs in-process against the real pymodbus simulators and a private Mosquitto. One
instrument's device object raises on use (what `scale: 0` did at run time): its connection's polling
task fails. The status topic must show that instrument `failed` (never `ok` with 0 polls) and the
supervisor's component `failed` with the error; the task restarts with backoff; once the fault is
gone it recovers. Its gap is the gateway's (`gateway_down`), never `communication_loss`.

Also the run's garbage-collector thresholds (issue 8): set while a gateway runs, put back after.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.app import RUN_GC_THRESHOLD, Gateway
from gateway.registry import load_config
from simulators.broker import PrivateBroker
from simulators.runner import build_servers
from tests.helpers import Recorder, three_meters, write_config
from tests.system.conftest import assert_status_schema, wait_until

pytestmark = pytest.mark.usefixtures("no_leftover_tasks", "in_process_log")


class BrokenDevice:
    """A Modbus device whose plan raises while `broken` (a programming error, not a meter fault)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.broken = True
        self.instrument_id, self.unit_id, self.timeout_s = inner.instrument_id, inner.unit_id, inner.timeout_s

    @property
    def requests(self) -> Any:
        if self.broken:
            raise ZeroDivisionError("float division by zero (scale 0)")
        return self._inner.requests


async def test_failed_poller_shows_failed_restarts_and_recovers(
        tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker, recorder: Recorder,
        caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(write_config(tmp_path / "cfg", three_meters(ports), url=broker.url, store=tmp_path / "gw.db"))
    servers = build_servers(cfg)
    for server, _ in servers.values():
        await server.start()
    pm = next(s for s in cfg.instruments if s.id == "PM-01")
    broken = BrokenDevice(pm.device)
    object.__setattr__(pm, "device", broken)  # the spec is frozen; the device is what the poller reads
    gw = Gateway(cfg, restart_backoff_s=(0.2, 0.4), healthy_after_s=1.0)
    caplog.set_level(logging.INFO)
    run = asyncio.create_task(gw.run())
    task_name = f"poll modbus_tcp://127.0.0.1:{ports[0]}"

    def statuses() -> list[dict[str, Any]]:
        return [b for b in recorder.by_topic_suffix("/status") if b["state"] != "offline"]

    def seen(pred: Any) -> bool:
        return any(pred(b) for b in statuses())

    try:
        assert await wait_until(lambda: seen(lambda b: b["instruments"]["PM-01"]["state"] == "failed"
                                             and b["components"][task_name]["state"] == "failed"
                                             and b["components"][task_name]["restarts"] >= 2), 20)
        failed = next(b for b in statuses() if b["instruments"]["PM-01"]["state"] == "failed")
        assert "ZeroDivisionError" in failed["instruments"]["PM-01"]["last_error"]
        assert "ZeroDivisionError" in failed["components"][task_name]["error"]
        # Never `ok` with zero polls while its task is dead; the healthy meters keep going.
        pm = [b["instruments"]["PM-01"] for b in statuses()]
        assert not [i for i in pm if i["state"] == "ok" and i["polls"] == 0]
        assert await wait_until(lambda: seen(lambda b: b["instruments"]["FT-01"]["polls"] > 5
                                             and b["instruments"]["FT-01"]["state"] == "ok"), 10)
        broken.broken = False
        assert await wait_until(lambda: seen(lambda b: b["components"][task_name]["state"] == "running"
                                             and b["instruments"]["PM-01"]["state"] == "ok"
                                             and b["instruments"]["PM-01"]["polls"] > 0), 20)
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        for server, _ in servers.values():
            await server.stop()
    for body in recorder.by_topic_suffix("/status"):
        assert_status_schema(body)
    text = caplog.text
    # Logged once with the traceback; repeats of the same error are one line each; recovery is one line.
    assert text.count(f"task {task_name} failed: ZeroDivisionError") == 1
    assert text.count("Traceback") == 1
    assert f"task {task_name} failed again" in text
    assert f"task {task_name} recovered" in text
    # The gap of the dead task is the gateway's fault, never the meter's communication.
    with sqlite3.connect(tmp_path / "gw.db") as db:
        bodies = [json.loads(b) for (b,) in db.execute(
            "SELECT body FROM records WHERE kind='events' AND instrument='PM-01'")]
        reasons = {r for (r,) in db.execute("SELECT DISTINCT reason FROM readings WHERE instrument='PM-01'")}
    assert "gateway_fault" in reasons
    assert bodies, "the dead task's silence opens a gap"
    assert {b["cause"] for b in bodies} == {"gateway_down"}


async def test_a_running_gateway_collects_garbage_less_often_and_puts_the_collector_back(
        tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker, recorder: Recorder) -> None:
    # Issue 8: CPython's default thresholds cost ~9 % of the CPU at plant load; a gateway run inside a longer
    # process (these tests) leaves the collector as it found it.
    cfg = load_config(write_config(tmp_path / "cfg", three_meters(ports), url=broker.url, store=tmp_path / "gw.db"))
    servers = build_servers(cfg)
    for server, _ in servers.values():
        await server.start()
    before = gc.get_threshold()
    assert before != RUN_GC_THRESHOLD
    run = asyncio.create_task(Gateway(cfg).run())
    try:
        assert await wait_until(lambda: any(b.get("instruments", {}).get("FT-01", {}).get("polls", 0) > 2
                                            for b in recorder.by_topic_suffix("/status")), 20)
        assert gc.get_threshold() == RUN_GC_THRESHOLD
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        for server, _ in servers.values():
            await server.stop()
    assert gc.get_threshold() == before
