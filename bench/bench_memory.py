"""Peak memory of 1,000,000 ``Client.write()`` calls with the default durable outbox.

Run: ``python bench/bench_memory.py [--events N] [--outbox PATH|:memory:] [--sink null]``.
Each run is a fresh subprocess: it opens a ``Client`` (a SQLite outbox in a temporary
directory unless ``--outbox`` says otherwise), takes the resident set size as the baseline,
writes N small events from one thread as fast as it can, flushes, and prints the peak RSS
growth (``ru_maxrss`` minus the baseline) and the write rate. ``max_uncommitted`` bounds what
waits in memory for the outbox commit, so the growth should stay flat as N grows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import eventsink

events, outbox, sink, uncommitted = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
options = {"sink": sink, "outbox": outbox, "handle_sigterm": False}
if uncommitted != "default":
    options["max_uncommitted"] = int(uncommitted)
if sink == "file":
    options["path"] = outbox + ".jsonl"
client = eventsink.Client(**options)
client.write("warmup", {"n": 0})
client.flush(60)


def rss_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


baseline = rss_kib()
start = time.perf_counter()
for n in range(int(events)):
    client.write("pages", {"user": f"u_{n % 977}", "path": f"/docs/{n % 31}", "ms": n % 9000})
wrote = time.perf_counter() - start
delivered = client.flush(600)
total = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
client.close()
print(json.dumps({
    "events": int(events),
    "baseline_mb": round(baseline / 1024, 1),
    "peak_growth_mb": round((peak - baseline) / 1024, 1),
    "writes_per_s": round(int(events) / wrote),
    "delivered_per_s": round(int(events) / total),
    "delivered_all": delivered,
}))
"""


def run(events: int, outbox: str, sink: str, uncommitted: str) -> dict:
    output = subprocess.run(
        [sys.executable, "-c", CHILD, str(events), outbox, sink, uncommitted],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--outbox", default=None, help="default: a file in a temporary dir")
    parser.add_argument("--sink", default="null")
    parser.add_argument("--max-uncommitted", default="default")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as directory:
        outbox = args.outbox or str(Path(directory) / "outbox.db")
        result = run(args.events, outbox, args.sink, args.max_uncommitted)
    print(json.dumps({"outbox": args.outbox or "file (default durable)", **result}, indent=2))


if __name__ == "__main__":
    main()
