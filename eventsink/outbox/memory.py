"""The in-memory outbox: fast, and lost when the process ends (tests, speed over durability)."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from ..event import Event
from .base import DeadLetter, Failure, Leased, Outbox, SinkBacklog


class MemoryOutbox(Outbox):
    """An outbox in process memory: fast, and lost when the process ends."""

    def __init__(self) -> None:
        self._pending: dict[str, deque[Event]] = {}
        self._in_flight: dict[str, int] = {}
        self._dead: list[DeadLetter] = []

    def _queue(self, sink: str) -> deque[Event]:
        queue = self._pending.get(sink)
        if queue is None:
            queue = self._pending[sink] = deque()
            self._in_flight[sink] = 0
        return queue

    async def open(self, sinks: Sequence[str]) -> dict[str, SinkBacklog]:
        for sink in sinks:
            self._queue(sink)
        return await self.backlog()

    async def append(
        self, events: Sequence[Event], sinks: Sequence[str], lease_for: Sequence[str] = ()
    ) -> dict[str, Leased]:
        leased = {}
        for sink in sinks:
            if sink in lease_for:
                self._queue(sink)
                self._in_flight[sink] += len(events)
                leased[sink] = Leased(list(events), range(len(events)))
            else:
                self._queue(sink).extend(events)
        return leased

    async def lease(self, sink: str, limit: int) -> Leased | None:
        queue = self._queue(sink)
        if not queue:
            return None
        count = min(limit, len(queue))
        events = [queue.popleft() for _ in range(count)]
        self._in_flight[sink] += count
        return Leased(events, [None] * count)

    async def ack(self, sink: str, leased: Leased) -> None:
        self._in_flight[sink] -= len(leased.handles)

    async def record_failure(self, sink: str, leased: Leased, failure: Failure) -> None:
        pass  # the lane keeps the history in the Leased object

    async def release(self, sink: str, leased: Leased) -> None:
        self._in_flight[sink] -= len(leased.events)
        self._queue(sink).extendleft(reversed(leased.events))

    async def dead_letter(self, sink: str, leased: Leased, failure: Failure) -> None:
        self._in_flight[sink] -= len(leased.events)
        self._dead.extend(DeadLetter(sink, event, failure) for event in leased.events)

    async def drop_oldest(self, sink: str, count: int) -> list[Event]:
        queue = self._queue(sink)
        return [queue.popleft() for _ in range(min(count, len(queue)))]

    async def replay(
        self, sink: str | None = None, since: str | None = None, ids: Sequence[str] | None = None
    ) -> dict[str, int]:
        wanted = set(ids) if ids is not None else None
        keep, moved = [], {}
        for letter in self._dead:
            if (
                (sink is None or letter.sink == sink)
                and (since is None or letter.event.id >= since)
                and (wanted is None or letter.event.id in wanted)
            ):
                self._queue(letter.sink).append(letter.event)
                moved[letter.sink] = moved.get(letter.sink, 0) + 1
            else:
                keep.append(letter)
        self._dead = keep
        return moved

    async def backlog(self) -> dict[str, SinkBacklog]:
        result = {}
        for sink, queue in self._pending.items():
            result[sink] = SinkBacklog(
                pending=len(queue),
                in_flight=self._in_flight[sink],
                oldest_created=queue[0].created if queue else None,
            )
        for letter in self._dead:
            result.setdefault(letter.sink, SinkBacklog()).dead_letters += 1
        return result

    async def dead_letters(self, sink: str | None = None, limit: int = 100) -> list[DeadLetter]:
        letters = [letter for letter in self._dead if sink is None or letter.sink == sink]
        return letters[::-1][:limit]
