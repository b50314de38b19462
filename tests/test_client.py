"""The Python client: thread-safe writes, handlers, flush and close, through real sinks."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import orjson
import pytest
from ulid import ULID

import eventsink
from eventsink.exceptions import ClosedError, ConfigError, EventError


def read_lines(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


class TestFileSinkThroughClient:
    """Events written from many threads land in the file exactly once, in order per thread."""

    def test_ten_thousand_events_from_four_threads(self, tmp_path):
        path = tmp_path / "out" / "events.jsonl"
        client = eventsink.Client(
            sink="file", path=str(path), instance="web-1", outbox=str(tmp_path / "outbox.db")
        )
        ids: dict[int, list[str]] = {}

        def work(thread: int) -> None:
            ids[thread] = [client.write("clicks", {"thread": thread, "n": n}) for n in range(2500)]

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert client.close() == 0

        lines = read_lines(path)
        assert len(lines) == 10_000
        assert len({line["id"] for line in lines}) == 10_000
        for line in lines[::499]:
            assert line["instance"] == "web-1"
            assert line["table"] == "clicks"
            assert (
                ULID.from_str(line["id"]).datetime.isoformat(timespec="milliseconds")
                == (line["created"])
            )
            assert set(line["data"]) == {"thread", "n"}
        for thread, written in ids.items():
            in_file = [line["id"] for line in lines if line["data"]["thread"] == thread]
            assert sorted(in_file) == written  # every id, increasing in write order
            numbers = [line["data"]["n"] for line in lines if line["data"]["thread"] == thread]
            assert sorted(numbers) == list(range(2500))

    def test_unwritable_path_is_a_clear_error_at_start(self, tmp_path):
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        with pytest.raises(ConfigError, match="cannot open"):
            eventsink.Client(sink="file", path=str(blocker / "events.jsonl"), outbox=":memory:")

    def test_write_to_some_sinks_by_name(self, tmp_path):
        """Two file sinks: each file holds exactly the events written for it."""
        every, audit = tmp_path / "every.jsonl", tmp_path / "audit.jsonl"
        client = eventsink.Client(
            sinks=[
                {"type": "file", "name": "every", "path": str(every)},
                {"type": "file", "name": "audit", "path": str(audit)},
            ],
            outbox=str(tmp_path / "outbox.db"),
        )
        both = client.write("t", {"n": 0})
        only = client.write("t", {"n": 1}, sinks=["audit"])
        waited = client.write("t", {"n": 2}, sinks={"every"}, wait=True)
        with pytest.raises(EventError, match="'audit2'"):
            client.write("t", {"n": 3}, sinks=["audit2"])
        assert client.close() == 0
        assert [row["id"] for row in read_lines(every)] == [both, waited]
        assert [row["id"] for row in read_lines(audit)] == [both, only]


class TestInterpreterExit:
    """A client nobody closed still stores and delivers its events when the program ends."""

    def test_unclosed_client_delivers_at_exit(self, tmp_path):
        out, outbox = tmp_path / "events.jsonl", tmp_path / "outbox.db"
        script = textwrap.dedent(
            f"""
            import eventsink
            client = eventsink.Client(sink="file", path={str(out)!r}, outbox={str(outbox)!r},
                                      batch_limit=1000, flush_interval=60)
            for n in range(5):
                client.write("t", {{"n": n}})
            """
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
        assert b"Traceback" not in done.stderr, done.stderr.decode()
        assert [line["data"]["n"] for line in read_lines(out)] == [0, 1, 2, 3, 4]


class TestClientApi:
    """write/on/flush/close behave as documented."""

    def test_write_rejects_bad_values_naming_the_field(self, tmp_path):
        with eventsink.Client(sink="null", outbox=":memory:") as client:
            with pytest.raises(EventError, match=r"payload\.when"):
                client.write("t", {"payload": {"when": object()}})
            with pytest.raises(EventError, match="'id'"):
                client.write("t", {"id": 5})
            with pytest.raises(EventError, match="table"):
                client.write("", {"a": 1})

    def test_handlers_and_flush(self):
        sent, flushed = [], []
        with eventsink.Client(sink="null", outbox=":memory:", batch_limit=10) as client:
            client.on("send", lambda sink, batch: sent.append((sink, len(batch))))
            client.on("flush", flushed.append)
            for n in range(25):
                client.write("t", {"n": n})
            assert client.flush(timeout=10) is True
            assert sum(count for _, count in sent) == 25
            assert all(sink == "null" and count <= 10 for sink, count in sent)
            assert flushed == [True]
            status = client.status()
            assert status["sinks"]["null"]["delivered"] == 25

    def test_unknown_handler_kind(self):
        with (
            eventsink.Client(sink="null", outbox=":memory:") as client,
            pytest.raises(ValueError, match="unknown handler kind"),
        ):
            client.on("sent", print)

    def test_close_twice_and_write_after_close(self):
        client = eventsink.Client(sink="null", outbox=":memory:")
        client.write("t", {"a": 1})
        assert client.close() == 0
        assert client.close() == 0
        with pytest.raises(ClosedError):
            client.write("t", {"a": 2})

    def test_repr_never_shows_a_secret(self, monkeypatch):
        class SecretSink(eventsink.Sink):
            name = "secretive"
            options = (eventsink.Option("token", str, None, secret=True),)

            async def send(self, batch):
                pass

        class Plugin:
            @eventsink.hookimpl
            def eventsink_register_sinks(self):
                return [SecretSink]

        pm = eventsink.plugins.make_plugin_manager()
        pm.register(Plugin())
        with eventsink.Client(sink="secretive", token="tok-123", outbox=":memory:", pm=pm) as c:
            assert "tok-123" not in repr(c)
            assert "tok-123" not in repr(c.settings)
            assert "tok-123" not in repr(c.pipeline.sinks["secretive"].config)
