"""Packed rows: the many events of one append to one destination in one outbox row.

A row per event costs SQLite about 2.5 µs to insert and delete (most of the durable outbox's
cost per event); a row holding a thousand events costs about as much as one. So when a writer
appends more than a few events for a destination its lane holds, :class:`SQLiteOutbox` stores
them as *packs*: rows whose ``events`` column says how many events they hold, whose ``data``
is the events' data JSON one after another and whose ``pack`` column is :func:`encode`'s
header (every event's id, table, instance, created time and data length). The envelope
columns of a pack row are its first event's, so ``oldest created`` reads the same.

Every event of a pack still has a ``seq`` of its own: a pack row's ``seq`` is the seq of its
*last* event, and the ``events - 1`` seqs before it are reserved for the others (the table
numbers rows with ``AUTOINCREMENT``, after the highest seq it ever gave out, so nothing else
ever takes them). A process hands its lanes those seqs as handles, exactly as for rows of one
event, and keeps a :class:`PackLedger` of its packs: an acked event is crossed off, and the row
is deleted once all of its events are. Anything else that must record something about some
of a pack's events (a failure, a release, a dead letter, the process closing or dying) first
*unpacks* it: the events not yet acked become rows of one event under their own seqs, and
everything else in the outbox works on those rows as before. Packs are therefore always held
by a live process: claims, ``move``, ``drop`` and ``drop_oldest`` (which look only at rows
nobody holds) never meet one.

A crash loses nothing: an unacked pack returns whole to the next process (its events already
acked are delivered again, which the ids make harmless).
"""

from __future__ import annotations

import bisect
import itertools
import sqlite3
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..event import Event

#: Events in one pack at most: after a crash, the events of a pack its process had already
#: acked are delivered again; this bounds how many.
PACK_EVENTS = 1_000


def encode(events: Sequence[Event]) -> tuple[bytes, bytes]:
    """The ``pack`` header and the ``data`` of a pack of ``events``."""
    datas = [event.data_json() for event in events]
    header = orjson.dumps(
        [
            [event.id for event in events],
            [event.table for event in events],
            [event.instance for event in events],
            [event.created for event in events],
            list(map(len, datas)),
        ]
    )
    return header, b"".join(datas)


def decode(header: bytes, data: bytes) -> list[Event]:
    """The events of a pack, in order."""
    ids, tables, instances, created, lengths = orjson.loads(header)
    ends = list(itertools.accumulate(lengths))
    starts = [0, *ends[:-1]]
    return [
        Event(event_id, table, instance, when, data_json=data[start:end])
        for event_id, table, instance, when, start, end in zip(
            ids, tables, instances, created, starts, ends, strict=True
        )
    ]


def expand(row: Sequence[Any]) -> list[tuple[int, Event]]:
    """``(seq, event)`` of each event in a row of ``seq, id, table_name, instance, created,
    data, ..., events, pack`` (the last two columns): one for a row of one event."""
    seq, count, header = row[0], row[-2], row[-1]
    if count == 1:
        return [(seq, Event(row[1], row[2], row[3], row[4], data_json=row[5]))]
    return list(zip(range(seq - count + 1, seq + 1), decode(header, row[5]), strict=True))


def unpack(
    connection: sqlite3.Connection,
    rows: Iterable[Sequence[Any]],
    *,
    lease_owner: str | None,
    acked: Mapping[int, set[int]] | None = None,
) -> int:
    """Turn pack rows (``seq, destination, data, events, pack``) into rows of one event each,
    under their own seqs, held by ``lease_owner``; ``acked[seq]``: seqs of that pack's events
    that are delivered already and are left out. Returns how many events became rows."""
    made = 0
    for seq, destination, data, count, header in rows:
        done = acked.get(seq, set()) if acked else set()
        connection.execute("delete from eventsink_outbox where seq = ?", [seq])
        connection.executemany(
            "insert into eventsink_outbox (seq, destination, id, table_name, instance, created, "
            "data, lease_owner) values (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (own, destination, e.id, e.table, e.instance, e.created, e.data_json(), lease_owner)
                for own, e in zip(
                    range(seq - count + 1, seq + 1), decode(header, data), strict=True
                )
                if own not in done
            ],
        )
        made += count - len(done)
    return made


@dataclass
class Pack:
    """One pack row of this process: its events' seqs and those acked so far."""

    first: int
    last: int
    destination: str
    acked: set[int] = field(default_factory=set)

    @property
    def size(self) -> int:
        """How many events the pack holds."""
        return self.last - self.first + 1


class PackLedger:
    """The packs this process appended and has not finished, by seq (loop thread only).

    New packs always come after every seq given out before (see the module docstring), so the
    ledger is kept in order by appending.
    """

    def __init__(self) -> None:
        self._lasts: list[int] = []
        self._packs: dict[int, Pack] = {}

    def __len__(self) -> int:
        return len(self._packs)

    def add(self, first: int, last: int, destination: str) -> None:
        self._lasts.append(last)
        self._packs[last] = Pack(first, last, destination)

    def acked(self) -> Counter[str]:
        """How many events of the packs here are acked (their rows still hold them), by
        destination."""
        counts: Counter[str] = Counter()
        for pack in self._packs.values():
            if pack.acked:
                counts[pack.destination] += len(pack.acked)
        return counts

    def _overlapping(self, first: int, last: int) -> list[Pack]:
        packs = []
        for index in range(bisect.bisect_left(self._lasts, first), len(self._lasts)):
            pack = self._packs[self._lasts[index]]
            if pack.first > last:
                break
            packs.append(pack)
        return packs

    def _remove(self, pack: Pack) -> None:
        del self._packs[pack.last]
        del self._lasts[bisect.bisect_left(self._lasts, pack.last)]

    def ack(self, runs: Iterable[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[Pack]]:
        """Cross off the events in ``runs`` (ascending ``(first, last)`` seqs); return the runs
        of seqs outside any pack (rows of one event) and the packs now wholly acked (removed
        from the ledger: their rows are to be deleted)."""
        if not self._packs:
            return list(runs), []
        single: list[tuple[int, int]] = []
        done: dict[int, Pack] = {}  # by last seq: an event acked twice must not count twice
        for first, last in runs:
            start = first
            for pack in self._overlapping(first, last):
                if pack.first > start:
                    single.append((start, pack.first - 1))
                pack.acked.update(range(max(first, pack.first), min(last, pack.last) + 1))
                if len(pack.acked) == pack.size:
                    done[pack.last] = pack
                start = pack.last + 1
            if start <= last:
                single.append((start, last))
        for pack in done.values():
            self._remove(pack)
        return single, list(done.values())

    def put_back(self, packs: Iterable[Pack]) -> None:
        """Return packs :meth:`take` removed (their rows were not unpacked after all)."""
        for pack in packs:
            bisect.insort(self._lasts, pack.last)
            self._packs[pack.last] = pack

    def take(self, runs: Iterable[tuple[int, int]] | None = None) -> list[Pack]:
        """Remove and return the packs holding any seq of ``runs`` (every pack: ``None``), to
        be unpacked."""
        if runs is None:
            packs = list(self._packs.values())
        else:
            seen: dict[int, Pack] = {}
            for first, last in runs:
                for pack in self._overlapping(first, last):
                    seen[pack.last] = pack
            packs = list(seen.values())
        for pack in packs:
            self._remove(pack)
        return packs
