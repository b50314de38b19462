"""HeldEvents: the events leased at append, in memory up to a bound and read back beyond it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from eventsink.event import Event
from eventsink.outbox.base import Leased
from eventsink.outbox.held import HeldEvents


class Rows:
    """A stand-in for the outbox table: handle -> event, read back by range like SQLite."""

    def __init__(self) -> None:
        self.rows: dict[int, Event] = {}
        self.next_seq = 1
        self.reads = 0
        #: Called while a read awaits, as the pipeline's writer may append then.
        self.during_read: Callable[[], None] | None = None

    def append(self, count: int) -> tuple[list[Event], range]:
        first = self.next_seq
        events = [Event(f"{first + n:026d}", "t", "i", "c", {"n": first + n}) for n in range(count)]
        handles = range(first, first + count)
        self.rows.update(zip(handles, events, strict=True))
        self.next_seq += count
        return events, handles

    async def read_back(self, first: int, last: int, limit: int) -> Leased | None:
        self.reads += 1
        seqs = sorted(seq for seq in self.rows if first <= seq <= last)[:limit]
        await asyncio.sleep(0)
        if self.during_read is not None:
            self.during_read()
        if not seqs:
            return None
        return Leased([self.rows[seq] for seq in seqs], seqs)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 30)),
        st.tuples(st.just("take"), st.integers(1, 40)),
        st.tuples(st.just("take_oldest"), st.integers(1, 40)),
        st.tuples(st.just("add_during_reads"), st.integers(0, 30)),  # 0: stop adding
        st.tuples(st.just("take_twice_at_once"), st.integers(1, 40)),
        st.tuples(st.just("put_back"), st.just(0)),
        st.tuples(st.just("vanish"), st.integers(0, 200)),  # another process took a row
    ),
    max_size=60,
)


def data_bytes(events: list[Event]) -> int:
    return sum(len(event.data_json()) for event in events)


@settings(max_examples=300, deadline=None)
@given(
    in_memory=st.one_of(st.none(), st.integers(0, 50)),
    in_memory_bytes=st.one_of(st.none(), st.integers(0, 400)),
    steps=operations,
)
def test_held_events_come_out_in_order_exactly_once(in_memory, in_memory_bytes, steps):
    """Whatever the bounds and the order of calls, every held event is taken once, oldest
    first, or counted as vanished, and adding never grows memory past the bounds."""
    bounded = in_memory is not None or in_memory_bytes is not None

    async def run() -> None:
        rows = Rows()
        held = HeldEvents(
            in_memory, rows.read_back if bounded else None, in_memory_bytes=in_memory_bytes
        )
        added = 0
        taken: list[int] = []  # handles taken and not put back, in the order taken
        vanished = 0
        last: Leased | None = None  # the latest batch taken, which may be put back

        async def take(name: str, limit: int) -> None:
            nonlocal vanished, last
            leased = await (held.take(limit) if name == "take" else held.take_oldest(limit))
            vanished += held.take_vanished()
            last = None
            if leased is not None and leased.events:
                assert len(leased.events) <= limit
                assert [event.data["n"] for event in leased.events] == list(leased.handles)
                taken.extend(leased.handles)
                last = leased

        def add(count: int) -> None:
            nonlocal added
            events, handles = rows.append(count)
            held.add(events, handles, data_bytes(events))
            added += count

        for name, number in steps:
            if name == "add_during_reads":
                rows.during_read = (lambda count=number: add(count)) if number else None
            elif name == "take_twice_at_once":  # the lane and drop_oldest, say
                await asyncio.gather(take("take", number), take("take_oldest", number))
                last = None
            elif name == "add":
                before, before_bytes = held._hot_count, held._hot_bytes
                add(number)
                if in_memory is not None:  # memory grows only up to the bounds
                    assert held._hot_count <= max(before, in_memory)
                if in_memory_bytes is not None:
                    assert held._hot_bytes <= max(before_bytes, in_memory_bytes)
            elif name in ("take", "take_oldest"):
                await take(name, number)
            elif name == "put_back" and last is not None:
                held.put_back(last)
                del taken[len(taken) - len(last.handles) :]
                last = None
            elif name == "vanish" and held.spilled:
                # Another process took a row still in the outbox and not in memory.
                in_memory_now = {seq for chunk in held._hot for seq in chunk.handles}
                candidates = sorted(set(rows.rows) - in_memory_now - set(taken))
                if candidates:
                    del rows.rows[candidates[number % len(candidates)]]
        rows.during_read = None
        while len(held):
            await take("take", 7)
        assert await held.take(7) is None
        assert taken == sorted(set(taken))  # oldest first, none twice
        assert len(taken) + vanished == added  # none lost unaccounted
        if not bounded:
            assert vanished == 0 and rows.reads == 0

    asyncio.run(run())


def test_memory_keeps_at_most_the_bound_and_reads_the_rest_back_by_range():
    async def run() -> None:
        rows = Rows()
        held = HeldEvents(10, rows.read_back)
        for _ in range(5):
            held.add(*rows.append(4))  # 20 events: 8 in memory (the third group spills)
        assert (len(held), held.spilled) == (20, 12)
        first = await held.take(100)
        assert first is not None and list(first.handles) == list(range(1, 9))
        assert rows.reads == 0  # from memory
        second = await held.take(5)
        assert second is not None and list(second.handles) == list(range(9, 14))
        assert rows.reads == 1
        assert len(held) == 7

    asyncio.run(run())


def test_rows_gone_from_the_outbox_are_counted_as_vanished():
    async def run() -> None:
        rows = Rows()
        held = HeldEvents(0, rows.read_back)
        held.add(*rows.append(10))
        for seq in (8, 9, 10):
            del rows.rows[seq]  # another process presumed this one dead and took them
        leased = await held.take(100)
        assert leased is not None and list(leased.handles) == list(range(1, 8))
        assert held.take_vanished() == 3 and held.take_vanished() == 0
        assert len(held) == 0 and await held.take(10) is None

    asyncio.run(run())


def test_without_read_back_everything_stays_in_memory():
    held = HeldEvents()
    rows = Rows()
    held.add(*rows.append(100_000))
    assert (len(held), held.spilled) == (100_000, 0)


def test_the_byte_bound_spills_large_events_early():
    async def run() -> None:
        rows = Rows()
        held = HeldEvents(1000, rows.read_back, in_memory_bytes=60)
        for _ in range(4):
            events, handles = rows.append(4)  # about 30 bytes of data each time
            held.add(events, handles, data_bytes(events))
        assert held._hot_count == 8 and held.spilled == 8
        assert held._hot_bytes <= 60
        taken = await held.take(100)
        assert taken is not None and list(taken.handles) == list(range(1, 9))
        assert held._hot_bytes == 0  # nothing in memory counts nothing

    asyncio.run(run())


def test_one_read_back_serves_several_batches():
    """Spilled events are read back many at a time (one outbox transaction), not a batch
    at a time; the rest wait in memory, within the bound."""

    async def run() -> None:
        rows = Rows()
        held = HeldEvents(500, rows.read_back)
        held.add(*rows.append(2_000))  # more than the bound: all spilled
        assert held.spilled == 2_000
        taken = []
        while len(held):
            leased = await held.take(100)
            assert leased is not None
            taken += leased.handles
            assert held._hot_count <= 500
        assert taken == list(range(1, 2_001))
        assert rows.reads == 4  # 500 at a time: the bound, under READ_BACK (1,000)

    asyncio.run(run())
