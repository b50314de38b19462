"""Every built-in sink passes the same contract suite third-party sinks are held to.

To cover a new sink, add a class here: subclass ``SinkContract``, set ``sink_type``, and give
the ``make_sink`` and (if the sink keeps something readable) ``read_stored`` fixtures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from eventsink.sinks.datasette import DatasetteSink
from eventsink.sinks.file import FileSink
from eventsink.sinks.null import NullSink
from eventsink.sinks.sqlite import SQLiteSink
from eventsink.sinks.stdout import StdoutSink

from eventsink.event import Event
from eventsink.exceptions import (
    ConfigError,
    PermanentError,
    RejectedError,
    RetryableError,
    SinkPausedError,
)
from eventsink.plugins import make_plugin_manager, sink_classes
from eventsink.testing import FlakySink, MemorySink, SinkContract


def read_json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class TestFileSinkContract(SinkContract):
    """The file sink keeps the contract (at least once: readers deduplicate by id)."""

    sink_type = "file"
    idempotent = False  # appends; a retried batch may repeat lines

    @pytest.fixture
    def make_sink(self, tmp_path: Path):
        return lambda: FileSink(path=str(tmp_path / "out" / "events.jsonl"), fsync=False)

    @pytest.fixture
    def read_stored(self, tmp_path: Path):
        path = tmp_path / "out" / "events.jsonl"
        return lambda: read_json_lines(path.read_text()) if path.exists() else []

    @pytest.fixture
    def failure_cases(self, tmp_path: Path):
        return {"path is a directory": (lambda: FileSink(path=str(tmp_path)), ConfigError)}


class TestDatasetteSinkContract(SinkContract):
    """The Datasette sink keeps the contract against a real receiver, idempotent by id."""

    sink_type = "datasette"

    @pytest.fixture
    def receiver_table(self, request: pytest.FixtureRequest) -> str:
        return "contract_" + request.node.name.replace("[", "_").replace("]", "")

    @pytest.fixture
    def make_sink(self, receiver: Any, receiver_table: str):
        return lambda: DatasetteSink(
            api_url=f"{receiver.db_url}/-/create", api_token=receiver.token, table=receiver_table
        )

    @pytest.fixture
    def read_stored(self, receiver: Any, receiver_table: str):
        table = receiver_table
        return lambda: receiver.rows(table) if table in _tables(receiver.path) else []


def _tables(path: Path) -> set[str]:
    import sqlite3

    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("select name from sqlite_master where type='table'")}


class TestNatsSinkContract(SinkContract):
    """The NATS sink keeps the contract against a real JetStream: a repeat is deduplicated."""

    sink_type = "nats"

    @pytest.fixture
    def server(self, tmp_path: Path):
        from ..nats.test_nats import NATS_SERVER, NatsServer

        if NATS_SERVER is None:
            pytest.skip("nats-server is not installed (apt-get install nats-server)")
        running = NatsServer(tmp_path / "jetstream")
        running.start()
        yield running
        running.stop()

    @pytest.fixture
    def make_sink(self, server: Any):
        from ..nats.test_nats import sink_for

        return lambda: sink_for(server)

    @pytest.fixture
    def read_stored(self, server: Any):
        import asyncio

        from ..nats.test_nats import stream_records

        return lambda: asyncio.run(stream_records(server.url))

    @pytest.fixture
    def failure_cases(self, server: Any):
        import asyncio

        from ..nats.test_nats import add_stream, sink_for

        asyncio.run(add_stream(server.url, "OTHER", ["other.>"]))
        elsewhere = {"subjects": ["x.>"]}  # the sink's own stream takes none of its subjects
        return {
            "no such stream": (lambda: sink_for(server, create_stream=None), ConfigError),
            "no stream takes the subject": (
                lambda: sink_for(server, subject="nowhere.{table}", create_stream=elsewhere),
                RetryableError,
            ),
            "the subject is another stream's": (
                lambda: sink_for(server, subject="other.{table}", create_stream=elsewhere),
                SinkPausedError,
            ),
        }


class TestS3SinkContract(SinkContract):
    """The s3 sink keeps the contract against a real S3 server (SeaweedFS), read back by S3."""

    sink_type = "s3"
    # The same batch again overwrites its own object (test_s3_sink checks it), but batches
    # with other boundaries (re-leased after a restart) make another object: the overlap is
    # stored twice, and readers deduplicate by id.
    idempotent = False

    @pytest.fixture
    def make_sink(self, seaweed: Any, bucket: str):
        from eventsink.sinks.s3 import S3Sink

        from .test_s3_sink import sink_options

        return lambda: S3Sink(**sink_options(seaweed, bucket))

    @pytest.fixture
    def read_stored(self, seaweed: Any, bucket: str):
        from .test_s3_sink import stored_rows

        return lambda: stored_rows(seaweed, bucket)

    @pytest.fixture
    def failure_cases(self, seaweed: Any, bucket: str):
        from eventsink.sinks.s3 import S3Sink

        from eventsink.testing.seaweedfs import READER

        from .test_s3_sink import sink_options

        reader = {"access_key_id": READER[0], "secret_access_key": READER[1]}
        return {
            "read-only credentials": (
                lambda: S3Sink(**sink_options(seaweed, bucket, **reader)),
                SinkPausedError,
            ),
            "wrong secret": (
                lambda: S3Sink(**sink_options(seaweed, bucket, secret_access_key="wrong-1234")),
                SinkPausedError,
            ),
        }


class TestSQLiteSinkContract(SinkContract):
    """The sqlite sink keeps the contract, idempotent by id."""

    sink_type = "sqlite"

    @pytest.fixture
    def make_sink(self, tmp_path: Path):
        return lambda: SQLiteSink(path=str(tmp_path / "events.db"), table="events")

    @pytest.fixture
    def read_stored(self, tmp_path: Path):
        import sqlite_utils

        def read() -> list[dict[str, Any]]:
            db = sqlite_utils.Database(tmp_path / "events.db")
            return list(db["events"].rows) if db["events"].exists() else []

        return read


class TestStdoutSinkContract(SinkContract):
    """The stdout sink keeps the contract, read back from a captured stdout."""

    sink_type = "stdout"
    idempotent = False  # prints what it is given

    @pytest.fixture
    def make_sink(self):
        return lambda: StdoutSink(format="json")

    @pytest.fixture
    def read_stored(self, capsys: pytest.CaptureFixture[str]):
        # pytest re-installs its own sys.stdout for each test phase, so read it through capsys
        # (it captures writes from the sink's worker thread too) and keep what was read.
        seen: list[str] = []

        def read() -> list[dict[str, Any]]:
            seen.append(capsys.readouterr().out)
            return read_json_lines("".join(seen))

        return read


class TestNullSinkContract(SinkContract):
    """The null sink keeps what applies to a sink that stores nothing."""

    sink_type = "null"

    @pytest.fixture
    def make_sink(self):
        return NullSink


class TestMemorySinkContract(SinkContract):
    """The testing kit's memory sink keeps the contract it is used to check."""

    sink_type = "memory"

    @pytest.fixture
    def store(self) -> dict[str, Event]:
        return {}  # one "receiver" shared by every instance, as across a restart

    @pytest.fixture
    def make_sink(self, store: dict[str, Event]):
        return lambda: MemorySink(store=store)

    @pytest.fixture
    def read_stored(self, store: dict[str, Event]):
        return lambda: [event.row() for event in store.values()]


class TestFlakySinkContract(TestMemorySinkContract):
    """The flaky sink maps scripted statuses to the delivery errors HTTP sinks use."""

    sink_type = "flaky"

    @pytest.fixture
    def make_sink(self, store: dict[str, Event]):
        return lambda: FlakySink(store=store)

    @pytest.fixture
    def failure_cases(self):
        return {
            "500": (lambda: FlakySink([500]), RetryableError),
            "429": (lambda: FlakySink([(429, {"Retry-After": "1"})]), RetryableError),
            "401": (lambda: FlakySink([401]), SinkPausedError),
            "403": (lambda: FlakySink([403]), SinkPausedError),
            "400": (lambda: FlakySink([400]), RejectedError),
            "404": (lambda: FlakySink([404]), PermanentError),
        }


CONTRACTS = {
    cls.sink_type: cls
    for cls in list(globals().values())
    if isinstance(cls, type) and issubclass(cls, SinkContract) and hasattr(cls, "sink_type")
}


class TestEveryBuiltinSinkHasAContract:
    """A built-in sink without a contract class above fails here."""

    def test_builtin_sinks_are_covered(self) -> None:
        """Every sink shipped in the eventsink package runs the contract suite."""
        builtin = {
            name
            for name, cls in sink_classes(make_plugin_manager()).items()
            if cls.__module__.startswith("eventsink.")
        }
        assert {"file", "stdout", "null"} <= builtin
        assert sorted(builtin - set(CONTRACTS)) == []
