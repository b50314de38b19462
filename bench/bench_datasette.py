"""Benchmark the Datasette plugin: request cost on the sender, delivery rate to the receiver.

Run: ``python bench/bench_datasette.py [--rounds 40] [--instances 2] [--events 50000]``
(``--before DIR``: senders running the eventsink of another checkout, with the plugin on, take
their turns too, so a change is measured against its predecessor in the same run)

1. **Request overhead.** Sender Datasettes (``datasette serve`` subprocesses) of three kinds:
   the plugin installed but configured off (an empty ``eventsink`` block), forwarding to a real
   receiver with the plugin's defaults and a ``--internal`` file, and the same with
   ``durability: fsync``; ``--instances`` processes of each kind. 1, 4 and 16 concurrent
   keep-alive clients post single-row ``/-/insert`` requests. The senders take turns in short
   blocks (``--block`` requests, a fraction of a second), in an order rotated every round, so
   every kind sees the same moments of a noisy machine; each round's ratio compares the kinds
   within that round, and the table prints the median over rounds. Two processes of the *same*
   kind differ by a few percent on their own (memory layout), so each kind's rate in a round
   is that of all its instances together, and the ratio of the two "off" instances is printed
   as the noise floor ("off÷off").
2. **Delivery rate.** ``--events`` events are put in a sender's outbox (its internal database)
   before it starts, with ``max_rate`` unlimited, so the plugin delivers more than the receiver
   can take; it prints the delivered events/s beside the receiver's raw ingest measured in the
   same run (one keep-alive client posting 100-row batches of the same rows to ``/-/insert``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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


def sender(
    directory: Path, name: str, plugin: dict, internal: Path, code: Path | None = None
) -> DatasetteReceiver:
    """A sender Datasette with ``plugin`` as its eventsink config; ``code``: a checkout of
    eventsink to run instead of the installed one (``--before``)."""
    config = directory / f"{name}.json"
    config.write_text(json.dumps({"plugins": {"eventsink": plugin}}))
    # One hash seed for all: string hashing then lays out dicts alike in every sender, one
    # source less of the differences between processes running the same code.
    env = {"PYTHONHASHSEED": "0"}
    if code is not None:
        env["PYTHONPATH"] = str(code)
    return DatasetteReceiver(
        database="s",
        directory=directory / name,
        extra_args=["-c", str(config), "--internal", str(internal)],
        env=env,
    )


@dataclass
class Round:
    """What the senders of one kind did in one round (or in one block): requests, the
    seconds they took, and each request's latency."""

    requests: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms)

    def add(self, other: Round) -> None:
        self.requests += other.requests
        self.seconds += other.seconds
        self.latencies_ms += other.latencies_ms


def client_pool(server: DatasetteReceiver, clients: int) -> list[httpx.AsyncClient]:
    """``clients`` keep-alive clients allowed to insert into ``server``."""
    headers = {"Authorization": f"Bearer {server.token}"}
    # uvicorn closes a connection idle for 5 s; a client that reused one at that moment would
    # fail (httpx.ReadError): let the client close it first.
    limits = httpx.Limits(keepalive_expiry=4.0)
    return [httpx.AsyncClient(headers=headers, timeout=30, limits=limits) for _ in range(clients)]


async def create_table(server: DatasetteReceiver) -> None:
    """Create the table the benchmark inserts into (and pay for the first request's imports)."""
    headers = {"Authorization": f"Bearer {server.token}"}
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        response = await client.post(
            f"{server.db_url}/-/create", json={"table": "t", "row": {"n": -1}}
        )
        assert response.status_code == 201, response.text


async def block(server: DatasetteReceiver, pool: list[httpx.AsyncClient], requests: int) -> Round:
    """Post ``requests`` single-row inserts, spread over the clients of ``pool`` at once."""
    url = f"{server.db_url}/t/-/insert"
    latencies: list[float] = []

    async def one_client(client: httpx.AsyncClient, count: int) -> None:
        for n in range(count):
            before = time.perf_counter()
            response = await client.post(url, json={"row": {"n": n}})
            latencies.append((time.perf_counter() - before) * 1000)
            assert response.status_code == 201, response.text

    started = time.perf_counter()
    await asyncio.gather(*(one_client(client, requests // len(pool)) for client in pool))
    return Round(len(latencies), time.perf_counter() - started, latencies)


async def interleaved(
    senders: dict[str, list[DatasetteReceiver]], clients: int, rounds: int, block_size: int
) -> tuple[dict[str, list[Round]], dict[str, float]]:
    """``rounds`` rounds in which every sender process posts one block of ``block_size``
    requests from ``clients`` keep-alive clients, taking turns in an order rotated each
    round. Returns each kind's results (all its instances together) and each instance's
    (``kind#1``, ``kind#2``...), round by round, and each kind's CPU time per request in
    ms over the rounds and the 2 s after them (its delivery of the last events)."""
    turns = [
        (f"{kind}#{number}", kind, server)
        for kind, servers in senders.items()
        for number, server in enumerate(servers, 1)
    ]
    pools = {name: client_pool(server, clients) for name, _, server in turns}
    results: dict[str, list[Round]] = {name: [] for name in [*senders, *(t[0] for t in turns)]}
    try:
        for name, _, server in turns:  # connect every client, warm every server
            for _ in range(max(1, 100 // block_size)):
                await block(server, pools[name], block_size)
        before = {name: cpu_seconds(server.process.pid) for name, _, server in turns}  # type: ignore[union-attr]
        for round_number in range(rounds):
            shift = round_number % len(turns)
            this_round = {name: Round() for name in results}
            for name, kind, server in turns[shift:] + turns[:shift]:
                done = await block(server, pools[name], block_size)
                this_round[kind].add(done)
                this_round[name].add(done)
            for name, entry in this_round.items():
                results[name].append(entry)
        await asyncio.sleep(2.0)
        cpu = {
            kind: sum(
                cpu_seconds(server.process.pid) - before[name]  # type: ignore[union-attr]
                for name, of_kind, server in turns
                if of_kind == kind
            )
            * 1000
            / sum(r.requests for r in results[kind])
            for kind in senders
        }
    finally:
        for pool in pools.values():
            for client in pool:
                await client.aclose()
    return results, cpu


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
    runs: list[Round], baseline: list[Round], measure: Callable[[Round, Round], float]
) -> float:
    """The median over rounds of ``measure`` of a kind's round and its baseline's round."""
    return statistics.median(measure(run, base) for run, base in zip(runs, baseline, strict=True))


def ratio(run: Round, base: Round) -> float:
    return run.rate / base.rate


def delta_p50(run: Round, base: Round) -> float:
    return run.p50 - base.p50


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="Rounds at each client count.")
    parser.add_argument(
        "--block",
        type=int,
        default=0,
        help="Requests per sender and round (default: 24, or 3 per client if more).",
    )
    parser.add_argument("--instances", type=int, default=2, help="Sender processes per kind.")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument(
        "--clients", default=",".join(map(str, CLIENTS)), help="Concurrent clients, e.g. 1,4,16."
    )
    parser.add_argument("--no-delivery", action="store_true", help="Skip the delivery rate part.")
    parser.add_argument(
        "--before",
        type=Path,
        help="A checkout of eventsink (e.g. a git worktree of an older commit) whose senders "
        "run beside the others with the plugin on: the change measured in the same run.",
    )
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
            plugins = {"off": {}, "on": plugin_on, "fsync": {**plugin_on, "durability": "fsync"}}
            if args.before:
                plugins["before"] = plugin_on
            senders = {
                kind: [
                    sender(
                        directory,
                        f"{kind}{n}",
                        plugin,
                        directory / f"{kind}{n}-internal.db",
                        args.before if kind == "before" else None,
                    )
                    for n in range(1, args.instances + 1)
                ]
                for kind, plugin in plugins.items()
            }
            every = [server for servers in senders.values() for server in servers]
            results: dict[int, dict[str, list[Round]]] = {}
            cpu: dict[tuple[str, int], float] = {}  # each kind's CPU ms per request
            for server in every:
                server.start()
            if pinned:
                pin(receiver.process.pid, {1})  # type: ignore[union-attr]
                for server in every:
                    pin(server.process.pid, {0})  # type: ignore[union-attr]
            try:
                for server in every:  # the first requests pay for imports
                    await create_table(server)
                for clients in clients_list:
                    size = args.block or max(24, 3 * clients)
                    results[clients], used = await interleaved(senders, clients, args.rounds, size)
                    for kind, ms in used.items():
                        cpu[(kind, clients)] = ms
            finally:
                for server in every:
                    server.close()
            where = (
                "senders on core 0, receiver and clients on core 1"
                if pinned
                else "not pinned: the receiver's work competes with the senders'"
            )
            print(
                f"sender, {args.rounds} rounds; in each, every one of {len(every)} sender "
                f"processes ({args.instances} of each kind) posts a block of single-row "
                f"inserts in turn ({where})"
            )
            print(
                "  (ratios and Δp50: the median over rounds of each round's own ratio and"
                " difference; off÷off: one 'off' process against another, the noise floor)"
            )
            print(
                "  clients   off req/s  on req/s  on÷off   p50 off  p50 on   Δp50"
                "   fsync req/s  fsync÷off  off÷off"
            )
            for clients in clients_list:
                runs = results[clients]
                rate = {kind: statistics.median(r.rate for r in runs[kind]) for kind in senders}
                p50 = {kind: statistics.median(r.p50 for r in runs[kind]) for kind in senders}
                noise = (
                    f"{paired(runs['off#2'], runs['off#1'], ratio):>8.3f}"
                    if args.instances > 1
                    else "       -"
                )
                print(
                    f"  {clients:>7} {rate['off']:>11.0f} {rate['on']:>9.0f} "
                    f"{paired(runs['on'], runs['off'], ratio):>7.3f} {p50['off']:>8.2f} "
                    f"{p50['on']:>7.2f} {paired(runs['on'], runs['off'], delta_p50):>+6.2f} "
                    f"{rate['fsync']:>13.0f} {paired(runs['fsync'], runs['off'], ratio):>10.3f} "
                    f"{noise}"
                )
                quartiles = statistics.quantiles(
                    (ratio(on, off) for on, off in zip(runs["on"], runs["off"], strict=True)),
                    n=4,
                )
                print(
                    f"          rounds on÷off: quartiles {quartiles[0]:.3f} / {quartiles[1]:.3f} "
                    f"/ {quartiles[2]:.3f}; per instance on÷off: "
                    + ", ".join(
                        f"{paired(runs[f'on#{n}'], runs['off'], ratio):.3f}"
                        for n in range(1, args.instances + 1)
                    )
                )
                print(
                    f"          sender CPU per request (delivery included): off "
                    f"{cpu[('off', clients)]:.2f} ms, on {cpu[('on', clients)]:.2f} ms "
                    f"({cpu[('on', clients)] - cpu[('off', clients)]:+.2f}), fsync "
                    f"{cpu[('fsync', clients)]:.2f} ms"
                )
                if args.before:
                    print(
                        f"          before ({args.before}): {rate['before']:.0f} req/s, "
                        f"before÷off {paired(runs['before'], runs['off'], ratio):.3f}, "
                        f"Δp50 {paired(runs['before'], runs['off'], delta_p50):+.2f}, CPU "
                        f"{cpu[('before', clients)]:.2f} ms; on÷before "
                        f"{paired(runs['on'], runs['before'], ratio):.3f}, Δp50 on-before "
                        f"{paired(runs['on'], runs['before'], delta_p50):+.2f}"
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
