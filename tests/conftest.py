"""Shared fixtures: real Datasette receivers on free loopback ports, and a polling helper."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from eventsink.testing.receiver import DatasetteReceiver


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02):
    """Return ``predicate()``'s first truthy value, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


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
