"""Errors raised by the rules. Both are one-line, user-facing messages (the auditor tool prints them)."""

from __future__ import annotations

from gateway.errors import GatewayError


class RuleInputError(GatewayError, ValueError):
    """The data handed to a rule are inconsistent (unsorted hours, a gap hour with a value, ...)."""


class PolicyConfigError(GatewayError, ValueError):
    """A substitution policy configuration is invalid; ``errors`` lists every problem found."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))
