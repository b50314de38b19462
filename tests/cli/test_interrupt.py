"""Ctrl-C (SIGINT) and SIGTERM stop ``eventsink`` commands cleanly, in real subprocesses."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from eventsink.testing import wait_until

EVENTSINK = str(Path(sys.executable).parent / "eventsink")
LINES = 200_000


def count_rows(path: Path, sql: str) -> tuple[int, ...]:
    """One row of ``sql`` on ``path``, or zeros while the table is not there yet."""
    if not path.exists():
        return (0,)
    connection = sqlite3.connect(path, timeout=10)
    try:
        return connection.execute(sql).fetchone()
    except sqlite3.OperationalError:
        return (0,)
    finally:
        connection.close()


def start(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [EVENTSINK, *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "120"},
    )


def start_sending_big(tmp_path: Path, outbox: Path) -> subprocess.Popen[bytes]:
    """Start ``eventsink send big.jsonl``; return once its first rows are in events.db (or
    it has ended)."""
    process = start(tmp_path, "send", "big.jsonl", "--outbox", str(outbox))
    wait_until(
        lambda: (
            count_rows(tmp_path / "events.db", "select count(*) from big")[0] > 0
            or process.poll() is not None
        ),
        timeout=60,
    )
    return process


def send_big_again(tmp_path: Path, outbox: Path) -> None:
    """Run ``eventsink send big.jsonl`` to completion, as a user would after a stop."""
    again = subprocess.run(
        [EVENTSINK, "send", "big.jsonl", "--outbox", str(outbox)],
        cwd=tmp_path,
        capture_output=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr


def interrupt(process: subprocess.Popen[bytes], signum: int) -> tuple[str, str]:
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    return out.decode(), err.decode()


@pytest.mark.slow
class TestSendInterrupted:
    """send of 200,000 lines, stopped mid-delivery, keeps the rest; a rerun stores each once."""

    @pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
    def test_exit_130_no_traceback_and_a_rerun_delivers_everything_once(self, tmp_path, signum):
        with (tmp_path / "big.jsonl").open("w") as file:
            for number in range(LINES):
                file.write(json.dumps({"n": number, "kind": "tick"}) + "\n")
        events_db, outbox = tmp_path / "events.db", tmp_path / "outbox.db"
        process = start_sending_big(tmp_path, outbox)
        assert process.poll() is None, "send finished before it could be interrupted"
        out, err = interrupt(process, signum)

        assert process.returncode == 130, err
        assert "Traceback" not in err and "never awaited" not in err and "destroyed" not in err
        found = re.search(r"Interrupted: ([\d,]+) events? kept in the outbox; run again", err)
        assert found, err
        kept = int(found.group(1).replace(",", ""))
        assert (
            kept == count_rows(outbox, "select coalesce(sum(events), 0) from eventsink_outbox")[0]
        )
        (delivered,) = count_rows(events_db, "select count(*) from big")
        assert 0 < delivered < LINES  # really stopped in the middle
        assert f"Sent {delivered:,} to sqlite" in out

        send_big_again(tmp_path, outbox)
        assert count_rows(
            events_db, "select count(*), count(distinct id), count(distinct n) from big"
        ) == (LINES, LINES, LINES)
        assert count_rows(outbox, "select coalesce(sum(events), 0) from eventsink_outbox") == (0,)


class TestInterruptedWhileReading:
    """Ctrl-C while send waits on its input (a pipe nobody writes to) exits 130 at once."""

    def test_sigint_while_waiting_for_stdin(self, tmp_path):
        process = subprocess.Popen(
            [EVENTSINK, "send", "--outbox", str(tmp_path / "outbox.db")],
            cwd=tmp_path,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        process.stdin.write(b'{"n": 1}\n{"n": 2}\n')  # type: ignore[union-attr]
        process.stdin.flush()  # type: ignore[union-attr]
        wait_until(
            lambda: count_rows(tmp_path / "events.db", "select count(*) from events")[0] == 2,
            timeout=30,
        )
        _, err = interrupt(process, signal.SIGINT)
        process.stdin.close()  # type: ignore[union-attr]
        assert process.returncode == 130, err
        assert "Traceback" not in err
        assert "Interrupted: 0 events kept in the outbox; run again to deliver them" in err


class TestReplayTo:
    """replay --to a receiver that stays down stops: after --timeout, or at once on Ctrl-C."""

    def dead_letters_for_a_down_receiver(self, tmp_path: Path) -> str:
        from eventsink.testing.receiver import free_port

        url = f"http://127.0.0.1:{free_port()}/data/-/create"  # nothing listens there
        sent = subprocess.run(
            [EVENTSINK, "send", "--outbox", "outbox.db", "--sink", "datasette",
             "-o", f"api_url={url}", "-o", "max_attempts=1"],
            input=b'{"n": 1}\n{"n": 2}\n', cwd=tmp_path, capture_output=True, timeout=60,
        )  # fmt: skip
        assert sent.returncode == 3, sent.stderr  # dead-lettered after one attempt
        return url

    def test_timeout_leaves_them_in_the_outbox(self, tmp_path):
        url = self.dead_letters_for_a_down_receiver(tmp_path)
        replay = subprocess.run(
            [EVENTSINK, "replay", "--outbox", "outbox.db", "--to", "datasette",
             "-o", f"api_url={url}", "--timeout", "0.5"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert replay.returncode == 1, replay.stderr
        assert "Moved 2 dead letter(s)" in replay.stdout
        assert "2 event(s) not delivered yet are kept in the outbox" in replay.stdout
        assert "Traceback" not in replay.stderr

    def test_sigint_while_retrying(self, tmp_path):
        url = self.dead_letters_for_a_down_receiver(tmp_path)
        process = start(
            tmp_path, "replay", "--outbox", "outbox.db", "--to", "datasette", "-o", f"api_url={url}"
        )
        outbox = tmp_path / "outbox.db"
        wait_until(
            lambda: count_rows(outbox, "select max(attempts) from eventsink_outbox")[0] or 0,
            timeout=60,
        )
        _, err = interrupt(process, signal.SIGINT)
        assert process.returncode == 130, err
        assert "Traceback" not in err and "Task was destroyed" not in err
        assert "Interrupted: 2 events kept in the outbox; run again to deliver them" in err
