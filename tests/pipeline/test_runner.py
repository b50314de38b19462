"""PipelineRunner: a pipeline on its own loop thread, with deadlines, closed at exit."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading

import orjson
import pytest

from eventsink.builder import build
from eventsink.exceptions import ConfigError
from eventsink.hookspecs import hookimpl
from eventsink.pipeline.runner import PipelineRunner
from eventsink.sink import Sink
from eventsink.testing import plugin_manager


def memory_pipeline(**config):
    pm = plugin_manager(entry_points=False)
    return build({"sink": "memory", "outbox": ":memory:", "flush_interval": 0.01, **config}, pm=pm)


def runner_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name == "runner-test"]


class TestLifecycle:
    """start, write from this thread, flush, close; every call safe in the wrong order."""

    def test_delivers_what_was_written(self):
        pipeline = memory_pipeline()
        runner = PipelineRunner(pipeline, name="runner-test").start()
        ids = [pipeline.write("t", {"n": n}) for n in range(250)]
        assert runner.flush(timeout=10)
        assert [event.id for event in pipeline.sinks["memory"].events] == ids
        assert runner.close(timeout=5) == 0
        assert runner.close(timeout=5) == 0  # twice is fine
        assert runner.flush() is True  # nothing is owed by a closed runner
        assert runner_threads() == []

    def test_a_sink_that_cannot_start_raises_here_and_leaves_no_thread(self, tmp_path):
        blocker = tmp_path / "file"
        blocker.write_text("")
        pipeline = build({"sink": "file", "path": str(blocker / "x.jsonl"), "outbox": ":memory:"})
        runner = PipelineRunner(pipeline, name="runner-test")
        with pytest.raises(ConfigError):
            runner.start()
        assert runner_threads() == []
        assert runner.closed and runner.close() == 0

    def test_run_returns_the_result_and_refuses_after_close(self):
        pipeline = memory_pipeline()
        runner = PipelineRunner(pipeline, name="runner-test").start()
        status = runner.run(pipeline.status())
        assert status["sinks"]["memory"]["delivered"] == 0
        runner.close()
        coroutine = pipeline.status()
        with pytest.raises(RuntimeError, match="not running"):
            runner.run(coroutine)

    def test_starting_twice_is_an_error(self):
        runner = PipelineRunner(memory_pipeline(), name="runner-test").start()
        try:
            with pytest.raises(RuntimeError, match="already"):
                runner.start()
        finally:
            runner.close()


class StuckSink(Sink):
    """A sink whose send never returns (a receiver that accepts and never answers)."""

    name = "stuck"

    def __init__(self, **config) -> None:
        super().__init__(**config)
        self.sending = threading.Event()

    async def send(self, batch):
        self.sending.set()
        await asyncio.Event().wait()


class StuckPlugin:
    @hookimpl
    def eventsink_register_sinks(self):
        return [StuckSink]


class TestInterruptedClose:
    """Ctrl-C while closing: a second close() bounds the first and stops the thread."""

    def test_second_close_bounds_the_first(self):
        pm = plugin_manager(entry_points=False)
        pm.register(StuckPlugin())
        pipeline = build({"sink": "stuck", "outbox": ":memory:", "flush_interval": 0.01}, pm=pm)
        sink = pipeline.sinks["stuck"]
        runner = PipelineRunner(pipeline, name="runner-test").start()
        pipeline.write("t", {"n": 1})
        assert sink.sending.wait(5)
        timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            runner.close(timeout=None)  # would wait forever for the stuck send
        timer.join()
        assert runner.close(timeout=0.2) == 1  # the event stays owed (here: in memory)
        assert runner_threads() == []


def test_an_open_runner_delivers_at_interpreter_exit(tmp_path):
    """A runner nobody closed is closed at exit, and delivers what was written."""
    path = tmp_path / "out.jsonl"
    script = textwrap.dedent(
        f"""
        from eventsink.builder import build
        from eventsink.pipeline.runner import PipelineRunner

        pipeline = build({{"sink": "file", "path": {str(path)!r}, "outbox": ":memory:"}})
        PipelineRunner(pipeline).start()
        for n in range(500):
            pipeline.write("t", {{"n": n}})
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert sorted(line["data"]["n"] for line in lines) == list(range(500))
