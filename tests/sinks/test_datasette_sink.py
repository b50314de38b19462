"""The datasette sink against a real receiver, and fault shapes through httpx.MockTransport."""

from __future__ import annotations

import logging
import uuid

import httpx
import pytest
from eventsink.sinks.datasette import DatasetteSink, parse_api_url, tilde_encode

from eventsink.config import parse_config
from eventsink.event import Event
from eventsink.exceptions import (
    ConfigError,
    PermanentError,
    RejectedError,
    RetryableError,
    SinkPausedError,
)
from eventsink.ids import IdGenerator
from eventsink.outbox import MemoryOutbox
from eventsink.pipeline.pipeline import Pipeline
from eventsink.plugins import lookup, make_plugin_manager, sink_classes
from eventsink.testing.receiver import free_port

_ids = IdGenerator()


def make_events(count: int, table: str = "events", **extra: object) -> list[Event]:
    events = []
    for index in range(count):
        event_id, created = _ids.new()
        events.append(Event(event_id, table, "test", created, {"n": index, **extra}))
    return events


def unique_table() -> str:
    return f"t_{uuid.uuid4().hex[:10]}"


class Recorder:
    """Collects the URL paths a real client posts to (an httpx event hook)."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, request: httpx.Request) -> None:
        self.paths.append(request.url.path)


def recording_sink(token: str | None, **config: object) -> tuple[DatasetteSink, Recorder]:
    recorder = Recorder()
    headers = {"authorization": f"Bearer {token}"} if token else {}
    client = httpx.AsyncClient(headers=headers, event_hooks={"request": [recorder]})
    return DatasetteSink(client=client, api_token=token, **config), recorder


class TestApiUrl:
    """api_url accepts the create and insert shapes and nothing else."""

    def test_create_shape(self):
        assert parse_api_url("https://example.com/db/-/create") == ("https://example.com/db", None)

    def test_insert_shape_decodes_the_table(self):
        assert parse_api_url("http://h:8001/base/db/my~2Etable/-/insert") == (
            "http://h:8001/base/db",
            "my.table",
        )
        assert tilde_encode("my.table x") == "my~2Etable+x"

    @pytest.mark.parametrize(
        "url", ["https://example.com/db", "https://example.com/db/t.json", "ftp://h/db/-/create"]
    )
    def test_other_shapes_are_config_errors_showing_both_shapes(self, url):
        with pytest.raises(ConfigError) as caught:
            DatasetteSink(api_url=url)
        assert caught.value.key == "api_url"
        assert "/-/create" in str(caught.value) and "/<table>/-/insert" in str(caught.value)

    def test_missing_api_url_names_the_key(self):
        classes = sink_classes(make_plugin_manager())
        with pytest.raises(ConfigError, match="'api_url' is required"):
            parse_config(
                {"sink": "datasette"}, lambda name, key: lookup(classes, name, "sink", key).options
            )

    def test_table_conflicting_with_insert_url(self):
        with pytest.raises(ConfigError, match="'table'"):
            DatasetteSink(api_url="http://h/db/a/-/insert", table="b")

    def test_describe_and_repr_hide_secrets(self):
        sink = DatasetteSink(
            api_url="https://user:pw@example.com/db/-/create?token=abc", api_token="s3cret-token"
        )
        # The query string makes this URL fail the shape check only if it is not stripped.
        assert sink.describe() == "https://example.com/db/-/create"
        assert "s3cret" not in repr(sink) and "s3cret" not in repr(sink.config)


class TestRealReceiver:
    """Batches land as rows in a real Datasette; ids make resends harmless."""

    async def test_create_then_insert(self, receiver):
        table = unique_table()
        sink, recorder = recording_sink(receiver.token, api_url=f"{receiver.db_url}/-/create")
        first, second = make_events(3, table), make_events(4, table)
        await sink.send(first)
        await sink.send(second)
        await sink.send(first)  # a retried batch: ignored by primary key
        await sink.close()
        rows = receiver.rows(table)
        assert sorted(row["id"] for row in rows) == sorted(e.id for e in first + second)
        assert rows[0].keys() == {"id", "instance", "created", "n"}
        assert recorder.paths == [
            "/data/-/create",
            f"/data/{table}/-/insert",
            f"/data/{table}/-/insert",
        ]

    async def test_table_option_overrides_event_tables(self, receiver):
        table = unique_table()
        sink = DatasetteSink(
            api_url=f"{receiver.db_url}/-/create", api_token=receiver.token, table=table
        )
        await sink.open()
        await sink.send(make_events(2, "a") + make_events(2, "b"))
        await sink.close()
        assert len(receiver.rows(table)) == 4

    async def test_insert_url(self, receiver):
        table = unique_table()
        setup = DatasetteSink(api_url=f"{receiver.db_url}/-/create", api_token=receiver.token)
        await setup.send(make_events(1, table))
        await setup.close()
        sink, recorder = recording_sink(
            receiver.token, api_url=f"{receiver.db_url}/{table}/-/insert"
        )
        await sink.send(make_events(5, "ignored-table-name"))
        await sink.close()
        assert len(receiver.rows(table)) == 6
        assert recorder.paths == [f"/data/{table}/-/insert"]

    async def test_receiver_with_max_insert_rows_10(self, small_receiver, caplog):
        table = unique_table()
        sink, recorder = recording_sink(
            small_receiver.token, api_url=f"{small_receiver.db_url}/-/create"
        )
        await sink.send(make_events(5, table))  # creates the table
        with caplog.at_level(logging.INFO, logger="eventsink"):
            await sink.send(make_events(35, table))
        await sink.close()
        assert len(small_receiver.rows(table)) == 40
        assert sink.max_rows == 10
        # one refused request of 35, then four of at most 10
        assert recorder.paths.count(f"/data/{table}/-/insert") == 5
        assert "at most 10 rows per request" in caplog.text

    async def test_bad_token_pauses_without_showing_it(self, receiver):
        sink = DatasetteSink(
            api_url=f"{receiver.db_url}/-/create", api_token="dstok_not-a-real-token"
        )
        with pytest.raises(SinkPausedError) as caught:
            await sink.send(make_events(1, unique_table()))
        await sink.close()
        message = str(caught.value)
        assert receiver.db_url in message and "create-table" in message
        if caught.value.status != 403:  # older alphas answer 403 "Permission denied"
            assert caught.value.status == 401 and "Invalid token signature" in message
        assert "dstok_not-a-real-token" not in message

    async def test_token_without_permission_names_the_permission(self, receiver):
        token = receiver.create_token("root", "--all", "view-instance")
        table = unique_table()
        setup = DatasetteSink(api_url=f"{receiver.db_url}/-/create", api_token=receiver.token)
        await setup.send(make_events(1, table))
        await setup.close()
        sink = DatasetteSink(api_url=f"{receiver.db_url}/{table}/-/insert", api_token=token)
        with pytest.raises(SinkPausedError) as caught:
            await sink.send(make_events(1, table))
        await sink.close()
        assert caught.value.status == 403
        assert "insert-row" in str(caught.value) and token not in str(caught.value)

    @pytest.mark.slow  # Datasette takes seconds (3-8 s here) to answer 404 for a missing database
    async def test_wrong_database_is_permanent(self, receiver):
        sink = DatasetteSink(api_url=f"{receiver.url}/nope/-/create", api_token=receiver.token)
        with pytest.raises(PermanentError) as caught:
            await sink.send(make_events(1))
        await sink.close()
        assert caught.value.status == 404 and "404 Not Found" in str(caught.value)
        assert "database name" in str(caught.value) and "<html" not in str(caught.value)
        assert not isinstance(caught.value, RejectedError)

    async def test_bad_rows_are_rejected(self, receiver):
        table = unique_table()
        sink = DatasetteSink(api_url=f"{receiver.db_url}/-/create", api_token=receiver.token)
        await sink.send(make_events(1, table))
        with pytest.raises(RejectedError) as caught:
            await sink.send(make_events(1, table, surprise="column"))
        await sink.close()
        assert caught.value.status == 400 and "invalid columns: surprise" in str(caught.value)

    async def test_alter_adds_columns(self, receiver):
        table = unique_table()
        sink = DatasetteSink(
            api_url=f"{receiver.db_url}/-/create", api_token=receiver.token, alter=True
        )
        await sink.send(make_events(1, table))
        await sink.send(make_events(1, table, extra="yes"))
        await sink.close()
        assert {row.get("extra") for row in receiver.rows(table)} == {None, "yes"}

    async def test_dropped_table_is_created_again(self, receiver):
        table = unique_table()
        sink = DatasetteSink(api_url=f"{receiver.db_url}/-/create", api_token=receiver.token)
        await sink.send(make_events(1, table))
        drop = await sink._client.post(f"{receiver.db_url}/{table}/-/drop", json={"confirm": True})
        assert drop.status_code == 200
        await sink.send(make_events(2, table))
        await sink.close()
        assert len(receiver.rows(table)) == 2

    async def test_nothing_listening_is_retryable(self):
        sink = DatasetteSink(api_url=f"http://127.0.0.1:{free_port()}/data/-/create")
        with pytest.raises(RetryableError, match="cannot reach"):
            await sink.send(make_events(1))
        await sink.close()


def mock_sink(handler, **config) -> DatasetteSink:
    return DatasetteSink(
        transport=httpx.MockTransport(handler),
        api_url="http://receiver.test/db/t/-/insert",
        api_token="tok-123",
        **config,
    )


class TestFaultShapes:
    """Faults a real Datasette will not produce on demand, through MockTransport."""

    async def test_timeout_is_retryable(self):
        def handler(request):
            raise httpx.ReadTimeout("slow", request=request)

        sink = mock_sink(handler, timeout=0.5)
        with pytest.raises(RetryableError, match=r"within 0.5s"):
            await sink.send(make_events(1))
        await sink.close()

    @pytest.mark.parametrize("header, expected", [("7", 7.0), ("0", 0.0)])
    async def test_429_carries_retry_after(self, header, expected):
        sink = mock_sink(
            lambda request: httpx.Response(429, headers={"Retry-After": header}, text="slow down")
        )
        with pytest.raises(RetryableError) as caught:
            await sink.send(make_events(1))
        await sink.close()
        assert caught.value.status == 429 and caught.value.retry_after == expected
        assert not isinstance(caught.value, SinkPausedError)

    async def test_429_with_http_date(self):
        sink = mock_sink(
            lambda request: httpx.Response(
                429, headers={"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"}
            )
        )
        with pytest.raises(RetryableError) as caught:
            await sink.send(make_events(1))
        await sink.close()
        assert caught.value.retry_after > 1e8

    async def test_server_error_is_retryable_with_its_message(self):
        sink = mock_sink(
            lambda request: httpx.Response(503, json={"ok": False, "errors": ["maintenance"]})
        )
        with pytest.raises(RetryableError, match="503 maintenance"):
            await sink.send(make_events(1))
        await sink.close()

    async def test_half_written_success_is_sent_again(self):
        sink = mock_sink(lambda request: httpx.Response(201, content=b'{"ok": tr'))
        with pytest.raises(RetryableError, match="incomplete body"):
            await sink.send(make_events(1))
        await sink.close()

    async def test_connection_dropped_mid_response_is_retryable(self):
        def handler(request):
            raise httpx.RemoteProtocolError("peer closed connection", request=request)

        sink = mock_sink(handler)
        with pytest.raises(RetryableError, match="RemoteProtocolError"):
            await sink.send(make_events(1))
        await sink.close()

    async def test_echoed_token_is_scrubbed(self):
        sink = mock_sink(lambda request: httpx.Response(400, json={"errors": ["bad tok-123"]}))
        with pytest.raises(RejectedError) as caught:
            await sink.send(make_events(1))
        await sink.close()
        assert "tok-123" not in str(caught.value) and "********" in str(caught.value)

    async def test_request_body_is_the_rows(self):
        seen = []

        def handler(request):
            seen.append(request)
            return httpx.Response(201, json={"ok": True})

        sink = mock_sink(handler)
        events = make_events(3)
        await sink.send(events)
        await sink.close()
        import json

        body = json.loads(seen[0].content)
        assert body == {"rows": [event.row() for event in events], "ignore": True}
        assert seen[0].headers["authorization"] == "Bearer tok-123"


def pipeline_for(api_url: str, token: str | None, **delivery: object) -> Pipeline:
    config = {"sink": "datasette", "api_url": api_url, "api_token": token, "outbox": ":memory:"}
    classes = sink_classes(make_plugin_manager())
    settings = parse_config(
        {**config, **delivery}, lambda name, key: lookup(classes, name, "sink", key).options
    )
    return Pipeline(settings, outbox=MemoryOutbox())


class TestInPipeline:
    """The pipeline keeps, retries or dead-letters what the sink's errors say."""

    async def test_refused_token_keeps_events_and_logs_once(self, receiver, caplog):
        pipeline = pipeline_for(
            f"{receiver.db_url}/-/create", "dstok_wrong-token-value", pause_interval=0.05
        )
        await pipeline.start()
        for index in range(50):
            await pipeline.write_async(unique_table(), {"n": index})
        with caplog.at_level(logging.INFO, logger="eventsink"):
            assert not await pipeline.flush(timeout=0.5)
        status = (await pipeline.status())["sinks"]["datasette"]
        assert status["paused"] and status["delivered"] == 0
        assert status["pending"] + status["in_flight"] == 50
        await pipeline.close(timeout=0)
        assert "dstok_wrong-token-value" not in caplog.text
        assert "dstok_wrong-token-value" not in str(status)
        paused_lines = [r for r in caplog.records if "is paused" in r.getMessage()]
        assert paused_lines and all("create-table" in r.getMessage() for r in paused_lines)
        assert len(paused_lines) < 50  # one per retry interval, not one per event

    async def test_a_token_file_fixed_while_paused_is_read_again(self, receiver, tmp_path, caplog):
        token_file = tmp_path / "token"
        token_file.write_text("dstok_wrong-token-value\n")
        table = unique_table()
        pipeline = pipeline_for(
            f"{receiver.db_url}/-/create", {"$file": str(token_file)}, pause_interval=0.1
        )
        await pipeline.start()
        ids = [await pipeline.write_async(table, {"n": n}) for n in range(20)]
        assert not await pipeline.flush(timeout=0.5)
        assert (await pipeline.status())["sinks"]["datasette"]["paused"]
        token_file.write_text(receiver.token + "\n")  # rotated, as a mounted secret would be
        with caplog.at_level(logging.INFO, logger="eventsink"):
            assert await pipeline.flush(timeout=10)  # no restart
        await pipeline.close()
        assert sorted(row["id"] for row in receiver.rows(table)) == ids
        assert "read a new token from its file" in caplog.text
        assert receiver.token not in caplog.text

    async def test_a_token_file_in_a_sinks_entry_is_read_again(self, receiver, tmp_path, caplog):
        token_file = tmp_path / "token"
        token_file.write_text("dstok_wrong-token-value\n")
        table = unique_table()
        entry = {
            "type": "datasette",
            "name": "remote",
            "api_url": f"{receiver.db_url}/-/create",
            "api_token": {"$file": str(token_file)},
            "pause_interval": 0.1,
        }
        classes = sink_classes(make_plugin_manager())
        settings = parse_config(
            {"sinks": [entry], "outbox": ":memory:"},
            lambda name, key: lookup(classes, name, "sink", key).options,
        )
        pipeline = Pipeline(settings, outbox=MemoryOutbox())
        await pipeline.start()
        ids = [await pipeline.write_async(table, {"n": n}) for n in range(5)]
        assert not await pipeline.flush(timeout=0.5)
        assert (await pipeline.status())["sinks"]["remote"]["paused"]
        token_file.write_text(receiver.token + "\n")
        with caplog.at_level(logging.INFO, logger="eventsink"):
            assert await pipeline.flush(timeout=10)
        await pipeline.close()
        assert sorted(row["id"] for row in receiver.rows(table)) == ids
        assert "read a new token from its file" in caplog.text

    async def test_poison_row_is_isolated(self, receiver):
        table = unique_table()
        pipeline = pipeline_for(f"{receiver.db_url}/-/create", receiver.token, batch_limit=100)
        await pipeline.start()
        await pipeline.write_async(table, {"n": 0})
        assert await pipeline.flush(timeout=10)
        for index in range(1, 20):
            data = {"n": index, "bad": 1} if index == 7 else {"n": index}
            await pipeline.write_async(table, data)
        assert await pipeline.flush(timeout=10)
        letters = await pipeline.outbox.dead_letters()
        await pipeline.close()
        assert [letter.event.data for letter in letters] == [{"n": 7, "bad": 1}]
        assert sorted(row["n"] for row in receiver.rows(table)) == [n for n in range(20) if n != 7]
