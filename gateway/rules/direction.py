"""Direction of conservatism (docs/rules.md §3): which way a substitute must err."""

from __future__ import annotations

from enum import StrEnum


class Direction(StrEnum):
    """The sign of dE/dx in the plant's emission equation: a substitute errs on the side that does not
    understate emissions (standard 10.1.3 f)."""

    HIGH = "high"  # a larger value gives more emissions (or less credit)
    LOW = "low"
