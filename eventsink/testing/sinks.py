"""Sinks for tests: one that records what it is given, one that fails as scripted.

Neither is registered with the ``eventsink`` entry-point group, so ``eventsink sinks`` never
lists them and no production configuration can select them by accident. Tests reach them
through :func:`eventsink.testing.plugin_manager` (which adds them under the names ``memory``
and ``flaky``) or by handing instances straight to a :class:`~eventsink.Pipeline`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from ..config import Option
from ..event import Event
from ..exceptions import (
    DeliveryError,
    PermanentError,
    RejectedError,
    RetryableError,
    SinkPausedError,
)
from ..hookspecs import hookimpl
from ..sink import Sink


class MemorySink(Sink):
    """Keep every delivered event in memory, keyed by id like a real receiver.

    ``batches`` holds every batch ``send`` was given (repeats included), ``events`` every
    stored event once, in first-delivery order. A batch sent twice is stored once, as the
    sink contract requires. Safe to read from another thread while the pipeline runs.

    ``store`` (a dict) lets several instances share one "receiver", as a restarted process
    would.
    """

    name = "memory"
    max_concurrent_sends = None  # every call is a locked dict update
    description = "Keeps delivered events in memory (tests only; not registered by default)."

    def __init__(self, *, store: dict[str, Event] | None = None, **config: Any) -> None:
        super().__init__(**config)
        self._lock = threading.Lock()
        self._stored: dict[str, Event] = store if store is not None else {}
        self.batches: list[list[Event]] = []
        self.opened = 0
        self.closed = 0

    async def open(self) -> None:
        self.opened += 1

    async def send(self, batch: Sequence[Event]) -> None:
        self._store(batch)

    def _store(self, batch: Sequence[Event]) -> None:
        with self._lock:
            self.batches.append(list(batch))
            for event in batch:
                self._stored.setdefault(event.id, event)

    async def close(self) -> None:
        self.closed += 1

    @property
    def events(self) -> list[Event]:
        """Every stored event once, in the order they were first delivered."""
        with self._lock:
            return list(self._stored.values())

    @property
    def ids(self) -> list[str]:
        """The ids of :attr:`events`."""
        return [event.id for event in self.events]

    def rows(self, table: str | None = None) -> list[dict[str, Any]]:
        """Stored events as flat rows (:meth:`Event.row`), optionally only one table's."""
        return [event.row() for event in self.events if table is None or event.table == table]

    def get(self, event_id: str) -> Event | None:
        """The stored event with ``event_id``, or ``None``."""
        with self._lock:
            return self._stored.get(event_id)

    def clear(self) -> None:
        """Forget everything stored and sent."""
        with self._lock:
            self._stored.clear()
            self.batches.clear()


#: How scripted status codes map to delivery errors (the mapping HTTP sinks are expected to use).
PAUSE_STATUSES = frozenset({401, 403})
REJECT_STATUSES = frozenset({400, 413, 422})
PERMANENT_STATUSES = frozenset({404, 405, 410})


def error_for_status(
    status: int, headers: Mapping[str, str] | None = None, message: str = ""
) -> DeliveryError | None:
    """The delivery error an HTTP sink should raise for ``status`` (``None`` for 2xx).

    401/403 pause the sink, 400/413/422 reject the content (the batch is split), 404/405/410
    are permanent, everything else (429, 5xx, ...) is retryable, with ``Retry-After`` (seconds)
    as the floor of the next delay.
    """
    if 200 <= status < 300:
        return None
    text = message or f"scripted status {status}"
    if status in PAUSE_STATUSES:
        return SinkPausedError(text, status=status)
    if status in REJECT_STATUSES:
        return RejectedError(text, status=status)
    if status in PERMANENT_STATUSES:
        return PermanentError(text, status=status)
    retry_after = None
    for key, value in (headers or {}).items():
        if key.lower() == "retry-after":
            retry_after = float(value)
    return RetryableError(text, status=status, retry_after=retry_after)


class FlakySink(MemorySink):
    """A :class:`MemorySink` whose successive ``send`` calls follow a script.

    Each script step is a status code (``500``), a ``(status, headers)`` pair
    (``(429, {"Retry-After": "1"})``) or an exception to raise. 2xx stores the batch; other
    codes raise the error :func:`error_for_status` gives. When the script is used up every
    call gets ``then`` (default 200). ``attempts`` records each call as ``(ids, outcome)``.
    """

    name = "flaky"
    description = "Fails as scripted, then stores like the memory sink (tests only)."
    options = (
        Option("script", list, [], "Steps: status, [status, headers] or an exception."),
        Option("then", int, 200, "Status of every call after the script.", nullable=False),
    )

    def __init__(
        self,
        script: Sequence[Any] | None = None,
        *,
        store: dict[str, Event] | None = None,
        **config: Any,
    ) -> None:
        if script is not None:
            config["script"] = list(script)
        super().__init__(store=store, **config)
        self.script: list[Any] = list(self.config["script"])
        self.attempts: list[tuple[list[str], str]] = []

    def _next_step(self) -> Any:
        return self.script.pop(0) if self.script else self.config["then"]

    async def send(self, batch: Sequence[Event]) -> None:
        step = self._next_step()
        ids = [event.id for event in batch]
        if isinstance(step, BaseException) or (
            isinstance(step, type) and issubclass(step, BaseException)
        ):
            self.attempts.append((ids, repr(step)))
            raise step
        if isinstance(step, (tuple, list)):
            status, headers = int(step[0]), dict(step[1])
        else:
            status, headers = int(step), {}
        self.attempts.append((ids, str(status)))
        error = error_for_status(status, headers)
        if error is not None:
            raise error
        self._store(batch)

    @property
    def remaining(self) -> int:
        """Script steps not used yet."""
        return len(self.script)


class TestingSinksPlugin:
    """Plugin object registering :class:`MemorySink` and :class:`FlakySink`."""

    __test__ = False  # not a pytest test class despite the name

    @hookimpl
    def eventsink_register_sinks(self) -> list[type]:
        return [MemorySink, FlakySink]
