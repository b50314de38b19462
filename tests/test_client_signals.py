"""SIGTERM to a process writing through a Client loses nothing write() returned (real processes)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import eventsink

CHILD = r"""
import sys
import eventsink

mode, outbox, path = sys.argv[1:4]
client = eventsink.Client(
    sink="file",
    path=path,
    outbox=outbox,
    max_rate=200,  # slow delivery: most events are still in the outbox at the signal
    handle_sigterm=mode != "unhandled",
)
print("ready", flush=True)
n = 0
while True:
    event_id = client.write("t", {"n": n}, wait=mode == "wait")
    print(event_id, flush=True)
    n += 1
"""


def _run_until_signal(
    tmp_path: Path, mode: str, writes: int, signum: int = signal.SIGTERM
) -> tuple[list[str], int]:
    """Start the writer, signal it after ``writes`` returned writes; return the ids, status."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    process = subprocess.Popen(
        [sys.executable, str(script), mode, str(tmp_path / "outbox.db"), str(tmp_path / "o.jsonl")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    returned = []
    for line in process.stdout:
        returned.append(line.strip())
        if len(returned) == writes:
            process.send_signal(signum)
            break
    rest, _ = process.communicate(timeout=60)
    # A line cut by the kill is not a returned write.
    returned += [line for line in rest.splitlines() if len(line) == 26]
    return returned, process.returncode


def _deliver_the_rest(tmp_path: Path) -> set[str]:
    """A restart with the same outbox delivers what is left; return every id in the file."""
    with eventsink.Client(
        sink="file", path=str(tmp_path / "o.jsonl"), outbox=str(tmp_path / "outbox.db")
    ) as client:
        assert client.flush(60)
    lines = (tmp_path / "o.jsonl").read_text().splitlines()
    return {json.loads(line)["id"] for line in lines}


class TestSigterm:
    """A writer sent SIGTERM: what write() returned is delivered after a restart."""

    @pytest.mark.slow
    def test_wait_true_loses_nothing_even_under_sigkill(self, tmp_path):
        returned, status = _run_until_signal(tmp_path, "wait", 500, signal.SIGKILL)
        assert status == -signal.SIGKILL
        delivered = _deliver_the_rest(tmp_path)
        assert len(returned) >= 500
        assert set(returned) <= delivered

    @pytest.mark.slow
    def test_wait_true_with_sigterm_exits_143_and_loses_nothing(self, tmp_path):
        returned, status = _run_until_signal(tmp_path, "wait", 500)
        assert status == 128 + signal.SIGTERM  # SystemExit(143), after closing the client
        assert set(returned) <= _deliver_the_rest(tmp_path)

    @pytest.mark.slow
    def test_default_handler_commits_everything_accepted(self, tmp_path):
        returned, status = _run_until_signal(tmp_path, "default", 3000)
        assert status == 128 + signal.SIGTERM
        delivered = _deliver_the_rest(tmp_path)
        assert set(returned) - delivered == set()

    @pytest.mark.slow
    def test_unhandled_sigterm_loses_at_most_max_uncommitted(self, tmp_path):
        returned, status = _run_until_signal(tmp_path, "unhandled", 3000)
        assert status == -signal.SIGTERM  # killed by the signal: no exit code, no cleanup
        delivered = _deliver_the_rest(tmp_path)
        lost = set(returned) - delivered
        assert len(lost) <= eventsink.config.Settings.max_uncommitted  # the default, 5000
