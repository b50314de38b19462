"""The durable outbox's cost: appends/s in group commits, and events/s through it to a null sink.

Run: ``python bench/bench_outbox.py [--events 200000] [--rounds 5] [--all-cores]``. The process
is pinned to one core unless ``--all-cores`` is given (the issue's target is per core; the
outbox's SQLite thread then shares that core with the event loop and the writer). Every figure
is measured in this one run with the in-memory outbox beside it, so the ratios hold on a noisy
machine; the live path, the noisiest (its WAL checkpoints wait on the disk), is measured in
``--rounds`` alternating rounds and reported as the median.

1. **Live: write -> outbox -> null sink.** One thread writes through ``Client`` (batch 100, no
   rate limit) as fast as it can; events are leased to the lane in the commit that stores them
   (in packs when the writer outruns the commit), kept in memory by the outbox up to 20,000 per
   sink and read back beyond that. Measured first, while the process holds nothing else.
2. **Backlog: outbox -> null sink.** Events already in the outbox when the pipeline starts (as
   after an outage or a restart) are leased back 100 at a time, delivered and acked.
3. **Appends.** ``SQLiteOutbox.append`` of pre-made events in groups of 1, 10, 100 and 1000
   (one commit per group, as the pipeline's writer does), with ``durability: normal`` (WAL,
   ``synchronous=NORMAL``) and ``durability: fsync`` (``synchronous=FULL``), as rows of one
   event each (appended for anyone to lease); and with ``normal``, leased to this process at
   append as the pipeline's writer does, which stores groups of more than 16 as packs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench_pipeline import SAMPLE, through_client  # the same live measurement

from eventsink import build
from eventsink.event import Event
from eventsink.ids import IdGenerator
from eventsink.outbox import MemoryOutbox, Outbox
from eventsink.outbox.sqlite import SQLiteOutbox

SINK = "null"


def make_events(count: int) -> list[Event]:
    ids = IdGenerator()
    events = []
    for n in range(count):
        event_id, created = ids.new()
        events.append(Event(event_id, "requests", "bench", created, {**SAMPLE, "n": n}))
    return events


async def appends_per_second(
    outbox: Outbox, events: list[Event], group: int, *, leased: bool = False
) -> float:
    await outbox.open([SINK])
    lease_for = [SINK] if leased else []
    start = time.perf_counter()
    for offset in range(0, len(events), group):
        await outbox.append(events[offset : offset + group], [SINK], lease_for)
    elapsed = time.perf_counter() - start
    await outbox.close()
    return len(events) / elapsed


async def backlog(outbox: Outbox, events: list[Event]) -> float:
    await outbox.open([SINK])
    for offset in range(0, len(events), 1000):
        await outbox.append(events[offset : offset + 1000], [SINK])
    if isinstance(outbox, SQLiteOutbox):
        await outbox.close()  # a new process would open the file afresh
        outbox = SQLiteOutbox(outbox.path)
    pipeline = build({"sink": SINK, "batch_limit": 100, "instance": "bench"}, outbox=outbox)
    start = time.perf_counter()
    await pipeline.start()
    if not await pipeline.flush(timeout=600):
        raise SystemExit("flush timed out")
    elapsed = time.perf_counter() - start
    delivered = pipeline.lanes[SINK].stats.delivered
    await pipeline.close()
    if delivered != len(events):
        raise SystemExit(f"delivered {delivered} of {len(events)}")
    return len(events) / elapsed


def row(label: str, memory: float, durable: float) -> str:
    return f"  {label:<22} {memory:>12,.0f} {durable:>12,.0f} {durable / memory:>8.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5, help="Rounds of the live measurement.")
    parser.add_argument("--all-cores", action="store_true", help="Do not pin to one core.")
    args = parser.parse_args()
    if not args.all_cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{args.events:,} events, {cores} core(s)")
    with tempfile.TemporaryDirectory() as directory:
        paths = (Path(directory) / f"outbox-{n}.db" for n in range(100))
        # The live path first, before the premade events of the other measurements exist:
        # 200,000 of them kept alive would make each full garbage collection during it walk
        # them too (~15% of its time), a cost of this script, not of the path measured.
        print("\nevents/s to the null sink, batch 100  in-memory       SQLite  ÷ memory")
        memories, durables = [], []
        for _ in range(args.rounds):
            memories.append(through_client(args.events, ":memory:"))
            durables.append(through_client(args.events, str(next(paths))))
        memory, durable = statistics.median(memories), statistics.median(durables)
        print(row("live: write -> sink", memory, durable) + f"  (median of {args.rounds})")
        print(f"    rounds, SQLite: {', '.join(f'{value:,.0f}' for value in durables)}")
        events = make_events(args.events)
        memory = asyncio.run(backlog(MemoryOutbox(), events))
        durable = asyncio.run(backlog(SQLiteOutbox(next(paths)), events))
        print(row("backlog: outbox -> sink", memory, durable))
        print(
            "\nSQLite appends/s, one commit per group   normal       fsync  fsync ÷ normal"
            "   leased (packs)"
        )
        for group in (1, 10, 100, 1000):
            # Small groups are slow (fsync: ~1 ms a commit): fewer events keep the run short.
            count = min(args.events, 2_000 * group)
            normal = asyncio.run(
                appends_per_second(SQLiteOutbox(next(paths)), events[:count], group)
            )
            fsync = SQLiteOutbox(next(paths), durability="fsync")
            full = asyncio.run(appends_per_second(fsync, events[:count], group))
            held = SQLiteOutbox(next(paths))
            leased = asyncio.run(appends_per_second(held, events[:count], group, leased=True))
            print(
                f"  groups of {group:<5} ({count:>7,} events) {normal:>12,.0f} {full:>11,.0f} "
                f"{full / normal:>15.2f} {leased:>16,.0f}"
            )


if __name__ == "__main__":
    main()
