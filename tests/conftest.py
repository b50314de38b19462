"""Shared fixtures: real Datasette receivers on free loopback ports, and a polling helper."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventsink.testing import wait_until  # noqa: F401  # re-exported for the tests
from eventsink.testing.receiver import DatasetteReceiver


def table_rows(path: Path | str, table: str) -> list[dict[str, Any]]:
    """Every row of ``table`` in the SQLite file ``path``, by id."""
    connection = sqlite3.connect(path)
    connection.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in connection.execute(f"select * from [{table}] order by id")]
    finally:
        connection.close()


@pytest.fixture(scope="session")
def receiver() -> Iterator[DatasetteReceiver]:
    """A real ``datasette serve`` (database ``data``) shared by a session: use unique tables."""
    with DatasetteReceiver() as server:
        yield server


@pytest.fixture(scope="session")
def small_receiver() -> Iterator[DatasetteReceiver]:
    """A real receiver whose ``max_insert_rows`` setting is 10."""
    with DatasetteReceiver(settings={"max_insert_rows": 10}) as server:
        yield server
