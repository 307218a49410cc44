"""A toy protocol plugin: what adding a protocol takes (used by test_protocol_registry)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from drivers.base import PlannedPoint, ProtocolPlugin, Reporter
from gateway.schema_base import ConnectionBase, PointBase


class ToyPoint(PointBase):
    register_name: str | None = None


class ToyConnection(ConnectionBase):
    protocol: Literal["toy"]
    host: str
    timeout_s: float = Field(default=1.0, gt=0)

    @property
    def endpoint(self) -> str:
        return f"toy://{self.host}"


class ToyPlugin(ProtocolPlugin):
    name = "toy"
    title = "Toy"
    connections = (ToyConnection,)
    point_model = ToyPoint
    required_point_fields = ("register_name",)

    def build_device(self, inst: Any, points: Sequence[PlannedPoint], profile: Any, ctx: Reporter) -> Any:
        return {"id": inst.id, "registers": [p.point.register_name for p in points]}


PLUGIN = ToyPlugin()
