"""The front of the pipeline: making events, and the bounded hand-off to the outbox writer.

:class:`EventFactory` turns ``(table, data)`` into an :class:`~eventsink.event.Event`: it
normalises the data, gives it a monotonic ULID, the instance and the creation time, then runs
the ``eventsink_enrich`` and ``eventsink_filter`` hooks. It runs on the writer's own thread.

:class:`Intake` is the thread-safe buffer between writers and the event loop. Writers append
under a lock and wake the loop only when the buffer goes from empty to non-empty, so a burst of
writes costs one cross-thread wake-up, not one per event. It applies the overflow policy when
the pipeline's :class:`~eventsink.pipeline.capacity.Capacity` (``max_events``, ``max_bytes``)
has no room (the capacity itself is counted there, not here), and ``max_uncommitted``: the
events accepted but not yet committed to the outbox, which are held in memory. Beyond it
writers wait for the next commit (``drop_newest`` drops instead), so a writer faster than the
outbox never grows the process's memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pluggy

from ..event import Event, normalise
from ..exceptions import ClosedError, EventError, OverflowDropped
from ..ids import IdGenerator
from ..plugins import Hooks
from .capacity import Capacity
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
        if not event_id:
            event_id, now = self.ids.new()
            event = Event(event_id, table, self.instance, created or now, data)
        else:
            event = Event(event_id, table, self.instance, created or self.ids.now(), data)
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


def _settle_like(future: asyncio.Future[None], done: asyncio.Future[None]) -> None:
    if future.done():
        return
    if done.cancelled():
        future.cancel()
    elif done.exception() is None:
        future.set_result(None)
    else:
        future.set_exception(done.exception())  # type: ignore[arg-type]


class Intake:
    """The thread-safe buffer of accepted events not yet in the outbox.

    Room is :class:`~eventsink.pipeline.capacity.Capacity`'s to give: the intake reserves it
    for each accepted event and applies the overflow policy when there is none; the lanes give
    it back. ``wake`` is called (from any thread) when the buffer becomes non-empty.
    """

    def __init__(
        self,
        *,
        capacity: Capacity,
        overflow: str,
        wake: Callable[[], None],
        max_uncommitted: int | None = None,
    ) -> None:
        self.max_uncommitted = max_uncommitted
        self.uncommitted = 0  # accepted, not yet committed (or dropped) by the writer
        self.capacity = capacity
        self.overflow = overflow
        self._wake = wake
        self._lock = capacity.lock  # room is checked and taken in one step
        self._buffer: list[Event] = []
        #: The sinks of buffered events that go to only some of them, by ``id(event)``.
        self._routes: dict[int, frozenset[str]] = {}
        self._group: asyncio.Future[None] | None = None
        #: Events accepted so far; those for only some sinks are also counted per sink in
        #: ``accepted_routed``.
        self.accepted = 0
        self.accepted_routed: Counter[str] = Counter()
        self._routed = 0  # how many of ``accepted`` went to only some sinks
        self.closed = False
        self.dropped: Counter[str] = Counter()
        self._log = LogThrottle(60.0)

    def accepted_for(self, sink: str) -> int:
        """How many accepted events go to the sink named ``sink``."""
        return self.accepted - self._routed + self.accepted_routed[sink]

    @property
    def rows(self) -> int:
        """Undelivered events counted against ``max_events`` (one per sink it goes to)."""
        return self.capacity.rows

    @property
    def bytes(self) -> int:
        """Their data's bytes, counted against ``max_bytes`` (0 when it is not set)."""
        return self.capacity.bytes

    # -- writers ---------------------------------------------------------------------------

    def _size(self, event: Event, copies: int | None) -> int:
        """The bytes ``event`` adds (all its sinks), checked to fit at all; 0 without a limit."""
        capacity = self.capacity
        size = capacity.size_of(event, copies)
        if capacity.max_bytes is not None and size > capacity.max_bytes:
            self.count_drop("too_large", 1)
            sinks = copies or capacity.sink_count
            copies = f" (once per sink, {sinks} sinks)" if sinks > 1 else ""
            raise OverflowDropped(
                f"the event's data is {size:,} bytes{copies}, more than max_bytes "
                f"({capacity.max_bytes:,}) can ever hold"
            )
        return size

    def _unsettled(self) -> bool:
        return self.max_uncommitted is not None and self.uncommitted >= self.max_uncommitted

    def _full(self, size: int, copies: int | None) -> bool:
        return self._unsettled() or self.capacity.full(size, copies)

    def _describe_full(self, copies: int | None) -> str:
        if self._unsettled():
            return f"{self.max_uncommitted} events are waiting for the outbox (max_uncommitted)"
        return self.capacity.describe_full(copies)

    def _accept(self, event: Event, size: int, sinks: frozenset[str] | None) -> bool:
        """Append under the lock; return True when the caller must wake the loop."""
        self._buffer.append(event)
        self.capacity.reserve(size, None if sinks is None else len(sinks))
        self.accepted += 1
        if sinks is not None:
            self._routes[id(event)] = sinks
            self._routed += 1
            self.accepted_routed.update(sinks)
        self.uncommitted += 1
        return len(self._buffer) == 1

    def put(
        self,
        event: Event,
        *,
        block_timeout: float | None = None,
        sinks: frozenset[str] | None = None,
    ) -> None:
        """Accept ``event`` from any thread except the pipeline's loop thread.

        ``sinks`` names the sinks it goes to when not every sink (checked by the pipeline).
        """
        copies = None if sinks is None else len(sinks)
        size = 0 if self.capacity.max_bytes is None else self._size(event, copies)
        with self._lock:
            if self.closed:
                raise ClosedError("the pipeline is closed and accepts no more events")
            if self._full(size, copies):
                self._overflow_locked(size, copies, block_timeout)
            wake = self._accept(event, size, sinks)
        if wake:
            self._wake()

    def _overflow_locked(self, size: int, copies: int | None, block_timeout: float | None) -> None:
        if self.overflow == "block":
            if not self.capacity.space.wait_for(
                lambda: not self._full(size, copies) or self.closed, timeout=block_timeout
            ):
                self.count_drop("overflow", 1)
                raise OverflowDropped(f"the outbox stayed full for {block_timeout}s")
            if self.closed:
                raise ClosedError("the pipeline is closed and accepts no more events")
        elif self.overflow == "drop_newest":
            self.count_drop("overflow", 1)
            raise OverflowDropped(self._describe_full(copies))
        elif self._unsettled():  # drop_oldest drops committed rows: wait for the commit
            if not self.capacity.space.wait_for(
                lambda: not self._unsettled() or self.closed, timeout=block_timeout
            ):
                self.count_drop("overflow", 1)
                raise OverflowDropped(self._describe_full(copies))
            if self.closed:
                raise ClosedError("the pipeline is closed and accepts no more events")
        # drop_oldest: accept; the writer task drops the oldest rows after appending.

    def put_on_loop(
        self,
        event: Event,
        *,
        wait_committed: bool,
        sinks: frozenset[str] | None = None,
        wake: bool = True,
    ) -> tuple[bool, asyncio.Future[None] | None]:
        """Accept ``event`` on the loop thread unless it must wait for room: ``(True, the
        future of its group's commit)`` (to be awaited shielded; ``None`` without
        ``wait_committed``), or ``(False, None)``, and nothing changed (:meth:`put_async`
        waits). Raises for an event the overflow policy drops, or a closed intake.

        ``wake=False``: the caller stores the buffer itself, or wakes the writer if it cannot.
        """
        copies = None if sinks is None else len(sinks)
        size = self._size(event, copies)
        with self._lock:
            if self.closed:
                raise ClosedError("the pipeline is closed and accepts no more events")
            full = self._full(size, copies)
            if full and self.overflow == "drop_newest":
                self.count_drop("overflow", 1)
                raise OverflowDropped(self._describe_full(copies))
            if full and (self.overflow != "drop_oldest" or self._unsettled()):
                return False, None
            became_busy = self._accept(event, size, sinks)
            group = None
            if wait_committed:
                if self._group is None:
                    self._group = asyncio.get_running_loop().create_future()
                group = self._group
        if became_busy and wake:
            self._wake()
        return True, group

    async def put_async(
        self,
        event: Event,
        *,
        wait_committed: bool,
        sinks: frozenset[str] | None = None,
        wake: bool = True,
    ) -> asyncio.Future[None] | None:
        """:meth:`put_on_loop`, waiting for room as long as it takes; returns the future."""
        while True:
            accepted, group = self.put_on_loop(
                event, wait_committed=wait_committed, sinks=sinks, wake=wake
            )
            if accepted:
                return group
            await self.capacity.wait_for_space_async()

    # -- the loop side ---------------------------------------------------------------------

    def take(
        self,
    ) -> tuple[list[Event], dict[int, frozenset[str]], asyncio.Future[None] | None]:
        """Everything buffered, the sinks of those for only some (by ``id(event)``), and the
        future to resolve once it is committed."""
        with self._lock:
            events, self._buffer = self._buffer, []
            routes, self._routes = self._routes, {}
            group, self._group = self._group, None
        return events, routes, group

    def untake(
        self,
        events: list[Event],
        routes: dict[int, frozenset[str]],
        group: asyncio.Future[None] | None,
    ) -> None:
        """Put back what :meth:`take` returned, ahead of anything buffered since."""
        with self._lock:
            self._buffer[:0] = events
            self._routes.update(routes)
            if group is not None:
                later, self._group = self._group, group
                if later is not None:  # settle the later group's waiters with this one
                    group.add_done_callback(lambda done: _settle_like(later, done))

    def committed(self, count: int) -> None:
        """The writer has committed (or dropped) ``count`` taken events: make room."""
        with self._lock:
            was_unsettled = self._unsettled()
            self.uncommitted = max(0, self.uncommitted - count)
        if was_unsettled:  # only writers waiting for max_uncommitted wait for a commit
            self.capacity.release_waiters()

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
        self.capacity.release_waiters()

    def __len__(self) -> int:
        return len(self._buffer)
