"""The supervisor: failures are reported and restarted, returns count as failures, fatal errors stop."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.errors import StoreError
from gateway.supervisor import Supervisor

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")


async def test_exception_is_logged_once_shown_failed_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise ValueError("bad value")
        await asyncio.sleep(3600)

    caplog.set_level(logging.INFO)
    sup = Supervisor(backoff_min_s=0.01, backoff_max_s=0.02, healthy_after_s=0.1)
    sup.spawn("flaky", flaky)
    for _ in range(100):
        await asyncio.sleep(0.01)
        if runs >= 4:
            break
    snap = sup.snapshot()["flaky"]
    assert snap == {"state": "failed", "restarts": 3, "error": "ValueError: bad value"}
    await asyncio.sleep(0.2)
    assert sup.snapshot()["flaky"]["state"] == "running"
    assert await sup.stop() == []
    assert sup.snapshot()["flaky"]["state"] == "stopped"
    assert caplog.text.count("Traceback") == 1
    assert caplog.text.count("task flaky failed again") == 2
    assert caplog.text.count("task flaky recovered") == 1


async def test_a_long_lived_task_that_returns_is_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    runs = 0

    async def quits() -> None:
        nonlocal runs
        runs += 1

    sup = Supervisor(backoff_min_s=0.01, backoff_max_s=0.01)
    caplog.set_level(logging.ERROR)
    sup.spawn("quitter", quits)
    for _ in range(100):
        await asyncio.sleep(0.01)
        if runs >= 2:
            break
    assert runs >= 2
    assert "TaskReturned" in sup.snapshot()["quitter"]["error"]
    await sup.stop()
    assert "Traceback" not in caplog.text  # a return has no traceback to show: one line


async def test_fatal_error_stops_with_one_line(caplog: pytest.LogCaptureFixture) -> None:
    async def writer() -> None:
        raise StoreError("gw.db: commit failed: database or disk is full")

    sup = Supervisor(fatal=(StoreError,))
    sup.spawn("writer", writer)
    name, err = await asyncio.wait_for(sup.wait_fatal(), 5)
    assert name == "writer"
    assert isinstance(err, StoreError)
    assert sup.snapshot()["writer"]["state"] == "failed"
    assert sup.snapshot()["writer"]["restarts"] == 0
    await sup.stop()
    assert "Traceback" not in caplog.text
    assert caplog.text.count("disk is full") == 1


async def test_failure_handler_runs_after_each_failure() -> None:
    seen: list[str] = []

    async def boom() -> None:
        raise KeyError("x")

    async def on_failure(err: BaseException) -> None:
        seen.append(type(err).__name__)

    sup = Supervisor(backoff_min_s=0.01, backoff_max_s=0.01)
    sup.spawn("boom", boom, on_failure=on_failure)
    for _ in range(100):
        await asyncio.sleep(0.01)
        if len(seen) >= 2:
            break
    await sup.stop()
    assert seen[:2] == ["KeyError", "KeyError"]
