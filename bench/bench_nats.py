"""Benchmark: events/s through the NATS sink into JetStream, and stream -> consume -> sqlite.

Starts its own ``nats-server -js`` on a free loopback port with a temporary store, and
measures in one run, side by side:

* raw ``publish_async`` of the same payloads (no eventsink), all acks awaited at the end, with
  no headers, and with the headers the sink sends (``Nats-Msg-Id``, ``Nats-Expected-Stream``:
  the deduplication JetStream does for them is part of what the sink pays for);
* ``NatsSink.send`` in batches, one batch at a time (acks awaited per batch) and four batches
  in flight at once (what a lane with ``concurrency: 4`` does);
* one in-process consumer (``JetStreamConsumer``) draining the stream into the sqlite sink;
* two ``eventsink consume`` worker processes draining a second copy into one sqlite file.

Run: ``.venv/bin/python bench/bench_nats.py [--events 50000] [--batch 1000]``
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats
from eventsink.sinks.nats import NatsSink
from eventsink.sinks.sqlite import SQLiteSink

from eventsink.config import DeliverySettings, SinkConfig
from eventsink.event import Event
from eventsink.ids import IdGenerator
from eventsink.nats.consumer import JetStreamConsumer, consume_settings
from eventsink.plugins import Hooks, make_plugin_manager


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_events(count: int) -> list[Event]:
    ids = IdGenerator()
    events = []
    for n in range(count):
        event_id, created = ids.new()
        events.append(Event(event_id, "clicks", "web-1", created, {"n": n, "path": "/a/b"}))
    return events


async def bench_raw(url: str, events: list[Event], name: str, *, headers: bool = False) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=20_000)
    await js.add_stream(name=name, subjects=[f"{name.lower()}.>"], duplicate_window=120)
    subject = f"{name.lower()}.web-1.clicks"
    payloads = [event.to_json() for event in events]
    start = time.perf_counter()
    if headers:
        futures = [
            await js.publish_async(
                subject, payload, headers={"Nats-Msg-Id": event.id, "Nats-Expected-Stream": name}
            )
            for event, payload in zip(events, payloads, strict=True)
        ]
    else:
        futures = [await js.publish_async(subject, payload) for payload in payloads]
    await asyncio.gather(*futures)
    elapsed = time.perf_counter() - start
    await nc.close()
    return len(events) / elapsed


async def bench_sink(
    url: str, stream: str, events: list[Event], batch: int, in_flight: int = 1
) -> float:
    sink = NatsSink(
        servers=[url], stream=stream, subject=f"{stream.lower()}.{{instance}}.{{table}}",
        create_stream={"duplicate_window": 120},
    )  # fmt: skip
    await sink.open()
    slots = asyncio.Semaphore(in_flight)

    async def send(offset: int) -> None:
        async with slots:
            await sink.send(events[offset : offset + batch])

    start = time.perf_counter()
    await asyncio.gather(*(send(offset) for offset in range(0, len(events), batch)))
    elapsed = time.perf_counter() - start
    await sink.close()
    return len(events) / elapsed


def count_rows(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            return conn.execute("select count(*) from clicks").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


async def bench_consume_in_process(url: str, stream: str, db: Path, count: int) -> float:
    settings = consume_settings({"servers": [url], "stream": stream, "durable": "bench"})
    sink = SQLiteSink(path=str(db))
    sink_config = SinkConfig("sqlite", "sqlite", sink.config, DeliverySettings())
    consumer = JetStreamConsumer(settings, sink_config, sink, hooks=Hooks(make_plugin_manager()))
    start = time.perf_counter()
    task = asyncio.ensure_future(consumer.run())
    while consumer.lane is None or consumer.lane.stats.delivered < count:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - start
    consumer.stop()
    await task
    return count / elapsed


def bench_consume_workers(url: str, stream: str, db: Path, count: int, workers: int) -> float:
    command = [str(Path(sys.executable).parent / "eventsink"), "consume", "--servers", url]
    command += ["--stream", stream, "--durable", "bench", "--set", "sink=sqlite"]
    command += ["--set", f"path={db}"]
    start = time.perf_counter()
    processes = [subprocess.Popen(command, stderr=subprocess.DEVNULL) for _ in range(workers)]
    while count_rows(db) < count:
        time.sleep(0.02)
    elapsed = time.perf_counter() - start
    for process in processes:
        process.terminate()
        process.wait()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    server_binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        url = f"nats://127.0.0.1:{port}"
        server = subprocess.Popen(
            [server_binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)  # a benchmark, not a test: give the server a moment
            events = make_events(args.events)
            rounds: dict[str, list[float]] = {
                "raw": [], "raw_headers": [], "sink": [], "sink4": []
            }  # fmt: skip
            for n in range(args.rounds):  # alternating, so a warming server favours none
                rounds["raw"].append(asyncio.run(bench_raw(url, events, f"RAW{n}")))
                rounds["raw_headers"].append(
                    asyncio.run(bench_raw(url, events, f"HDR{n}", headers=True))
                )
                rounds["sink"].append(asyncio.run(bench_sink(url, f"S{n}", events, args.batch)))
                rounds["sink4"].append(
                    asyncio.run(bench_sink(url, f"F{n}", events, args.batch, in_flight=4))
                )
            asyncio.run(bench_sink(url, "EVENTS", events, args.batch))
            asyncio.run(bench_sink(url, "EVENTS2", events, args.batch))
            one = asyncio.run(
                bench_consume_in_process(url, "EVENTS", Path(tmp) / "a.db", len(events))
            )
            two = bench_consume_workers(url, "EVENTS2", Path(tmp) / "b.db", len(events), 2)
        finally:
            server.terminate()
            server.wait()
    median = {name: statistics.median(values) for name, values in rounds.items()}
    raw, raw_headers = median["raw"], median["raw_headers"]
    print(f"events: {args.events}, sink batch: {args.batch}, medians of {args.rounds} rounds")
    print(f"raw publish_async (no eventsink), no headers:  {raw:>9,.0f} msg/s")
    print(f"raw publish_async, the sink's headers:        {raw_headers:>9,.0f} msg/s")
    for name, label in (("sink", "1 batch in flight"), ("sink4", "4 batches in flight")):
        value = median[name]
        print(
            f"NatsSink.send, {label}:{' ' * (26 - len(label))}{value:>9,.0f} events/s  "
            f"(÷ raw {value / raw:.2f}, ÷ raw with headers {value / raw_headers:.2f})"
        )
    print(f"stream -> 1 consumer -> sqlite:       {one:>9,.0f} events/s")
    print(f"stream -> 2 consume processes -> sqlite: {two:>7,.0f} events/s (incl. start-up)")


if __name__ == "__main__":
    main()
