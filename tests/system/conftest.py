"""System fault tests (issue 7.5): shared helpers. Fixtures (broker, recorder, ports) come from tests/conftest.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schema"
_STATUS = Draft202012Validator(json.loads((SCHEMAS / "status.schema.json").read_text()))


def assert_status_schema(body: dict[str, Any]) -> None:
    _STATUS.validate(body)


async def wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()
