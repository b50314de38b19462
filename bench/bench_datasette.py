"""Benchmark the Datasette plugin: request cost on the sender, delivery rate to the receiver.

Run: ``python bench/bench_datasette.py [--requests 1000] [--rounds 3] [--events 50000]``

1. **Request overhead.** Three sender Datasettes (``datasette serve`` subprocesses): one with
   the plugin installed but configured off (an empty ``eventsink`` block), one forwarding to a
   real receiver with the plugin's defaults and a ``--internal`` file, and one the same with
   ``durability: fsync``. 1, 4 and 16 concurrent keep-alive clients post single-row
   ``/-/insert`` requests, alternating off and on in rounds so all see the same machine load;
   it prints one table: requests/s and p50 latency of each and the ratios on ÷ off.
2. **Delivery rate.** ``--events`` events are put in a sender's outbox (its internal database)
   before it starts, with ``max_rate`` unlimited, so the plugin delivers more than the receiver
   can take; it prints the delivered events/s beside the receiver's raw ingest measured in the
   same run (one keep-alive client posting 100-row batches of the same rows to ``/-/insert``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import operator
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eventsink.sinks.datasette import DatasetteSink

from eventsink.event import Event
from eventsink.ids import IdGenerator
from eventsink.outbox.sqlite import SQLiteOutbox
from eventsink.testing.receiver import DatasetteReceiver

CLIENTS = (1, 4, 16)


def pin(pid: int, cores: set[int]) -> None:
    """Keep every thread of process ``pid`` (and the threads it starts later) on ``cores``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cores)


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sender(directory: Path, name: str, plugin: dict, internal: Path) -> DatasetteReceiver:
    config = directory / f"{name}.json"
    config.write_text(json.dumps({"plugins": {"eventsink": plugin}}))
    return DatasetteReceiver(
        database="s",
        directory=directory / name,
        extra_args=["-c", str(config), "--internal", str(internal)],
    )


async def drive(server: DatasetteReceiver, requests: int, clients: int) -> tuple[float, float]:
    """Post ``requests`` single-row inserts from ``clients`` keep-alive clients at once.

    Returns (requests/s, p50 latency in ms).
    """
    headers = {"Authorization": f"Bearer {server.token}"}
    url = f"{server.db_url}/t/-/insert"
    latencies: list[float] = []

    async def one_client(count: int) -> None:
        async with httpx.AsyncClient(headers=headers, timeout=30) as client:
            for n in range(count):
                before = time.perf_counter()
                response = await client.post(url, json={"row": {"n": n}})
                latencies.append(time.perf_counter() - before)
                assert response.status_code == 201, response.text

    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        await client.post(f"{server.db_url}/-/create", json={"table": "t", "row": {"n": -1}})
    started = time.perf_counter()
    await asyncio.gather(*(one_client(requests // clients) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, statistics.median(latencies) * 1000


def make_events(count: int) -> list[Event]:
    ids = IdGenerator()
    events = []
    for n in range(count):
        event_id, created = ids.new()
        data = {
            "event": "insert-rows",
            "actor_id": "root",
            "database_name": "s",
            "table_name": "t",
            "properties": json.dumps({"num_rows": 1, "ignore": False, "replace": False, "n": n}),
        }
        events.append(Event(event_id, "datasette_events", "bench", created, data))
    return events


def count_rows(receiver: DatasetteReceiver, table: str) -> int:
    import sqlite3

    with sqlite3.connect(f"file:{receiver.path}?mode=ro", uri=True) as connection:
        try:
            return connection.execute(f'select count(*) from "{table}"').fetchone()[0]
        except sqlite3.OperationalError:
            return 0


async def raw_ingest(receiver: DatasetteReceiver, events: list[Event]) -> float:
    """Rows/s for one keep-alive client posting 100-row batches to /-/insert."""
    headers = {"Authorization": f"Bearer {receiver.token}", "content-type": "application/json"}
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        first = b'{"table":"raw","pk":"id","rows":[' + events[0].row_json() + b"]}"
        await client.post(f"{receiver.db_url}/-/create", content=first)
        started = time.perf_counter()
        for start in range(1, len(events), 100):
            rows = b",".join(event.row_json() for event in events[start : start + 100])
            response = await client.post(
                f"{receiver.db_url}/raw/-/insert", content=b'{"rows":[' + rows + b"]}"
            )
            assert response.status_code == 201, response.text
        return (len(events) - 1) / (time.perf_counter() - started)


async def delivery(
    directory: Path, receiver: DatasetteReceiver, events: list[Event], batch_limit: int
) -> float:
    """Events/s the plugin delivers from a pre-filled outbox to the receiver."""
    table = f"delivered_{batch_limit}"
    events = [Event(e.id, table, e.instance, e.created, e.data) for e in events]
    internal = directory / f"delivery-{batch_limit}-internal.db"
    plugin = {
        "api_url": f"{receiver.db_url}/-/create",
        "api_token": receiver.token,
        "max_rate": None,
        "batch_limit": batch_limit,
        "table": table,
    }
    # The events wait for the destination the plugin's sink will have.
    destination = DatasetteSink(api_url=plugin["api_url"], api_token=receiver.token).destination
    outbox = SQLiteOutbox(internal)
    await outbox.open([destination])
    await outbox.append(events, [destination])
    await outbox.close()
    server = sender(directory, f"delivery-{batch_limit}", plugin, internal)
    server.start()
    try:
        first_seen = None
        while True:
            rows = count_rows(receiver, table)
            now = time.perf_counter()
            if first_seen is None and rows:
                first_seen = (now, rows)
            if rows >= len(events):
                break
            await asyncio.sleep(0.01)
        assert first_seen is not None
        return (rows - first_seen[1]) / (now - first_seen[0])
    finally:
        server.close()


def paired(
    runs: list[tuple[float, float]],
    baseline: list[tuple[float, float]],
    index: int,
    combine: Callable[[float, float], float],
) -> float:
    """The median over rounds of ``combine`` of a run's measure ``index`` and its baseline's
    in the same round."""
    pairs = zip(runs, baseline, strict=True)
    return statistics.median(combine(run[index], base[index]) for run, base in pairs)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=960, help="Per round and sender.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument(
        "--clients", default=",".join(map(str, CLIENTS)), help="Concurrent clients, e.g. 1,4,16."
    )
    parser.add_argument("--no-delivery", action="store_true", help="Skip the delivery rate part.")
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="Do not pin the senders to one core and the receiver and clients to the other.",
    )
    args = parser.parse_args()
    pinned = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    if pinned:  # the receiver (and this driver) stand for other machines: keep them apart
        pin(os.getpid(), {1})
    clients_list = [int(part) for part in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        with DatasetteReceiver(directory=directory / "receiver") as receiver:
            plugin_on = {"api_url": f"{receiver.db_url}/-/create", "api_token": receiver.token}
            senders = {
                "off": sender(directory, "off", {}, directory / "off-internal.db"),
                "on": sender(directory, "on", plugin_on, directory / "on-internal.db"),
                "fsync": sender(
                    directory,
                    "fsync",
                    {**plugin_on, "durability": "fsync"},
                    directory / "fsync-internal.db",
                ),
            }
            results: dict[tuple[str, int], list[tuple[float, float]]] = {}
            cpu: dict[tuple[str, int], float] = {}  # the sender's CPU ms per request
            for server in senders.values():
                server.start()
            if pinned:
                pin(receiver.process.pid, {1})  # type: ignore[union-attr]
                for server in senders.values():
                    pin(server.process.pid, {0})  # type: ignore[union-attr]
            try:
                for server in senders.values():  # warm up: first requests pay for imports
                    await drive(server, 100, 1)
                names = list(senders)
                for clients in clients_list:
                    before = {name: cpu_seconds(senders[name].process.pid) for name in names}  # type: ignore[union-attr]
                    for round_number in range(args.rounds):
                        # Each round drives every sender once, in an order rotated from round
                        # to round, so no sender always follows the same one.
                        shift = round_number % len(names)
                        for name in names[shift:] + names[:shift]:
                            runs = results.setdefault((name, clients), [])
                            runs.append(await drive(senders[name], args.requests, clients))
                    await asyncio.sleep(2.0)  # the last events' delivery belongs to this part
                    for name in names:
                        used = cpu_seconds(senders[name].process.pid) - before[name]  # type: ignore[union-attr]
                        cpu[(name, clients)] = used / (args.rounds * args.requests) * 1000
            finally:
                for server in senders.values():
                    server.close()
            where = (
                "senders on core 0, receiver and clients on core 1"
                if pinned
                else "not pinned: the receiver's work competes with the senders'"
            )
            print(
                f"sender, medians of {args.rounds} rounds of {args.requests} single-row inserts "
                f"({where})"
            )
            print(
                "  (ratios and Δp50: the median over rounds of each round's own ratio and"
                " difference, which a drift of the machine's speed between rounds cancels)"
            )
            print(
                "  clients   off req/s  on req/s  on÷off   p50 off  p50 on   Δp50"
                "   fsync req/s  fsync÷off"
            )
            for clients in clients_list:
                runs = {name: results[(name, clients)] for name in senders}
                rate = {name: statistics.median(r[0] for r in runs[name]) for name in senders}
                p50 = {name: statistics.median(r[1] for r in runs[name]) for name in senders}

                on_ratio = paired(runs["on"], runs["off"], 0, operator.truediv)
                fsync_ratio = paired(runs["fsync"], runs["off"], 0, operator.truediv)
                delta = paired(runs["on"], runs["off"], 1, operator.sub)
                print(
                    f"  {clients:>7} {rate['off']:>11.0f} {rate['on']:>9.0f} "
                    f"{on_ratio:>7.3f} {p50['off']:>8.2f} {p50['on']:>7.2f} "
                    f"{delta:>+6.2f} {rate['fsync']:>13.0f} {fsync_ratio:>10.3f}"
                )
                each = zip(runs["on"], runs["off"], strict=True)
                ratios = ", ".join(f"{on[0] / off[0]:.3f}" for on, off in each)
                print(f"          rounds on÷off: {ratios}")
                print(
                    f"          sender CPU per request (delivery included): off "
                    f"{cpu[('off', clients)]:.2f} ms, on {cpu[('on', clients)]:.2f} ms "
                    f"({cpu[('on', clients)] - cpu[('off', clients)]:+.2f}), fsync "
                    f"{cpu[('fsync', clients)]:.2f} ms"
                )
            forwarded = count_rows(receiver, "datasette_events")
            print(f"  (forwarded so far: {forwarded} events)")
        if args.no_delivery:
            return

        with DatasetteReceiver(directory=directory / "receiver2") as receiver:
            events = make_events(args.events)
            raw = await raw_ingest(receiver, events)
            print(f"delivery of {args.events} events (max_rate unlimited, 100 rows a request):")
            print(f"  receiver raw ingest:        {raw:8.0f} rows/s (keep-alive client)")
            for batch_limit in (100, 1000):
                delivered = await delivery(directory, receiver, events, batch_limit)
                print(
                    f"  plugin, batch_limit {batch_limit:4}: {delivered:8.0f} events/s "
                    f"= {delivered / raw:.3f} of raw"
                )


if __name__ == "__main__":
    asyncio.run(main())
