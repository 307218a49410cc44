"""Shared helpers for the rules tests: the reference test vectors (missing_data_vectors.json, worked examples)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# The copy the tests use, so a clean clone runs without ../shared.
VECTORS_COPY = HERE / "data" / "missing_data_vectors.json"
# The research note's original, beside the repository when it is checked out in the shared workspace.
VECTORS_SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "reference" / "missing_data_vectors.json"


def load_vectors() -> list[dict[str, Any]]:
    return json.loads(VECTORS_COPY.read_text(encoding="utf-8"))


VECTORS = load_vectors()
SUBSTITUTION_VECTORS = [v for v in VECTORS if "cases" not in v]
CASE_VECTORS = [v for v in VECTORS if "cases" in v]
DISCRIMINATING = [(v, label, bad) for v in VECTORS for label, bad in v.get("discriminates_against", {}).items()]


def close(actual: float | None, expected: float | None, tolerance: float) -> bool:
    """The vectors' tolerance is relative (the vectors file states it per vector)."""
    if actual is None or expected is None:
        return actual is expected
    return math.isclose(actual, expected, rel_tol=tolerance, abs_tol=0.0)
