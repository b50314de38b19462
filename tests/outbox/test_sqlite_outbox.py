"""The durable SQLite outbox: leases, acks, dead letters, replay, and surviving kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections import Counter

import orjson
import pytest

from eventsink.config import parse_config
from eventsink.event import Event
from eventsink.ids import IdGenerator
from eventsink.outbox import Failure, MemoryOutbox
from eventsink.outbox.sqlite import SQLiteOutbox
from eventsink.pipeline.pipeline import Pipeline
from eventsink.plugins import lookup, sink_classes
from eventsink.testing import MemorySink, async_wait_until, plugin_manager, wait_until


def make_events(count: int) -> list[Event]:
    ids = IdGenerator()
    events = []
    for n in range(count):
        event_id, created = ids.new()
        events.append(Event(event_id, "t", "test", created, {"n": n}))
    return events


@pytest.fixture(params=["sqlite", "memory"])
def outbox(request, tmp_path):
    if request.param == "sqlite":
        return SQLiteOutbox(tmp_path / "outbox.db")
    return MemoryOutbox()


class TestOutboxContract:
    """Both outboxes lease the oldest events, ack, dead-letter and replay alike."""

    async def test_lease_ack_cycle(self, outbox):
        await outbox.open(["a", "b"])
        events = make_events(25)
        await outbox.append(events, ["a", "b"])
        first = await outbox.lease("a", 10)
        assert [e.id for e in first.events] == [e.id for e in events[:10]]
        assert first.events[3].data == {"n": 3}
        second = await outbox.lease("a", 100)
        assert len(second.events) == 15
        assert await outbox.lease("a", 10) is None
        await outbox.ack("a", first)
        backlog = await outbox.backlog()
        assert backlog["a"].in_flight == 15 and backlog["a"].pending == 0
        assert backlog["b"].pending == 25  # each sink has its own copy
        await outbox.release("a", second)
        again = await outbox.lease("a", 100)
        assert [e.id for e in again.events] == [e.id for e in events[10:]]
        await outbox.close()

    async def test_every_ack_is_kept_across_later_leases(self, outbox):
        await outbox.open(["a"])
        await outbox.append(make_events(30), ["a"])
        for _ in range(3):
            await outbox.ack("a", await outbox.lease("a", 10))
        backlog = (await outbox.backlog()).get("a")
        assert backlog is None or (backlog.pending, backlog.in_flight) == (0, 0)
        await outbox.close()

    async def test_append_with_lease_holds_the_rows(self, outbox):
        await outbox.open(["a"])
        events = make_events(5)
        assert await outbox.append(events, ["a"], ["a"]) == {"a": 5}
        assert len(outbox.held("a")) == 5
        assert await outbox.lease("a", 10) is None  # already leased
        leased = await outbox.held("a").take(10)
        assert [e.id for e in leased.events] == [e.id for e in events]
        assert len(outbox.held("a")) == 0
        await outbox.ack("a", leased)
        backlog = await outbox.backlog()
        assert "a" not in backlog or backlog["a"].in_flight == 0
        await outbox.close()

    async def test_dead_letter_and_replay(self, outbox):
        await outbox.open(["a"])
        events = make_events(4)
        await outbox.append(events, ["a"])
        leased = await outbox.lease("a", 10)
        failure = Failure("table not found", status=404, attempts=2)
        await outbox.dead_letter("a", leased, failure)
        letters = await outbox.dead_letters()
        assert sorted(letter.event.id for letter in letters) == [e.id for e in events]
        assert letters[0].failure.status == 404
        assert letters[0].failure.message == "table not found"
        assert (await outbox.backlog())["a"].dead_letters == 4
        moved = await outbox.replay(since=events[2].id)
        assert moved == {"a": 2}
        back = await outbox.lease("a", 10)
        assert [e.id for e in back.events] == [e.id for e in events[2:]]
        assert len(await outbox.dead_letters()) == 2
        await outbox.close()

    async def test_drop_oldest(self, outbox):
        await outbox.open(["a"])
        events = make_events(5)
        await outbox.append(events, ["a"])
        dropped = await outbox.drop_oldest("a", 2)
        assert [e.id for e in dropped] == [e.id for e in events[:2]]
        remaining = await outbox.lease("a", 10)
        assert [e.id for e in remaining.events] == [e.id for e in events[2:]]
        await outbox.close()


class TestLeases:
    """Leases of dead processes come back; live leases are respected."""

    async def test_lease_of_a_dead_process_is_reclaimed_on_open(self, tmp_path):
        path = tmp_path / "outbox.db"
        first = SQLiteOutbox(path)
        await first.open(["a"])
        await first.append(make_events(3), ["a"])
        assert await first.lease("a", 10) is not None
        await first.runner.close()  # "crash": the lease stays in the file
        dead = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        )
        with sqlite3.connect(path) as db:
            owner = first.owner.split(":")
            owner[1] = dead.stdout.strip()  # a pid that no longer runs
            db.execute("update eventsink_outbox set lease_owner = ?", [":".join(owner)])
        second = SQLiteOutbox(path)
        backlog = await second.open(["a"])
        assert backlog["a"].pending == 3
        assert len((await second.lease("a", 10)).events) == 3
        await second.close()

    async def test_live_lease_is_not_taken_by_another_outbox(self, tmp_path):
        path = tmp_path / "outbox.db"
        one, two = SQLiteOutbox(path), SQLiteOutbox(path)
        await one.open(["a"])
        await two.open(["a"])
        await one.append(make_events(4), ["a"])
        assert len((await one.lease("a", 10)).events) == 4
        assert await two.lease("a", 10) is None
        await one.close()  # close releases its leases...
        assert len((await two.lease("a", 10)).events) == 4  # ...for the other to take
        await two.close()


CHILD = textwrap.dedent(
    """
    import sys
    import eventsink
    path, outbox, ids_path, count, rate = sys.argv[1:6]
    client = eventsink.Client(sink="file", path=path, outbox=outbox, batch_limit=10,
                              max_rate=int(rate), time_period=60, instance="child")
    with open(ids_path, "w") as ids:
        for n in range(int(count)):
            ids.write(client.write("t", {"n": n}) + "\\n")
            ids.flush()
    print("written", flush=True)
    if rate == "1000000":
        client.close()
    else:
        sys.stdin.read()  # wait to be killed
    """
)


class TestCrash:
    """A process killed with SIGKILL loses nothing committed: the next start delivers it."""

    def test_kill_9_then_restart_delivers_everything(self, tmp_path):
        script = tmp_path / "child.py"
        script.write_text(CHILD)
        out, outbox, ids_path = tmp_path / "events.jsonl", tmp_path / "outbox.db", tmp_path / "ids"
        args = [sys.executable, str(script), str(out), str(outbox), str(ids_path)]
        # First run: one batch of 10 a minute, so almost everything is pending when killed.
        child = subprocess.Popen(
            [*args, "500", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert child.stdout.readline().strip() == "written"

        def committed() -> bool:
            with sqlite3.connect(outbox) as db:
                pending = db.execute(
                    "select coalesce(sum(events), 0) from eventsink_outbox"
                ).fetchone()[0]
            delivered = len(out.read_bytes().splitlines()) if out.exists() else 0
            return pending + delivered >= 500

        wait_until(committed, timeout=20)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        written = ids_path.read_text().split()
        assert len(written) == 500
        # Second run: no rate limit; it writes nothing new and delivers what was left.
        restart = subprocess.run(
            [*args, "0", "1000000"], capture_output=True, text=True, timeout=60
        )
        assert restart.returncode == 0, restart.stderr
        delivered = [orjson.loads(line)["id"] for line in out.read_bytes().splitlines()]
        assert set(delivered) == set(written)
        # A batch in flight at the kill may be appended twice by the file sink, never more.
        assert len(delivered) - len(set(delivered)) <= 10
        with sqlite3.connect(outbox) as db:
            assert (
                db.execute("select coalesce(sum(events), 0) from eventsink_outbox").fetchone()[0]
                == 0
            )


SURVIVOR = textwrap.dedent(
    """
    import sys
    import eventsink
    path, outbox = sys.argv[1:3]
    client = eventsink.Client(sink="file", path=path, outbox=outbox, instance="survivor")
    print("ready", flush=True)
    sys.stdin.read()  # deliver whatever shows up in the shared outbox until told to stop
    client.close()
    """
)


class TestSharedOutbox:
    """Two processes share one outbox: when one is killed, another delivering to the same
    destination delivers its events."""

    @pytest.mark.slow
    def test_a_running_process_takes_over_a_killed_ones_events(self, tmp_path):
        child, survivor_script = tmp_path / "child.py", tmp_path / "survivor.py"
        child.write_text(CHILD)
        survivor_script.write_text(SURVIVOR)
        outbox, ids_path = tmp_path / "outbox.db", tmp_path / "ids"
        # One file, two spellings of its path: the same destination (the resolved path).
        stalled_out = tmp_path / "events.jsonl"
        survivor_out = tmp_path / "sub" / ".." / "events.jsonl"
        (tmp_path / "sub").mkdir()
        survivor = subprocess.Popen(
            [sys.executable, str(survivor_script), str(survivor_out), str(outbox)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert survivor.stdout.readline().strip() == "ready"
            # One batch of 10 a minute: almost everything is still held by it when killed.
            args = [str(child), str(stalled_out), str(outbox), str(ids_path), "300", "1"]
            writer = subprocess.Popen(
                [sys.executable, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert writer.stdout.readline().strip() == "written"

            def delivered(path):
                if not path.exists():
                    return []
                return [orjson.loads(line)["id"] for line in path.read_bytes().splitlines()]

            def committed() -> bool:  # Client.write returns before the commit
                with sqlite3.connect(outbox) as db:
                    held = db.execute(
                        "select coalesce(sum(events), 0) from eventsink_outbox"
                    ).fetchone()[0]
                return held + len(delivered(stalled_out)) >= 300

            wait_until(committed, timeout=20)
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait()
            written = set(ids_path.read_text().split())
            stalled = delivered(stalled_out)
            assert len(stalled) <= 10  # one batch a minute: the rest is left in the outbox

            # Both sinks deliver to the same file, so the survivor delivers the dead
            # process's rows after its next heartbeat (10 s).
            wait_until(lambda: set(delivered(survivor_out)) >= written, timeout=30)
            everything = delivered(survivor_out)
            # The batch the killed process had in flight may be delivered by both, never more.
            assert len(everything) - len(set(everything)) <= 10
        finally:
            survivor.communicate("", timeout=30)
        with sqlite3.connect(outbox) as db:
            assert (
                db.execute("select coalesce(sum(events), 0) from eventsink_outbox").fetchone()[0]
                == 0
            )


def test_memory_and_sqlite_agree_on_event_data(tmp_path):
    async def roundtrip(outbox):
        await outbox.open(["a"])
        await outbox.append(make_events(1), ["a"])
        leased = await outbox.lease("a", 1)
        await outbox.close()
        return leased.events[0].data

    assert asyncio.run(roundtrip(SQLiteOutbox(tmp_path / "o.db"))) == asyncio.run(
        roundtrip(MemoryOutbox())
    )


class GatedSink(MemorySink):
    """A memory sink whose sends wait until ``gate`` is set."""

    def __init__(self, **config):
        super().__init__(**config)
        self.gate = asyncio.Event()

    async def send(self, batch):
        await self.gate.wait()
        await super().send(batch)


def gated_pipeline(outbox, **config) -> Pipeline:
    settings = parse_config(
        {"sink": "memory", "instance": "t", "flush_interval": 0.01, **config},
        lambda name, key: lookup(sink_classes(plugin_manager()), name, "sink", key).options,
    )
    return Pipeline(settings, outbox=outbox, sinks={"memory": GatedSink()})


async def rows_by_owner(outbox: SQLiteOutbox) -> Counter:
    def read(connection):
        return connection.execute(
            "select lease_owner, coalesce(sum(events), 0) from eventsink_outbox "
            "group by lease_owner"
        ).fetchall()

    return Counter(dict(await outbox._run(read)))  # _run applies deferred acks first


class TestHolding:
    """Rows a process appends are held by it; beyond a few batches they are read back."""

    async def test_events_beyond_memory_are_read_back_in_order_exactly_once(self, tmp_path):
        outbox = SQLiteOutbox(tmp_path / "outbox.db")
        outbox.held_in_memory = 100
        pipeline = gated_pipeline(outbox, batch_limit=10)
        await pipeline.start()
        written = [await pipeline.write_async("t", {"n": n}) for n in range(1000)]
        lane = pipeline.lanes["memory"]
        assert lane.held.spilled > 0
        # Every row is held by this process: another process cannot take any of them, and
        # none was leased with an UPDATE of its own.
        assert await rows_by_owner(outbox) == Counter({outbox.owner: 1000})
        backlog = (await outbox.backlog())["memory"]
        assert (backlog.pending, backlog.in_flight) == (0, 1000)
        pipeline.sinks["memory"].gate.set()
        assert await pipeline.flush(timeout=10)
        sink = pipeline.sinks["memory"]
        assert [event.id for batch in sink.batches for event in batch] == written
        await pipeline.close()
        assert await SQLiteOutbox(tmp_path / "outbox.db").open(["memory"]) == {}

    def test_events_appended_while_a_read_back_awaits_are_delivered(self, tmp_path, monkeypatch):
        """A batch limit above the memory bound, with the writer appending while the lane
        reads back: the events appended meanwhile are read in their turn, not presumed gone
        (this lost 8% of 100,000 events to a Client with batch_limit=10,000)."""
        import sqlite3

        from eventsink import Client

        monkeypatch.setattr(SQLiteOutbox, "held_in_memory", 1000)
        target = tmp_path / "events.db"
        with Client(
            sink="sqlite", path=str(target), outbox=str(tmp_path / "outbox.db"), batch_limit=5000
        ) as client:
            for n in range(50_000):
                client.write("events", {"n": n})
            assert client.flush(timeout=60)
        with sqlite3.connect(target) as connection:
            assert connection.execute(
                "select count(*), count(distinct n) from events"
            ).fetchone() == (
                50_000,
                50_000,
            )

    async def test_reading_back_skips_rows_claimed_inside_the_range(self, tmp_path):
        outbox = SQLiteOutbox(tmp_path / "outbox.db")
        other = SQLiteOutbox(tmp_path / "outbox.db")  # another process, appending for anyone
        outbox.held_in_memory = 0  # every appended event is read back
        await outbox.open(["a"])
        await other.open(["a"])
        first, second = make_events(5), make_events(5)
        await outbox.append(first, ["a"], ["a"])
        await other.append(make_events(5), ["a"])
        await outbox.append(second, ["a"], ["a"])
        assert outbox.held("a").spilled == 10
        claimed = await outbox.lease("a", 10)  # the other's rows, now in flight here
        assert claimed is not None and len(claimed.events) == 5
        limited = await outbox.held("a").take(3)
        assert limited is not None and [e.id for e in limited.events] == [e.id for e in first[:3]]
        back = await outbox.held("a").take(100)
        assert back is not None
        assert [e.id for e in back.events] == [e.id for e in first[3:] + second]
        assert len(outbox.held("a")) == 0 and outbox.held("a").take_vanished() == 0
        await other.close()
        await outbox.close()

    async def test_drop_oldest_reaches_spilled_events(self, tmp_path):
        outbox = SQLiteOutbox(tmp_path / "outbox.db")
        outbox.held_in_memory = 100
        pipeline = gated_pipeline(outbox, batch_limit=10, max_events=500, overflow="drop_oldest")
        await pipeline.start()
        for n in range(1000):
            await pipeline.write_async("t", {"n": n})
        assert pipeline.intake.dropped["overflow"] == 500
        assert sum((await rows_by_owner(outbox)).values()) == 500
        pipeline.sinks["memory"].gate.set()
        assert await pipeline.flush(timeout=10)
        delivered = sorted(event.data["n"] for event in pipeline.sinks["memory"].events)
        # The batch with the sink and the one taken to be sent next are no longer droppable:
        # the oldest of the rest were dropped.
        taken = next(index for index, n in enumerate(delivered) if n >= 500)
        assert len(delivered) == 500 and taken <= 20
        assert delivered == [*range(taken), *range(500 + taken, 1000)]
        await pipeline.close()


class TestOwners:
    """A holder renews its hold; the rows of one that stopped renewing return to everyone."""

    async def test_rows_of_a_holder_that_stopped_renewing_return(self, tmp_path):
        path = tmp_path / "outbox.db"
        stalled = SQLiteOutbox(path, lease_seconds=0.3)
        alive = SQLiteOutbox(path, lease_seconds=0.3)
        await stalled.open(["a"])
        await alive.open(["a"])
        await stalled.append(make_events(5), ["a"], ["a"])
        assert await alive.lease("a", 10) is None  # held by a live process
        stalled._heartbeat.cancel()  # it stops renewing, as a frozen process would

        leased = await async_wait_until(lambda: alive.lease("a", 10))
        assert len(leased.events) == 5
        await alive.close()
        await stalled.runner.close()

    async def test_a_live_holder_keeps_its_rows_past_lease_seconds(self, tmp_path):
        path = tmp_path / "outbox.db"
        holder = SQLiteOutbox(path, lease_seconds=0.2)
        other = SQLiteOutbox(path, lease_seconds=0.2)
        await holder.open(["a"])
        await other.open(["a"])
        await holder.append(make_events(3), ["a"], ["a"])
        start = asyncio.get_running_loop().time()
        while asyncio.get_running_loop().time() - start < 1.0:  # five lease periods
            assert await other.lease("a", 10) is None
            await asyncio.sleep(0.05)
        await holder.close()
        assert len((await other.lease("a", 10)).events) == 3  # close gives them back
        await other.close()

    async def test_rows_of_an_earlier_process_with_this_pid_are_reclaimed(self, tmp_path):
        # A container restarted as pid 1 gets the pid of the process that was killed.
        path = tmp_path / "outbox.db"
        first = SQLiteOutbox(path)
        await first.open(["a"])
        await first.append(make_events(4), ["a"], ["a"])
        first._heartbeat.cancel()
        await first.runner.close()  # killed: its owner row and holds stay in the file
        from eventsink.outbox import sqlite as sqlite_outbox

        sqlite_outbox._OPEN_OWNERS.discard(first.owner)  # that process is gone
        second = SQLiteOutbox(path)
        assert (await second.open(["a"]))["a"].pending == 4
        assert len((await second.lease("a", 10)).events) == 4
        await second.close()

    async def test_a_holder_presumed_dead_registers_again(self, tmp_path, caplog):
        outbox = SQLiteOutbox(tmp_path / "outbox.db", lease_seconds=0.15)
        await outbox.open(["a"])

        def forget(connection):
            connection.execute("delete from eventsink_owners")

        await outbox.runner.run(forget)

        def owners(connection):
            return [row[0] for row in connection.execute("select owner from eventsink_owners")]

        async def registered_again():
            return sorted(await outbox.runner.run(owners)) == [outbox.owner, outbox.claimer]

        await async_wait_until(registered_again)
        assert "did not renew its hold" in caplog.text
        await outbox.close()


class TestSmallWorkInline:
    """A few rows' work finds the outbox thread idle: it runs on the caller's thread, unless
    another writer holds the lock (then the thread waits for it) or every commit must fsync."""

    async def test_runs_on_the_calling_thread_when_idle(self, tmp_path):
        import threading

        from eventsink.outbox.sqlite import ThreadRunner

        runner = ThreadRunner(str(tmp_path / "o.db"))
        where = []

        def work(connection):
            where.append(threading.get_ident())
            connection.execute("create table if not exists t (n)")
            connection.execute("insert into t values (1)")

        await runner.run(work)  # opens the connection, on the thread
        await runner.run(work, small=True)
        await runner.run(work)  # not small: the thread
        here = threading.get_ident()
        assert where[0] != here and where[1] == here and where[2] != here
        await runner.close()

    async def test_another_writer_sends_it_to_the_thread_without_blocking_the_loop(self, tmp_path):
        import threading

        from eventsink.outbox.sqlite import ThreadRunner

        path = tmp_path / "o.db"
        runner = ThreadRunner(str(path))
        where = []

        def work(connection):
            where.append(threading.get_ident())
            connection.execute("create table if not exists t (n)")
            connection.execute("insert into t values (1)")

        await runner.run(work)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("begin immediate")  # another process's write lock
        running = asyncio.ensure_future(runner.run(work, small=True))
        ticks = 0
        while ticks < 20:  # the loop keeps turning while the work waits for the lock
            await asyncio.sleep(0.01)
            ticks += 1
        assert not running.done()
        other.execute("commit")
        other.close()
        await running
        assert where[1] != threading.get_ident()
        with sqlite3.connect(path) as check:
            assert check.execute("select count(*) from t").fetchone() == (2,)
        await runner.close()

    async def test_fsync_durability_never_runs_inline(self, tmp_path):
        import threading

        from eventsink.outbox.sqlite import ThreadRunner

        runner = ThreadRunner(str(tmp_path / "o.db"), durability="fsync")
        where = []
        await runner.run(lambda connection: where.append(threading.get_ident()))
        await runner.run(lambda connection: where.append(threading.get_ident()), small=True)
        assert threading.get_ident() not in where
        await runner.close()


class TestOneStatementInline:
    """``run_now(one_statement=True)``: the statement is its own transaction, no begin/commit."""

    async def test_commits_by_itself_and_leaves_no_transaction_open(self, tmp_path):
        from eventsink.outbox.sqlite import ThreadRunner

        path = tmp_path / "o.db"
        runner = ThreadRunner(str(path))
        await runner.run(lambda connection: connection.execute("create table t (n unique)"))
        done, _ = runner.run_now(
            lambda connection: connection.execute("insert into t values (1)"), one_statement=True
        )
        assert done
        with sqlite3.connect(path) as check:  # another connection sees it: committed
            assert check.execute("select n from t").fetchall() == [(1,)]
        with pytest.raises(sqlite3.IntegrityError):  # not a lock: the caller hears of it
            runner.run_now(
                lambda connection: connection.execute("insert into t values (1)"),
                one_statement=True,
            )
        assert not runner._inline.in_transaction
        await runner.close()

    async def test_another_writers_lock_means_not_now_and_nothing_written(self, tmp_path):
        from eventsink.outbox.sqlite import ThreadRunner

        path = tmp_path / "o.db"
        runner = ThreadRunner(str(path))
        await runner.run(lambda connection: connection.execute("create table t (n)"))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("begin immediate")
        done, result = runner.run_now(
            lambda connection: connection.execute("insert into t values (2)"), one_statement=True
        )
        assert (done, result) == (False, None)
        assert not runner._inline.in_transaction
        other.execute("commit")
        assert other.execute("select count(*) from t").fetchone() == (0,)
        other.close()
        await runner.close()
