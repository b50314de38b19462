"""Events/s through the pipeline into the null sink, beside the raw cost of its parts.

Run: ``python bench/bench_pipeline.py [--events 200000]``. Everything is measured in this one
run, so the ratios hold on a noisy shared machine even when absolute figures move.

Prints the raw per-event cost of the parts (python-ulid vs eventsink's monotonic generator,
json vs orjson, one ``call_soon_threadsafe`` per event) and events/s written by one thread
through ``Client`` with batch 100 and no rate limit, into the null sink, with an in-memory
outbox and with the durable SQLite outbox (WAL, synchronous=NORMAL).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
from pathlib import Path

import orjson
from ulid import ULID

import eventsink
from eventsink.ids import IdGenerator

SAMPLE = {"path": "/db/table", "status": 200, "user": "ada", "bytes": 5120, "ok": True}


def per_call_us(function, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        function()
    return (time.perf_counter() - start) / count * 1e6


def handoff_us(count: int) -> float:
    """One call_soon_threadsafe per event from a writer thread to a running loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    received = []
    start = time.perf_counter()
    for n in range(count):
        loop.call_soon_threadsafe(received.append, n)
    done = threading.Event()
    loop.call_soon_threadsafe(done.set)
    done.wait()
    elapsed = time.perf_counter() - start
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()
    return elapsed / count * 1e6


def through_client(events: int, outbox: str) -> float:
    client = eventsink.Client(sink="null", outbox=outbox, batch_limit=100, instance="bench")
    start = time.perf_counter()
    for n in range(events):
        client.write("requests", {**SAMPLE, "n": n})
    if not client.flush(timeout=600):
        raise SystemExit("flush timed out")
    elapsed = time.perf_counter() - start
    delivered = client.status()["sinks"]["null"]["delivered"]
    client.close()
    if delivered != events:
        raise SystemExit(f"delivered {delivered} of {events}")
    return events / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    count = 100_000
    generator = IdGenerator()
    event = {"id": "01J0000000000000000000000", "instance": "bench", **SAMPLE}
    print("raw cost of the parts, µs per event:")
    print(f"  str(ulid.ULID())              {per_call_us(lambda: str(ULID()), count):6.2f}")
    print(f"  eventsink IdGenerator.new()   {per_call_us(generator.new, count):6.2f}")
    print(f"  json.dumps(event)             {per_call_us(lambda: json.dumps(event), count):6.2f}")
    print(f"  orjson.dumps(event)           {per_call_us(lambda: orjson.dumps(event), count):6.2f}")
    print(f"  call_soon_threadsafe per event {handoff_us(count):5.2f}")
    memory = through_client(args.events, ":memory:")
    with tempfile.TemporaryDirectory() as directory:
        durable = through_client(args.events, str(Path(directory) / "outbox.db"))
    print(f"pipeline, {args.events} events, batch 100, null sink:")
    print(f"  in-memory outbox   {memory:10,.0f} events/s  ({1e6 / memory:.2f} µs/event)")
    print(f"  SQLite outbox      {durable:10,.0f} events/s  ({1e6 / durable:.2f} µs/event)")
    print(f"  durable ÷ memory   {durable / memory:10.2f}")


if __name__ == "__main__":
    main()
