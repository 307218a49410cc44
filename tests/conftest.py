"""Fixtures that start real peers: a private Mosquitto per test, simulators on free ports."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest

from simulators.broker import PrivateBroker, free_port
from tests.helpers import Recorder


@pytest.fixture
def broker() -> Iterator[PrivateBroker]:
    with PrivateBroker() as b:
        yield b


@pytest.fixture
def recorder(broker: PrivateBroker) -> Iterator[Recorder]:
    u = urlparse(broker.url)
    rec = Recorder(u.hostname or "127.0.0.1", u.port or 1883).start()
    yield rec
    rec.stop()


@pytest.fixture
def ports() -> tuple[int, int, int]:
    return (free_port(), free_port(), free_port())


@pytest.fixture
async def no_leftover_tasks() -> None:
    """Fail a test that leaves asyncio tasks running (catches shutdown bugs early)."""
    yield
    current = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for t in left:
        t.cancel()
    if left:
        await asyncio.gather(*left, return_exceptions=True)
        names = sorted(t.get_name() for t in left)
        pytest.fail(f"test left {len(left)} task(s) running: {names}")
