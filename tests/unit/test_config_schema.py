"""The committed configuration schemas are exactly what the models generate, and the samples satisfy them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from gateway.config_schema import config_schemas, render
from gateway.yamlload import load_yaml, to_plain

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", ["gateway", "instruments", "profile"])
def test_committed_schema_matches_the_models(kind: str) -> None:
    committed = (REPO / "docs" / "schema" / "config" / f"{kind}.schema.json").read_text()
    assert committed == render(config_schemas()[kind]), \
        f"regenerate: carbon-gateway schema {kind} > docs/schema/config/{kind}.schema.json"


def as_json(path: Path) -> object:
    """What a YAML language server sees: dates become ISO strings."""
    return json.loads(json.dumps(to_plain(load_yaml(path)), default=str))


def test_sample_files_validate_against_the_schemas() -> None:
    schemas = {k: Draft202012Validator(json.loads(render(v))) for k, v in config_schemas().items()}
    schemas["gateway"].validate(as_json(REPO / "config" / "gateway.yaml"))
    for f in sorted((REPO / "config" / "instruments").glob("*.yaml")):
        schemas["instruments"].validate(as_json(f))
    profiles = sorted((REPO / "drivers" / "profiles").glob("*.yaml"))
    assert len(profiles) == 6
    for f in profiles:
        schemas["profile"].validate(as_json(f))
