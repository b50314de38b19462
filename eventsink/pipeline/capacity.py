"""How many undelivered events the pipeline holds, in one place.

:class:`Capacity` is the single owner of the ``max_events`` / ``max_bytes`` accounting. The
intake reserves room for each event it accepts (one row per sink it goes to), the lanes give it
back as they finish events (acked, dead-lettered or dropped), and the start and a replay count
what the outbox already holds. Nothing else writes these counts, so a bug in one stage cannot make
another stage's view of "full" wrong.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence

from ..event import Event


class Capacity:
    """The count of undelivered events (and their data's bytes) against the pipeline's limits.

    ``rows`` counts one per event and sink it goes to, in the intake's buffer and in the outbox,
    against ``max_events``; ``bytes`` their data's JSON size against ``max_bytes`` (counted only
    when ``max_bytes`` is set). ``copies`` is how many sinks an event goes to; ``None`` means
    every sink (``sink_count``). Thread-safe: writers reserve from any thread, lanes settle on the
    loop. :attr:`lock` is also the intake's lock, so a writer checks for room and takes it in
    one step. ``on_settle`` is called (on the settling thread) after every settle.
    """

    def __init__(
        self,
        *,
        max_events: int,
        sink_count: int,
        max_bytes: int | None = None,
        on_settle: Callable[[], None] | None = None,
    ) -> None:
        self.max_events = max_events
        self.sink_count = sink_count
        self.max_bytes = max_bytes
        self.rows = 0
        self.bytes = 0
        self.lock = threading.Lock()
        self.space = threading.Condition(self.lock)  # writers blocked on a full pipeline
        self._space_async: asyncio.Event | None = None  # a writer on the loop waiting
        self._on_settle = on_settle

    def size_of(self, event: Event, copies: int | None = None) -> int:
        """The bytes ``event`` takes (once per sink); 0 when bytes are not limited."""
        if self.max_bytes is None:
            return 0
        return len(event.data_json()) * (copies or self.sink_count)

    # -- with the lock held ----------------------------------------------------------------

    def full(self, size: int, copies: int | None = None) -> bool:
        """Whether one more event of ``size`` bytes would go over a limit (lock held)."""
        if self.rows + (copies or self.sink_count) > self.max_events:
            return True
        return self.max_bytes is not None and self.bytes + size > self.max_bytes

    def describe_full(self, copies: int | None = None) -> str:
        if self.rows + (copies or self.sink_count) > self.max_events:
            return f"the outbox holds its maximum of {self.max_events} undelivered events"
        return f"the outbox holds its maximum of {self.max_bytes:,} bytes of undelivered events"

    def reserve(self, size: int, copies: int | None = None) -> None:
        """Count one accepted event of ``size`` bytes, once per sink it goes to (lock held)."""
        self.rows += copies or self.sink_count
        self.bytes += size

    # -- from any thread -------------------------------------------------------------------

    def settle(self, rows: int, events: Sequence[Event] = ()) -> None:
        """``rows`` deliveries are finished (acked, dead-lettered or dropped): make room.

        ``events`` are the finished events, for the byte count when ``max_bytes`` is set.
        """
        size = sum(len(event.data_json()) for event in events) if self.max_bytes else 0
        with self.lock:
            self.rows = max(0, self.rows - rows)
            # Replayed dead letters are counted by number only, so this may go below zero.
            self.bytes = max(0, self.bytes - size)
            self.space.notify_all()
        if self._space_async is not None:
            self._space_async.set()
        if self._on_settle is not None:
            self._on_settle()

    def restore(self, rows: int, size: int = 0) -> None:
        """Count rows (and their data's bytes) the outbox already holds (start, replay)."""
        with self.lock:
            self.rows += rows
            self.bytes += size

    def excess(self) -> int:
        """Rows to drop to be within both limits again (for ``overflow: drop_oldest``).

        Over ``max_bytes``, the count is estimated from the average row size, so the caller
        asks again after dropping.
        """
        with self.lock:
            over = max(0, self.rows - self.max_events)
            if self.max_bytes is not None and self.bytes > self.max_bytes and self.rows:
                average = self.bytes / self.rows
                over = max(over, -(-int(self.bytes - self.max_bytes) // max(1, int(average))))
            return over

    def release_waiters(self) -> None:
        """Wake every blocked writer (the pipeline is closing)."""
        with self.lock:
            self.space.notify_all()
        if self._space_async is not None:
            self._space_async.set()

    async def wait_for_space_async(self) -> None:
        """On the loop: wait until the next settle (the caller checks again)."""
        if self._space_async is None:
            self._space_async = asyncio.Event()
        self._space_async.clear()
        await self._space_async.wait()
