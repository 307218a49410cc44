"""JSON Schemas of the configuration files, generated from the pydantic models (never hand-synced).

`carbon-gateway schema` prints them; docs/schema/config/*.json hold the committed copies, and a test
fails when they drift from the models. Editors with YAML language servers can validate against them.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.registry_schema import InstrumentFile, ProfileModel
from gateway.settings import Settings

SCHEMAS = {"gateway": Settings, "instruments": InstrumentFile, "profile": ProfileModel}


def config_schemas() -> dict[str, dict[str, Any]]:
    return {name: model.model_json_schema() for name, model in SCHEMAS.items()}


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
