"""The NATS JetStream sink and ``eventsink consume``, against a real ``nats-server -js``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventsink.config import DeliverySettings, SinkConfig, parse_config
from eventsink.event import Event
from eventsink.exceptions import ConfigError, RejectedError, RetryableError, SinkPausedError
from eventsink.ids import IdGenerator
from eventsink.nats.consumer import JetStreamConsumer, consume_settings, event_from_message
from eventsink.outbox import MemoryOutbox
from eventsink.pipeline.pipeline import Pipeline
from eventsink.plugins import Hooks, lookup, make_plugin_manager, sink_classes
from eventsink.testing import MemorySink, async_wait_until, wait_until
from eventsink.testing.receiver import free_port

nats = pytest.importorskip("nats", reason="nats-py is not installed (pip install -e '.[test]')")
from eventsink.sinks.nats import NatsSink, subject_token  # noqa: E402

NATS_SERVER = shutil.which("nats-server") or (
    "/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None
)
pytestmark = pytest.mark.skipif(
    NATS_SERVER is None, reason="nats-server is not installed (apt-get install nats-server)"
)
STREAM = "EVENTS"


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class NatsServer:
    """A real ``nats-server -js`` on a free loopback port; restartable on the same store."""

    def __init__(self, store: Path, *args: str, jetstream: bool = True) -> None:
        self.port = free_port()
        self.store = store
        self.args = args
        self.jetstream = jetstream
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert NATS_SERVER is not None
        command = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port)]
        if self.jetstream:
            command += ["-js", "-sd", str(self.store)]
        command += self.args
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: port_open(self.port), timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
        wait_until(lambda: not port_open(self.port), timeout=10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    running = NatsServer(tmp_path / "jetstream")
    running.start()
    yield running
    running.stop()


IDS = IdGenerator()


def new_id() -> str:
    return IDS.new()[0]


def make_events(count: int, table: str = "clicks", instance: str = "web-1") -> list[Event]:
    events = []
    for n in range(count):
        event_id, created = IDS.new()
        events.append(Event(event_id, table, instance, created, {"n": n}))
    return events


def sink_for(server: NatsServer, **options: Any) -> NatsSink:
    options.setdefault("create_stream", {"duplicate_window": 120})
    return NatsSink(servers=[server.url], stream=STREAM, **options)


async def stream_ids(url: str) -> list[str]:
    """Every event id stored in the stream, read back with an ephemeral consumer."""
    import orjson

    nc = await nats.connect(url)
    js = nc.jetstream()
    info = await js.stream_info(STREAM)
    subscription = await js.pull_subscribe(">", stream=STREAM)
    ids: list[str] = []
    while len(ids) < info.state.messages:
        for message in await subscription.fetch(1000, timeout=5):
            ids.append(orjson.loads(message.data)["id"])
            await message.ack()
    await nc.close()
    return ids


async def stream_records(url: str) -> list[dict[str, Any]]:
    """Every event envelope stored in the stream, read back with an ephemeral consumer."""
    import orjson

    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        info = await js.stream_info(STREAM)
    except nats.js.errors.NotFoundError:
        await nc.close()
        return []
    subscription = await js.pull_subscribe(">", stream=STREAM)
    records: list[dict[str, Any]] = []
    while len(records) < info.state.messages:
        for message in await subscription.fetch(1000, timeout=5):
            records.append(orjson.loads(message.data))
            await message.ack()
    await nc.close()
    return records


async def stream_count(url: str) -> int:
    nc = await nats.connect(url)
    info = await nc.jetstream().stream_info(STREAM)
    await nc.close()
    return info.state.messages


async def add_stream(url: str, name: str, subjects: list[str], **config: Any) -> None:
    """Create a JetStream stream directly (what an operator would do), e.g. with limits."""
    nc = await nats.connect(url)
    try:
        await nc.jetstream().add_stream(name=name, subjects=subjects, **config)
    finally:
        await nc.close()


class TestNatsSinkConfig:
    """Bad configuration is refused naming the key, and secrets never show."""

    def test_secrets_never_in_describe_or_repr(self) -> None:
        sink = NatsSink(servers=["nats://alice:pw-in-url@h:4222"], user="bob", password="hunter2")
        shown = f"{sink.describe()} {sink!r}"
        assert "hunter2" not in shown and "pw-in-url" not in shown
        assert "hunter2" not in repr(sink.config)
        assert "h:4222" in sink.describe()

    def test_token_from_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("NATS_TOKEN_FOR_TEST", "s3cret")
        sink = NatsSink(token={"$env": "NATS_TOKEN_FOR_TEST"})
        assert sink.config["token"].reveal() == "s3cret"
        assert "s3cret" not in repr(sink.config)

    @pytest.mark.parametrize(
        ("options", "key"),
        [
            ({"subject": "events.{host}"}, "subject"),
            ({"password": "x"}, "password"),
            ({"user": "u", "token": "t"}, "token"),
            ({"tls_cert": "/nonexistent.pem", "tls_key": "/nonexistent.key"}, "tls_cert"),
            ({"tls_cert": "/nonexistent.pem"}, "tls_key"),
            ({"create_stream": {"subjectz": ["a"]}}, "create_stream.subjectz"),
            ({"servers": []}, "servers"),
        ],
    )
    def test_bad_config_names_the_key(self, options: dict[str, Any], key: str) -> None:
        with pytest.raises(ConfigError) as caught:
            NatsSink(**options)
        assert caught.value.key == key

    def test_subject_tokens_are_sanitised(self) -> None:
        sink = NatsSink()
        event = Event(new_id(), "page views.*", "web 1.example>", "2024-05-01T00:00:00.000Z")
        assert sink.subject_for(event) == "events.web_1_example_.page_views_"
        assert subject_token("") == "_"

    def test_registered_as_a_plugin(self) -> None:
        pm = make_plugin_manager()
        assert lookup(sink_classes(pm), "nats", "sink") is NatsSink


class TestNatsSinkOpen:
    """Opening fails while JetStream is unavailable: retryable, actionable, no connection left."""

    async def test_a_server_without_jetstream_says_so_and_keeps_no_connection(
        self, tmp_path: Path
    ) -> None:
        monitor = free_port()
        plain = NatsServer(tmp_path / "unused", "-m", str(monitor), jetstream=False)
        plain.start()
        try:
            sink = sink_for(plain, timeout=1.0)
            for _ in range(3):  # the lane reopens before each retried batch
                with pytest.raises(RetryableError, match="JetStream is not available"):
                    await sink.open()
            assert await asyncio.to_thread(server_connections, monitor) == 0
            await sink.close()
        finally:
            plain.stop()

    async def test_opening_again_replaces_the_connection(self, server: NatsServer) -> None:
        sink = sink_for(server)
        await sink.open()
        first = sink._nc
        await sink.open()
        assert first.is_closed and not sink._nc.is_closed
        await sink.send(make_events(3))
        await sink.close()
        assert await stream_count(server.url) == 3


def server_connections(monitor_port: int) -> int:
    """The client connections a ``nats-server -m`` reports."""
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/connz", timeout=5) as reply:
        return json.load(reply)["num_connections"]


class TestNatsSinkDelivery:
    """Events published by the sink are in the stream exactly once."""

    async def test_ten_thousand_events_arrive_exactly_once(self, server: NatsServer) -> None:
        sink = sink_for(server)
        events = make_events(10_000)
        await sink.open()
        try:
            for start in range(0, len(events), 1000):
                await sink.send(events[start : start + 1000])
        finally:
            await sink.close()
        ids = await stream_ids(server.url)
        assert len(ids) == 10_000
        assert sorted(ids) == sorted(event.id for event in events)

    async def test_same_batch_twice_is_stored_once(self, server: NatsServer) -> None:
        sink = sink_for(server)
        events = make_events(500)
        await sink.open()
        try:
            await sink.send(events)
            assert await stream_count(server.url) == 500
            await sink.send(events)  # a retry after a lost ack
        finally:
            await sink.close()
        assert await stream_count(server.url) == 500

    async def test_subject_built_from_template(self, server: NatsServer) -> None:
        sink = sink_for(server, subject="audit.{table}.{instance}")
        await sink.open()
        try:
            await sink.send(make_events(3, table="logins", instance="eu.1"))
        finally:
            await sink.close()
        nc = await nats.connect(server.url)
        info = await nc.jetstream().stream_info(STREAM, subjects_filter=">")
        await nc.close()
        assert info.state.subjects == {"audit.logins.eu_1": 3}

    async def test_no_stream_is_a_config_error(self, server: NatsServer) -> None:
        sink = NatsSink(servers=[server.url], stream="MISSING")
        with pytest.raises(ConfigError) as caught:
            await sink.open()
        assert caught.value.key == "stream"
        await sink.close()

    async def test_no_responders_is_retryable(self, server: NatsServer) -> None:
        sink = sink_for(server, subject="elsewhere.{table}", create_stream={"subjects": ["x.>"]})
        await sink.open()
        try:
            with pytest.raises(RetryableError) as caught:
                await sink.send(make_events(2))
        finally:
            await sink.close()
        assert not isinstance(caught.value, SinkPausedError)
        assert "no responders" in str(caught.value)

    async def test_subject_of_another_stream_pauses(self, server: NatsServer) -> None:
        await add_stream(server.url, "OTHER", ["other.>"])
        sink = sink_for(server, subject="other.{table}", create_stream={"subjects": ["x.>"]})
        await sink.open()
        try:
            with pytest.raises(SinkPausedError) as caught:
                await sink.send(make_events(3))
        finally:
            await sink.close()
        assert "not in stream 'EVENTS'" in str(caught.value)
        assert await stream_count(server.url) == 0

    async def test_message_over_the_stream_limit_is_rejected(self, server: NatsServer) -> None:
        await add_stream(server.url, STREAM, ["events.>"], max_msg_size=512)
        sink = sink_for(server)
        big = make_events(1)[0]
        big.data["blob"] = "x" * 1000
        await sink.open()
        try:
            with pytest.raises(RejectedError) as caught:
                await sink.send([*make_events(2), big])
        finally:
            await sink.close()
        assert "maximum" in str(caught.value)

    async def test_late_acks_of_a_timed_out_batch_are_ignored(self, server: NatsServer) -> None:
        sink = sink_for(server)
        events = make_events(200)
        await sink.open()
        sink.config["timeout"] = 1e-6  # below the option's minimum: gives up before any ack
        try:
            with pytest.raises(RetryableError, match="timed out"):
                await sink.send(events)
            sink.config["timeout"] = 10.0
            await sink.send(events)  # the retry: stored once, its own acks counted
            await asyncio.sleep(0.2)  # any late ack of the first try arrives now, harmlessly
            await sink.send(make_events(10))
        finally:
            await sink.close()
        assert await stream_count(server.url) == 210

    async def test_server_down_is_retryable(self, tmp_path: Path) -> None:
        sink = NatsSink(servers=[f"nats://127.0.0.1:{free_port()}"], connect_timeout=0.5)
        with pytest.raises(RetryableError):
            await sink.open()


class TestNatsSinkAuth:
    """Refused credentials pause the sink and are never shown."""

    async def test_wrong_password_pauses(self, tmp_path: Path) -> None:
        secured = NatsServer(tmp_path / "js", "--user", "alice", "--pass", "right-password")
        secured.start()
        try:
            sink = NatsSink(servers=[secured.url], user="alice", password="wrong-password")
            with pytest.raises(SinkPausedError) as caught:
                await sink.open()
            assert "wrong-password" not in str(caught.value)
            good = NatsSink(
                servers=[secured.url],
                user="alice",
                password="right-password",
                create_stream={},
            )
            await good.open()
            await good.send(make_events(5))
            await good.close()
        finally:
            secured.stop()


class TestNatsOutage:
    """The server stopped while the pipeline publishes: nothing is lost once it is back."""

    @pytest.mark.slow
    async def test_server_stopped_then_back(self, server: NatsServer) -> None:
        config = {
            "sink": "nats",
            "servers": [server.url],
            "stream": STREAM,
            "create_stream": {"duplicate_window": 120},
            "timeout": 1.0,
            "batch_limit": 200,
            "flush_interval": 0.05,
            "retry_initial": 0.1,
            "retry_max": 0.5,
            "instance": "web-1",
            "outbox": ":memory:",
        }
        pm = make_plugin_manager()
        classes = sink_classes(pm)
        settings = parse_config(
            config, lambda name, key: lookup(classes, name, "sink", key).options
        )
        pipeline = Pipeline(settings, pm=pm, outbox=MemoryOutbox())
        await pipeline.start()
        lane = pipeline.lanes["nats"]
        written = 0

        async def write(count: int) -> None:
            nonlocal written
            for _ in range(count):
                await pipeline.write_async("clicks", {"n": written}, wait_committed=False)
                written += 1
                if written % 100 == 0:
                    await asyncio.sleep(0.01)  # a steady stream, not one burst

        await write(2000)
        await async_wait_until(lambda: _settled(lane, 2000), timeout=30)
        server.stop()
        down_at = time.monotonic()
        await write(3000)  # published into a dead connection
        await async_wait_until(lambda: lane.stats.failed_attempts > 0, timeout=30)
        # Down for 10 s of failed attempts: publishes time out, are retried, land once back.
        await asyncio.sleep(max(0.0, 10.0 - (time.monotonic() - down_at)))
        server.start()
        await write(1000)
        assert await pipeline.flush(timeout=60)
        await pipeline.close()
        assert lane.stats.failed_attempts > 0
        ids = await stream_ids(server.url)
        assert len(ids) == written == 6000
        assert len(set(ids)) == 6000


class TestNatsRefusals:
    """An event JetStream refuses is set aside alone; the events around it are stored once."""

    async def test_one_oversized_event_is_dead_lettered_alone(self, server: NatsServer) -> None:
        await add_stream(server.url, STREAM, ["events.>"], max_msg_size=512, duplicate_window=120)
        config = {
            "sink": "nats",
            "servers": [server.url],
            "stream": STREAM,
            "batch_limit": 100,
            "flush_interval": 0.05,
            "instance": "web-1",
        }
        pm = make_plugin_manager()
        classes = sink_classes(pm)
        settings = parse_config(
            config, lambda name, key: lookup(classes, name, "sink", key).options
        )
        pipeline = Pipeline(settings, pm=pm, outbox=MemoryOutbox())
        await pipeline.start()
        try:
            for n in range(300):
                data: dict[str, Any] = {"n": n}
                if n == 150:
                    data["blob"] = "x" * 1000
                await pipeline.write_async("clicks", data, wait_committed=False)
            assert await pipeline.flush(timeout=30)
            letters = await pipeline.outbox.dead_letters()
        finally:
            await pipeline.close()
        assert [letter.event.data["n"] for letter in letters] == [150]
        assert "maximum" in letters[0].failure.message
        records = await stream_records(server.url)
        assert sorted(record["data"]["n"] for record in records) == [
            n for n in range(300) if n != 150
        ]


async def _settled(lane: Any, count: int) -> bool:
    return lane.stats.delivered >= count


class TestConsume:
    """``eventsink consume`` workers drain the stream into sqlite, acking after the sink."""

    async def publish(self, server: NatsServer, count: int) -> list[Event]:
        events = make_events(count)
        sink = sink_for(server)
        await sink.open()
        try:
            for start in range(0, count, 1000):
                await sink.send(events[start : start + 1000])
        finally:
            await sink.close()
        return events

    def worker(self, server: NatsServer, db: Path, *extra: str) -> subprocess.Popen[bytes]:
        command = [str(Path(sys.executable).parent / "eventsink"), "consume"]
        command += ["--servers", server.url, "--stream", STREAM, "--durable", "loaders"]
        command += ["--set", "sink=sqlite", "--set", f"path={db}", *extra]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def rows(self, db: Path) -> tuple[int, int]:
        if not db.exists():
            return (0, 0)
        with sqlite3.connect(db, timeout=30) as conn:
            try:
                return conn.execute("select count(*), count(distinct id) from clicks").fetchone()
            except sqlite3.OperationalError:
                return (0, 0)

    def stop(self, process: subprocess.Popen[bytes]) -> str:
        """SIGTERM a worker and return its stderr; a worker that hangs is killed, never leaked."""
        process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
        assert process.returncode == 0, stderr.decode()
        return stderr.decode()

    async def fetching(self, server: NatsServer, workers: int) -> bool:
        """Whether ``workers`` pull requests wait on the shared durable consumer."""
        nc = await nats.connect(server.url)
        try:
            info = await nc.jetstream().consumer_info(STREAM, "loaders")
        except Exception:  # not created yet: no worker has started
            return False
        finally:
            await nc.close()
        return info.num_waiting >= workers

    async def consumer_idle(self, server: NatsServer) -> bool:
        nc = await nats.connect(server.url)
        info = await nc.jetstream().consumer_info(STREAM, "loaders")
        await nc.close()
        return info.num_pending == 0 and info.num_ack_pending == 0

    @pytest.mark.slow
    async def test_two_workers_share_and_store_each_event_once(
        self, server: NatsServer, tmp_path: Path
    ) -> None:
        db = tmp_path / "events.db"
        sink = sink_for(server)
        await sink.open()  # creates the stream the workers read
        await sink.close()
        workers = [self.worker(server, db, "--batch", "250") for _ in range(2)]
        try:
            # Both must be fetching before anything is published, or the first one up can
            # drain all 10,000 (it takes well under a second) before the other starts.
            await async_wait_until(lambda: self.fetching(server, 2), timeout=60, interval=0.1)
            events = await self.publish(server, 10_000)
            await async_wait_until(lambda: self.rows(db)[0] >= 10_000, timeout=120)
            await async_wait_until(lambda: self.consumer_idle(server), timeout=30, interval=0.1)
        finally:
            try:
                outputs = [self.stop(worker) for worker in workers]
            finally:
                for worker in workers:
                    if worker.poll() is None:
                        worker.kill()
                        worker.communicate()
        assert self.rows(db) == (10_000, 10_000)
        delivered = [int(out.rsplit("delivered ", 1)[1].split()[0]) for out in outputs]
        assert all(count > 0 for count in delivered), delivered  # both did a share
        assert sum(delivered) == 10_000
        with sqlite3.connect(db) as conn:
            stored = {row[0]: row[1:] for row in conn.execute("select id, instance, n from clicks")}
        assert stored == {event.id: (event.instance, event.data["n"]) for event in events}

    @pytest.mark.slow
    async def test_worker_killed_mid_way_loses_nothing(
        self, server: NatsServer, tmp_path: Path
    ) -> None:
        await self.publish(server, 10_000)
        db = tmp_path / "events.db"
        # A short ack_wait so the killed worker's unacked batch is redelivered quickly.
        victim = self.worker(server, db, "--batch", "200", "--ack-wait", "2")
        survivor = self.worker(server, db, "--batch", "200", "--ack-wait", "2")
        try:
            await async_wait_until(lambda: self.rows(db)[0] >= 2000, timeout=120)
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
            await async_wait_until(lambda: self.rows(db)[0] >= 10_000, timeout=120)
            await async_wait_until(lambda: self.consumer_idle(server), timeout=30, interval=0.1)
        finally:
            if victim.poll() is None:
                victim.kill()
            victim.communicate()
            self.stop(survivor)
        assert victim.returncode == -signal.SIGKILL
        assert self.rows(db) == (10_000, 10_000)


class RejectingSink(MemorySink):
    """Stores like the memory sink, but rejects (400) any batch holding one of ``reject``."""

    def __init__(self, reject: set[str]) -> None:
        super().__init__()
        self.reject = reject

    async def send(self, batch: Any) -> None:
        if any(event.id in self.reject for event in batch):
            raise RejectedError("bad row", status=400)
        await super().send(batch)


class TestConsumeDeadLetters:
    """A consumed event the sink rejects for good is republished, then termed; the rest land."""

    async def test_rejected_event_goes_to_the_dead_letter_subject(self, server: NatsServer) -> None:
        events = await TestConsume().publish(server, 20)
        poison = events[7]
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="DEAD", subjects=["dead.>"])
        sink = RejectingSink({poison.id})
        settings = consume_settings(
            {
                "servers": [server.url],
                "stream": STREAM,
                "durable": "dl",
                "batch": 20,
                "dead_letter_subject": "dead.events",
            }
        )
        consumer = JetStreamConsumer(
            settings,
            SinkConfig("memory", "memory", {}, DeliverySettings()),
            sink,
            hooks=Hooks(make_plugin_manager()),
        )
        running = asyncio.ensure_future(consumer.run())
        try:
            await async_wait_until(lambda: len(sink.ids) == 19, timeout=30)

            async def idle() -> bool:
                info = await js.consumer_info(STREAM, "dl")
                return info.num_pending == 0 and info.num_ack_pending == 0

            await async_wait_until(idle, timeout=30, interval=0.1)
        finally:
            consumer.stop()
            await asyncio.wait_for(running, 30)
        assert sorted(sink.ids) == sorted(event.id for event in events if event is not poison)
        assert consumer.outbox is not None and consumer.outbox.dead == 1
        dead = await js.pull_subscribe("dead.>", stream="DEAD")
        (message,) = await dead.fetch(10, timeout=5)
        await nc.close()
        assert event_from_message(message.data).id == poison.id
        assert "bad row" in message.headers["Eventsink-Error"]
