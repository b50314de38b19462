"""An outbox that stores an event only when its first delivery does not simply succeed.

``eventsink send`` reading a file into a local sink (:attr:`eventsink.Sink.local`) needs no
copy of each event in the outbox: the file is the events' durable record, their ids are the
same each time it is read, and the sink ignores an id it already holds, so a run killed
half-way is made whole by running it again. :class:`DeferredOutbox` keeps appended events in
memory only and writes one to its SQLite file when something other than a plain success
happens to it:

* a failed attempt (to be retried, or dead-lettered and replayable with ``eventsink replay``),
* still undelivered when the pipeline stops (a timeout, Ctrl-C): the next ``eventsink send``
  to the same destination delivers it, as with the ordinary outbox.

Everything else is :class:`~eventsink.outbox.sqlite.SQLiteOutbox`'s: the rows earlier runs
left are leased and delivered first, dead letters and ``eventsink status`` read the same file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..event import Event
from .base import Failure, Leased
from .held import HeldEvents
from .sqlite import SQLiteOutbox

#: An event held in memory only has this handle until it is written to the file.
IN_MEMORY = None


class DeferredOutbox(SQLiteOutbox):
    """A :class:`SQLiteOutbox` whose appended events stay in memory until they must not.

    Only for events whose source can be read again with the same ids (see the module
    docstring): a ``kill -9`` loses the events held in memory.
    """

    #: Events in memory are bounded by ``max_events``: a few sink batches keep the sink busy.
    default_max_events = 50_000
    #: Data is serialised only for the events written down: those read from a file always
    #: can be (they were JSON), and a local sink mostly needs the values, not the JSON.
    serialises_on_append = False

    def __repr__(self) -> str:
        return f"<DeferredOutbox {self.path or self.runner!r}>"

    def _new_held(self, destination: str) -> HeldEvents:
        return HeldEvents()  # all in memory: they are not in the file to be read back

    async def append_by_destination(
        self, batches: Mapping[str, Sequence[Event]], lease_for: Sequence[str] = ()
    ) -> dict[str, int]:
        held = {}
        stored = {}
        for destination, events in batches.items():
            if not events:
                continue
            if destination in lease_for:
                self.held(destination).add(events, [IN_MEMORY] * len(events))
                held[destination] = len(events)
            else:  # no lane of this process delivers it: only the file can keep it
                stored[destination] = events
        if stored:
            await self._insert(stored)
        return held

    def append_now(
        self, batches: Mapping[str, Sequence[Event]], lease_for: Sequence[str] = ()
    ) -> dict[str, int] | None:
        return None  # nobody waits for a commit that this outbox does not make

    async def _write_down(self, destination: str, leased: Leased) -> None:
        """Write the events of ``leased`` held in memory only to the file, leased to this
        process, and give ``leased`` their row ids."""
        handles = list(leased.handles)
        missing = [index for index, handle in enumerate(handles) if handle is IN_MEMORY]
        if not missing:
            return
        events = [leased.events[index] for index in missing]
        last, _ = (await self._insert({destination: events}, [destination]))[destination]
        for index, seq in zip(missing, range(last - len(events) + 1, last + 1), strict=True):
            handles[index] = seq
        leased.handles = handles

    async def ack(self, destination: str, leased: Leased) -> None:
        if all(handle is IN_MEMORY for handle in leased.handles):
            return  # the common case: delivered at once, never written
        rows = [
            (event, handle)
            for event, handle in zip(leased.events, leased.handles, strict=True)
            if handle is not IN_MEMORY
        ]
        await super().ack(destination, Leased([event for event, _ in rows], [h for _, h in rows]))

    async def record_failure(self, destination: str, leased: Leased, failure: Failure) -> None:
        await self._write_down(destination, leased)
        await super().record_failure(destination, leased, failure)

    async def release(self, destination: str, leased: Leased) -> None:
        await self._write_down(destination, leased)
        await super().release(destination, leased)

    async def dead_letter(self, destination: str, leased: Leased, failure: Failure) -> None:
        await self._write_down(destination, leased)
        await super().dead_letter(destination, leased, failure)
