"""The driver contract: the only thing the runtime knows about a protocol."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from drivers.pacing import LinkHealth
from gateway.model import RawSample


class PollingDriver(Protocol):
    """One connection to one endpoint (a TCP address or a serial bus).

    `read(device)` performs one poll of one device reachable through that connection and returns
    one RawSample per configured point (bad ones included). It raises a DriverError subclass when
    nothing at all could be read. Implementations serialise requests themselves: the runtime may
    call `read` for several devices of the same connection, one after the other. The runtime keeps
    the schedule, the backoff and the health counters (drivers.pacing); the driver only reads.
    """

    name: str  # for logs and task names, e.g. "modbus_tcp://10.0.0.5:502"

    async def open(self) -> None: ...

    async def read(self, device: object) -> list[RawSample]: ...

    async def close(self) -> None: ...


SampleSink = Callable[[str, Sequence[RawSample]], Awaitable[None]]
"""(instrument id, samples) -> None. Subscribing drivers push to this; it may block (backpressure)."""


class SubscribingDriver(Protocol):
    """A push source (subscriptions): runs until cancelled, calling sink for each batch.

    It keeps its own session, reconnect backoff and read schedule with drivers.pacing, and counts them
    in `health` (shown on the status topic like every polled instrument's).
    """

    health: LinkHealth

    async def run(self, sink: SampleSink) -> None: ...

    async def close(self) -> None: ...
