"""The Python client: ``write(table, data)`` from any thread, delivered in the background.

::

    with eventsink.Client(sink="file", path="events.jsonl", instance="web-1") as client:
        client.on("error", lambda sink, batch, error, final: print(error))
        client.write("signups", {"user": "ada", "plan": "pro"})

The client runs a :class:`~eventsink.Pipeline` on a daemon thread with its own event
loop. ``write`` returns the event's id at once: it never waits on the network. ``flush`` waits
until everything written so far is delivered; ``close`` (or leaving the ``with`` block) flushes
with a deadline and stops. A client still open at interpreter exit is closed then, with a
bounded deadline, and logs how many events it could not deliver.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import pluggy

from .config import parse_config
from .exceptions import ClosedError
from .hookspecs import hookimpl
from .pipeline.pipeline import Pipeline
from .plugins import lookup, make_plugin_manager, sink_classes

logger = logging.getLogger("eventsink")

HANDLER_KINDS = ("send", "flush", "error")
EXIT_TIMEOUT = 5.0


class _Handlers:
    """Plugin object turning lifecycle hooks into calls of the client's handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, list[Callable[..., Any]]] = {kind: [] for kind in HANDLER_KINDS}

    def call(self, kind: str, *args: Any) -> None:
        for handler in list(self.handlers[kind]):
            try:
                handler(*args)
            except Exception:
                logger.exception("eventsink %r handler %r raised", kind, handler)

    @hookimpl
    def eventsink_batch_sent(self, sink: str, batch: list[Any]) -> None:
        self.call("send", sink, batch)

    @hookimpl
    def eventsink_send_error(
        self, sink: str, batch: list[Any], error: BaseException, final: bool
    ) -> None:
        self.call("error", sink, batch, error, final)


class Client:
    """Send events through eventsink from ordinary (threaded) Python code.

    Keyword arguments are the configuration (see the configuration reference): ``sink`` and
    its options, ``instance``, ``batch_limit``, ``outbox`` and so on. ``config`` may give the
    same as a dict; keyword arguments win. ``pm`` injects a plugin manager (tests).
    """

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        pm: pluggy.PluginManager | None = None,
        **options: Any,
    ) -> None:
        merged = {**(config or {}), **options}
        self.pm = pm or make_plugin_manager()
        classes = sink_classes(self.pm)
        self.settings = parse_config(
            merged,
            lambda name, key: lookup(classes, name, "sink", key).options,
            default_sink="datasette",
        )
        self._handlers = _Handlers()
        self.pm.register(self._handlers)
        self.pipeline = Pipeline(self.settings, pm=self.pm)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="eventsink-client", daemon=True
        )
        self._thread.start()
        self._closed = False
        try:
            self._run(self.pipeline.start(), timeout=None)
        except BaseException:
            self._stop_loop()
            self.pm.unregister(self._handlers)
            raise
        _open_clients.add(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        sinks = list(self.pipeline.sinks)
        return f"<Client {state} instance={self.settings.instance!r} sinks={sinks!r}>"

    def _run(self, coroutine: Any, timeout: float | None) -> Any:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    # -- the API ---------------------------------------------------------------------------

    def write(self, table: str, data: Mapping[str, Any]) -> str | None:
        """Queue one event for ``table``; return its id, or ``None`` if a filter dropped it.

        Raises :class:`~eventsink.exceptions.EventError` (naming the field) for data JSON
        cannot hold, :class:`~eventsink.exceptions.ClosedError` after :meth:`close`.
        """
        if self._closed:
            raise ClosedError("this client is closed")
        return self.pipeline.write(table, data)

    def on(self, kind: str, handler: Callable[..., Any]) -> Callable[..., Any]:
        """Call ``handler`` on ``"send"``, ``"flush"`` or ``"error"``; returns ``handler``.

        * ``send(sink, batch)``: a sink confirmed ``batch`` (a list of events);
        * ``error(sink, batch, error, final)``: an attempt failed; ``final`` means the events
          went to the dead-letter store, otherwise they will be retried;
        * ``flush(delivered)``: a :meth:`flush` finished; ``delivered`` is ``True`` when
          everything was delivered in time.

        Handlers run on the client's background thread and must not block for long.
        """
        if kind not in HANDLER_KINDS:
            raise ValueError(
                f"unknown handler kind {kind!r}; use one of {', '.join(HANDLER_KINDS)}"
            )
        self._handlers.handlers[kind].append(handler)
        return handler

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything written so far is delivered (or dead-lettered).

        Returns ``False`` if ``timeout`` seconds passed first.
        """
        if self._closed:
            return True
        delivered = self._run(self.pipeline.flush(timeout), timeout=None)
        self._handlers.call("flush", delivered)
        return delivered

    def status(self) -> dict[str, Any]:
        """A snapshot of the pipeline: per sink pending, delivered, errors, pauses."""
        return self._run(self.pipeline.status(), timeout=None)

    def close(self, timeout: float | None = 10.0) -> int:
        """Deliver what can be delivered within ``timeout`` seconds, then stop.

        Returns the number of events left undelivered (kept in a durable outbox for the next
        start). Safe to call twice.
        """
        if self._closed:
            return 0
        self._closed = True
        _open_clients.discard(self)
        try:
            left = self._run(self.pipeline.close(timeout), timeout=None)
        finally:
            self._stop_loop()
            self.pm.unregister(self._handlers)
        return left

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_open_clients: set[Client] = set()  # strong: a client nobody holds still flushes at exit


@atexit.register
def _close_open_clients() -> None:
    for client in list(_open_clients):
        try:
            left = client.close(timeout=EXIT_TIMEOUT)
        except Exception:
            logger.exception("eventsink could not close a client at exit")
            continue
        if left:
            logger.warning("eventsink: %d event(s) were not delivered before exit", left)
