"""Worker threads for blocking calls that keep working while the interpreter exits.

``concurrent.futures`` (and so ``asyncio.to_thread``) refuses new work once ``threading``'s exit
hook has run, and that hook runs *before* ``atexit`` handlers: just when
:class:`eventsink.Client`'s exit handler appends the last buffered events to the outbox and
delivers what it can. These workers are plain daemon threads fed by a queue, so the SQLite
outbox and plain-function sinks keep working until that handler is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[Callable[..., Any], tuple[Any, ...], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


def _resolve(future: asyncio.Future[Any], error: BaseException | None, result: Any) -> None:
    if future.cancelled():
        return  # the caller stopped waiting; the call itself has run
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class WorkerThreads:
    """Up to ``max_threads`` daemon threads running blocking calls for coroutines.

    Threads start on demand and then wait for more work. With ``max_threads=1`` calls run
    one at a time, in order, always on the same thread (what a SQLite connection needs).
    """

    def __init__(self, max_threads: int, name: str) -> None:
        self.max_threads = max_threads
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function(*args)`` on a worker thread and return its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._idle == 0 and self._threads < self.max_threads:
                self._threads += 1
                thread = threading.Thread(
                    target=self._serve, name=f"{self.name}-{self._threads}", daemon=True
                )
                thread.start()
        self._jobs.put((function, args, loop, future))
        return await future

    def _serve(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            job = self._jobs.get()
            with self._lock:
                self._idle -= 1
            if job is None:
                with self._lock:
                    self._threads -= 1
                return
            function, args, loop, future = job
            error: BaseException | None = None
            result: Any = None
            try:
                result = function(*args)
            except BaseException as raised:  # handed to the awaiting coroutine
                error = raised
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting
                loop.call_soon_threadsafe(_resolve, future, error, result)

    def shutdown(self) -> None:
        """Let every thread finish the work queued so far, then end."""
        with self._lock:
            threads = self._threads
        for _ in range(threads):
            self._jobs.put(None)


#: Where plain-function sink methods run (see :func:`eventsink.sink.call_maybe_sync`).
SYNC_CALLS = WorkerThreads(32, "eventsink-sync")
