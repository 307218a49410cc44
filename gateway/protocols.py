"""The protocol registry: the one place the core learns which protocols exist.

A protocol is a package under drivers/ whose `plugin` module defines `PLUGIN` (a
drivers.base.ProtocolPlugin). Adding one is adding its module to BUILTIN. From the plugins the
registry builds the configuration's discriminated union of connections (on `protocol`) and the point
model, so the models, the generated JSON Schemas and `validate` come from the drivers themselves.
"""

from __future__ import annotations

import importlib
from functools import reduce
from operator import or_
from typing import Annotated, Any

from pydantic import BaseModel, Field, create_model

from drivers.base import ProtocolPlugin
from gateway.schema_base import PointBase

BUILTIN: tuple[str, ...] = (
    "drivers.modbus.plugin",
    "drivers.opcua.plugin",
    "drivers.dlt645.plugin",
)


class ProtocolRegistry:
    def __init__(self, modules: tuple[str, ...]) -> None:
        self.plugins: tuple[ProtocolPlugin, ...] = tuple(importlib.import_module(m).PLUGIN for m in modules)
        self._by_tag: dict[str, ProtocolPlugin] = {}
        self._by_name: dict[str, ProtocolPlugin] = {}
        self._field_owner: dict[str, ProtocolPlugin] = {}
        base = set(PointBase.model_fields)
        for plugin in self.plugins:
            if plugin.name in self._by_name:
                raise ValueError(f"protocol plugin '{plugin.name}' is registered twice")
            self._by_name[plugin.name] = plugin
            for tag in plugin.tags:
                if tag in self._by_tag:
                    raise ValueError(f"connection protocol '{tag}' of {plugin.name} is already "
                                     f"served by {self._by_tag[tag].name}")
                self._by_tag[tag] = plugin
            for name, info in plugin.point_model.model_fields.items():
                if name in base:
                    continue
                other = self._field_owner.get(name)
                if other is not None and other.point_model.model_fields[name].annotation != info.annotation:
                    raise ValueError(f"point field '{name}' of {plugin.name} clashes with {other.name}'s")
                self._field_owner.setdefault(name, plugin)

    @property
    def tags(self) -> tuple[str, ...]:
        """Every `connection.protocol` value, in registration order."""
        return tuple(self._by_tag)

    def for_tag(self, tag: str) -> ProtocolPlugin:
        return self._by_tag[tag]

    def named(self, name: str) -> ProtocolPlugin:
        return self._by_name[name]

    def of(self, connection: Any) -> ProtocolPlugin:
        """The plugin serving a connection model instance."""
        return self._by_tag[connection.protocol]

    def field_owner(self, field: str) -> ProtocolPlugin | None:
        """The plugin that declares a protocol-specific point field (None for common fields)."""
        return self._field_owner.get(field)

    def connection_type(self) -> Any:
        """The discriminated union of every plugin's connection models, on `protocol`."""
        models = [m for p in self.plugins for m in p.connections]
        return Annotated[reduce(or_, models), Field(discriminator="protocol")]

    def point_model(self) -> type[PointBase]:
        """The point as written in YAML: common fields plus every protocol's, all optional (a profile's
        points do not say which protocol reads them; the instrument's connection does)."""
        bases = tuple(dict.fromkeys(p.point_model for p in self.plugins))
        own = {p.title: [f for f in p.point_model.model_fields if f not in PointBase.model_fields]
               for p in self.plugins}
        fields = "; ".join(f"{title}: {', '.join(names)}" for title, names in own.items())
        doc = ("A point, in a profile or in an instrument (where it adds or overrides by name). Which protocol "
               f"fields apply follows from the instrument's connection ({fields}).")
        return create_model("PointModel", __base__=bases, __doc__=doc)  # type: ignore[call-overload,no-any-return]

    def profile_options(self) -> tuple[type[BaseModel], ...]:
        return tuple(p.profile_options for p in self.plugins if p.profile_options is not None)


PROTOCOLS = ProtocolRegistry(BUILTIN)
