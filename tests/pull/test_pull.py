"""``eventsink pull`` end to end: a real Datasette origin, real subprocesses, SIGKILL."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
import sqlite_utils

from .sources_support import DATASETTE, EVENTSINK_CLI, datasette_server, wait_until

ROWS = 50_000
SECRET = "test-signing-secret"


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """A Datasette serving a public 50,000-row table and a private one."""
    root = tmp_path_factory.mktemp("origin")
    db = sqlite_utils.Database(root / "origin.db")
    db["items"].insert_all(
        ({"id": i, "name": f"item {i}", "size": i % 97} for i in range(1, ROWS + 1)),
        pk="id",
        batch_size=5000,
    )
    private = sqlite_utils.Database(root / "private.db")
    private["secrets"].insert_all({"n": i} for i in range(30))  # a rowid table
    (root / "datasette.json").write_text(
        json.dumps({"databases": {"private": {"allow": {"id": "root"}}}})
    )
    token = subprocess.run(
        [DATASETTE, "create-token", "root", "--secret", SECRET],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with datasette_server(
        "origin.db", "private.db", "-c", "datasette.json", "--secret", SECRET, cwd=root
    ) as base:
        yield {"base": base, "root": root, "token": token}


def run_pull(work: Path, *args: str, env: dict[str, str] | None = None, check: bool = True):
    result = subprocess.run(
        [*EVENTSINK_CLI, "pull", *args],
        cwd=work,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"pull failed ({result.returncode}): {result.stderr}")
    return result


def read_count(result: subprocess.CompletedProcess[str]) -> int:
    return int(re.search(r"read (\d+) record", result.stderr).group(1))


def checkpoint_records(outbox: Path) -> int:
    if not outbox.exists():
        return 0
    try:
        with sqlite3.connect(outbox, timeout=5) as db:
            row = db.execute("select max(records) from eventsink_checkpoints").fetchone()
    except sqlite3.OperationalError:  # the table does not exist yet
        return 0
    return (row and row[0]) or 0


def dest_count(path: Path, table: str = "items") -> tuple[int, int]:
    with sqlite3.connect(path) as db:
        return db.execute(f"select count(*), count(distinct source_id) from {table}").fetchone()


class TestDatasettePull:
    """A pull killed half-way resumes where its last checkpoint was committed."""

    @pytest.mark.slow
    def test_kill_resume_then_incremental(self, origin, tmp_path):
        url = f"{origin['base']}/origin/items"
        args = [
            "datasette",
            "-p",
            f"url={url}",
            "-p",
            "destination=items",
            "--outbox",
            "outbox.db",
            "-o",
            "path=dest.db",
            "--no-progress",
        ]
        process = subprocess.Popen(
            [*EVENTSINK_CLI, "pull", *args, "--read-size", "500", "--rate", "8000"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_until(lambda: checkpoint_records(tmp_path / "outbox.db") >= 15_000, timeout=60)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        committed = checkpoint_records(tmp_path / "outbox.db")
        assert 15_000 <= committed < ROWS, "the pull was not killed half-way"

        second = run_pull(tmp_path, *args, "--json")
        status = json.loads(second.stdout)
        assert read_count(second) == status["read"] == ROWS - committed
        assert status["resumed_from"] == committed and status["left"] == 0
        assert dest_count(tmp_path / "dest.db") == (ROWS, ROWS)

        db = sqlite_utils.Database(origin["root"] / "origin.db")
        db["items"].insert_all({"id": ROWS + i, "name": "new", "size": 0} for i in range(1, 101))
        third = run_pull(tmp_path, *args)
        assert read_count(third) == 100
        assert dest_count(tmp_path / "dest.db") == (ROWS + 100, ROWS + 100)
        with sqlite3.connect(tmp_path / "dest.db") as dest:
            assert dest.execute("select count(*) from items where name = 'new'").fetchone() == (
                100,
            )


class TestPullCommand:
    """pull --help, parameter errors, and secret parameters."""

    def test_help_shows_the_source_config(self, tmp_path):
        result = run_pull(tmp_path, "datasette", "--help")
        for text in (
            "--url",
            "Table URL",
            "--token",
            "API token",
            "[secret]",
            "EVENTSINK_DATASETTE_TOKEN",
            "--page-size",
            "--restart",
        ):
            assert text in result.stdout
        listing = subprocess.run(
            [*EVENTSINK_CLI, "sources"], capture_output=True, text=True, check=True
        ).stdout
        assert "datasette: Datasette table" in listing and "jsonl: JSON lines file" in listing

    def test_missing_required_param_is_named(self, tmp_path):
        result = run_pull(tmp_path, "datasette", "--outbox", "o.db", check=False)
        assert result.returncode == 2
        assert "needs the parameter 'url'" in result.stderr
        assert not (tmp_path / "o.db").exists()

    @pytest.mark.slow
    def test_secret_token_is_used_but_never_shown(self, origin, tmp_path):
        url = f"{origin['base']}/private/secrets"
        args = [
            "datasette",
            "-p",
            f"url={url}",
            "--outbox",
            "outbox.db",
            "-o",
            "path=dest.db",
            "--json",
            "-vv",
        ]
        refused = run_pull(tmp_path, *args, check=False)
        assert refused.returncode == 1 and "403" in refused.stderr
        token = origin["token"]
        allowed = run_pull(tmp_path, *args, "-p", f"token={token}")
        from_env = run_pull(tmp_path, *args, "--restart", env={"EVENTSINK_DATASETTE_TOKEN": token})
        assert read_count(allowed) == 30 and read_count(from_env) == 30
        assert json.loads(allowed.stdout)["params"]["token"] == "********"
        with sqlite3.connect(tmp_path / "dest.db") as dest:
            assert dest.execute("select count(*) from datasette").fetchone() == (30,)
        for result in (refused, allowed, from_env):
            assert token not in result.stdout + result.stderr
        assert token.encode() not in (tmp_path / "outbox.db").read_bytes()


class TestJsonlPull:
    """The jsonl source resumes by offset and reads only appended lines."""

    @pytest.mark.slow
    def test_appended_lines_only(self, tmp_path):
        path = tmp_path / "in.jsonl"
        path.write_text("".join(json.dumps({"k": i}) + "\n" for i in range(300)))
        args = [
            "jsonl",
            "-p",
            f"path={path}",
            "-p",
            "source_key=k",
            "--outbox",
            "ob.db",
            "-o",
            "path=dest.db",
            "--read-size",
            "64",
        ]
        assert read_count(run_pull(tmp_path, *args)) == 300
        with path.open("a") as file:
            file.write("".join(json.dumps({"k": i}) + "\n" for i in range(300, 310)))
            file.write('{"k": 310')  # half-written: left for the next run
        assert read_count(run_pull(tmp_path, *args)) == 10
        with path.open("a") as file:
            file.write("}\n")
        assert read_count(run_pull(tmp_path, *args)) == 1
        assert read_count(run_pull(tmp_path, *args, "--restart")) == 311
        with sqlite3.connect(tmp_path / "dest.db") as dest:
            assert dest.execute("select count(*), count(distinct k) from jsonl").fetchone() == (
                311,
                311,
            )
