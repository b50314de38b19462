"""The DataSource contract, retries, derived ids, checkpoints and the OAuth2 helper."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from ulid import ULID

from eventsink.config import Secret, parse_config
from eventsink.exceptions import ConfigError, OutboxError, PermanentError, RetryableError
from eventsink.pipeline.pipeline import Pipeline
from eventsink.plugins import lookup, make_plugin_manager, sink_classes, source_classes
from eventsink.pull.checkpoints import Checkpoint, CheckpointStore
from eventsink.pull.oauth2 import AccessTokenExpired, OAuth2Tokens, refresh_oauth2
from eventsink.pull.puller import Puller
from eventsink.pull.source import DataSource, derive_event_id, read_with_retry

from ..outbox import outbox_ids

CONFIG = {
    "title": "Numbers for tests",
    "params": [
        {"name": "count", "title": "How many", "type": "int", "default": 250},
        {"name": "password", "title": "Password", "secret": True},
    ],
}


class NumberSource(DataSource):
    """Records {"n": 0..count-1} in chunks of 50; fails as scripted in ``failures``."""

    name = "numbers"

    def __init__(self, source: dict[str, Any], options: dict[str, Any] | None = None) -> None:
        super().__init__(source, options)
        self.calls = 0
        self.failures: dict[int, BaseException] = {}
        self.position: int | None = None

    def read(self, n: int | None = None) -> list[dict[str, Any]] | None:
        self.calls += 1
        if self.calls in self.failures:
            raise self.failures.pop(self.calls)
        if self.position is None:
            self.position = self.resume_state("numbers").get("next", 0)
        count = self.source["count"]
        if self.position >= count:
            return None
        end = min(self.position + 50, count)
        records = [{"n": i, "id": f"r{i}"} for i in range(self.position, end)]
        self.position = end
        self.state("numbers", {"next": end})
        self.state("meta", {"seen": end})
        self.progress(end, count)
        return records


def make_pipeline(tmp_path: Path, **config: Any) -> Pipeline:
    pm = make_plugin_manager()
    classes = sink_classes(pm)
    settings = parse_config(
        {
            "sink": "sqlite",
            "path": str(tmp_path / "dest.db"),
            "outbox": str(tmp_path / "ob.db"),
            "flush_interval": 0.01,
            **config,
        },
        lambda name, key: lookup(classes, name, "sink", key).options,
    )
    return Pipeline(settings, pm=pm)


def dest_rows(tmp_path: Path, table: str = "numbers") -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "dest.db") as db:
        return db.execute(f"select id, n, source_id from {table} order by n").fetchall()


async def pull(tmp_path: Path, source: DataSource, **kwargs: Any) -> Puller:
    pipeline = make_pipeline(tmp_path)
    await pipeline.start()
    store = CheckpointStore(tmp_path / "ob.db")
    puller = Puller(source, pipeline, store, retry_initial=0.001, **kwargs)
    try:
        await puller.run()
    finally:
        assert await pipeline.close(10) == 0
        store.close()
    return puller


class TestRetries:
    """read() is retried on retryable errors only, and no record is delivered twice."""

    async def test_retryable_error_on_third_read_delivers_everything_once(self, tmp_path):
        source = NumberSource({})
        source.failures[3] = RetryableError("origin hiccup")
        puller = await pull(tmp_path, source)
        rows = dest_rows(tmp_path)
        assert [row[1] for row in rows] == list(range(250))
        assert len({row[0] for row in rows}) == 250
        assert source.calls == 5 + 1 + 1  # five pages, the failed call, the final None
        assert puller.read == 250

    async def test_permanent_error_is_not_retried(self, tmp_path):
        source = NumberSource({})
        source.failures[2] = PermanentError("gone")
        with pytest.raises(PermanentError):
            await pull(tmp_path, source)
        assert source.calls == 2
        assert len(dest_rows(tmp_path)) == 50  # the first page is committed and delivered

    def test_retryable_attribute_decides_and_attempts_are_bounded(self):
        class Flaky(Exception):
            retryable = True

        source = NumberSource({})
        source.failures = {1: Flaky(), 2: Flaky(), 3: Flaky()}
        slept: list[float] = []
        with pytest.raises(Flaky):
            read_with_retry(source, 10, initial=0.5, sleep=slept.append)
        assert source.calls == 3 and slept == [0.5, 1.0]

        source = NumberSource({})
        source.failures = {1: ValueError("a bug")}
        with pytest.raises(ValueError):
            read_with_retry(source, 10, sleep=slept.append)
        assert source.calls == 1

    def test_retry_after_is_a_floor(self):
        source = NumberSource({})
        source.failures = {1: RetryableError("slow down", retry_after=7)}
        slept: list[float] = []
        assert len(read_with_retry(source, 10, initial=0.1, sleep=slept.append)) == 50
        assert slept == [7]


class TestEventIds:
    """Records with a key of their own get a stable, ULID-shaped event id."""

    def test_derived_id_is_a_stable_valid_ulid(self):
        first = derive_event_id("numbers:t:{}", 17)
        assert first == derive_event_id("numbers:t:{}", 17)
        assert first != derive_event_id("numbers:t:{}", 18)
        assert first != derive_event_id("numbers:u:{}", 17)
        assert str(ULID.from_str(first)) == first and first.startswith("0000000000")
        assert ULID.from_str(first).milliseconds == 0

    async def test_rereading_keyed_records_adds_nothing(self, tmp_path):
        await pull(tmp_path, NumberSource({"source_key": "n"}))
        first = dest_rows(tmp_path)
        await pull(tmp_path, NumberSource({"source_key": "n"}), restart=True)
        assert dest_rows(tmp_path) == first and len(first) == 250
        assert first[0][0] == derive_event_id(NumberSource({}).identity(), 0)

    def test_reserved_keys_are_renamed(self):
        data = NumberSource({}).to_data({"id": 1, "created": "x", "n": 2})
        assert data == {"source_id": 1, "source_created": "x", "n": 2}


class TestCheckpoints:
    """Checkpoints merge, never run ahead of the outbox, and resume a later run."""

    async def test_checkpoint_is_saved_only_after_its_records_are_committed(self, tmp_path):
        seen: list[tuple[int, int]] = []

        class Watching(CheckpointStore):
            def save(self, checkpoint: Checkpoint) -> None:
                ids: set[str] = set()
                with sqlite3.connect(tmp_path / "ob.db") as db:
                    ids |= set(outbox_ids(db))
                if (tmp_path / "dest.db").exists():
                    with sqlite3.connect(tmp_path / "dest.db") as db:
                        if db.execute(
                            "select 1 from sqlite_master where name='numbers'"
                        ).fetchone():
                            ids |= {r[0] for r in db.execute("select id from numbers")}
                seen.append((checkpoint.records, len(ids)))
                super().save(checkpoint)

        pipeline = make_pipeline(tmp_path)
        await pipeline.start()
        store = Watching(tmp_path / "ob.db")
        await Puller(NumberSource({}), pipeline, store).run()
        await pipeline.close(10)
        assert [records for records, _ in seen] == [50, 100, 150, 200, 250]
        assert all(durable >= records for records, durable in seen)
        saved = store.load(NumberSource({}).identity())
        assert saved.state == {"numbers": {"next": 250}, "meta": {"seen": 250}}
        store.close()

    async def test_a_second_run_resumes_and_restart_starts_over(self, tmp_path):
        first = NumberSource({"count": 120})
        await pull(tmp_path, first)
        more = NumberSource({"count": 180})  # a different identity: its own checkpoint
        resumed = NumberSource({"count": 120})
        puller = await pull(tmp_path, resumed)
        assert puller.read == 0 and puller.resumed_from == 120
        puller = await pull(tmp_path, NumberSource({"count": 120}), restart=True)
        assert puller.read == 120
        assert (await pull(tmp_path, more)).read == 180

    def test_states_merge_later_keys_win(self):
        checkpoint = Checkpoint("s")
        checkpoint.merge([("a", {"x": 1, "y": 1}), ("b", {"z": 1}), ("a", {"y": 2})])
        assert checkpoint.state == {"a": {"x": 1, "y": 2}, "b": {"z": 1}}


class TestConfig:
    """CONFIG becomes validated options; secrets stay hidden."""

    def test_missing_required_param_names_it(self):
        classes = source_classes(make_plugin_manager())
        with pytest.raises(ConfigError) as error:
            classes["datasette"]({}, {})
        assert error.value.key == "url" and "'url'" in str(error.value)

    async def test_secret_param_never_in_logs_status_or_checkpoint(self, tmp_path, caplog):
        caplog.set_level(logging.DEBUG, logger="eventsink")
        source = NumberSource({"password": "hunter2-very-secret", "count": 60})
        assert isinstance(source.source["password"], Secret)
        source.log("params", source.source)
        puller = await pull(tmp_path, source)
        text = caplog.text + json.dumps(puller.status()) + repr(source) + source.identity()
        assert "hunter2" not in text and "********" in caplog.text
        assert b"hunter2" not in (tmp_path / "ob.db").read_bytes()

    def test_builtin_sources_are_registered(self):
        classes = source_classes(make_plugin_manager())
        assert {"jsonl", "datasette"} <= set(classes)
        params = {p["name"]: p for p in classes["datasette"].params()}
        assert params["token"]["secret"] and params["url"]["required"]


class _AuthServer(BaseHTTPRequestHandler):
    """A token endpoint that rotates refresh tokens, and a data endpoint needing a token."""

    tokens = {"refresh": "R1"}
    valid_access = "A2"

    def do_POST(self) -> None:
        form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        if form.get("refresh_token") == [self.tokens["refresh"]] and form["client_id"] == ["c"]:
            self.tokens["refresh"] = "R2"
            self._json(200, {"access_token": "A2", "refresh_token": "R2", "expires_in": 60})
        else:
            self._json(400, {"error": "invalid_grant"})

    def do_GET(self) -> None:
        if self.headers.get("Authorization") == f"Bearer {self.valid_access}":
            self._json(200, {"rows": [{"k": 1}]})
        else:
            self._json(401, {"error": "expired"})

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


class TestOAuth2:
    """The refresh decorator renews an expired token against a real HTTP server."""

    def test_refresh_then_retry_once(self):
        _AuthServer.tokens = {"refresh": "R1"}
        _AuthServer.valid_access = "A2"
        server = ThreadingHTTPServer(("127.0.0.1", 0), _AuthServer)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        stored: list[str] = []

        class ApiSource(DataSource):
            name = "api"
            CONFIG = {"title": "api", "params": []}

            def __init__(self) -> None:
                super().__init__({})
                self.oauth2 = OAuth2Tokens(
                    f"{base}/token", access_token="A1-expired", refresh_token="R1", client_id="c"
                )

            @refresh_oauth2(on=AccessTokenExpired, callback=lambda s, t: stored.append(t))
            def read(self, n=None):
                response = httpx.get(f"{base}/data", headers=self.oauth2.headers())
                if response.status_code == 401:
                    raise AccessTokenExpired(response.text)
                return response.json()["rows"]

        try:
            source = ApiSource()
            assert source.read() == [{"k": 1}]
            assert source.oauth2.refreshes == 1 and stored == [source.oauth2]
            assert source.oauth2.refresh_token.reveal() == "R2"
            assert "A2" not in repr(source.oauth2)
            _AuthServer.valid_access = "A3"  # the new token expires too; R1 is spent
            source.oauth2.refresh_token = Secret("R1")
            with pytest.raises(PermanentError, match="refused"):
                source.read()
        finally:
            server.shutdown()
            server.server_close()


class TestOutboxDrops:
    """A page the outbox could not store is not checkpointed: the next run reads it again."""

    @pytest.mark.slow
    async def test_dropped_page_is_read_again(self, tmp_path, monkeypatch):
        pipeline = make_pipeline(tmp_path)
        await pipeline.start()
        real_append = pipeline.outbox.append_by_destination
        calls = 0

        async def full_disk_at_first(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls <= 5:  # every attempt at the first group, as on a full disk
                raise sqlite3.OperationalError("database or disk is full")
            return await real_append(*args, **kwargs)

        monkeypatch.setattr(pipeline.outbox, "append_by_destination", full_disk_at_first)
        store = CheckpointStore(tmp_path / "ob.db")
        with pytest.raises(OutboxError):
            await Puller(NumberSource({}), pipeline, store, retry_initial=0.001).run()
        assert pipeline.intake.dropped["outbox_error"] > 0
        assert store.load(NumberSource({}).identity()).records == 0  # nothing checkpointed
        await pipeline.close(10)
        store.close()

        await pull(tmp_path, NumberSource({}))  # the next run reads it all again
        assert [row[1] for row in dest_rows(tmp_path)] == list(range(250))
