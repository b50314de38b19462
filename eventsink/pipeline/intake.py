"""The front of the pipeline: making events, and the bounded hand-off to the outbox writer.

:class:`EventFactory` turns ``(table, data)`` into an :class:`~eventsink.event.Event`: it
normalises the data, gives it a monotonic ULID, the instance and the creation time, then runs
the ``eventsink_enrich`` and ``eventsink_filter`` hooks. It runs on the writer's own thread.

:class:`Intake` is the thread-safe buffer between writers and the event loop. Writers append
under a lock and wake the loop only when the buffer goes from empty to non-empty, so a burst of
writes costs one cross-thread wake-up, not one per event. It also enforces ``max_events`` and
``max_bytes``: the number of undelivered events (one per sink) the pipeline will hold, and the
bytes of their data (its JSON), with the overflow policy; and ``max_uncommitted``, the events
accepted but not yet committed to the outbox, which are held in memory: beyond it writers wait
for the next commit (``drop_newest`` drops instead), so a writer faster than the outbox never
grows the process's memory.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import pluggy

from ..event import Event, normalise
from ..exceptions import ClosedError, EventError, OverflowDropped
from ..ids import IdGenerator
from ..plugins import Hooks
from .pacing import LogThrottle

logger = logging.getLogger("eventsink")


class EventFactory:
    """Build events for one instance, running the enrich and filter hook chains.

    A hook that raises (or an enricher that returns something other than an event) is
    logged with its plugin's name and skipped: the event goes on as the previous step left
    it, and is kept. A plugin's bug must never lose an event or fail the code that wrote it
    (in the Datasette plugin, the host's request).
    """

    def __init__(
        self,
        instance: str,
        *,
        enrichers: list[Callable[..., Any]] = (),  # type: ignore[assignment]
        filters: list[Callable[..., Any]] = (),  # type: ignore[assignment]
        hooks: Hooks | None = None,
    ) -> None:
        self.instance = instance
        self.ids = IdGenerator()
        self.enrichers = list(enrichers)
        self.filters = list(filters)
        self.hooks = hooks or Hooks(pluggy.PluginManager("eventsink"))

    def make(
        self,
        table: str,
        data: Any,
        *,
        created: str | None = None,
        event_id: str | None = None,
    ) -> Event | None:
        """A new event, or ``None`` when a filter dropped it.

        ``event_id`` replaces the generated ULID when the caller derives a stable id (a pull
        source re-reading a record must give it the same id so the sink ignores the repeat).
        Raises :class:`EventError` for a bad table name or data JSON cannot hold.
        """
        if not isinstance(table, str) or not table:
            raise EventError(f"table must be a non-empty string, not {table!r}", field="table")
        data = normalise(data)
        new_id, now = self.ids.new()
        event = Event(event_id or new_id, table, self.instance, created or now, data)
        if self.enrichers:
            event = self._enrich(event)
        for keep in self.filters:
            try:
                if keep(event=event) is False:
                    return None
            except Exception as error:
                self.hooks.report(_plugin(keep), "eventsink_filter", error, "the event is kept")
        return event

    def _enrich(self, event: Event) -> Event:
        for enrich in self.enrichers:
            before = orjson.dumps(event.data)  # to undo what a failing enricher changed in place
            try:
                result = enrich(event=event)
                if result is not None and not isinstance(result, Event):
                    raise TypeError(f"returned {type(result).__name__}, expected an Event or None")
                candidate = result or event
                candidate._data = normalise(candidate.data)  # values JSON cannot hold
                candidate._data_json = None
            except Exception as error:
                event._data, event._data_json = orjson.loads(before), None
                self.hooks.report(
                    _plugin(enrich), "eventsink_enrich", error, "the event is kept without it"
                )
                continue
            event = candidate
        return event


def _plugin(step: Callable[..., Any]) -> str:
    return getattr(step, "plugin_name", None) or repr(step)


class Intake:
    """The bounded, thread-safe buffer of accepted events not yet in the outbox.

    ``rows`` counts undelivered events per sink (in this buffer and in the outbox) against
    ``capacity``; ``bytes`` their data's JSON size against ``max_bytes`` (only counted when
    ``max_bytes`` is set). ``wake`` is called (from any thread) when the buffer becomes
    non-empty.
    """

    def __init__(
        self,
        *,
        sink_count: int,
        capacity: int,
        overflow: str,
        wake: Callable[[], None],
        max_bytes: int | None = None,
        max_uncommitted: int | None = None,
    ) -> None:
        self.sink_count = sink_count
        self.max_uncommitted = max_uncommitted
        self.uncommitted = 0  # accepted, not yet committed (or dropped) by the writer
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0
        self.overflow = overflow
        self._wake = wake
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._space_async: asyncio.Event | None = None
        self._buffer: list[Event] = []
        self._group: asyncio.Future[None] | None = None
        self.rows = 0
        self.accepted = 0
        self.closed = False
        self.dropped: Counter[str] = Counter()
        self._log = LogThrottle(60.0)

    # -- writers ---------------------------------------------------------------------------

    def _size(self, event: Event) -> int:
        """The bytes ``event`` adds (all sinks), checked to fit at all; 0 without a limit."""
        if self.max_bytes is None:
            return 0
        size = len(event.data_json()) * self.sink_count
        if size > self.max_bytes:
            self.count_drop("too_large", 1)
            copies = f" (once per sink, {self.sink_count} sinks)" if self.sink_count > 1 else ""
            raise OverflowDropped(
                f"the event's data is {size:,} bytes{copies}, more than max_bytes "
                f"({self.max_bytes:,}) can ever hold"
            )
        return size

    def _unsettled(self) -> bool:
        return self.max_uncommitted is not None and self.uncommitted >= self.max_uncommitted

    def _full(self, size: int) -> bool:
        if self._unsettled():
            return True
        if self.rows + self.sink_count > self.capacity:
            return True
        return self.max_bytes is not None and self.bytes + size > self.max_bytes

    def _describe_full(self) -> str:
        if self._unsettled():
            return f"{self.max_uncommitted} events are waiting for the outbox (max_uncommitted)"
        if self.rows + self.sink_count > self.capacity:
            return f"the outbox holds its maximum of {self.capacity} undelivered events"
        return f"the outbox holds its maximum of {self.max_bytes:,} bytes of undelivered events"

    def _accept(self, event: Event, size: int) -> bool:
        """Append under the lock; return True when the caller must wake the loop."""
        self._buffer.append(event)
        self.rows += self.sink_count
        self.bytes += size
        self.accepted += 1
        self.uncommitted += 1
        return len(self._buffer) == 1

    def put(self, event: Event, *, block_timeout: float | None = None) -> None:
        """Accept ``event`` from any thread except the pipeline's loop thread."""
        size = self._size(event)
        with self._lock:
            if self.closed:
                raise ClosedError("the pipeline is closed and accepts no more events")
            if self._full(size):
                self._overflow_locked(size, block_timeout)
            wake = self._accept(event, size)
        if wake:
            self._wake()

    def _overflow_locked(self, size: int, block_timeout: float | None) -> None:
        if self.overflow == "block":
            if not self._space.wait_for(
                lambda: not self._full(size) or self.closed, timeout=block_timeout
            ):
                self.count_drop("overflow", 1)
                raise OverflowDropped(f"the outbox stayed full for {block_timeout}s")
            if self.closed:
                raise ClosedError("the pipeline is closed and accepts no more events")
        elif self.overflow == "drop_newest":
            self.count_drop("overflow", 1)
            raise OverflowDropped(self._describe_full())
        elif self._unsettled():  # drop_oldest drops committed rows: wait for the commit
            if not self._space.wait_for(
                lambda: not self._unsettled() or self.closed, timeout=block_timeout
            ):
                self.count_drop("overflow", 1)
                raise OverflowDropped(self._describe_full())
            if self.closed:
                raise ClosedError("the pipeline is closed and accepts no more events")
        # drop_oldest: accept; the writer task drops the oldest rows after appending.

    async def put_async(self, event: Event, *, wait_committed: bool) -> None:
        """Accept ``event`` on the loop thread; optionally wait until it is committed."""
        size = self._size(event)
        while True:
            with self._lock:
                if self.closed:
                    raise ClosedError("the pipeline is closed and accepts no more events")
                if (
                    not self._full(size)
                    or self.overflow == "drop_newest"
                    or (self.overflow == "drop_oldest" and not self._unsettled())
                ):
                    if self._full(size) and self.overflow == "drop_newest":
                        self.count_drop("overflow", 1)
                        raise OverflowDropped(self._describe_full())
                    wake = self._accept(event, size)
                    if wait_committed and self._group is None:
                        self._group = asyncio.get_running_loop().create_future()
                    group = self._group
                    break
            if self._space_async is None:
                self._space_async = asyncio.Event()
            self._space_async.clear()
            await self._space_async.wait()
        if wake:
            self._wake()
        if wait_committed and group is not None:
            await asyncio.shield(group)

    # -- the loop side ---------------------------------------------------------------------

    def take(self) -> tuple[list[Event], asyncio.Future[None] | None]:
        """Everything buffered, and the future to resolve once it is committed."""
        with self._lock:
            events, self._buffer = self._buffer, []
            group, self._group = self._group, None
        return events, group

    def committed(self, count: int) -> None:
        """The writer has committed (or dropped) ``count`` taken events: make room."""
        with self._lock:
            self.uncommitted = max(0, self.uncommitted - count)
            self._space.notify_all()
        if self._space_async is not None:
            self._space_async.set()

    def excess(self) -> int:
        """Rows to drop to be within both limits again (for ``drop_oldest``).

        Over ``max_bytes``, the count is estimated from the average row size, so the caller
        asks again after dropping.
        """
        with self._lock:
            over = max(0, self.rows - self.capacity)
            if self.max_bytes is not None and self.bytes > self.max_bytes and self.rows:
                average = self.bytes / self.rows
                over = max(over, -(-int(self.bytes - self.max_bytes) // max(1, int(average))))
            return over

    def settle(self, rows: int, events: Sequence[Event] = ()) -> None:
        """``rows`` deliveries are finished (acked, dead-lettered or dropped): make room.

        ``events`` are the finished events, for the byte count when ``max_bytes`` is set.
        """
        size = sum(len(event.data_json()) for event in events) if self.max_bytes else 0
        with self._lock:
            self.rows = max(0, self.rows - rows)
            # Replayed dead letters are counted by number only, so this may go below zero.
            self.bytes = max(0, self.bytes - size)
            self._space.notify_all()
        if self._space_async is not None:
            self._space_async.set()

    def restore(self, rows: int, size: int = 0) -> None:
        """Count rows (and their data's bytes) found in the outbox at start."""
        with self._lock:
            self.rows += rows
            self.bytes += size

    def count_drop(self, reason: str, count: int) -> None:
        """Count dropped events by reason; log at most once a minute per reason."""
        self.dropped[reason] += count
        suppressed = self._log.allow(reason)
        if suppressed is not None:
            logger.warning(
                "eventsink dropped %d event(s) (%s); %d dropped for this reason so far",
                count,
                reason,
                self.dropped[reason],
            )

    def close(self) -> None:
        """Refuse further events and release blocked writers."""
        with self._lock:
            self.closed = True
            self._space.notify_all()
        if self._space_async is not None:
            self._space_async.set()

    def __len__(self) -> int:
        return len(self._buffer)
