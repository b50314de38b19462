"""Where events wait until a sink confirms them: the outbox interface.

The pipeline appends every accepted event once per configured sink's *destination* (see
:attr:`eventsink.Sink.destination`: where the events go, such as ``sqlite /home/ada/a.db``, not
the name the configuration gives the sink), leased at once to this process; each sink's lane
takes a batch, hands it to the sink, and on confirmation *acks* it (removes it). Events nobody
holds (left by an earlier run, or replayed) are *leased* a batch at a time. A retryable failure
keeps the batch leased while the lane backs off; a permanent one moves it to the dead-letter
store, from which :meth:`Outbox.replay` moves it back.

:class:`MemoryOutbox` keeps everything in process memory (fast, lost on exit: for tests and
for users who prefer speed to durability). :class:`eventsink.outbox.sqlite.SQLiteOutbox`
implements the same interface on SQLite and survives crashes.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..event import Event

if TYPE_CHECKING:
    from .held import HeldEvents


@dataclass
class Leased:
    """A batch leased from the outbox by one sink's lane.

    ``handles`` are the outbox's own references to the events (row ids for SQLite), aligned
    with ``events``. ``attempts`` and ``first_failure`` carry the batch's failure history.
    """

    events: list[Event]
    handles: Sequence[Any]
    attempts: int = 0
    first_failure: float | None = None

    def split(self) -> tuple[Leased, Leased]:
        """Two halves of this batch, each keeping the failure history."""
        middle = len(self.events) // 2
        return self.part(0, middle), self.part(middle)

    def part(self, start: int, stop: int | None = None) -> Leased:
        """The events from ``start`` to ``stop`` (a slice), keeping the failure history."""
        return Leased(
            self.events[start:stop], self.handles[start:stop], self.attempts, self.first_failure
        )

    def subset(self, indexes: Sequence[int]) -> Leased:
        """The events at ``indexes``, keeping the failure history."""
        return Leased(
            [self.events[index] for index in indexes],
            [self.handles[index] for index in indexes],
            self.attempts,
            self.first_failure,
        )


@dataclass(frozen=True)
class Failure:
    """Why a batch failed, as stored with dead letters and shown on status pages."""

    message: str
    status: int | None = None
    attempts: int = 1
    first_failure: float = field(default_factory=time.time)
    last_failure: float = field(default_factory=time.time)
    paused: bool = False  # the sink paused itself (a refused token): a person must act


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered event with the failure that put it there."""

    destination: str
    event: Event
    failure: Failure


@dataclass
class SinkBacklog:
    """What the outbox holds for one destination."""

    pending: int = 0
    in_flight: int = 0
    oldest_created: str | None = None
    dead_letters: int = 0
    bytes: int = 0  # of all the sink's event data (JSON) in the outbox
    pending_bytes: int = 0  # of the pending events' data


class Outbox(ABC):
    """The durable buffer between the writers and the sinks' lanes.

    All methods are coroutines run on the pipeline's event loop. ``destination`` arguments are
    the sinks' :attr:`~eventsink.Sink.destination` strings, which key each event's delivery:
    events left by one process are delivered only by a sink with the same destination.
    """

    #: True when other processes may append to or lease from the same outbox, so lanes must
    #: poll for work they were not told about.
    shared: bool = False
    #: True when committed events survive the process.
    durable: bool = False
    #: True when append serialises each event's data (so the pipeline first sets aside any
    #: event whose data cannot be, alone, rather than fail the whole append).
    serialises_on_append: bool = True
    #: ``max_events`` when the configuration gives none.
    default_max_events: int = 100_000
    #: What the log says to do about dead-lettered events.
    dead_letter_hint: str = (
        "They are in the dead-letter store: fix the cause, then replay them (eventsink replay)."
    )

    def __init__(self) -> None:
        self._held: dict[str, HeldEvents] = {}

    def held(self, destination: str) -> HeldEvents:
        """The events of ``destination`` leased to this process at append, for its lane."""
        held = self._held.get(destination)
        if held is None:
            held = self._held[destination] = self._new_held(destination)
        return held

    def _new_held(self, destination: str) -> HeldEvents:
        """Hold every event in memory; an outbox that can read events back keeps fewer."""
        from .held import HeldEvents

        return HeldEvents()

    @abstractmethod
    async def open(
        self, destinations: Mapping[str, str] | Sequence[str] = ()
    ) -> dict[str, SinkBacklog]:
        """Prepare storage, reclaim leases of dead processes; return each destination's backlog.

        ``destinations`` maps each destination this process delivers to onto the configured
        name of its sink (a plain sequence: destinations named after themselves). A durable
        outbox records them so that status output can tell destinations nobody serves.
        """

    async def append(
        self, events: Sequence[Event], destinations: Sequence[str], lease_for: Sequence[str] = ()
    ) -> dict[str, int]:
        """Store ``events`` once for each destination, in one commit (see
        :meth:`append_by_destination`)."""
        return await self.append_by_destination(dict.fromkeys(destinations, events), lease_for)

    @abstractmethod
    async def append_by_destination(
        self, batches: Mapping[str, Sequence[Event]], lease_for: Sequence[str] = ()
    ) -> dict[str, int]:
        """Store each destination's events (in their order), all in one commit.

        For the destinations in ``lease_for`` the new rows are leased by this process at once
        (no other process takes them) and added to :meth:`held`, from which the lane takes them;
        returns how many were held, by destination.
        """

    def append_now(
        self, batches: Mapping[str, Sequence[Event]], lease_for: Sequence[str] = ()
    ) -> dict[str, int] | None:
        """:meth:`append_by_destination` done at once on the calling thread, if this outbox can
        commit it there without waiting for anything; ``None`` when it cannot (nothing stored).

        The pipeline tries it for a request waiting for its own event's commit, which then
        skips two hops through the event loop. By default an outbox cannot.
        """
        return None

    @abstractmethod
    async def lease(self, destination: str, limit: int) -> Leased | None:
        """Up to ``limit`` of the oldest unleased events of ``destination``; ``None`` if none."""

    @abstractmethod
    async def ack(self, destination: str, leased: Leased) -> None:
        """The sink confirmed ``leased``: remove it."""

    @abstractmethod
    async def record_failure(self, destination: str, leased: Leased, failure: Failure) -> None:
        """Remember a failed attempt (attempts, last error and status) with the events."""

    @abstractmethod
    async def release(self, destination: str, leased: Leased) -> None:
        """Give ``leased`` back undelivered, for this or another process to lease again."""

    @abstractmethod
    async def dead_letter(self, destination: str, leased: Leased, failure: Failure) -> None:
        """Move ``leased`` to the dead-letter store with ``failure``."""

    @abstractmethod
    async def drop_oldest(self, destination: str, count: int) -> list[Event]:
        """Remove up to ``count`` of the oldest unleased events of ``destination`` (overflow)."""

    @abstractmethod
    async def replay(
        self,
        destination: str | None = None,
        since: str | None = None,
        ids: Sequence[str] | None = None,
    ) -> dict[str, int]:
        """Move dead letters back to be delivered again; return how many, by destination.

        ``since`` (a ULID) keeps those whose id sorts at or after it; ``ids`` picks exact ones.
        """

    @abstractmethod
    async def backlog(self) -> dict[str, SinkBacklog]:
        """Every destination's backlog (destinations with dead letters only are included)."""

    @abstractmethod
    async def dead_letters(
        self, destination: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        """The most recent dead letters, newest first."""

    async def serving(self) -> dict[str, list[str]]:
        """The destinations live processes deliver to, each with its sinks' configured names.

        A destination with pending events that is not here has no process delivering it.
        """
        return {}

    async def close(self) -> None:  # noqa: B027  # optional: nothing to release by default
        """Release leases held by this process and close storage."""
