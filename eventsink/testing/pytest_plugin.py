"""The pytest plugin installed with eventsink (entry point ``pytest11``: ``eventsink``).

Fixtures, available in any project that has eventsink installed:

* ``memory_sink``: a fresh :class:`~eventsink.testing.MemorySink`;
* ``flaky_sink``: a factory, ``flaky_sink([500, (429, {"Retry-After": "1"}), 200])``;
* ``captured_events``: a :class:`~eventsink.testing.Capture` (a real client writing into a
  memory sink), closed after the test;
* ``eventsink_plugin_manager``: a plugin manager where configs may name ``memory``/``flaky``;
* ``datasette_receiver``: a real ``datasette serve`` on a free loopback port with a write
  token (``url``, ``db_url``, ``token``, ``rows(table)``), stopped after the test; skipped
  when Datasette (the ``datasette`` extra) is not installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pluggy
import pytest

from . import Capture, capture_events, plugin_manager
from .sinks import FlakySink, MemorySink


@pytest.fixture
def memory_sink() -> MemorySink:
    """A fresh in-memory recording sink."""
    return MemorySink()


@pytest.fixture
def flaky_sink() -> Callable[..., FlakySink]:
    """A factory of sinks failing as scripted: ``flaky_sink([500, 200], then=200)``."""

    def make(script: Sequence[Any] = (), **config: Any) -> FlakySink:
        return FlakySink(script=list(script), **config)

    return make


@pytest.fixture
def eventsink_plugin_manager() -> pluggy.PluginManager:
    """A fresh plugin manager that also offers the ``memory`` and ``flaky`` sinks."""
    return plugin_manager()


@pytest.fixture
def captured_events() -> Iterator[Capture]:
    """A real client delivering into a memory sink; ``captured_events.events`` flushes."""
    with capture_events() as capture:
        yield capture


@pytest.fixture
def datasette_receiver(tmp_path: Path) -> Iterator[Any]:
    """A real Datasette receiving events, with a write token; stopped after the test."""
    try:
        from .receiver import DatasetteReceiver
    except ImportError as error:
        pytest.skip(
            f"datasette_receiver needs Datasette (pip install 'eventsink[datasette]'): {error}"
        )
    receiver = DatasetteReceiver(directory=tmp_path / "receiver")
    with receiver:
        yield receiver
