"""Packs: many events of one append in one outbox row, and everything else seeing events.

Whatever happens to some of a pack's events (acks in any order, a failure, a release, a dead
letter, the process closing or dying), the outbox must hold exactly the events not yet
confirmed, each once, and give each back with its data byte for byte.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventsink.event import Event
from eventsink.outbox import Failure, Leased
from eventsink.outbox.packs import PACK_EVENTS, PackLedger, decode, encode
from eventsink.outbox.sqlite import SMALL_APPEND, SQLiteOutbox

from . import outbox_ids
from .test_sqlite_outbox import make_events

MANY = SMALL_APPEND + 1  # the fewest events one append stores as a pack


def rows(path) -> list[tuple[int, int]]:
    """``(seq, events)`` of every row of the outbox file."""
    with sqlite3.connect(path) as connection:
        return connection.execute(
            "select seq, events from eventsink_outbox order by seq"
        ).fetchall()


def stored(path) -> list[str]:
    with sqlite3.connect(path) as connection:
        return outbox_ids(connection)


async def settle(outbox: SQLiteOutbox) -> None:
    """Apply the acks still waiting to join a transaction."""
    await outbox._run(lambda connection: None)


async def holding_a_pack(path, count: int) -> tuple[SQLiteOutbox, list[Event]]:
    """An open outbox at ``path`` that has just appended ``count`` events as one pack, held."""
    outbox = SQLiteOutbox(path)
    await outbox.open(["a"])
    events = make_events(count)
    await outbox.append(events, ["a"], ["a"])
    return outbox, events


#: An outbox table as eventsink wrote it in schema version 2 (one event per row).
VERSION_2 = """
    create table eventsink_outbox (seq integer primary key, destination text not null,
        id text not null, table_name text not null, instance text not null,
        created text not null, data blob not null,
        attempts integer not null default 0, lease_owner text, first_failure real,
        last_error text, last_status integer, paused integer not null default 0);
    create index eventsink_outbox_unleased on eventsink_outbox (destination, seq)
        where lease_owner is null;
    create table eventsink_meta (key text primary key, value);
    insert into eventsink_meta values ('schema_version', 2);
"""


def version_2_outbox(directory: Path, rows: str) -> Path:
    """An outbox file as eventsink's schema version 2 wrote it, holding ``rows`` (SQL)."""
    path = directory / "outbox.db"
    with sqlite3.connect(path) as connection:
        connection.executescript(VERSION_2 + rows)
    return path


text = st.text(st.characters(codec="utf-8"), max_size=12)


@given(
    st.lists(
        st.tuples(text.filter(bool), text, text, st.binary(max_size=40)), min_size=1, max_size=30
    )
)
def test_a_pack_gives_back_every_event_exactly(fields):
    events = [
        Event(f"{n:026d}", table, instance, created, data_json=data)
        for n, (table, instance, created, data) in enumerate(fields)
    ]
    header, data = encode(events)
    back = decode(header, data)
    assert [(e.id, e.table, e.instance, e.created, e.data_json()) for e in back] == [
        (e.id, e.table, e.instance, e.created, e.data_json()) for e in events
    ]


@given(
    st.lists(st.integers(1, 8), min_size=1, max_size=8),  # sizes of packs (1: a plain row)
    st.data(),
)
def test_the_ledger_deletes_a_pack_only_once_every_event_is_acked(sizes, data):
    ledger = PackLedger()
    packs, plain, seq = {}, set(), 0
    for size in sizes:
        if size == 1:
            plain.add(seq + 1)
        else:
            ledger.add(seq + 1, seq + size, "a")
            packs[seq + size] = set(range(seq + 1, seq + size + 1))
        seq += size
    order = data.draw(st.permutations(range(1, seq + 1)))
    cut = data.draw(st.integers(0, seq))
    acked: set[int] = set()
    for chunk in (order[:cut], order[cut:]):
        runs = [(s, s) for s in sorted(chunk)]
        single, done = ledger.ack(runs)
        acked |= set(chunk)
        assert {s for first, last in single for s in range(first, last + 1)} == set(chunk) & plain
        for pack in done:
            assert packs.pop(pack.last) <= acked
    assert not packs and not len(ledger)


async def test_many_events_of_one_append_take_one_row(tmp_path):
    outbox = SQLiteOutbox(tmp_path / "outbox.db")
    await outbox.open(["a"])
    events = make_events(PACK_EVENTS + MANY)
    await outbox.append(events, ["a"], ["a"])
    few = make_events(SMALL_APPEND)
    await outbox.append(few, ["a"], ["a"])  # few: rows of one event
    assert [count for _, count in rows(tmp_path / "outbox.db")] == [
        PACK_EVENTS,
        MANY,
        *[1] * SMALL_APPEND,
    ]
    backlog = (await outbox.backlog())["a"]
    assert backlog.in_flight == PACK_EVENTS + MANY + SMALL_APPEND
    assert backlog.bytes == sum(len(e.data_json()) for e in events + few)
    assert backlog.oldest_created == events[0].created
    await outbox.close()


async def test_read_back_across_packs_in_any_batch_size(tmp_path):
    outbox = SQLiteOutbox(tmp_path / "outbox.db")
    outbox.held_in_memory = 0  # every appended event is read back
    await outbox.open(["a"])
    appended = []
    for size in (MANY, 3, 50, MANY + 5):
        events = make_events(size)
        await outbox.append(events, ["a"], ["a"])
        appended += [e.id for e in events]
    taken: list[str] = []
    held = outbox.held("a")
    for limit in (7, 1, 13, 40, 2, 100):
        leased = await held.take(limit)
        if leased is None:
            break
        assert len(leased.events) <= limit
        taken += [e.id for e in leased.events]
        await outbox.ack("a", leased)
    assert taken == appended and held.take_vanished() == 0
    await settle(outbox)
    assert rows(tmp_path / "outbox.db") == []
    await outbox.close()


async def test_a_failure_inside_a_pack_keeps_exactly_the_unconfirmed_events(tmp_path):
    path = tmp_path / "outbox.db"
    outbox, events = await holding_a_pack(path, 60)
    held = outbox.held("a")
    first, second, third, rest = [await held.take(n) for n in (10, 10, 10, 30)]
    await outbox.ack("a", second)
    await outbox.record_failure("a", first, Failure("timed out", attempts=1))
    await settle(outbox)
    # The pack became rows of one event: all but the acked ones, the failure on the first ten.
    assert stored(path) == [e.id for e in events[:10] + events[20:]]
    with sqlite3.connect(path) as connection:
        assert connection.execute(
            "select count(*), max(events) from eventsink_outbox where attempts = 1"
        ).fetchone() == (10, 1)
    await outbox.dead_letter("a", third, Failure("refused", status=400))
    await outbox.release("a", rest)
    await outbox.ack("a", first)
    await settle(outbox)
    assert sorted(d.event.id for d in await outbox.dead_letters()) == [e.id for e in events[20:30]]
    again = await outbox.lease("a", 100)  # released: anyone may take them
    assert [e.id for e in again.events] == [e.id for e in events[30:]]
    assert [e.data_json() for e in again.events] == [e.data_json() for e in events[30:]]
    await outbox.ack("a", again)
    await settle(outbox)
    assert stored(path) == []
    await outbox.close()


async def test_closing_leaves_the_unacked_events_of_a_pack_for_the_next_process(tmp_path):
    path = tmp_path / "outbox.db"
    outbox, events = await holding_a_pack(path, 100)
    held = outbox.held("a")
    await outbox.ack("a", await held.take(30))
    in_flight = await held.take(30)
    await outbox.ack("a", Leased(in_flight.events[::2], in_flight.handles[::2]))
    await outbox.close()
    left = [e.id for e in events[30:60][1::2] + events[60:]]
    assert stored(path) == left
    assert {count for _, count in rows(path)} == {1}
    after = SQLiteOutbox(path)
    assert (await after.open(["a"]))["a"].pending == len(left)
    leased = await after.lease("a", 1000)
    assert [e.id for e in leased.events] == left
    await after.close()


async def test_the_packs_of_a_process_killed_return_whole(tmp_path):
    """kill -9 with a pack half acked: the next process gets every event of it back (those
    already delivered again: the ids make that harmless), as rows it can claim."""
    path = tmp_path / "outbox.db"
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal
        from eventsink.outbox.sqlite import SQLiteOutbox
        from tests.outbox.test_sqlite_outbox import make_events

        async def main():
            outbox = SQLiteOutbox({str(path)!r})
            await outbox.open(["a"])
            await outbox.append(make_events(300), ["a"], ["a"])
            held = outbox.held("a")
            await outbox.ack("a", await held.take(150))
            await outbox._run(lambda connection: None)
            print("ready", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        asyncio.run(main())
        """
    )
    process = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert process.stdout == "ready\n", process.stderr
    assert [count for _, count in rows(path)] == [300]
    before = stored(path)
    outbox = SQLiteOutbox(path)
    assert (await outbox.open(["a"]))["a"].pending == 300
    leased = await outbox.lease("a", 1000)
    assert [e.id for e in leased.events] == before and len(set(before)) == 300
    assert [n for _, n in rows(path)] == [1] * 300
    await outbox.close()


async def test_an_outbox_of_schema_version_2_is_upgraded_in_place(tmp_path):
    path = version_2_outbox(
        tmp_path,
        """
        insert into eventsink_outbox (destination, id, table_name, instance, created, data)
            values ('a', '01J00000000000000000000001', 't', 'old', 'now', '{"n": 1}');
        """,
    )
    outbox = SQLiteOutbox(path)
    assert (await outbox.open(["a"]))["a"].pending == 1
    events = make_events(MANY)
    await outbox.append(events, ["a"], ["a"])
    leased = await outbox.lease("a", 10)
    assert [e.data for e in leased.events] == [{"n": 1}]
    await outbox.close()
    assert stored(path) == ["01J00000000000000000000001", *(e.id for e in events)]


operations = st.lists(
    st.tuples(
        # "reopen" once in about twelve steps: the rest mostly work inside packs.
        st.sampled_from(
            ["append", *["take"] * 3, *["ack"] * 3, *["fail"] * 2, "release", "dead", "reopen"]
        ),
        st.integers(0, 60),
    ),
    min_size=12,
    max_size=40,
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations, st.integers(0, 60))
async def test_the_outbox_holds_exactly_what_is_not_confirmed(tmp_path_factory, steps, memory):
    """A model: whatever is appended, taken, acked, failed, released, dead-lettered and
    whenever the process closes and another opens, the outbox holds each unconfirmed event
    once (and, until the rest of their pack is, acked events of a pack), its backlog counts
    exactly the unconfirmed ones, and the dead letters are exactly the dead-lettered ones."""
    path = tmp_path_factory.mktemp("model") / "outbox.db"
    outbox = SQLiteOutbox(path)
    outbox.held_in_memory = memory
    await outbox.open(["a"])
    owed: list[str] = []  # appended, not acked or dead-lettered
    dead: list[str] = []
    acked: set[str] = set()
    batches: list[Leased] = []
    for step, value in steps:
        if step == "append":
            events = make_events([1, 5, MANY, 60][value % 4])
            await outbox.append(events, ["a"], ["a"])
            owed += [e.id for e in events]
        elif step == "take":
            limit = value % 40 + 1
            leased = await outbox.held("a").take(limit) or await outbox.lease("a", limit)
            if leased is not None:
                batches.append(leased)
        elif step == "reopen":
            await outbox.close()
            outbox = SQLiteOutbox(path)
            outbox.held_in_memory = memory
            await outbox.open(["a"])
            batches = []
        elif batches:
            leased = batches.pop(value % len(batches))
            ids = [e.id for e in leased.events]
            if step == "ack":
                await outbox.ack("a", leased)
                owed = [i for i in owed if i not in ids]
                acked |= set(ids)
            elif step == "fail":
                await outbox.record_failure("a", leased, Failure("timed out"))
                batches.append(leased)
            elif step == "release":
                await outbox.release("a", leased)
            else:
                await outbox.dead_letter("a", leased, Failure("refused", status=400))
                owed = [i for i in owed if i not in ids]
                dead += ids
        await settle(outbox)
        # Every unconfirmed event once; besides, only acked events of a pack not yet done.
        held = stored(path)
        assert len(held) == len(set(held)) and set(owed) <= set(held)
        assert set(held) - set(owed) <= acked
        backlog = (await outbox.backlog()).get("a")
        assert (backlog.pending + backlog.in_flight if backlog else 0) == len(owed)
    assert sorted(d.event.id for d in await outbox.dead_letters(limit=10_000)) == sorted(dead)
    await outbox.close()
    assert sorted(stored(path)) == sorted(owed)


async def test_a_read_back_opens_only_the_packs_it_needs(tmp_path, monkeypatch):
    """Reading back 10 events must not decode every spilled pack (each read once decoded up
    to ``limit`` packs: a million events for a read of 1,000, and the live path slowed ~50x
    once events spilled)."""
    from eventsink.outbox import packs

    decoded = []
    real = packs.decode
    monkeypatch.setattr(packs, "decode", lambda *row: decoded.append(1) or real(*row))
    outbox = SQLiteOutbox(tmp_path / "outbox.db")
    outbox.held_in_memory = 0
    await outbox.open(["a"])
    for _ in range(20):
        await outbox.append(make_events(100), ["a"], ["a"])
    leased = await outbox.read_leased("a", 1, 2000, 10)
    assert leased is not None and len(leased.events) == 10 and decoded == [1]
    leased = await outbox.read_leased("a", 95, 2000, 10)  # across the end of the first pack
    assert list(leased.handles) == list(range(95, 105)) and len(decoded) == 3
    await outbox.close()


async def test_a_holder_presumed_dead_never_deletes_what_is_not_its_own(tmp_path):
    """A process stalled past its lease has its packs taken apart and delivered by another.
    What the stalled one acks when it wakes must not delete the other's rows, nor cross off
    events of its own new pack: no seq is ever given out twice, even once its row is gone."""
    from eventsink.testing import async_wait_until

    path = tmp_path / "outbox.db"
    stalled = SQLiteOutbox(path, lease_seconds=0.3)
    alive = SQLiteOutbox(path, lease_seconds=0.3)
    await stalled.open(["a"])
    await alive.open(["a"])
    await stalled.append(make_events(40), ["a"], ["a"])  # seqs 1-40
    first = await stalled.held("a").take(20)
    rest = await stalled.held("a").take(20)
    stalled._heartbeat.cancel()  # frozen
    taken = await async_wait_until(lambda: alive.lease("a", 100))
    assert list(taken.handles) == list(range(1, 41))
    await alive.ack("a", taken)
    await settle(alive)
    assert stored(path) == []
    theirs = make_events(30)
    await alive.append(theirs, ["a"], ["a"])
    await stalled.ack("a", first)  # it wakes
    mine = make_events(30)
    await stalled.append(mine, ["a"], ["a"])
    await stalled.ack("a", rest)
    new = await stalled.held("a").take(30)
    assert list(new.handles) == list(range(71, 101))  # after theirs, 41-70: none reused
    await stalled.ack("a", new.part(10))  # ten of its new events stay owed
    await settle(stalled)
    assert stored(path) == [e.id for e in theirs + mine]  # its pack: until all are acked
    await alive.close()
    await stalled.close()
    assert stored(path) == [e.id for e in theirs + mine[:10]]


async def test_an_outbox_of_schema_version_2_keeps_its_seqs_and_never_reuses_them(tmp_path):
    path = version_2_outbox(
        tmp_path,
        """
        insert into eventsink_outbox (seq, destination, id, table_name, instance, created,
            data, attempts, last_error) values
            (7, 'a', '01J00000000000000000000007', 't', 'old', 'now', '{"n": 7}', 2, 'x'),
            (9, 'a', '01J00000000000000000000009', 't', 'old', 'now', '{"n": 9}', 0, null);
        """,
    )
    outbox = SQLiteOutbox(path)
    assert (await outbox.open(["a"]))["a"].pending == 2
    leased = await outbox.lease("a", 10)
    assert list(leased.handles) == [7, 9] and leased.attempts == 2
    await outbox.ack("a", leased)
    await settle(outbox)
    await outbox.append(make_events(1), ["a"], ["a"])
    assert [seq for seq, _ in rows(path)] == [10]  # not 1: 9 was given out
    await outbox.close()
    with sqlite3.connect(path) as connection:
        assert connection.execute(
            "select count(*) from sqlite_master where name = 'eventsink_outbox_unleased'"
        ).fetchone() == (1,)


def test_an_event_acked_twice_finishes_its_pack_once():
    ledger = PackLedger()
    ledger.add(1, 10, "a")
    assert ledger.ack([(3, 10)]) == ([], [])
    single, done = ledger.ack([(1, 2), (5, 6)])  # the pack is done at 2; 5 and 6 again
    assert single == [] and [(pack.first, pack.last) for pack in done] == [(1, 10)]
    assert len(ledger) == 0 and ledger.ack([(3, 3)]) == ([(3, 3)], [])
