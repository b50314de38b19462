"""The in-memory outbox: fast, and lost when the process ends (tests, speed over durability)."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

from ..event import Event
from .base import DeadLetter, Failure, Leased, Outbox, SinkBacklog


class MemoryOutbox(Outbox):
    """An outbox in process memory: fast, and lost when the process ends."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: dict[str, deque[Event]] = {}
        self._in_flight: dict[str, int] = {}
        self._dead: list[DeadLetter] = []
        self._serving: dict[str, list[str]] = {}

    def _queue(self, destination: str) -> deque[Event]:
        queue = self._pending.get(destination)
        if queue is None:
            queue = self._pending[destination] = deque()
            self._in_flight[destination] = 0
        return queue

    async def open(
        self, destinations: Mapping[str, str] | Sequence[str] = ()
    ) -> dict[str, SinkBacklog]:
        if not isinstance(destinations, Mapping):
            destinations = {destination: destination for destination in destinations}
        self._serving = {destination: [name] for destination, name in destinations.items()}
        for destination in destinations:
            self._queue(destination)
        return await self.backlog()

    async def serving(self) -> dict[str, list[str]]:
        return dict(self._serving)

    async def append_by_destination(
        self, batches: Mapping[str, Sequence[Event]], lease_for: Sequence[str] = ()
    ) -> dict[str, int]:
        held = {}
        for destination, events in batches.items():
            if not events:
                continue
            if destination in lease_for:
                self._queue(destination)
                self._in_flight[destination] += len(events)
                self.held(destination).add(events, range(len(events)))
                held[destination] = len(events)
            else:
                self._queue(destination).extend(events)
        return held

    async def lease(self, destination: str, limit: int) -> Leased | None:
        queue = self._queue(destination)
        if not queue:
            return None
        count = min(limit, len(queue))
        events = [queue.popleft() for _ in range(count)]
        self._in_flight[destination] += count
        return Leased(events, [None] * count)

    async def ack(self, destination: str, leased: Leased) -> None:
        self._in_flight[destination] -= len(leased.handles)

    async def record_failure(self, destination: str, leased: Leased, failure: Failure) -> None:
        pass  # the lane keeps the history in the Leased object

    async def release(self, destination: str, leased: Leased) -> None:
        self._in_flight[destination] -= len(leased.events)
        self._queue(destination).extendleft(reversed(leased.events))

    async def dead_letter(self, destination: str, leased: Leased, failure: Failure) -> None:
        self._in_flight[destination] -= len(leased.events)
        self._dead.extend(DeadLetter(destination, event, failure) for event in leased.events)

    async def drop_oldest(self, destination: str, count: int) -> list[Event]:
        queue = self._queue(destination)
        return [queue.popleft() for _ in range(min(count, len(queue)))]

    async def replay(
        self,
        destination: str | None = None,
        since: str | None = None,
        ids: Sequence[str] | None = None,
    ) -> dict[str, int]:
        wanted = set(ids) if ids is not None else None
        keep, moved = [], {}
        for letter in self._dead:
            if (
                (destination is None or letter.destination == destination)
                and (since is None or letter.event.id >= since)
                and (wanted is None or letter.event.id in wanted)
            ):
                self._queue(letter.destination).append(letter.event)
                moved[letter.destination] = moved.get(letter.destination, 0) + 1
            else:
                keep.append(letter)
        self._dead = keep
        return moved

    async def backlog(self) -> dict[str, SinkBacklog]:
        result = {}
        for destination, queue in self._pending.items():
            result[destination] = SinkBacklog(
                pending=len(queue),
                in_flight=self._in_flight[destination],
                oldest_created=queue[0].created if queue else None,
            )
        for letter in self._dead:
            result.setdefault(letter.destination, SinkBacklog()).dead_letters += 1
        return result

    async def dead_letters(
        self, destination: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        letters = [
            letter
            for letter in self._dead
            if destination is None or letter.destination == destination
        ]
        return letters[::-1][:limit]
