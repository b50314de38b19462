"""What every command does the same way: exit statuses, -q, and not waiting silently."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from eventsink.cli import cli

from ..conftest import table_rows

EVENTSINK = str(Path(sys.executable).parent / "eventsink")


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


class TestExitStatus:
    """2 for usage (nothing done), as the help says."""

    def test_a_missing_input_file_is_a_usage_error(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        result = invoke("send", "nope.jsonl", "--outbox", str(tmp_path / "outbox.db"))
        assert result.exit_code == 2
        assert "'nope.jsonl' does not exist" in result.output
        assert not (tmp_path / "outbox.db").exists()

    @pytest.mark.parametrize("command", ["replay", "consume"])
    def test_a_missing_config_file_is_a_usage_error(self, command, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        result = invoke(command, "-c", "nope.yaml", "--to", "sqlite")
        assert result.exit_code == 2

    def test_a_bad_option_pair_is_a_usage_error(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        result = invoke("send", "-o", "novalue", "--outbox", str(tmp_path / "o.db"), input="")
        assert result.exit_code == 2 and "'novalue' is not key=value" in result.output


class TestQuiet:
    """-q prints nothing but errors."""

    def test_send_quiet_prints_nothing_and_delivers(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        result = invoke("send", "-q", "--outbox", str(tmp_path / "o.db"), input='{"n": 1}\n')
        assert result.exit_code == 0 and result.output == ""
        assert len(table_rows(tmp_path / "events.db", "events")) == 1

    def test_sinks_quiet_lists_names(self):
        names = invoke("sinks", "-q").output.split()
        assert {"sqlite", "file", "stdout", "null", "datasette"} <= set(names)


class TestTerminal:
    """Reading events from a terminal says so on stderr instead of waiting silently."""

    def test_hint_when_stdin_is_a_terminal(self, tmp_path):
        master, slave = pty.openpty()
        process = subprocess.Popen(
            [EVENTSINK, "send", "--outbox", str(tmp_path / "o.db")],
            cwd=tmp_path,
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        os.close(slave)
        try:
            os.write(master, b'{"n": 1}\n\x04')  # one line, then Ctrl-D
            out, err = process.communicate(timeout=60)
        finally:
            os.close(master)
        assert process.returncode == 0, err
        assert b"reading events from the terminal" in err and b"Ctrl-D" in err
        assert b"Read 1 event(s)." in out

    def test_no_hint_for_a_pipe(self, tmp_path):
        result = subprocess.run(
            [EVENTSINK, "send", "--outbox", str(tmp_path / "o.db")],
            cwd=tmp_path,
            input=b'{"n": 1}\n',
            capture_output=True,
            timeout=60,
        )
        assert result.returncode == 0 and b"terminal" not in result.stderr
