"""The driver contract: the only thing the runtime knows about a protocol."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from gateway.model import RawSample


class PollingDriver(Protocol):
    """One connection to one endpoint (a TCP address or a serial bus).

    `read(device)` performs one poll of one device reachable through that connection and returns
    one RawSample per configured point (bad ones included). It raises a DriverError subclass when
    nothing at all could be read. Implementations serialise requests themselves: the runtime may
    call `read` for several devices of the same connection, one after the other.
    """

    async def open(self) -> None: ...

    async def read(self, device: object) -> list[RawSample]: ...

    async def close(self) -> None: ...


SampleSink = Callable[[str, Sequence[RawSample]], Awaitable[None]]
"""(instrument id, samples) -> None. Subscribing drivers push to this; it may block (backpressure)."""


class SubscribingDriver(Protocol):
    """A push source (OPC UA subscriptions): runs until cancelled, calling sink for each batch."""

    async def run(self, sink: SampleSink) -> None: ...

    async def close(self) -> None: ...
