"""A private PostgreSQL for the consumer tests (simulators/postgres.py): one per test session, a database
per test. Never the machine's own PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from simulators.postgres import PrivatePostgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[PrivatePostgres]:
    with PrivatePostgres() as pg:
        yield pg


@pytest.fixture
def db(postgres: PrivatePostgres, request: pytest.FixtureRequest) -> str:
    """A new database for this test; its connection URL."""
    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:50]
    return postgres.create_database(name)
