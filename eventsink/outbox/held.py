"""The events an outbox leased to this process as it stored them, waiting for their lane.

Every event the pipeline appends is leased at once to the appending process, so while a sink
keeps up it is sent straight from memory and never read back. When the sink falls behind, an
outbox that can read events back (:class:`~eventsink.outbox.sqlite.SQLiteOutbox`) keeps only the
oldest events as objects, up to a number of events and a number of bytes of their data, and
knows the rest by the range of their handles ("spilled"), reading them back by primary key,
:data:`READ_BACK` at a time, when their turn comes. Memory then stays bounded however far the
sink falls behind.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..event import Event
from .base import Leased

#: Reads back up to ``limit`` held events with handles from ``first`` to ``last``, oldest first.
ReadBack = Callable[[int, int, int], Awaitable["Leased | None"]]

#: Spilled events read back at once (when a lane asks for fewer, the rest wait in memory): one
#: outbox transaction per batch of 100 cost more than reading the rows.
READ_BACK = 1_000


class HeldEvents:
    """One destination's events leased at append and not yet taken by its lane, oldest first.

    ``in_memory`` is how many are kept as objects (``None``: all of them) and ``in_memory_bytes``
    how many bytes of their data JSON (``None``: no byte bound); the others are read back with
    ``read_back``, which requires handles that are integers increasing with each append.
    """

    def __init__(
        self,
        in_memory: int | None = None,
        read_back: ReadBack | None = None,
        *,
        in_memory_bytes: int | None = None,
    ) -> None:
        if (in_memory is not None or in_memory_bytes is not None) and read_back is None:
            raise TypeError("HeldEvents needs read_back to keep fewer than all events in memory")
        self.in_memory = in_memory
        self.in_memory_bytes = in_memory_bytes
        self._read_back = read_back
        # Chunks as appended; the first ``_taken`` events of the first chunk are taken already
        # (taking a batch from a large chunk must not copy the rest of it each time).
        self._hot: deque[Leased] = deque()
        self._taken = 0
        self._hot_count = 0
        self._sizes: deque[int] = deque()  # each chunk's data bytes, for the byte bound
        self._hot_bytes = 0
        self._event_bytes = 0  # data bytes per event of the latest add (to size reads)
        self._spilled_first = self._spilled_last = 0
        self._spilled = 0
        self._vanished = 0
        self._reading = asyncio.Lock()

    def __len__(self) -> int:
        return self._hot_count + self._spilled

    @property
    def spilled(self) -> int:
        """How many are known only by their handles, to be read back from the outbox."""
        return self._spilled

    def __repr__(self) -> str:
        return f"<HeldEvents {self._hot_count} in memory, {self._spilled} spilled>"

    def _room(self, count: int, size: int) -> bool:
        if self.in_memory is not None and self._hot_count + count > self.in_memory:
            return False
        return self.in_memory_bytes is None or self._hot_bytes + size <= self.in_memory_bytes

    def add(self, events: Sequence[Event], handles: Sequence[Any], size: int = 0) -> None:
        """Hold events just appended (``handles`` aligned with ``events``; ``size``: the bytes
        of their data JSON, for ``in_memory_bytes``)."""
        count = len(handles)
        if not count:
            return
        self._event_bytes = size // count
        if not self._spilled and self._room(count, size):
            self._hold(Leased(list(events), handles), size)
            return
        if not self._spilled:  # memory holds enough: later ones are read back in their turn
            self._spilled_first = handles[0]
        self._spilled_last = handles[-1]
        self._spilled += count

    def _hold(self, leased: Leased, size: int) -> None:
        self._hot.append(leased)
        self._sizes.append(size)
        self._hot_count += len(leased.events)
        self._hot_bytes += size

    def put_back(self, leased: Leased) -> None:
        """Give back a batch taken but not finished with: it is the next one taken."""
        if self._taken:  # the first chunk starts where its untaken events start
            first = self._hot[0]
            self._sizes[0] = self._sizes[0] * (len(first.events) - self._taken) // len(first.events)
            self._hot[0] = first.part(self._taken)
            self._taken = 0
        self._hot.appendleft(leased)
        self._sizes.appendleft(0)  # counted when it was first held, given back when taken
        self._hot_count += len(leased.handles)

    def take_hot(self, limit: int) -> Leased:
        """Up to ``limit`` of the oldest events held in memory (spilled ones are not read)."""
        hot = self._hot
        if hot and not self._taken and len(hot[0].events) == limit:
            return self._took(hot.popleft(), self._sizes.popleft(), limit)  # the common case
        events: list[Event] = []
        handles: list[Any] = []
        size = 0
        while hot and len(events) < limit:
            chunk = hot[0]
            start, room = self._taken, limit - len(events)
            left = len(chunk.events) - start
            if left <= room:
                hot.popleft()
                chunk_size = self._sizes.popleft()
                events += chunk.events[start:]
                handles += chunk.handles[start:]
                self._taken = 0
                size += chunk_size * left // len(chunk.events)
            else:
                events += chunk.events[start : start + room]
                handles += chunk.handles[start : start + room]
                self._taken = start + room
                size += self._sizes[0] * room // len(chunk.events)
        return self._took(Leased(events, handles), size, len(events))

    def _took(self, leased: Leased, size: int, count: int) -> Leased:
        self._hot_count -= count
        self._hot_bytes = self._hot_bytes - size if self._hot_count else 0
        return leased

    async def take(self, limit: int) -> Leased | None:
        """Up to ``limit`` of the oldest held events, read back when none is in memory.

        ``None`` when nothing is held. Events that turn out to be gone from the outbox are
        counted by :meth:`take_vanished`.
        """
        if self._hot:
            return self.take_hot(limit)
        if not self._spilled:
            return None
        return await self._take_spilled(limit)

    async def _take_spilled(self, limit: int) -> Leased | None:
        assert self._read_back is not None
        async with self._reading:  # two readers of one range would both take its events
            if self._hot:  # the read before this one left events in memory: older ones
                return self.take_hot(limit)
            if not self._spilled:
                return None
            # The range and its count as they are now: events added while the read awaits
            # extend the range past ``last`` and are left for the next read.
            first, last, in_range = self._spilled_first, self._spilled_last, self._spilled
            wanted = max(limit, self._read_ahead())
            leased = await self._read_back(first, last, wanted)
            found = len(leased.events) if leased is not None else 0
            if found < wanted:
                # The range was read to its end, yet some are missing: only another process
                # that presumed this one dead (stalled past its lease) can have taken them.
                self._vanished += in_range - found
                self._spilled -= in_range
                self._spilled_first = last + 1
            else:
                self._spilled -= found
                self._spilled_first = leased.handles[-1] + 1  # type: ignore[union-attr]
        if not found:
            return None
        assert leased is not None
        if found > limit:  # the rest waits in memory, after any batch put back meanwhile
            rest = leased.part(limit)
            self._hold(rest, sum(len(event.data_json()) for event in rest.events))
            leased = leased.part(0, limit)
        return leased

    def _read_ahead(self) -> int:
        """How many spilled events one read may bring into memory."""
        ahead = READ_BACK if self.in_memory is None else min(READ_BACK, self.in_memory)
        if self.in_memory_bytes is not None and self._event_bytes:
            ahead = min(ahead, self.in_memory_bytes // self._event_bytes)
        return ahead

    async def take_oldest(self, count: int) -> Leased:
        """Up to ``count`` of the oldest held events, from memory and then read back (to
        drop them: ``overflow: drop_oldest``)."""
        taken = self.take_hot(count)
        while len(taken.events) < count and (self._spilled or self._hot):
            more = await self.take(count - len(taken.events))
            if more is None:
                break
            taken = Leased([*taken.events, *more.events], [*taken.handles, *more.handles])
        return taken

    def take_vanished(self) -> int:
        """How many held events were found gone from the outbox since the last call."""
        vanished, self._vanished = self._vanished, 0
        return vanished
