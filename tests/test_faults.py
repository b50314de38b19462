"""Fault tests with real processes: nothing lost, nothing duplicated.

Each test causes events in a sender, injects one fault (``kill -9``, a receiver that is down,
answers 500/429, refuses the token or rejects one row), repairs it, and asserts the receiver
ends with exactly the caused events, by id, none duplicated. Senders are ``datasette serve``
subprocesses with the plugin (outbox in an ``--internal`` file), except for the HTTP-fault test,
where a ``Client`` delivers to a small real HTTP server in this process.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

import eventsink
from eventsink.testing.receiver import DatasetteReceiver

from .conftest import wait_until

TOKEN_ENV = "EVENTSINK_FAULTS_TOKEN"


class Sender:
    """A ``datasette serve`` subprocess (database ``s``) with the eventsink plugin configured.

    Its outbox is the ``--internal`` file, which outlives restarts; the plugin block is written
    to a config file that :meth:`configure` may rewrite before a restart.
    """

    def __init__(self, directory: Path, plugin: dict[str, Any]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "sender.json"
        self.internal = directory / "internal.db"
        self.configure(plugin)
        self.server = DatasetteReceiver(
            database="s",
            directory=directory / "server",
            extra_args=["-c", str(self.config), "--internal", str(self.internal)],
        )
        self._headers: dict[str, str] | None = None

    def configure(self, plugin: dict[str, Any]) -> None:
        self.config.write_text(json.dumps({"plugins": {"eventsink": plugin}}))

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = {"Authorization": f"Bearer {self.server.token}"}
        return self._headers

    def create_tables(self, names: list[str]) -> None:
        """One ``create-table`` event per name (``/-/create`` with columns, no rows)."""
        with httpx.Client(headers=self.headers, timeout=30) as client:
            for name in names:
                response = client.post(
                    f"{self.server.db_url}/-/create",
                    json={"table": name, "columns": [{"name": "n", "type": "integer"}]},
                )
                assert response.status_code == 201, response.text

    def status(self) -> dict[str, Any]:
        """The plugin's ``/-/eventsink.json`` status of the ``datasette`` sink."""
        response = httpx.get(f"{self.server.url}/-/eventsink.json", headers=self.headers)
        response.raise_for_status()
        return response.json()["sinks"]["datasette"]

    def kill(self) -> None:
        """``kill -9``: no shutdown hook runs, nothing is flushed."""
        process = self.server.process
        assert process is not None
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        self.server.stop()  # forgets the dead process and closes its log

    def outbox(self) -> list[dict[str, Any]]:
        return self._query("select id, attempts, last_error from eventsink_outbox")

    def dead_letters(self) -> list[dict[str, Any]]:
        return self._query("select id, data, status, error from eventsink_dead_letters")

    def _query(self, sql: str) -> list[dict[str, Any]]:
        connection = sqlite3.connect(self.internal, timeout=10)
        connection.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in connection.execute(sql)]
        except sqlite3.OperationalError:  # the plugin has not made its tables yet
            return []
        finally:
            connection.close()


def events_table() -> str:
    return f"faults_{uuid.uuid4().hex[:8]}"


def ids_of(rows: list[dict[str, Any]]) -> list[str]:
    return [row["id"] for row in rows]


def arrived(receiver: DatasetteReceiver, table: str, count: int) -> list[dict[str, Any]] | None:
    """The receiver's rows of ``table`` once there are at least ``count``."""
    rows = receiver.rows(table)
    return rows if len(rows) >= count else None


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch, receiver: DatasetteReceiver) -> pytest.MonkeyPatch:
    """The receiver's token in the environment the sender reads it from (``$env``)."""
    monkeypatch.setenv(TOKEN_ENV, receiver.token)
    return monkeypatch


class TestSenderKilled:
    """A sender killed with SIGKILL right after its last response loses and repeats nothing."""

    @pytest.mark.slow
    def test_500_requests_then_kill_9_give_501_events(self, tmp_path, receiver, token_env):
        table = events_table()
        plugin = {
            "api_url": f"{receiver.db_url}/-/create",
            "api_token": {"$env": TOKEN_ENV},
            "table": table,
        }
        # 20 events a second at most: most of the 501 are still in the outbox at the kill.
        sender = Sender(tmp_path, {**plugin, "batch_limit": 20, "max_rate": 1})
        sender.server.start()

        async def cause() -> None:
            async with httpx.AsyncClient(headers=sender.headers, timeout=30) as client:
                db = sender.server.db_url
                # /-/create with a row fires create-table and insert-rows: 2 events.
                first = await client.post(f"{db}/-/create", json={"table": "t", "row": {"n": 0}})
                assert first.status_code == 201, first.text

                async def insert(worker: int) -> None:
                    for n in range(1 + worker, 500, 4):  # 499 inserts, one event each
                        response = await client.post(f"{db}/t/-/insert", json={"row": {"n": n}})
                        assert response.status_code == 201, response.text

                await asyncio.gather(*(insert(worker) for worker in range(4)))
                sender.kill()  # at once: the last events were committed before their responses

        asyncio.run(cause())
        delivered = set(ids_of(receiver.rows(table)))
        pending = set(ids_of(sender.outbox()))
        assert len(pending) > 100, "the kill should leave events in the outbox"
        # Every event caused is delivered or committed (in flight at the kill: both).
        caused = delivered | pending
        assert len(caused) == 501

        sender.configure(plugin)  # plugin defaults: no longer slowed down
        sender.server.start()
        try:
            wait_until(lambda: not sender.outbox(), 20)
        finally:
            sender.server.close()
        rows = receiver.rows(table)
        assert sorted(ids_of(rows)) == sorted(caused)
        assert Counter(row["event"] for row in rows) == {"create-table": 1, "insert-rows": 500}
        assert sender.dead_letters() == []


class TestReceiverDown:
    """Events caused while the receiver is down arrive soon after it is back, unprompted."""

    OUTAGE = 20.0  # seconds, as in the issue

    @pytest.mark.slow
    def test_50_events_arrive_within_10s_of_the_receiver_returning(
        self, tmp_path, receiver, token_env
    ):
        table = events_table()
        sender = Sender(
            tmp_path,
            {
                "api_url": f"{receiver.db_url}/-/create",
                "api_token": {"$env": TOKEN_ENV},
                "table": table,
            },
        )
        names = [f"t{n:02}" for n in range(50)]
        with sender.server:
            sender.create_tables(names[:1])  # the sender's token is made while all is well
            wait_until(lambda: arrived(receiver, table, 1), 10)
            receiver.stop()
            down_at = time.monotonic()
            try:
                sender.create_tables(names[1:])
                # Plugin defaults: the lane retries with backoff (0.5 s doubling to 5 s).
                wait_until(lambda: any(row["attempts"] >= 2 for row in sender.outbox()), 15)
                assert len(sender.outbox()) == 49 and sender.dead_letters() == []
                time.sleep(max(0.0, self.OUTAGE - (time.monotonic() - down_at)))
            finally:
                receiver.start()
            rows = wait_until(lambda: arrived(receiver, table, 50), 10)
        assert sorted(row["table_name"] for row in rows) == names
        assert len(set(ids_of(rows))) == 50


class FlakyReceiver(ThreadingHTTPServer):
    """A real HTTP server acting like Datasette's ``/-/create`` and ``/-/insert``.

    From its first request it answers 500 for ``outage`` seconds, then 429 with
    ``Retry-After: 2`` once, then stores rows by id, ignoring ids it already has.
    """

    daemon_threads = True

    def __init__(self, outage: float) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.outage = outage
        self.lock = threading.Lock()
        self.requests: list[tuple[float, int]] = []  # (arrival, status answered)
        self.rows: dict[str, dict[str, Any]] = {}
        self.received: Counter[str] = Counter()  # ids in successful requests
        self.started: float | None = None
        self.limited_at: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        now = time.monotonic()
        with self.lock:
            if self.started is None:
                self.started = now
            if now - self.started < self.outage:
                status, document, headers = 500, {"ok": False, "errors": ["down"]}, {}
            elif self.limited_at is None:
                self.limited_at = now
                status, document = 429, {"ok": False, "errors": ["slow down"]}
                headers = {"Retry-After": "2"}
            else:
                for row in body["rows"]:
                    self.received[row["id"]] += 1
                    self.rows.setdefault(row["id"], row)
                status, document, headers = 201, {"ok": True}, {}
            self.requests.append((now, status))
        return status, document, headers


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the sink's pooled client expects
    server: FlakyReceiver

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        status, document, headers = self.server.answer(body)
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def flaky() -> Iterator[FlakyReceiver]:
    server = FlakyReceiver(outage=30.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class TestErrorsThenHealthy:
    """500s then a 429 are retried with backoff and the Retry-After floor; all events arrive."""

    RETRY_INITIAL = 0.5  # the defaults
    RETRY_MAX = 5.0

    @pytest.mark.slow
    def test_500_then_429_then_healthy(self, tmp_path, flaky):
        client = eventsink.Client(
            sink="datasette",
            api_url=f"{flaky.url}/data/-/create",
            api_token="secret-token",
            batch_limit=100,
            retry_initial=self.RETRY_INITIAL,
            retry_max=self.RETRY_MAX,
            outbox=str(tmp_path / "outbox.db"),
            instance="faults",
        )
        try:
            # Events keep being caused through most of the 30 s outage: 400 over 24 s.
            ids = []
            for n in range(400):
                ids.append(client.write("events", {"n": n}))
                time.sleep(0.06)
            assert flaky.started is not None and time.monotonic() - flaky.started < flaky.outage
            assert client.flush(timeout=60)
        finally:
            client.close()
        assert sorted(flaky.rows) == sorted(ids)
        assert set(flaky.received.values()) == {1}  # no id was accepted twice

        failing = [moment for moment, status in flaky.requests if status == 500]
        # Full jitter: retry k waits uniform(0, min(retry_max, retry_initial * 2**(k-1))).
        # Until the ceiling reaches retry_max, at most `ramp` attempts; after it the mean wait
        # is retry_max / 2, so 4 * outage / retry_max bounds the rest (exceeding it needs
        # 12 uniform waits summing under ~2.25 s of their mean 6 s: p < 1e-5).
        ramp = math.ceil(math.log2(self.RETRY_MAX / self.RETRY_INITIAL)) + 1
        bound = 1 + ramp + math.ceil(4 * flaky.outage / self.RETRY_MAX)
        assert 3 <= len(failing) <= bound < len(ids) / 10
        after_limit = [moment for moment, status in flaky.requests if moment > flaky.limited_at]
        assert after_limit and after_limit[0] - flaky.limited_at >= 2.0 - 1e-3
        assert [status for _, status in flaky.requests].count(429) == 1


class TestWrongToken:
    """A refused token pauses the sink; events wait in the outbox until a restart fixes it."""

    @pytest.mark.slow  # two Datasette starts and a 5 s shutdown flush
    def test_events_caused_with_a_wrong_token_arrive_after_a_restart(
        self, tmp_path, receiver, token_env
    ):
        table = events_table()
        token_env.setenv(TOKEN_ENV, "dstok_not-a-real-token")
        sender = Sender(
            tmp_path,
            {
                "api_url": f"{receiver.db_url}/-/create",
                "api_token": {"$env": TOKEN_ENV},
                "table": table,
                "flush_interval": 0.1,
            },
        )
        names = [f"w{n:02}" for n in range(30)]
        with sender.server:
            sender.create_tables(names)
            status = wait_until(lambda: (s := sender.status())["paused"] and s, 10)
            assert status["last_error"]["status"] in (401, 403)
            # shutdown tries to flush for 5 s, then leaves the events in the outbox
        kept = sender.outbox()
        assert len(kept) == 30 and sender.dead_letters() == []
        assert any(status in kept[0]["last_error"] for status in ("401", "403"))
        assert receiver.rows(table) == []

        token_env.setenv(TOKEN_ENV, receiver.token)
        with sender.server:
            rows = wait_until(lambda: arrived(receiver, table, 30), 10)
            wait_until(lambda: not sender.outbox(), 10)
        assert sorted(row["table_name"] for row in rows) == names
        assert sorted(ids_of(rows)) == sorted(row["id"] for row in kept)


class TestPoisonEvent:
    """One event the receiver rejects is dead-lettered alone and replayed once it is fixed."""

    @pytest.mark.slow
    def test_one_rejected_event_then_replay(self, tmp_path, receiver, token_env):
        table = events_table()
        # A trigger, not a CHECK constraint: the sink inserts with "ignore", and INSERT OR
        # IGNORE skips rows that violate CHECK or NOT NULL instead of failing.
        with sqlite3.connect(receiver.path) as connection:
            connection.executescript(
                f"""
                create table {table} (id text primary key, instance text, event text,
                    created text, actor_id text, database_name text, table_name text,
                    properties text);
                create trigger {table}_poison before insert on {table}
                    when new.table_name = 'poison'
                    begin select raise(abort, 'poison event rejected'); end;
                """
            )
        sender = Sender(
            tmp_path,
            {
                "api_url": f"{receiver.db_url}/{table}/-/insert",
                "api_token": {"$env": TOKEN_ENV},
                "flush_interval": 2.0,  # every event below goes in one batch
            },
        )
        with sender.server:
            sender.create_tables(["a", "b", "poison", "c", "d", "e"])
            letters = wait_until(sender.dead_letters, 15)
            rows = wait_until(lambda: arrived(receiver, table, 5), 10)
            wait_until(lambda: not sender.outbox(), 10)
            assert len(letters) == 1 and len(receiver.rows(table)) == 5
            letter = letters[0]
            assert json.loads(letter["data"])["table_name"] == "poison"
            assert letter["status"] == 400 and "poison event rejected" in letter["error"]
            assert sorted(row["table_name"] for row in rows) == ["a", "b", "c", "d", "e"]

            with sqlite3.connect(receiver.path) as connection:
                connection.execute(f"drop trigger {table}_poison")
            command = Path(sys.executable).with_name("eventsink")
            replay = subprocess.run(
                [str(command), "replay", "--outbox", str(sender.internal)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert replay.returncode == 0, replay.stderr
            assert "Moved 1 dead letter(s) of datasette" in replay.stdout
            # The running sender polls its outbox every 2 s and delivers the replayed event.
            rows = wait_until(lambda: arrived(receiver, table, 6), 10)
        assert sorted(row["table_name"] for row in rows) == ["a", "b", "c", "d", "e", "poison"]
        assert letter["id"] in ids_of(rows) and len(set(ids_of(rows))) == 6
        assert sender.dead_letters() == [] and sender.outbox() == []
