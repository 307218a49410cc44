"""The shared health/backoff/schedule helpers and the one signal-handler setup."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest

from drivers.pacing import LinkHealth, backoff_delay, next_slot
from gateway.shutdown import stop_on_signals


def test_backoff_is_capped_exponential_with_jitter() -> None:
    assert [backoff_delay(a, 1.0, 30.0, 0.0) for a in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    assert backoff_delay(3, 0.5, 10.0, 0.999999) == pytest.approx(4.0, rel=1e-5)
    assert backoff_delay(10_000, 1.0, 30.0, 0.5) == 22.5  # no overflow for a very long outage


def test_next_slot_keeps_the_grid() -> None:
    assert next_slot(0.0, 2.0, 1.0) == (2.0, 0)
    assert next_slot(0.0, 2.0, 6.5) == (8.0, 3)


def test_link_health_logs_one_line_when_a_failure_starts_and_one_when_it_ends(
        caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.pacing")
    h = LinkHealth()
    with caplog.at_level(logging.INFO, logger="test.pacing"):
        assert h.failed("timed out", log=log, who="M1") is True
        assert h.failed("timed out", log=log, who="M1") is False
        assert h.status()["state"] == "failing"
        assert h.succeeded(1234, log=log, who="M1") == 2
        assert h.succeeded(1235, log=log, who="M1") == 0
    assert [r.levelname for r in caplog.records] == ["ERROR", "INFO"]
    assert h.status() == {"state": "ok", "polls": 0, "failures": 2, "missed_polls": 0, "last_ok": 1235,
                          "last_error": "timed out"}


async def test_stop_on_signals_sets_the_event_and_removes_its_handlers() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        async with asyncio.timeout(5):
            await stop.wait()
    assert signal.getsignal(signal.SIGTERM) == before
