"""SIGINT/SIGTERM -> an asyncio.Event: the one signal-handler setup of the gateway and the simulators."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event | None = None) -> Iterator[asyncio.Event]:
    """Within the block, SIGINT and SIGTERM set `stop` (a new Event if none is given) instead of raising.

    The handlers are removed on the way out, so a second Ctrl-C after the block interrupts as usual.
    Where the loop cannot install handlers (not the main thread, Windows) the block runs without them.
    """
    event = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, event.set)
            installed.append(sig)
    try:
        yield event
    finally:
        for sig in installed:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
