"""Secrets are whole or absent: no 6-character piece of a token in any output.

A recognisable token is configured, refused by a real receiver (and echoed by one that puts
the Authorization header in its error), and every output a person or a log collector sees is
searched for any 6-character piece of it: log lines at every level (httpx and httpcore DEBUG
included), exceptions handed to ``on("error")`` and their tracebacks, ``repr()`` of the
objects, ``status()``, the Datasette status pages, ``eventsink status`` and startup errors.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import traceback
from pathlib import Path

import httpx
import pytest
from eventsink.sinks.datasette import DatasetteSink

import eventsink
from eventsink.exceptions import RejectedError, SinkPausedError

from .conftest import wait_until
from .test_faults import Sender

EVENTSINK = str(Path(sys.executable).with_name("eventsink"))
TOKEN = "Qz7XvKp2Lm9Wd4Rt8Yn3Bf6Hj1Sg5Ce0Ua"  # no word or hex run likely found by chance


def pieces(secret: str, size: int = 6) -> set[str]:
    return {secret[start : start + size] for start in range(len(secret) - size + 1)}


def leaks(text: str, secret: str = TOKEN) -> list[str]:
    """The 6-character pieces of ``secret`` found in ``text``."""
    return sorted(piece for piece in pieces(secret) if piece in text)


def exception_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)) + repr(error) + str(error)


class TestEchoedToken:
    """A receiver that echoes the Authorization header in its error never leaks it."""

    @pytest.mark.parametrize("status", [400, 401, 403, 500])
    async def test_long_echo_is_scrubbed_before_it_is_cut(self, status):
        def echo(request):
            # The token starts at character 490: cut at 500 before scrubbing, 10 would leak.
            text = "x" * 483 + request.headers["authorization"] + " was refused"
            return httpx.Response(status, json={"ok": False, "errors": [text]})

        sink = DatasetteSink(
            transport=httpx.MockTransport(echo),
            api_url="http://receiver.test/db/t/-/insert",
            api_token=TOKEN,
        )
        batch = [eventsink.Event("01J0000000000000000000000A", "t", "i", "c", {"n": 1})]
        with pytest.raises(eventsink.DeliveryError) as caught:
            await sink.send(batch)
        await sink.close()
        assert leaks(exception_text(caught.value)) == []
        if status in (400, 401, 403):
            assert isinstance(caught.value, (RejectedError, SinkPausedError))


class TestRefusedTokenEverywhere:
    """A Client whose token a real receiver refuses: nothing it shows holds a piece of it."""

    def test_logs_errors_reprs_and_status(self, receiver, tmp_path):
        records: list[str] = []

        class Collect(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(self.format(record))

        handler = Collect(level=logging.DEBUG)
        handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        root = logging.getLogger()
        previous = root.level
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)  # httpx, httpcore, eventsink: everything
        errors: list[str] = []
        try:
            client = eventsink.Client(
                sink="datasette",
                api_url=f"{receiver.db_url}/-/create",
                api_token=TOKEN,
                outbox=str(tmp_path / "outbox.db"),
                pause_interval=0.1,
                handle_sigterm=False,
            )
            client.on("error", lambda *args: errors.append(exception_text(args[2])))
            for n in range(5):
                client.write("secrets", {"n": n})
            assert not client.flush(1.5)
            wait_until(lambda: errors, 10)
            status = client.status()
            shown = [
                repr(client),
                repr(client.pipeline),
                repr(client.settings),
                repr(list(client.pipeline.sinks.values())),
                repr(client.pipeline.sinks["datasette"].config),
                json.dumps(status, default=str),
            ]
            client.close(timeout=0.1)
        finally:
            root.removeHandler(handler)
            root.setLevel(previous)
        assert status["sinks"]["datasette"]["paused"]
        assert any("httpx" in line or "httpcore" in line for line in records)  # DEBUG seen
        for output in ("\n".join(records), "\n".join(errors), *shown):
            assert leaks(output) == [], output[:2000]


class TestStartupErrors:
    """A startup failure prints one line naming the key, not a traceback with the token."""

    def test_unusable_outbox_path_with_an_inline_token(self, tmp_path):
        result = subprocess.run(
            [
                EVENTSINK,
                "send",
                "--sink",
                "datasette",
                "-o",
                "api_url=http://127.0.0.1:9/db/-/create",
                "-o",
                f"api_token={TOKEN}",
                "--outbox",
                "/proc/no-such-dir/outbox.db",
                "-",
            ],
            input=b'{"n": 1}\n',
            capture_output=True,
        )
        output = (result.stdout + result.stderr).decode()
        assert result.returncode == 2
        assert "Traceback" not in output
        assert "'outbox'" in output
        assert len(output.strip().splitlines()) == 1, output
        assert leaks(output) == []

    def test_client_raises_config_error_naming_outbox(self):
        with pytest.raises(eventsink.ConfigError, match="'outbox'") as caught:
            eventsink.Client(
                sink="datasette",
                api_url="http://127.0.0.1:9/db/-/create",
                api_token=TOKEN,
                outbox="/proc/no-such-dir/outbox.db",
            )
        assert caught.value.key == "outbox"
        assert leaks(exception_text(caught.value)) == []


class TestDatasetteSender:
    """A ``datasette serve`` sender with a refused inline token: pages, log, status command."""

    @pytest.mark.slow
    def test_status_pages_log_and_status_command(self, tmp_path, receiver):
        sender = Sender(
            tmp_path,
            {
                "api_url": f"{receiver.db_url}/-/create",
                "api_token": TOKEN,
                "table": "secrets",
                "pause_interval": 0.2,
            },
        )
        with sender.server, httpx.Client(headers=sender.headers, timeout=30) as client:
            created = client.post(
                f"{sender.server.db_url}/-/create", json={"table": "t", "row": {"n": 1}}
            )
            assert created.status_code == 201, created.text
            wait_until(lambda: sender.status()["paused"], 20)
            pages = [
                client.get(f"{sender.server.url}/-/eventsink").text,
                client.get(f"{sender.server.url}/-/eventsink.json").text,
            ]
        status_command = subprocess.run(
            [EVENTSINK, "status", "--outbox", str(sender.internal)],
            capture_output=True,
            text=True,
        )
        log = sender.server.log_path.read_text()
        assert "refused the token" in pages[1]
        for output in (*pages, log, status_command.stdout + status_command.stderr):
            assert leaks(output) == [], output[:3000]
