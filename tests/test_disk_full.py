"""The outbox on a full disk under a real ``datasette serve`` sender: no request hangs or fails.

A 2 MB tmpfs holds the outbox; a filler file takes the rest of its space. Requests made while
it is full complete normally (the events the outbox cannot store are counted as dropped, reason
``outbox_error``, and the status page says why); once the filler is removed, every event that
was stored arrives, with no help.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest

import eventsink

from .conftest import wait_until
from .test_faults import Sender, events_table, token_env  # noqa: F401  (a fixture)

TOKEN_ENV = "EVENTSINK_FAULTS_TOKEN"
EVENTSINK = str(Path(sys.executable).with_name("eventsink"))


@pytest.fixture
def full_tmpfs(tmp_path: Path):
    """A 2 MB tmpfs mounted at ``tmp_path/mnt`` (skipped where mounting is not permitted)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Take every free byte of ``directory``'s filesystem with one file."""
    filler = directory / "filler"
    try:
        with open(filler, "wb") as handle:
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
    except OSError:
        pass
    return filler


class TestDiskFull:
    """A full outbox disk never hangs or fails the host's requests; delivery resumes by itself."""

    @pytest.mark.slow
    @pytest.mark.usefixtures("token_env")
    def test_full_tmpfs_under_datasette_serve(self, tmp_path, full_tmpfs, receiver):
        table = events_table()
        sender = Sender(
            tmp_path / "sender",
            {
                "api_url": f"{receiver.db_url}/-/create",
                "api_token": {"$env": TOKEN_ENV},
                "table": table,
                "outbox": str(full_tmpfs / "outbox.db"),
            },
        )
        failed = 0
        with sender.server:
            db = sender.server.db_url
            with httpx.Client(headers=sender.headers, timeout=30) as client:

                def insert(n: int) -> None:
                    nonlocal failed
                    try:
                        response = client.post(f"{db}/t/-/insert", json={"row": {"n": n}})
                        failed += response.status_code != 201
                    except httpx.TimeoutException:  # a hung request
                        failed += 1

                first = client.post(f"{db}/-/create", json={"table": "t", "row": {"n": 0}})
                assert first.status_code == 201, first.text
                wait_until(lambda: len(receiver.rows(table)) >= 2, 20)

                filler = fill(full_tmpfs)
                for n in range(1, 51):
                    insert(n)
                status = httpx.get(
                    f"{sender.server.url}/-/eventsink.json", headers=sender.headers
                ).json()
                page = httpx.get(f"{sender.server.url}/-/eventsink", headers=sender.headers).text
                dropped = status["dropped"].get("outbox_error", 0)

                filler.unlink()
                for n in range(51, 71):
                    insert(n)
                expected = 2 + (50 - dropped) + 20
                wait_until(lambda: len(receiver.rows(table)) >= expected, 30)
                after = httpx.get(
                    f"{sender.server.url}/-/eventsink.json", headers=sender.headers
                ).json()
        log = sender.server.log_path.read_text()

        assert failed == 0  # no request hung past 30 s or failed
        assert dropped > 0, "the full disk should have refused some events"
        assert "outbox cannot be written: No space left on device" in status["outbox"]["error"]
        assert "outbox cannot be written: No space left on device" in page
        assert after["outbox"]["error"] is None
        rows = receiver.rows(table)
        assert len(rows) == expected  # every stored event, none twice
        assert Counter(row["event"] for row in rows) == {
            "create-table": 1,
            "insert-rows": 1 + 50 - dropped + 20,
        }
        assert log.count("Traceback") == 0, log[log.find("Traceback") - 2000 :][:6000]


class TestStatusCommand:
    """``eventsink status`` says the outbox cannot be written, and still shows what it holds."""

    def test_full_disk_is_named(self, tmp_path, full_tmpfs):
        outbox = full_tmpfs / "outbox.db"
        client = eventsink.Client(
            sink="datasette",
            api_url="http://127.0.0.1:9/db/-/create",  # nothing listens: events stay
            outbox=str(outbox),
            retry_initial=30,
            handle_sigterm=False,
        )
        for n in range(3):
            client.write("t", {"n": n}, wait=True)
        client.close(timeout=0)
        fill(full_tmpfs)
        result = subprocess.run(
            [EVENTSINK, "status", "--outbox", str(outbox)], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        assert "outbox cannot be written: No space left on device" in result.stdout
        assert "Traceback" not in result.stdout + result.stderr
