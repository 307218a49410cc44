"""The driver and protocol-plugin contracts: the only things the core knows about a protocol."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel

from drivers.pacing import LinkHealth
from gateway.errors import ConfigError
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


# --- the protocol plugin contract -------------------------------------------------------------------
# A protocol is one package under drivers/ whose `plugin` module defines PLUGIN (an instance of a
# ProtocolPlugin subclass), registered by one line in gateway/protocols.py. The configuration loader,
# the schemas, `validate`, the runtime and the simulator learn everything protocol-specific from it.

Loc = tuple[int | str, ...]


class Reporter(Protocol):
    """Where a plugin reports configuration problems: `loc` is the YAML path inside the instrument
    (("connection", "unit_id"), ("points", 2), ...) for the line number, `field` the text shown."""

    def error(self, loc: Loc, field: str, message: str) -> None: ...


class InstrumentLike(Protocol):
    """What a plugin sees of an instrument entry while building its device (gateway's InstrumentModel)."""

    @property
    def id(self) -> str: ...
    @property
    def connection(self) -> Any: ...  # one of the plugin's own connection models
    @property
    def poll_interval_s(self) -> float | None: ...


class SpecLike(Protocol):
    """What a plugin sees of a compiled instrument in cross-instrument checks (gateway's InstrumentSpec)."""

    @property
    def id(self) -> str: ...
    @property
    def connection(self) -> Any: ...
    @property
    def device(self) -> Any: ...
    @property
    def poll_interval_s(self) -> float: ...
    @property
    def source_file(self) -> str: ...
    @property
    def connection_line(self) -> int | None: ...


@dataclass(frozen=True)
class PlannedPoint:
    """One point of an instrument after profile merging, in the plugin's own point model."""

    point: Any  # an instance of the plugin's `point_model`
    wire: Any  # what `compile_point` returned for it
    loc: Loc  # where to report a problem of this point
    field: str
    source_file: str
    source_line: int | None


class ProtocolPlugin(ABC):
    """Everything the core knows about one protocol. See docs/architecture.md for a walk-through."""

    name: ClassVar[str]  # the family, e.g. "modbus"; the `protocol` of InstrumentSpec
    title: ClassVar[str]  # for messages, e.g. "Modbus"
    connections: ClassVar[tuple[type[BaseModel], ...]]  # pydantic models, `protocol: Literal[tag]` each
    point_model: ClassVar[type[BaseModel]]  # a gateway.schema_base.PointBase subclass, extra fields optional
    required_point_fields: ClassVar[tuple[str, ...]] = ()
    profile_options: ClassVar[type[BaseModel] | None] = None  # extra top-level profile keys, all defaulted
    profiles_dir: ClassVar[Path | None] = None  # built-in meter profiles of this protocol
    kind: ClassVar[Literal["polling", "subscribing"]] = "polling"

    @property
    def tags(self) -> tuple[str, ...]:
        """The `connection.protocol` values this plugin serves."""
        return tuple(c.model_fields["protocol"].annotation.__args__[0] for c in self.connections)  # type: ignore[union-attr]

    def cadence(self, point: Any, inst: InstrumentLike, default_poll_s: float) -> tuple[float, bool]:
        """(seconds between the readings the driver really delivers for this point, change-driven?)."""
        return inst.poll_interval_s or default_poll_s, False

    def compile_point(self, point: Any) -> Any:
        """The driver's form of one point (PointSpec.wire). Raise ValueError for a problem of the point."""
        return None

    @abstractmethod
    def build_device(self, inst: InstrumentLike, points: Sequence[PlannedPoint], profile: Any,
                     ctx: Reporter) -> Any:
        """The object the driver reads for this instrument, or None after reporting through ctx.
        `profile` is the instrument's profile model or None (for `profile_options`)."""

    def check_shared(self, spec: SpecLike, seen: dict[Any, Any], ctx: Reporter) -> None:
        """Cross-instrument checks, called for each polled instrument of this plugin in load order;
        `seen` is this plugin's own scratch dict for one load."""
        return None

    def warnings(self, specs: Sequence[SpecLike]) -> list[ConfigError]:
        """Legal but risky settings across this plugin's polled instruments."""
        return []

    def open_polling(self, connection: Any, clock_ms: Callable[[], int]) -> PollingDriver:
        """kind "polling": one driver for all instruments with this connection's `endpoint`."""
        raise NotImplementedError(f"{self.name} is not a polling protocol")

    def open_subscriber(self, device: Any) -> SubscribingDriver:
        """kind "subscribing": one driver per instrument."""
        raise NotImplementedError(f"{self.name} is not a subscribing protocol")

    def expect_hint(self, wire: Any) -> str:
        """What to check when `validate --live` reads a value outside the point's `expect` range."""
        return "check scale"
