"""A pipeline on a background thread with its own event loop, driven from ordinary code.

:class:`eventsink.Client` and the CLI commands that deliver while they read (``send``,
``replay --to``) run their pipeline this way: the caller's thread writes, the runner's thread
delivers. Every wait has a deadline the caller chooses, and a runner still open when the
interpreter exits is closed then with :data:`EXIT_TIMEOUT` (its blocking calls keep working
at that point, see :mod:`eventsink.pipeline.threads`), logging what it could not deliver.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from .pipeline import Pipeline

logger = logging.getLogger("eventsink")

T = TypeVar("T")

EXIT_TIMEOUT = 5.0  # seconds an open runner may deliver at interpreter exit


class PipelineRunner:
    """Run ``pipeline`` on a daemon thread with its own event loop.

    :meth:`start` opens the pipeline (raising its ``ConfigError`` in the caller's thread);
    :meth:`run` runs a coroutine there and returns its result; :meth:`flush` and
    :meth:`close` wait with deadlines. ``close`` is safe to call twice: a second call while
    the first is still waiting (after a ``KeyboardInterrupt``) bounds how long it may go on.
    """

    def __init__(self, pipeline: Pipeline, *, name: str = "eventsink") -> None:
        self.pipeline = pipeline
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closing: concurrent.futures.Future[int] | None = None
        self.closed = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else "running" if self._loop else "not started"
        return f"<PipelineRunner {state} {self.pipeline!r}>"

    def start(self) -> PipelineRunner:
        """Start the loop thread and the pipeline on it; return ``self``.

        If the pipeline cannot start (a ``ConfigError`` from a sink), the thread is stopped
        and the error raised here.
        """
        if self._loop is not None:
            raise RuntimeError("this runner has already been started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=self.name, daemon=True)
        self._thread.start()
        try:
            self.run(self.pipeline.start())
        except BaseException:
            self.closed = True
            self._stop_loop()
            raise
        _open_runners.add(self)
        return self

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the runner's loop and return its result.

        After ``timeout`` seconds the coroutine is cancelled and ``TimeoutError`` raised; a
        ``KeyboardInterrupt`` while waiting cancels it too.
        """
        if self._loop is None or self._loop.is_closed():
            coroutine.close()
            raise RuntimeError("this runner is not running")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except (concurrent.futures.TimeoutError, KeyboardInterrupt):
            # The caller stopped waiting (a timeout, Ctrl-C): stop the coroutine too, so it
            # does not go on beside what the caller does next (e.g. close()).
            future.cancel()
            raise

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything written so far is delivered; ``False`` after ``timeout`` s."""
        if self.closed:
            return True
        return self.run(self.pipeline.flush(timeout))

    def close(self, timeout: float | None = 10.0) -> int:
        """Deliver what can be delivered within ``timeout`` seconds, stop; return events left.

        ``None`` waits until everything is delivered or dead-lettered. What is left stays in
        a durable outbox for the next start. Called again after the first call was interrupted
        (``KeyboardInterrupt``), it waits at most its own ``timeout`` for the first to finish,
        then cancels what is still running.
        """
        if self._loop is None or self._loop.is_closed():
            return 0
        self.closed = True
        if self._closing is None:
            self._closing = asyncio.run_coroutine_threadsafe(
                self.pipeline.close(timeout), self._loop
            )
            wait = None
        else:  # interrupted while closing: the first close may go on only this long
            wait = timeout
        try:
            left = self._closing.result(wait)
        except concurrent.futures.TimeoutError:
            left = self.pipeline.intake.rows
            logger.warning("eventsink: stopped closing after %ss; events stay in the outbox", wait)
            with contextlib.suppress(concurrent.futures.TimeoutError):
                self.run(_cancel_tasks(), timeout=5.0)
        except Exception:
            self._finish()
            raise
        # A KeyboardInterrupt leaves the loop running: the close goes on, and a second
        # close() (or the exit handler) bounds how long.
        self._finish()
        return left

    def _finish(self) -> None:
        _open_runners.discard(self)
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


async def _cancel_tasks() -> None:
    """Cancel every other task of the running loop and wait (briefly) for them to end."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=1.0)


_open_runners: set[PipelineRunner] = set()  # strong: a runner nobody holds still flushes at exit


@atexit.register
def _close_open_runners() -> None:
    for runner in list(_open_runners):
        try:
            left = runner.close(timeout=EXIT_TIMEOUT)
        except Exception:
            logger.exception("eventsink could not close a pipeline at exit")
            continue
        if left:
            logger.warning("eventsink: %d event(s) were not delivered before exit", left)
