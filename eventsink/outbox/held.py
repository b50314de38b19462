"""The events an outbox leased to this process as it stored them, waiting for their lane.

Every event the pipeline appends is leased at once to the appending process, so while a sink
keeps up it is sent straight from memory and never read back. When the sink falls behind, an
outbox that can read events back (:class:`~eventsink.outbox.sqlite.SQLiteOutbox`) keeps only the
oldest few batches as objects and knows the rest by the range of their handles ("spilled"),
reading them back by primary key when their turn comes. Memory then stays bounded however far
the sink falls behind.
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


class HeldEvents:
    """One destination's events leased at append and not yet taken by its lane, oldest first.

    ``in_memory`` is how many are kept as objects (``None``: all of them); the others are read
    back with ``read_back``, which requires handles that are integers increasing with each
    append.
    """

    def __init__(self, in_memory: int | None = None, read_back: ReadBack | None = None) -> None:
        if in_memory is not None and read_back is None:
            raise TypeError("HeldEvents needs read_back to keep fewer than all events in memory")
        self.in_memory = in_memory
        self._read_back = read_back
        self._hot: deque[Leased] = deque()
        self._hot_count = 0
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

    def add(self, events: Sequence[Event], handles: Sequence[Any]) -> None:
        """Hold events just appended (``handles`` aligned with ``events``)."""
        count = len(handles)
        if not count:
            return
        room = self.in_memory is None or self._hot_count + count <= self.in_memory
        if room and not self._spilled:
            self._hot.append(Leased(list(events), handles))
            self._hot_count += count
            return
        if not self._spilled:  # memory holds enough: later ones are read back in their turn
            self._spilled_first = handles[0]
        self._spilled_last = handles[-1]
        self._spilled += count

    def put_back(self, leased: Leased) -> None:
        """Give back a batch taken but not finished with: it is the next one taken."""
        self._hot.appendleft(leased)
        self._hot_count += len(leased.handles)

    def take_hot(self, limit: int) -> Leased:
        """Up to ``limit`` of the oldest events held in memory (spilled ones are not read)."""
        events: list[Event] = []
        handles: list[Any] = []
        while self._hot and len(events) < limit:
            chunk = self._hot[0]
            room = limit - len(events)
            if len(chunk.events) <= room:
                self._hot.popleft()
                events += chunk.events
                handles += chunk.handles
            else:
                events += chunk.events[:room]
                handles += chunk.handles[:room]
                self._hot[0] = chunk.subset(range(room, len(chunk.events)))
        self._hot_count -= len(events)
        return Leased(events, handles)

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
            if not self._spilled:
                return None
            # The range and its count as they are now: events added while the read awaits
            # extend the range past ``last`` and are left for the next read.
            first, last, in_range = self._spilled_first, self._spilled_last, self._spilled
            leased = await self._read_back(first, last, limit)
            found = len(leased.events) if leased is not None else 0
            if found < limit:
                # The range was read to its end, yet some are missing: only another process
                # that presumed this one dead (stalled past its lease) can have taken them.
                self._vanished += in_range - found
                self._spilled -= in_range
                self._spilled_first = last + 1
            else:
                self._spilled -= found
                self._spilled_first = leased.handles[-1] + 1  # type: ignore[union-attr]
        return leased if found else None

    async def take_oldest(self, count: int) -> Leased:
        """Up to ``count`` of the oldest held events, from memory and then read back (to
        drop them: ``overflow: drop_oldest``)."""
        taken = self.take_hot(count)
        while len(taken.events) < count and self._spilled:
            more = await self._take_spilled(count - len(taken.events))
            if more is None:
                break
            taken = Leased([*taken.events, *more.events], [*taken.handles, *more.handles])
        return taken

    def take_vanished(self) -> int:
        """How many held events were found gone from the outbox since the last call."""
        vanished, self._vanished = self._vanished, 0
        return vanished
