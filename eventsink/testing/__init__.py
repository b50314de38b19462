"""Helpers for testing code that uses eventsink, and sinks written for it.

* :class:`MemorySink` records what it is given; :class:`FlakySink` fails as scripted.
* :func:`capture_events` runs a real :class:`~eventsink.Client` into a memory sink.
* :func:`plugin_manager` is a plugin manager where the configuration can name the ``memory``
  and ``flaky`` sinks (they are not registered anywhere else).
* :class:`SinkContract` is the contract test suite a sink author subclasses.
* :func:`wait_until` waits on a condition with a deadline instead of a fixed sleep.

Installing eventsink also installs a pytest plugin (``eventsink.testing.pytest_plugin``) with
the fixtures ``memory_sink``, ``flaky_sink``, ``captured_events`` and ``datasette_receiver``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pluggy

from ..client import Client
from ..event import Event
from ..ids import IdGenerator
from ..plugins import make_plugin_manager
from .sinks import FlakySink, MemorySink, TestingSinksPlugin, error_for_status

if TYPE_CHECKING:
    from .contract import SinkContract

__all__ = [
    "Capture",
    "FlakySink",
    "MemorySink",
    "SinkContract",
    "async_wait_until",
    "capture_events",
    "error_for_status",
    "make_events",
    "plugin_manager",
    "wait_until",
]


def __getattr__(name: str) -> Any:
    # SinkContract needs pytest; importing it lazily keeps MemorySink usable without pytest.
    if name == "SinkContract":
        from .contract import SinkContract

        return SinkContract
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def plugin_manager(*, entry_points: bool = True) -> pluggy.PluginManager:
    """A fresh plugin manager that also offers the ``memory`` and ``flaky`` sinks."""
    pm = make_plugin_manager(entry_points=entry_points)
    pm.register(TestingSinksPlugin(), name="eventsink.testing")
    return pm


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Raises ``TimeoutError`` naming the predicate after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{predicate!r} stayed false for {timeout}s")
        time.sleep(interval)


async def async_wait_until(
    predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01
) -> Any:
    """:func:`wait_until` for coroutines: the event loop keeps running while it waits.

    ``predicate`` may be a plain function or return an awaitable.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{predicate!r} stayed false for {timeout}s")
        await asyncio.sleep(interval)


def make_events(
    count: int,
    table: str = "events",
    *,
    instance: str = "test",
    data: Callable[[int], Mapping[str, Any]] | None = None,
) -> list[Event]:
    """``count`` ready-made events with fresh ULIDs, as a sink receives them."""
    ids = IdGenerator()
    events = []
    for number in range(count):
        event_id, created = ids.new()
        values = dict(data(number)) if data else {"n": number, "text": f"event {number}"}
        events.append(Event(event_id, table, instance, created, values))
    return events


class Capture:
    """What :func:`capture_events` yields: the client and the memory sink behind it."""

    def __init__(self, client: Client, sink: MemorySink) -> None:
        self.client = client
        self.sink = sink

    def write(self, table: str, data: Mapping[str, Any]) -> str | None:
        """Write through the client (same as ``capture.client.write``)."""
        return self.client.write(table, data)

    @property
    def events(self) -> list[Event]:
        """Every event written so far, once each, after waiting for delivery."""
        if not self.client.flush(timeout=10):
            raise TimeoutError("the captured events were not delivered within 10s")
        return self.sink.events

    def rows(self, table: str | None = None) -> list[dict[str, Any]]:
        """:attr:`events` as flat rows, optionally only one table's."""
        self.events  # noqa: B018  # flushes
        return self.sink.rows(table)

    def tables(self) -> Sequence[str]:
        """The distinct tables written to, in first-seen order."""
        return list(dict.fromkeys(event.table for event in self.events))


@contextmanager
def capture_events(**config: Any) -> Iterator[Capture]:
    """Run a real :class:`~eventsink.Client` delivering into a :class:`MemorySink`.

    ``config`` is the usual client configuration (``instance``, ``batch_limit``, ...); the
    sink is ``memory`` and the outbox is in memory unless given. Enrich and filter hooks of
    installed plugins run as in production; pass ``pm=`` to use another plugin manager.
    """
    pm = config.pop("pm", None) or plugin_manager()
    settings = {"sink": "memory", "outbox": ":memory:", "instance": "test", **config}
    with Client(pm=pm, **settings) as client:
        sink = next(iter(client.pipeline.sinks.values()))
        if not isinstance(sink, MemorySink):
            raise TypeError(f"capture_events needs a memory sink, got {sink!r}")
        yield Capture(client, sink)
